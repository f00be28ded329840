//! How the engine talks to its peer: the [`Channel`] trait.
//!
//! The engine knows nothing of sockets, TLS or gateways. A channel moves
//! whole frames (byte vectors) to and from one peer, in order, and counts the
//! bytes. `send` and `recv` take `&self` so that one thread can stream frames
//! out while another reads the peer's frames: both parties send large
//! volumes at the same time, and a single-threaded send-then-receive would
//! deadlock once the transport's buffers fill.
//!
//! Implementations: [`memory_pair`] here (tests, and in-process runs);
//! venn-link's TCP+TLS links and gateway links in the binary.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// Why a channel operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The peer closed the link (or its process ended) before the protocol finished.
    #[error("the peer closed the connection before the protocol finished")]
    Closed,
    /// A frame larger than the link allows.
    #[error("frame of {0} bytes exceeds the link's limit")]
    TooLarge(usize),
    /// Any transport failure, with its description.
    #[error("link error: {0}")]
    Transport(String),
}

/// A bidirectional, ordered, reliable frame link to one peer.
pub trait Channel: Send + Sync {
    /// Sends one frame. May block for back-pressure.
    fn send(&self, frame: Vec<u8>) -> Result<(), ChannelError>;
    /// Receives the next frame from the peer, blocking until it arrives.
    fn recv(&self) -> Result<Vec<u8>, ChannelError>;
    /// Payload bytes sent so far (frame headers included where the transport has them).
    fn bytes_sent(&self) -> u64;
    /// Payload bytes received so far.
    fn bytes_received(&self) -> u64;
}

impl<C: Channel + ?Sized> Channel for &C {
    fn send(&self, frame: Vec<u8>) -> Result<(), ChannelError> {
        (**self).send(frame)
    }
    fn recv(&self) -> Result<Vec<u8>, ChannelError> {
        (**self).recv()
    }
    fn bytes_sent(&self) -> u64 {
        (**self).bytes_sent()
    }
    fn bytes_received(&self) -> u64 {
        (**self).bytes_received()
    }
}

impl<C: Channel + ?Sized> Channel for Box<C> {
    fn send(&self, frame: Vec<u8>) -> Result<(), ChannelError> {
        (**self).send(frame)
    }
    fn recv(&self) -> Result<Vec<u8>, ChannelError> {
        (**self).recv()
    }
    fn bytes_sent(&self) -> u64 {
        (**self).bytes_sent()
    }
    fn bytes_received(&self) -> u64 {
        (**self).bytes_received()
    }
}

/// One end of an in-process channel made by [`memory_pair`].
pub struct MemoryChannel {
    tx: SyncSender<Vec<u8>>,
    rx: Mutex<Receiver<Vec<u8>>>,
    sent: AtomicU64,
    received: AtomicU64,
}

/// Two connected in-process channel ends. Each direction buffers up to
/// `depth` frames, then `send` blocks, as a socket would.
pub fn memory_pair(depth: usize) -> (MemoryChannel, MemoryChannel) {
    let (tx_a, rx_b) = sync_channel(depth);
    let (tx_b, rx_a) = sync_channel(depth);
    let end = |tx, rx| MemoryChannel {
        tx,
        rx: Mutex::new(rx),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
    };
    (end(tx_a, rx_a), end(tx_b, rx_b))
}

impl Channel for MemoryChannel {
    fn send(&self, frame: Vec<u8>) -> Result<(), ChannelError> {
        self.sent.fetch_add(frame.len() as u64, Ordering::Relaxed);
        self.tx.send(frame).map_err(|_| ChannelError::Closed)
    }

    fn recv(&self) -> Result<Vec<u8>, ChannelError> {
        let rx = self.rx.lock().map_err(|_| ChannelError::Closed)?;
        let frame = rx.recv().map_err(|_| ChannelError::Closed)?;
        self.received
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        Ok(frame)
    }

    fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    fn bytes_received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_pair_delivers_in_order_and_counts() {
        let (a, b) = memory_pair(4);
        a.send(vec![1, 2, 3]).unwrap();
        a.send(vec![4]).unwrap();
        assert_eq!(b.recv().unwrap(), vec![1, 2, 3]);
        assert_eq!(b.recv().unwrap(), vec![4]);
        assert_eq!(a.bytes_sent(), 4);
        assert_eq!(b.bytes_received(), 4);
        drop(a);
        assert!(matches!(b.recv(), Err(ChannelError::Closed)));
    }
}
