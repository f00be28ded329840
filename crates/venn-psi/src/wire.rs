//! Framing helpers shared by the handshake and the protocols.
//!
//! Every frame starts with one tag byte naming the message, so a party that
//! gets something unexpected fails with a clear error instead of misreading
//! bytes. Tag [`ABORT`] carries the peer's error message: when one party fails
//! (a bad input file, say), the other reports the peer's reason rather than a
//! closed connection.

use crate::channel::Channel;
use crate::error::PsiError;

/// The peer gave up; the payload is its error message in UTF-8.
pub(crate) const ABORT: u8 = 0xFF;

/// Sends `payload` as one frame with `tag` in front.
pub(crate) fn send(chan: &dyn Channel, tag: u8, payload: &[u8]) -> Result<(), PsiError> {
    let mut frame = Vec::with_capacity(payload.len() + 1);
    frame.push(tag);
    frame.extend_from_slice(payload);
    chan.send(frame)?;
    Ok(())
}

/// Sends a frame that the caller already built with `tag` at index 0.
pub(crate) fn send_frame(chan: &dyn Channel, frame: Vec<u8>) -> Result<(), PsiError> {
    debug_assert!(!frame.is_empty());
    chan.send(frame)?;
    Ok(())
}

/// Receives one frame, checks its tag and returns the payload (tag stripped).
pub(crate) fn recv(chan: &dyn Channel, tag: u8, what: &str) -> Result<Vec<u8>, PsiError> {
    let mut frame = recv_frame(chan, tag, what)?;
    frame.remove(0);
    Ok(frame)
}

/// Receives one frame and checks its tag; returns it whole (tag at index 0),
/// so that multi-megabyte payloads are not shifted.
pub(crate) fn recv_frame(chan: &dyn Channel, tag: u8, what: &str) -> Result<Vec<u8>, PsiError> {
    let frame = chan.recv()?;
    match frame.first().copied() {
        Some(t) if t == tag => Ok(frame),
        Some(ABORT) => Err(PsiError::peer(format!(
            "the peer stopped: {}",
            String::from_utf8_lossy(&frame[1..])
        ))),
        Some(t) => Err(PsiError::peer(format!(
            "protocol error: expected {what} (message {tag:#04x}), got message {t:#04x}"
        ))),
        None => Err(PsiError::peer(format!(
            "protocol error: empty frame instead of {what}"
        ))),
    }
}

/// Tells the peer we stopped, best effort.
pub(crate) fn abort(chan: &dyn Channel, reason: &str) {
    let _ = send(chan, ABORT, reason.as_bytes());
}

/// Little-endian encoding of `u128`s.
#[allow(dead_code)] // for protocols that send items in the clear-text framing
pub(crate) fn put_u128s(out: &mut Vec<u8>, items: &[u128]) {
    out.reserve(items.len() * 16);
    for x in items {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

/// Decodes a whole frame of little-endian `u128`s.
#[allow(dead_code)] // see put_u128s
pub(crate) fn get_u128s(buf: &[u8], what: &str) -> Result<Vec<u128>, PsiError> {
    if !buf.len().is_multiple_of(16) {
        return Err(PsiError::peer(format!(
            "{what}: length {} is not a multiple of 16",
            buf.len()
        )));
    }
    Ok(buf
        .chunks_exact(16)
        .map(|c| u128::from_le_bytes(c.try_into().expect("16 bytes")))
        .collect())
}

/// Little-endian encoding of `u32`s.
pub(crate) fn put_u32s(out: &mut Vec<u8>, v: &[u32]) {
    out.reserve(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

/// Decodes a whole frame of little-endian `u32`s.
pub(crate) fn get_u32s(buf: &[u8], what: &str) -> Result<Vec<u32>, PsiError> {
    if !buf.len().is_multiple_of(4) {
        return Err(PsiError::peer(format!(
            "{what}: length {} is not a multiple of 4",
            buf.len()
        )));
    }
    Ok(buf
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect())
}
