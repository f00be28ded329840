//! RR22 VOLE-based PSI: the semi-honest "fast" instantiation, and the
//! low-communication and malicious variants (sections below).
//!
//! Raghuraman–Rindal, "Blazing Fast PSI from Improved OKVS and Subfield VOLE",
//! ACM CCS 2022 (eprint 2022/320): the PSI protocol of Fig. 4 (CCS) / Fig. 11
//! (eprint) with B = F = GF(2^128), the w = 3 clustered OKVS of §3 and a
//! silent VOLE.
//!
//! Roles: the OPRF *receiver* R (item set X, n_x items) learns the
//! intersection; the *sender* S (set Y) learns nothing. R is the party that
//! learns; if both learn, the leader is R and the engine forwards the result.
//!
//! Protocol (all messages tagged, see `tags`):
//! 1. Random VOLE of length m = |OKVS| (`vole.rs`): S gets Δ, B; R gets A, C
//!    with C = A·Δ + B.
//! 2. R encodes P = Encode{(x, H(x)) : x ∈ X} (`okvs.rs`; H from `prim.rs`),
//!    sends the OKVS header (seed, per-bin attempt numbers) and A' = A + P
//!    (m·16 bytes, in frames of at most 4 MiB). A depends on R's VOLE noise
//!    only, so A' can go out while the VOLE still computes C (below).
//! 3. S computes K = B + A'·Δ (= C + P·Δ) and for each y ∈ Y, in its own
//!    (random) item order, the tag Ho(Decode(K, y) + Δ·H(y)) truncated to
//!    ⌈(λ + log2(n_x·n_y))/8⌉ bytes ([`crate::core::tag_bytes`]).
//! 4. R computes Ho(Decode(C, x)) for its x; for y = x ∈ X,
//!    Decode(K, y) + Δ·H(y) = Decode(C, y) + Δ·(Decode(P, y) + H(y)) =
//!    Decode(C, y), so tags agree; for y ∉ X the difference is
//!    Δ·(Decode(P, y) + H(y)) with Δ unknown to R, so the tag looks random.
//!    R reports (its position, S's position) for equal tags.
//!
//! Correctness never depends on luck in the data structures: an OKVS bin that
//! does not encode is re-encoded with a new attempt number and a bin
//! overflow draws a new seed, both sent to S; R keeps every one of its tags
//! even if two collide. Only a false positive (probability ≤ 2^-λ over all
//! pairs, the tag length's purpose) can add a wrong match. Items must be
//! distinct (the engine guarantees it); a duplicate makes the OKVS encoding
//! fail with an error, never a silent loss.
//!
//! Concurrency: nothing R sends before the tags depends on S's messages
//! except through C, so R computes its VOLE noise, A, P and A' = A + P on a
//! thread of its own (ahead of the run when it has idle time,
//! [`ReceiverAhead`]) while the VOLE's messages give it C. It streams its
//! OT-extension messages from a second thread while it reads S's replies;
//! in the semi-honest modes that thread then sends the OKVS header and A'
//! at once, and S reads them after its VOLE (in the malicious mode A' goes
//! after the VOLE check and w_r, as the variant requires). R computes its own
//! tags meanwhile, so neither party ever blocks on a send while the other
//! does too.
//!
//! Communication (n_x = n_y = n): R → S about 1.28·128 bits per receiver item
//! (OKVS expansion: RR22's e ≈ 1.245 at 2^16-key bins times the
//! bin-capacity margin) plus the VOLE setup (IKNP columns for 128 COTs per first-chunk
//! noise value and t·h OTs per later chunk); S → R the truncated tags plus
//! the punctured-PRF messages (2·t·h blocks per VOLE chunk).
//!
//! ## Low-communication variant (`--low-comm`)
//!
//! RR22 §5 ("Subfield VOLE and PSI", Fig. 10 and Fig. 11) and §6.2 ("low
//! comm."): the VOLE is a *subfield* VOLE, A ∈ B^m with Δ ∈ F = GF(2^128),
//! C = A·Δ + B, and the OKVS values H_B(x) and the message A' = A + P lie in
//! B, so R → S sends |B| bits per cell instead of 128. Here B is the
//! GF(2)-subspace of polynomials of degree < `vbits` inside GF(2^128)
//! (not a subfield: every operation applied to B-values is GF(2)-linear —
//! the binary OKVS's XORs, the Expand-Convolute code's XORs, and
//! multiplication by Δ — so closure under XOR is all the protocol uses):
//! * the OKVS decodes with XORs only (its dense part is binary, as in
//!   every mode: see [`okvs`]), and its bins hold 2^18 keys (e ≈ 1.23
//!   with a 1.5% bin margin; §6.2 uses no bins at all);
//! * `vbits` = λ + ⌈log2 n_y⌉ (60 at 2^20): the receiver could tell an
//!   item y ∉ X from its tag only if Decode(P, y) = H_B(y), probability
//!   n_y/|B| ≤ 2^-λ over the sender's items (the privacy argument after
//!   Theorem 1 in §5). The paper's Theorem 1 states |B| ≥ 2^λ·n_x·n_y to
//!   also cover a correctness failure "H_B(y) = H_B(x)"; that failure
//!   cannot cause a wrong match here because our OKVS rows come from keyed
//!   hashes of the item itself, not from H_B, and the tags carry their own
//!   λ + log2(n_x·n_y) bits (so we use the §6.2 element size, which the
//!   paper itself measures with);
//! * the VOLE's first-chunk noise values β_i are `vbits`-bit (so `vbits`
//!   correlated OTs each instead of 128), the dual-LPN code is binary, so A
//!   stays in B; larger VOLE chunks (2^19) send fewer GGM messages;
//! * the cells go on the wire bit-packed, `vbits` bits each.
//!
//! Exactness does not depend on sizes: bins, cells and frames are derived
//! from n_x, n_y and λ alike at both ends, with no power-of-two assumption.
//!
//! ## Malicious variant (`--malicious`)
//!
//! RR22 §5 builds on Rindal–Schoppmann (RS21, "VOLE-PSI", Eurocrypt 2021,
//! Fig. 5/6), whose malicious protocol keeps what RR22 drops for the
//! semi-honest case ("w_s, w_r, w and needing to input x, y to H_o"), and
//! §6.2 runs it with the "fast" OKVS (B = F = GF(2^128); `--low-comm` is
//! refused with it). What we add to the semi-honest protocol:
//! * S commits to a random w_s (BLAKE3) before the VOLE; R sends a random
//!   w_r after the VOLE; S opens w_s only after it has received all of A';
//!   R checks the opening against the commitment.
//! * The output hash takes the item and the value: tags are
//!   H_o(y, Decode(K, y) + Δ·H(y) + w) at S and H_o(x, Decode(C, x) + w) at
//!   R, w = w_r + w_s, with H_o = BLAKE3 (a random oracle on the pair, so a
//!   simulator can extract the sender's set from its queries).
//! * The VOLE must be malicious-secure (RS21 and RR22 assume an ideal
//!   malicious VOLE; libOTe realises it with the checks below):
//!   - the OT extension runs the KOS correlation check (`ot.rs`), which
//!     stops R from learning bits of Δ through inconsistent choice columns;
//!   - every VOLE chunk runs the sparse-VOLE consistency check of Wolverine
//!     (Weng–Yang–Katz–Wang, S&P 2021, §3.2 Fig. 6) / Ferret (CCS 2020):
//!     with χ from a hash of S's punctured-PRF message, R sends
//!     x* = Σ χ_{α_i}·β_i + y* and S answers with a hash of
//!     Σ χ_j·v_j + v* + x*·Δ, which R compares with Σ χ_j·w_j + z* ((y*, z*, v*)
//!     a VOLE from 128 extra COTs). An S that sends inconsistent GGM
//!     messages is caught except when it guesses R's noise positions (the
//!     selective-failure leakage these papers allow); R checks before it
//!     sends A', so nothing about X is exposed to such an S.
//! * Tags keep λ + log2(n_x·n_y) bits (RS21 sends κ bits; a forged tag
//!   matches one of R's with probability ≤ 2^-λ either way).
//!
//! Assumed, not implemented: Chou–Orlandi base OTs against a malicious
//! base-OT receiver (the VOLE sender) as in libOTe; the sender's input size
//! is bounded by the number of tags R accepts (n_y), as in Fig. 9.

mod exconv;
mod gf128;
mod okvs;
mod ot;
pub(crate) mod prim;
mod vole;

use rayon::prelude::*;

use crate::channel::Channel;
use crate::core::{CoreInput, CoreOutput, Match, tag_bytes};
use crate::error::PsiError;
use crate::wire;
use okvs::{EncodeOptions, OkvsHeader, OkvsParams};
use prim::Prg;

/// Message tags of this protocol (range 0x40..0x5F).
pub(crate) mod tags {
    /// base OT: sender's point A
    pub(crate) const BASE_A: u8 = 0x40;
    /// base OT: receiver's points B_i
    pub(crate) const BASE_B: u8 = 0x41;
    /// IKNP extension matrix (VOLE receiver → sender), one per chunk
    pub(crate) const VOLE_OT: u8 = 0x42;
    /// punctured-PRF level sums and noisy-VOLE corrections, one per chunk
    pub(crate) const VOLE_PPRF: u8 = 0x43;
    /// OKVS header: seed and per-bin attempt numbers
    pub(crate) const OKVS_HDR: u8 = 0x44;
    /// A' = A + P, in frames
    pub(crate) const OKVS_DATA: u8 = 0x45;
    /// sender's tags, in frames
    pub(crate) const TAGS: u8 = 0x46;
    /// malicious mode: the sparse-VOLE consistency check (x* values, then
    /// the sender's digest)
    pub(crate) const VOLE_CHECK: u8 = 0x47;
    /// malicious mode: the sender's commitment H(w_s)
    pub(crate) const W_COMMIT: u8 = 0x48;
    /// malicious mode: the receiver's w_r
    pub(crate) const W_R: u8 = 0x49;
    /// malicious mode: the sender's opening w_s
    pub(crate) const W_OPEN: u8 = 0x4A;
}

/// Phase timing: `VENN_LOG=venn_psi=trace` prints each protocol step with
/// the milliseconds since the step's start (`RR22_TRACE=1` in test builds).
#[cfg(test)]
macro_rules! trace {
    ($t0:expr, $($arg:tt)*) => {
        if std::env::var_os("RR22_TRACE").is_some() {
            eprintln!("[rr22 {:>8.1} ms] {}", $t0.elapsed().as_secs_f64() * 1e3, format!($($arg)*));
        }
    };
}
#[cfg(not(test))]
macro_rules! trace {
    ($t0:expr, $($arg:tt)*) => {
        tracing::trace!(ms = $t0.elapsed().as_secs_f64() * 1e3, "{}", format_args!($($arg)*))
    };
}
pub(crate) use trace;

/// Largest frame we send, tag byte included.
const MAX_FRAME: usize = 4 << 20;
/// Largest frame of the sender's tags: smaller than [`MAX_FRAME`], so that
/// hashing, sending and the receiver's reading overlap (2^20 tags are
/// ~10 frames).
const TAG_FRAME: usize = 1 << 20;
/// 128-bit blocks per A' frame.
const FRAME_BLOCKS: usize = (MAX_FRAME - 1) / 16;

/// Largest VOLE chunk in the low-communication mode: fewer, larger chunks
/// send fewer punctured-PRF messages (2·t·h blocks each, ~0.25 MB per chunk
/// with the OT extension) at the price of an accumulated vector that no
/// longer fits in the cache. Measured at 2^20 rows (core, both directions):
/// 2^20 → 21.2 MB, 2^19 → 21.5 MB, 2^18 → 22.4 MB (with 2^16-key bins);
/// 2^19 was also faster than 2^20.
const LOW_COMM_CHUNK: usize = 1 << 19;

/// What the RR22 receiver prepares before its peer is there, started by
/// [`ReceiverAhead::spawn`] for the session to hand to the protocol through
/// [`CoreInput::rr22_ahead`].
///
/// Why: in the fast and malicious modes nothing the receiver sends before
/// the tags depends on the sender. Its VOLE noise and A = H·A_sparse follow
/// from its own randomness ([`vole::RecvNoise`]), its OKVS P from its own
/// items (the shape from their number and λ, the values from H), and so does
/// A' = A + P. A receiver that is ready before its peer — it read its file
/// while the peer was still starting or reading — computes all of it in
/// that idle time, and in the run only its C waits on the sender's replies.
/// The work runs in the background: where there was no idle time it is
/// still running when the VOLE starts and overlaps it, as it does inside the
/// run ([`run_receiver`]). The noise and the OKVS seed are fresh either way
/// and the messages are the same.
pub struct ReceiverAhead {
    work: std::sync::Mutex<Option<Prepared>>,
    /// the items it was prepared for (n_x)
    n_x: usize,
    malicious: bool,
}

/// The receiver's noise, and the thread computing A' from it.
struct Prepared {
    params: OkvsParams,
    noise: vole::RecvNoise,
    masking: std::thread::JoinHandle<Result<Masked, PsiError>>,
}

/// A' = A + P with P's header, the β_i of A's chunks (the malicious
/// check needs them), and the rows of the receiver's items in P
/// ([`okvs::Layout`]: its own tags decode C along them).
struct Masked {
    header: OkvsHeader,
    a_prime: Vec<u128>,
    betas: vole::Betas,
    layout: Option<okvs::Layout>,
}

impl ReceiverAhead {
    /// Draws the VOLE noise for `items[range]` (the fast mode's shape, or
    /// the malicious mode's) and starts computing A' = A + P on a new
    /// thread. The run must get the same items as its input (the session's
    /// batch). `None` if no thread could be started (the run then does it
    /// all).
    pub fn spawn(
        items: std::sync::Arc<Vec<u128>>,
        range: std::ops::Range<usize>,
        stat_sec: u32,
        malicious: bool,
    ) -> Option<Self> {
        let n_x = range.len();
        let Shape { params, vole, .. } = fast_shape(n_x, stat_sec, malicious);
        let noise = vole::RecvNoise::new(params.len(), &vole);
        let (p, n) = (params, noise.clone());
        std::thread::Builder::new()
            .name("venn-psi-ahead".into())
            .spawn(move || {
                let items = &items[range];
                mask_p(&p, items, u128::MAX, EncodeOptions::default(), &n)
            })
            .ok()
            .map(|masking| ReceiverAhead {
                work: std::sync::Mutex::new(Some(Prepared {
                    params,
                    noise,
                    masking,
                })),
                n_x,
                malicious,
            })
    }

    /// Waits for the work (if nobody took it) and drops it.
    pub fn cancel(self) {
        if let Some(p) = self.take() {
            let _ = p.masking.join();
        }
    }

    fn take(&self) -> Option<Prepared> {
        self.work.lock().ok().and_then(|mut a| a.take())
    }

    /// The number of items this work was prepared for, if it can serve an
    /// early VOLE ([`EarlyVole`]): the fast mode, A' computed, and nobody
    /// took it yet. (A receiver whose A' is still being computed gains
    /// nothing from an early VOLE: its peer is the one waiting, and the
    /// run's own VOLE overlaps that computation.)
    pub fn early_items(&self) -> Option<usize> {
        let ready = self
            .work
            .lock()
            .is_ok_and(|w| w.as_ref().is_some_and(|p| p.masking.is_finished()));
        (ready && !self.malicious && self.n_x > 0).then_some(self.n_x)
    }
}

impl std::fmt::Debug for ReceiverAhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReceiverAhead")
    }
}

/// The VOLE of a run, done before the sizes are known: the "early VOLE".
///
/// Why: the VOLE needs only the receiver's item count (its length m is the
/// OKVS's, a function of n_x and λ), not the sender's items. A receiver
/// that prepared its work ahead ([`ReceiverAhead`]) knows n_x when the link
/// comes up; a sender that came later is still reading its file then. The
/// receiver proposes n_x right after the handshake, and if the sender
/// accepts, the VOLE and the receiver's OKVS message (A' = A + P) run while
/// the sender reads, on a thread of the sender's own: the receiver's half
/// of the VOLE, the critical path of the protocol, then overlaps the
/// sender's read instead of following it. The sender ends with K = B + A'·Δ,
/// the receiver with C; the run then starts from its tags.
///
/// Only the fast mode proposes it (the malicious mode's commitment and
/// checks keep their order, and the low-communication mode's shape depends
/// on the sender's size). The session uses it only if the run is what the
/// receiver prepared for: one bucket, one batch, the receiver's items
/// unchanged; otherwise it is dropped, and the run does its own VOLE. The
/// messages and their distribution are the protocol's own, only earlier.
pub struct EarlyVole(std::sync::Mutex<Option<Early>>);

enum Early {
    Receiver(EarlyReceiver),
    Sender(EarlySender),
}

/// The receiver's side of an early VOLE: C, and P's header and rows.
struct EarlyReceiver {
    params: OkvsParams,
    c: Vec<u128>,
    header: OkvsHeader,
    layout: Option<okvs::Layout>,
}

/// The sender's side of an early VOLE: Δ, K = B + A'·Δ, P's header, and
/// what the sender prepared meanwhile.
struct EarlySender {
    params: OkvsParams,
    delta: u128,
    k: Vec<u128>,
    header: OkvsHeader,
    prep: Option<SenderPrep>,
}

/// What a sender computes for its items while its early VOLE runs
/// ([`EarlySend::prepare`]): Δ·H(y).
struct SenderPrep {
    items: std::sync::Arc<Vec<u128>>,
    delta_h: Vec<u128>,
}

/// The sender's side of an early VOLE ([`EarlyVole`]), started: [`Self::run`]
/// on a thread of its own, [`Self::prepare`] on the thread that reads the
/// items, then [`Self::finish`].
pub struct EarlySend {
    params: OkvsParams,
    delta: u128,
    prep: std::sync::Mutex<Option<SenderPrep>>,
}

/// [`EarlySend::run`]'s result, for [`EarlySend::finish`].
pub struct EarlyK {
    k: Vec<u128>,
    header: OkvsHeader,
}

impl EarlySend {
    /// For a receiver with `n_x` items: draws Δ.
    pub fn new(n_x: usize, stat_sec: u32) -> Self {
        EarlySend {
            params: fast_shape(n_x, stat_sec, false).params,
            delta: Prg::from_os().block(),
            prep: std::sync::Mutex::new(None),
        }
    }

    /// The messages: the VOLE, then K from the receiver's A'.
    pub fn run(&self, chan: &dyn Channel) -> Result<EarlyK, PsiError> {
        let shape = Shape::fast(self.params, false);
        let t0 = std::time::Instant::now();
        let (k, header, (), _) = sender_vole(
            chan,
            &shape,
            SenderCheat::None,
            t0,
            Some(self.delta),
            |_| (),
        )?;
        Ok(EarlyK { k, header })
    }

    /// Δ·H(y) for this party's `items` (as the run will get them).
    pub fn prepare(&self, items: std::sync::Arc<Vec<u128>>) {
        let delta_h = delta_h(&items, self.delta, u128::MAX);
        if let Ok(mut p) = self.prep.lock() {
            *p = Some(SenderPrep { items, delta_h });
        }
    }

    /// The early VOLE, with what [`Self::prepare`] computed.
    pub fn finish(self, k: EarlyK) -> EarlyVole {
        let prep = self.prep.into_inner().ok().flatten();
        EarlyVole(std::sync::Mutex::new(Some(Early::Sender(EarlySender {
            params: self.params,
            delta: self.delta,
            k: k.k,
            header: k.header,
            prep,
        }))))
    }
}

impl std::fmt::Debug for EarlySend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EarlySend")
    }
}

impl std::fmt::Debug for EarlyK {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EarlyK")
    }
}

/// Δ·H(y) for every item y (H cut to the bits of `vmask`).
fn delta_h(items: &[u128], delta: u128, vmask: u128) -> Vec<u128> {
    let mut hy = vec![0u128; items.len()];
    items
        .par_chunks(4096)
        .zip(hy.par_chunks_mut(4096))
        .for_each(|(x, v)| {
            prim::hash_value(x, v);
            for h in v.iter_mut() {
                *h = gf128::mul(*h & vmask, delta);
            }
        });
    hy
}

impl EarlyVole {
    /// The receiver's side, with the work `ahead` prepared (which it takes):
    /// the VOLE, with A' sent beside it. `None` if the work is gone or not
    /// of the fast mode (then nothing was sent).
    pub fn receive(chan: &dyn Channel, ahead: &ReceiverAhead) -> Result<Option<Self>, PsiError> {
        if ahead.early_items().is_none() {
            return Ok(None);
        }
        let Some(prepared) = ahead.take() else {
            return Ok(None);
        };
        let shape = Shape::fast(prepared.params, false);
        let t0 = std::time::Instant::now();
        // the items are only needed to compute A' here, which was done ahead
        let r = receiver_vole(
            chan,
            &shape,
            &[],
            EncodeOptions::default(),
            Some(prepared),
            t0,
            |c, header, layout, _| EarlyReceiver {
                params: shape.params,
                c,
                header: header.clone(),
                layout,
            },
        )?;
        Ok(Some(EarlyVole(std::sync::Mutex::new(Some(
            Early::Receiver(r),
        )))))
    }

    fn take(&self) -> Option<Early> {
        self.0.lock().ok().and_then(|mut e| e.take())
    }
}

impl std::fmt::Debug for EarlyVole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EarlyVole")
    }
}

/// The shape of the fast (or malicious) mode for a receiver with `n_x`
/// items: one definition for the run, the work ahead and the early VOLE.
fn fast_shape(n_x: usize, stat_sec: u32, malicious: bool) -> Shape {
    Shape::fast(OkvsParams::new(n_x, stat_sec), malicious)
}

/// A = H·A_sparse for `noise` and P = Encode{(x, H(x))}, side by side; then
/// A' = A + P in place (P's memory is free before the run needs more).
fn mask_p(
    params: &OkvsParams,
    items: &[u128],
    vmask: u128,
    opts: EncodeOptions,
    noise: &vole::RecvNoise,
) -> Result<Masked, PsiError> {
    let ((mut a, betas), p) = rayon::join(|| noise.a(), || encode_p(params, items, vmask, opts));
    let (header, p, layout) = p?;
    debug_assert!(a.iter().chain(&p).all(|x| x & !vmask == 0));
    a.par_chunks_mut(1 << 14)
        .zip(p.par_chunks(1 << 14))
        .for_each(|(x, y)| x.iter_mut().zip(y).for_each(|(x, y)| *x ^= y));
    Ok(Masked {
        header,
        a_prime: a,
        betas,
        layout,
    })
}

/// The thread computing A', started ahead ([`ReceiverAhead`]) or in the run.
enum Masking<'s> {
    Ahead(std::thread::JoinHandle<Result<Masked, PsiError>>),
    Here(std::thread::ScopedJoinHandle<'s, Result<Masked, PsiError>>),
}

impl Masking<'_> {
    fn join(self) -> Result<Masked, PsiError> {
        match self {
            Masking::Ahead(h) => h.join(),
            Masking::Here(h) => h.join(),
        }
        .unwrap_or_else(|_| Err(PsiError::peer("RR22: the thread computing A' panicked")))
    }
}

/// The receiver's P = Encode{(x, H(x))}, H(x) cut to the bits of `vmask`
/// (RR22 §5: H_B), under a fresh seed, with the items' rows kept.
fn encode_p(
    params: &OkvsParams,
    items: &[u128],
    vmask: u128,
    opts: EncodeOptions,
) -> Result<(OkvsHeader, Vec<u128>, Option<okvs::Layout>), PsiError> {
    let value = |x: &[u128], v: &mut [u128]| {
        prim::hash_value(x, v);
        if vmask != u128::MAX {
            v.iter_mut().for_each(|h| *h &= vmask);
        }
    };
    let mut seeds = Prg::from_os();
    okvs::encode_with_layout(
        params,
        items,
        okvs::Values::Of(&value),
        || seeds.block(),
        opts,
        true,
    )
}

/// Whether this party is RR22's receiver R (the OPRF receiver, which
/// learns the result): the party that learns, the leader if both do.
/// `None` when neither learns (nothing runs).
pub fn is_receiver(self_learns: bool, peer_learns: bool, leader: bool) -> Option<bool> {
    match (self_learns, peer_learns) {
        (true, false) => Some(true),
        (false, true) => Some(false),
        (true, true) => Some(leader),
        (false, false) => None,
    }
}

/// The RR22 core (see module docs); has the engine's `CoreFn` shape.
pub(crate) fn intersect(chan: &dyn Channel, input: &CoreInput<'_>) -> Result<CoreOutput, PsiError> {
    intersect_with(chan, input, Options::default())
}

/// Knobs the tests turn.
#[derive(Clone, Copy, Default)]
struct Options {
    encode: EncodeOptions,
    /// the sender deviates (malicious-mode tests)
    cheat: SenderCheat,
}

/// How a test sender deviates from the protocol.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
enum SenderCheat {
    #[default]
    None,
    /// inconsistent punctured-PRF message in the VOLE
    Vole,
    /// opens its commitment to a different w_s
    Opening,
}

/// The shape both parties derive for a run: OKVS, cell width, VOLE.
struct Shape {
    params: OkvsParams,
    /// bits per OKVS cell on the wire (and of H's output): 128, or
    /// λ + ⌈log2 n_y⌉ in the low-communication mode
    vbits: usize,
    vole: vole::VoleCfg,
    malicious: bool,
}

impl Shape {
    fn new(input: &CoreInput<'_>, n_x: usize, n_y: usize) -> Result<Self, PsiError> {
        if input.low_comm && input.malicious {
            return Err(PsiError::Config {
                field: "--low-comm",
                message: "cannot be combined with --malicious (RR22's malicious variant needs \
                          the OKVS over GF(2^128), §6.2)"
                    .into(),
            });
        }
        let lambda = input.stat_sec as usize;
        if input.low_comm {
            // RR22 §5: the receiver can tell y ∉ X apart only if
            // Decode(P, y) = H_B(y), probability n_y/|B| ≤ 2^-λ
            let log_ny = (usize::BITS - (n_y.max(1) - 1).leading_zeros()) as usize;
            let vbits = (lambda + log_ny).min(128);
            Ok(Shape {
                params: OkvsParams::low_comm(n_x, input.stat_sec),
                vbits,
                vole: vole::VoleCfg {
                    bits: vbits,
                    max_chunk: LOW_COMM_CHUNK,
                    malicious: false,
                },
                malicious: false,
            })
        } else {
            Ok(fast_shape(n_x, input.stat_sec, input.malicious))
        }
    }

    /// The fast (or malicious) mode's shape for OKVS `params`.
    fn fast(params: OkvsParams, malicious: bool) -> Self {
        Shape {
            params,
            vbits: 128,
            vole: vole::VoleCfg {
                malicious,
                ..vole::VoleCfg::FAST
            },
            malicious,
        }
    }

    fn vmask(&self) -> u128 {
        if self.vbits >= 128 {
            u128::MAX
        } else {
            (1u128 << self.vbits) - 1
        }
    }

    /// OKVS cells per A' frame (a multiple of 8, so frames are whole bytes).
    fn frame_cells(&self) -> usize {
        if self.vbits == 128 {
            FRAME_BLOCKS
        } else {
            ((MAX_FRAME - 1) * 8 / self.vbits) & !7
        }
    }
}

fn intersect_with(
    chan: &dyn Channel,
    input: &CoreInput<'_>,
    opts: Options,
) -> Result<CoreOutput, PsiError> {
    let Some(receiver) = is_receiver(input.self_learns, input.peer_learns, input.leader) else {
        return Ok(CoreOutput { matches: None });
    };
    let (n_x, n_y) = if receiver {
        (input.items.len(), input.peer_len)
    } else {
        (input.peer_len, input.items.len())
    };
    // Both parties know both sizes: an empty side means an empty result
    // without any message.
    if n_x == 0 || n_y == 0 {
        return Ok(CoreOutput {
            matches: receiver.then(Vec::new),
        });
    }
    if n_x > u32::MAX as usize || n_y > u32::MAX as usize {
        return Err(PsiError::Config {
            field: "bucket size",
            message: "RR22 handles at most 2^32 − 1 items per bucket; use smaller buckets".into(),
        });
    }
    let tb = tag_bytes(input.stat_sec, input.total_len.0, input.total_len.1);
    let shape = Shape::new(input, n_x, n_y)?;
    // an early VOLE given to this run must be of its shape at both parties
    // (the session hands it over only then): a mismatch is a bug, reported
    // rather than run into a desynchronised protocol
    let early = input.rr22_early.and_then(EarlyVole::take);
    if let Some(e) = &early {
        let (params, side) = match e {
            Early::Receiver(r) => (r.params, true),
            Early::Sender(s) => (s.params, false),
        };
        if side != receiver || params != shape.params || shape.vbits != 128 || shape.malicious {
            return Err(PsiError::peer(
                "RR22: the early VOLE does not fit this run (internal error)",
            ));
        }
    }
    if receiver {
        // the work done ahead is used if it has this run's shape
        // (full-width values, the same OKVS and VOLE)
        let ahead = input.rr22_ahead.and_then(ReceiverAhead::take).filter(|p| {
            shape.vbits == 128
                && p.params == shape.params
                && p.noise.fits(shape.params.len(), &shape.vole)
        });
        let start = match early {
            Some(Early::Receiver(e)) => Start::Early(e),
            _ => Start::Vole(ahead),
        };
        run_receiver(chan, input.items, n_y, &shape, tb, opts.encode, start)
            .map(|m| CoreOutput { matches: Some(m) })
    } else {
        let early = match early {
            Some(Early::Sender(e)) => Some(e),
            _ => None,
        };
        run_sender(chan, input.items, &shape, tb, opts.cheat, early)?;
        Ok(CoreOutput { matches: None })
    }
}

/// Appends `cells`, `vbits` bits each (LSB first), to `out`; the last byte
/// is zero-padded. 128-bit cells are plain little-endian blocks.
fn pack_cells(out: &mut Vec<u8>, cells: impl Iterator<Item = u128>, vbits: usize) {
    if vbits == 128 {
        for c in cells {
            out.extend_from_slice(&c.to_le_bytes());
        }
        return;
    }
    let mut acc = 0u128;
    let mut n = 0usize;
    let push = |v: u64, bits: usize, acc: &mut u128, n: &mut usize, out: &mut Vec<u8>| {
        let v = if bits == 64 {
            v
        } else {
            v & ((1u64 << bits) - 1)
        };
        *acc |= (v as u128) << *n;
        *n += bits;
        if *n >= 64 {
            out.extend_from_slice(&(*acc as u64).to_le_bytes());
            *acc >>= 64;
            *n -= 64;
        }
    };
    let lo = vbits.min(64);
    for c in cells {
        push(c as u64, lo, &mut acc, &mut n, out);
        if vbits > 64 {
            push((c >> 64) as u64, vbits - 64, &mut acc, &mut n, out);
        }
    }
    let tail = n.div_ceil(8);
    out.extend_from_slice(&acc.to_le_bytes()[..tail]);
}

/// Reads `count` cells of `vbits` bits written by [`pack_cells`].
fn unpack_cells(buf: &[u8], count: usize, vbits: usize) -> Result<Vec<u128>, PsiError> {
    if buf.len() != (count * vbits).div_ceil(8) {
        return Err(PsiError::peer(format!(
            "OKVS data: frame of {} bytes, expected {} cells of {vbits} bits",
            buf.len(),
            count
        )));
    }
    if vbits == 128 {
        return Ok(buf
            .chunks_exact(16)
            .map(|c| u128::from_le_bytes(c.try_into().expect("16 bytes")))
            .collect());
    }
    let mut out = Vec::with_capacity(count);
    let mut acc = 0u128;
    let mut n = 0usize;
    let mut pos = 0usize;
    let take = |bits: usize, acc: &mut u128, n: &mut usize, pos: &mut usize| -> u64 {
        while *n < bits {
            if *pos + 8 <= buf.len() {
                let w = u64::from_le_bytes(buf[*pos..*pos + 8].try_into().expect("8 bytes"));
                *acc |= (w as u128) << *n;
                *n += 64;
                *pos += 8;
            } else {
                *acc |= (buf[*pos] as u128) << *n;
                *n += 8;
                *pos += 1;
            }
        }
        let v = if bits == 64 {
            *acc as u64
        } else {
            (*acc as u64) & ((1u64 << bits) - 1)
        };
        *acc >>= bits;
        *n -= bits;
        v
    };
    let lo = vbits.min(64);
    for _ in 0..count {
        let mut v = take(lo, &mut acc, &mut n, &mut pos) as u128;
        if vbits > 64 {
            v |= (take(vbits - 64, &mut acc, &mut n, &mut pos) as u128) << 64;
        }
        out.push(v);
    }
    Ok(out)
}

/// Commitment to the sender's w_s (malicious mode).
fn commit_w(ws: u128) -> [u8; 32] {
    *blake3::Hasher::new_derive_key("venn rr22 2026 malicious w_s commitment")
        .update(&ws.to_le_bytes())
        .finalize()
        .as_bytes()
}

/// The malicious mode's output hash H_o(x, v) (a random oracle on the pair,
/// as RS21's and RR22's malicious protocol require): BLAKE3 in derive-key
/// mode over x ‖ v, in parallel, truncated to `tb` bytes.
fn output_tags_mal(items: impl Fn(usize) -> u128 + Sync, vs: &mut [u128], w: u128, tb: usize) {
    vs.par_chunks_mut(4096).enumerate().for_each(|(ci, c)| {
        let base = blake3::Hasher::new_derive_key("venn rr22 2026 malicious output hash Ho");
        for (i, v) in c.iter_mut().enumerate() {
            let mut h = base.clone();
            h.update(&items(ci * 4096 + i).to_le_bytes());
            h.update(&(*v ^ w).to_le_bytes());
            let d = h.finalize();
            let mut b = [0u8; 16];
            b.copy_from_slice(&d.as_bytes()[..16]);
            *v = truncate(u128::from_le_bytes(b), tb);
        }
    });
}

/// Truncates a 128-bit hash to `tb` bytes (the low bytes of its LE encoding).
#[inline]
fn truncate(v: u128, tb: usize) -> u128 {
    if tb >= 16 {
        v
    } else {
        v & ((1u128 << (8 * tb)) - 1)
    }
}

/// Ho on a vector, in parallel, then truncation.
fn output_tags(vs: &mut [u128], tb: usize) {
    vs.par_chunks_mut(4096).for_each(|c| {
        prim::hash_out(c);
        for v in c.iter_mut() {
            *v = truncate(*v, tb);
        }
    });
}

fn encode_header(h: &OkvsHeader) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 4 * h.attempts.len());
    out.extend_from_slice(&h.seed.to_le_bytes());
    wire::put_u32s(&mut out, &h.attempts);
    out
}

fn decode_header(buf: &[u8], bins: usize) -> Result<OkvsHeader, PsiError> {
    if buf.len() != 16 + 4 * bins {
        return Err(PsiError::peer(format!(
            "OKVS header has {} bytes, expected {}",
            buf.len(),
            16 + 4 * bins
        )));
    }
    let seed = u128::from_le_bytes(buf[..16].try_into().expect("16 bytes"));
    let attempts = wire::get_u32s(&buf[16..], "OKVS header")?;
    Ok(OkvsHeader { seed, attempts })
}

/// What a receiver's run starts from.
enum Start {
    /// the run's own VOLE, with A' computed ahead ([`ReceiverAhead`]) or
    /// not (then the run computes it)
    Vole(Option<Prepared>),
    /// the VOLE ran before the sizes ([`EarlyVole`])
    Early(EarlyReceiver),
}

fn run_receiver(
    chan: &dyn Channel,
    items: &[u128],
    n_y: usize,
    shape: &Shape,
    tb: usize,
    opts: EncodeOptions,
    start: Start,
) -> Result<Vec<Match>, PsiError> {
    let params = &shape.params;
    let t0 = std::time::Instant::now();
    // malicious mode: the sender's commitment to w_s comes first
    let commitment = if shape.malicious {
        Some(wire::recv(chan, tags::W_COMMIT, "commitment to w_s")?)
    } else {
        None
    };
    // Decode(C, x) for our items, in the OKVS's grouped order (with the
    // items' positions)
    let own = |c: Vec<u128>, header: &OkvsHeader, layout: Option<okvs::Layout>| match layout {
        Some(l) => (okvs::decode_layout(params, &c, &l), l.order),
        None => okvs::decode_grouped(params, header, &c, items),
    };
    let (mut mine, wr) = match start {
        // the VOLE and A' went before the sizes ([`EarlyVole`])
        Start::Early(e) => (own(e.c, &e.header, e.layout), 0),
        Start::Vole(ahead) => receiver_vole(chan, shape, items, opts, ahead, t0, |c, h, l, wr| {
            (own(c, h, l), wr)
        })?,
    };
    if !shape.malicious {
        output_tags(&mut mine.0, tb);
    }
    trace!(t0, "R: own tags");
    if let Some(commitment) = commitment {
        // the opening of w_s, checked against the commitment; then
        // H_o(x, Decode(C, x) + w) with w = w_r + w_s
        let ws = wire::recv(chan, tags::W_OPEN, "opening of w_s")?;
        let ws: [u8; 16] = ws[..]
            .try_into()
            .map_err(|_| PsiError::peer("opening of w_s: wrong length"))?;
        let ws = u128::from_le_bytes(ws);
        if commit_w(ws)[..] != commitment[..] {
            return Err(PsiError::peer(
                "malicious-security check failed: the peer opened w_s to a value it had not committed to",
            ));
        }
        let idx = &mine.1;
        output_tags_mal(|i| items[idx[i] as usize], &mut mine.0, wr ^ ws, tb);
        trace!(t0, "R: own tags (malicious)");
    }
    // our side of the join, while the sender still computes its tags
    let join = MineJoin::new(&mine.0, &mine.1, n_y, tb);
    drop(mine);
    // the sender's tags, in its item order
    let mut theirs: Vec<u128> = Vec::with_capacity(n_y);
    while theirs.len() < n_y {
        let frame = wire::recv_frame(chan, tags::TAGS, "RR22 tags")?;
        let frame = &frame[1..];
        if frame.is_empty() || frame.len() % tb != 0 || theirs.len() + frame.len() / tb > n_y {
            return Err(PsiError::peer(format!(
                "RR22 tags: frame of {} bytes does not fit {} tags of {tb} bytes",
                frame.len(),
                n_y - theirs.len()
            )));
        }
        theirs.extend(frame.chunks_exact(tb).map(|t| {
            let mut b = [0u8; 16];
            b[..tb].copy_from_slice(t);
            u128::from_le_bytes(b)
        }));
    }
    trace!(t0, "R: tags received");
    let matches = join.matches(&theirs);
    trace!(t0, "R: matched");
    Ok(matches)
}

/// The receiver's VOLE, with its OKVS message (P's header and A' = A + P)
/// going out beside it; then, on this thread and while A' may still be
/// going out, `then(C, P's header, the items' rows in P, w_r)` (w_r: the
/// malicious mode's, else 0).
///
/// A' = A + P is the work done ahead (`ahead`), or computed here on a
/// thread of its own. A second thread sends the OKVS header and A' once
/// `ready` says so: in the semi-honest modes as soon as the VOLE's OT
/// messages are out (the sender reads A' after its VOLE), in the malicious
/// mode after the VOLE check and w_r.
fn receiver_vole<T>(
    chan: &dyn Channel,
    shape: &Shape,
    items: &[u128],
    opts: EncodeOptions,
    ahead: Option<Prepared>,
    t0: std::time::Instant,
    then: impl FnOnce(Vec<u128>, &OkvsHeader, Option<okvs::Layout>, u128) -> T,
) -> Result<T, PsiError> {
    let params = &shape.params;
    let m = params.len();
    let vmask = shape.vmask();
    let (noise, ahead) = match ahead {
        Some(p) => (p.noise, Some(p.masking)),
        None => (vole::RecvNoise::new(m, &shape.vole), None),
    };
    std::thread::scope(|s| {
        // A' = A + P needs no message: computed ahead, or here beside the VOLE
        let masking = match ahead {
            Some(h) => Masking::Ahead(h),
            None => Masking::Here(s.spawn(|| mask_p(params, items, vmask, opts, &noise))),
        };
        let (ready, ready_rx) = std::sync::mpsc::channel::<()>();
        let (got_header, header_rx) = std::sync::mpsc::channel();
        let okvs_out = s.spawn(move || -> Result<(), PsiError> {
            let Masked {
                header,
                a_prime,
                betas,
                layout,
            } = masking.join()?;
            trace!(t0, "R: A' ready");
            let hdr = encode_header(&header);
            if got_header.send((header, betas, layout)).is_err() || ready_rx.recv().is_err() {
                return Ok(()); // the run stopped before A' was due
            }
            wire::send(chan, tags::OKVS_HDR, &hdr)?;
            for ac in a_prime.chunks(shape.frame_cells()) {
                let mut frame = Vec::with_capacity(1 + (ac.len() * shape.vbits).div_ceil(8));
                frame.push(tags::OKVS_DATA);
                pack_cells(&mut frame, ac.iter().copied(), shape.vbits);
                wire::send_frame(chan, frame)?;
            }
            Ok(())
        });
        let early = (!shape.malicious).then(|| ready.clone());
        let run = || -> Result<_, PsiError> {
            let (c, checks, ()) = vole::recv_c(chan, &noise, move || {
                if let Some(r) = early {
                    let _ = r.send(());
                }
                Ok(())
            })?;
            trace!(t0, "R: vole done (m = {m})");
            let Ok((header, betas, layout)) = header_rx.recv() else {
                return Ok(None); // okvs_out failed: its error is the cause
            };
            vole::recv_check(chan, &noise, &betas, checks)?;
            let wr = if shape.malicious {
                let wr = Prg::from_os().block();
                wire::send(chan, tags::W_R, &wr.to_le_bytes())?;
                let _ = ready.send(());
                wr
            } else {
                0
            };
            Ok(Some(then(c, &header, layout, wr)))
        };
        let r = run();
        // a run that stopped early never sends `ready`: release okvs_out
        drop(ready);
        let sent = okvs_out
            .join()
            .unwrap_or_else(|_| Err(PsiError::peer("RR22: sending thread panicked")));
        match (r, sent) {
            (Err(e), _) | (Ok(_), Err(e)) => Err(e),
            (Ok(Some(x)), Ok(())) => Ok(x),
            (Ok(None), Ok(())) => Err(PsiError::peer("RR22: the thread computing A' stopped")),
        }
    })
}

fn run_sender(
    chan: &dyn Channel,
    items: &[u128],
    shape: &Shape,
    tb: usize,
    cheat: SenderCheat,
    early: Option<EarlySender>,
) -> Result<(), PsiError> {
    let t0 = std::time::Instant::now();
    let ws = if shape.malicious {
        let ws = Prg::from_os().block();
        wire::send(chan, tags::W_COMMIT, &commit_w(ws))?;
        ws
    } else {
        0
    };
    let vmask = shape.vmask();
    let (k, header, hy, wr) = match early {
        // the VOLE and K went before the sizes ([`EarlyVole`]), and Δ·H(y)
        // was computed meanwhile if these are the items it was for
        Some(e) => {
            let prep = e
                .prep
                .filter(|p| p.items.as_ptr() == items.as_ptr() && p.items.len() == items.len());
            let hy = match prep {
                Some(p) => p.delta_h,
                None => delta_h(items, e.delta, vmask),
            };
            (e.k, e.header, hy, 0)
        }
        // Δ·H(y) computed while R encodes
        None => sender_vole(chan, shape, cheat, t0, None, |d| delta_h(items, d, vmask))?,
    };
    let params = &shape.params;
    // Decode(K, y) + Δ·H(y), in the memory of Δ·H(y)
    let mut tags_y = hy;
    okvs::decode_add(params, &header, &k, items, &mut tags_y);
    drop(k);
    if shape.malicious {
        // open w_s only now, after the receiver's OKVS is fixed
        let opened = if cheat == SenderCheat::Opening {
            ws ^ 1
        } else {
            ws
        };
        wire::send(chan, tags::W_OPEN, &opened.to_le_bytes())?;
    }
    // hashed and sent frame by frame: the receiver decrypts and reads one
    // frame while this side hashes the next
    let per_frame = (TAG_FRAME - 1) / tb;
    for (k, chunk) in tags_y.chunks_mut(per_frame).enumerate() {
        if shape.malicious {
            let first = k * per_frame;
            output_tags_mal(|i| items[first + i], chunk, wr ^ ws, tb);
        } else {
            output_tags(chunk, tb);
        }
        let mut frame = Vec::with_capacity(1 + chunk.len() * tb);
        frame.push(tags::TAGS);
        for t in chunk.iter() {
            frame.extend_from_slice(&t.to_le_bytes()[..tb]);
        }
        wire::send_frame(chan, frame)?;
    }
    trace!(t0, "S: tags sent");
    Ok(())
}

/// The sender's VOLE, then K = B + A'·Δ from the receiver's OKVS message:
/// returns (K, P's header, `between(Δ)`, w_r). `between` runs after the
/// VOLE, while the receiver may still be computing (the malicious mode's
/// w_r is read after it; else w_r = 0). `delta`: Δ if the caller drew it.
fn sender_vole<T>(
    chan: &dyn Channel,
    shape: &Shape,
    cheat: SenderCheat,
    t0: std::time::Instant,
    delta: Option<u128>,
    between: impl FnOnce(u128) -> T,
) -> Result<(Vec<u128>, OkvsHeader, T, u128), PsiError> {
    let params = &shape.params;
    let m = params.len();
    let vole_cheat = if cheat == SenderCheat::Vole {
        vole::Cheat::PprfLevel
    } else {
        vole::Cheat::None
    };
    let delta = delta.unwrap_or_else(|| Prg::from_os().block());
    let mut b = vole::send_with_delta(chan, m, &shape.vole, vole_cheat, delta)?;
    trace!(t0, "S: vole done");
    let extra = between(delta);
    let wr = if shape.malicious {
        let w = wire::recv(chan, tags::W_R, "w_r")?;
        let w: [u8; 16] = w[..]
            .try_into()
            .map_err(|_| PsiError::peer("w_r: wrong length"))?;
        u128::from_le_bytes(w)
    } else {
        0
    };
    let header = wire::recv(chan, tags::OKVS_HDR, "OKVS header")?;
    let header = decode_header(&header, params.bins)?;
    trace!(t0, "S: header received");
    // K = B + A'·Δ, frame by frame, in place of B
    let fc = shape.frame_cells();
    let mut got = 0usize;
    while got < m {
        let frame = wire::recv_frame(chan, tags::OKVS_DATA, "OKVS data")?;
        let n = fc.min(m - got);
        let a_prime = unpack_cells(&frame[1..], n, shape.vbits)?;
        b[got..got + n]
            .par_chunks_mut(8192)
            .zip(a_prime.par_chunks(8192))
            .for_each(|(bb, ap)| gf128::mul_add_acc(bb, delta, ap));
        got += n;
    }
    trace!(t0, "S: K computed");
    Ok((b, header, extra, wr))
}

/// All (mine_idx[p], j) with mine[p] == theirs[j] (`mine` may be in any
/// order; `mine_idx` gives each tag's item position): [`MineJoin::new`]
/// then [`MineJoin::matches`].
#[cfg(test)]
fn join_tags(mine: &[u128], mine_idx: &[u32], theirs: &[u128], tb: usize) -> Vec<Match> {
    MineJoin::new(mine, mine_idx, theirs.len(), tb).matches(theirs)
}

/// The receiver's side of the tag join, prepared before the sender's tags
/// arrive (the receiver has its own tags first and would wait idle).
///
/// The tags are uniformly random, so both lists are radix-partitioned on
/// the top bits of their low 64 bits into parts of ~2^12 tags (at most 2^12
/// parts: 256 write streams at 2^20 tags, so the partitioning pass stays
/// TLB-friendly),
/// and each part is joined with a small linear-probing table indexed by the
/// tag's low bits. Every pair of equal tags is reported, also when two of
/// our own tags collide.
struct MineJoin {
    bits: u32,
    /// 16-byte entries (tag bits 0..64, position, tag bits 64..96) by part:
    /// tags of at most 12 bytes are compared in full without touching the
    /// inputs again; longer ones are checked against `by_item`.
    parts: Vec<(u64, u32, u32)>,
    starts: Vec<usize>,
    /// Our tags by item position, for tags longer than 12 bytes (rare: that
    /// needs n ≈ 2^28).
    by_item: Option<Vec<u128>>,
}

/// Radix-partitions `v` by the top `bits` of the low 64 bits; entries carry
/// `idx[i]` (or i) as their position.
fn tag_parts(v: &[u128], idx: Option<&[u32]>, bits: u32) -> (Vec<(u64, u32, u32)>, Vec<usize>) {
    let part = |t: u128| -> usize {
        if bits == 0 {
            0
        } else {
            ((t as u64) >> (64 - bits)) as usize
        }
    };
    let mut out = vec![(0u64, 0u32, 0u32); v.len()];
    let starts = crate::slices::partition_one(
        |i| part(v[i]),
        1 << bits,
        &mut out,
        &mut [],
        |i| {
            let t = v[i];
            let pos = idx.map_or(i as u32, |x| x[i]);
            (t as u64, pos, (t >> 64) as u32)
        },
    );
    (out, starts)
}

impl MineJoin {
    fn new(mine: &[u128], mine_idx: &[u32], n_theirs: usize, tb: usize) -> Self {
        let n = mine.len().max(n_theirs);
        let bits = (n >> 12)
            .max(1)
            .next_power_of_two()
            .trailing_zeros()
            .min(12);
        let by_item = (tb > 12).then(|| {
            let mut v = vec![0u128; mine.len()];
            for (t, i) in mine.iter().zip(mine_idx) {
                v[*i as usize] = *t;
            }
            v
        });
        let (parts, starts) = match &by_item {
            Some(v) => tag_parts(v, None, bits),
            None => tag_parts(mine, Some(mine_idx), bits),
        };
        MineJoin {
            bits,
            parts,
            starts,
            by_item,
        }
    }

    fn matches(&self, theirs: &[u128]) -> Vec<Match> {
        let (b, sb) = tag_parts(theirs, None, self.bits);
        let (a, sa) = (&self.parts, &self.starts);
        let verify = self.by_item.as_deref();
        // one probing table per worker thread, reused across parts
        (0..1usize << self.bits)
            .into_par_iter()
            .map_init(Vec::new, |table: &mut Vec<(u64, u32, u32)>, p| {
                let x = &a[sa[p]..sa[p + 1]];
                let y = &b[sb[p]..sb[p + 1]];
                let cap = (2 * x.len()).next_power_of_two().max(2);
                let mask = cap - 1;
                const EMPTY: u32 = u32::MAX;
                table.clear();
                table.resize(cap, (0u64, EMPTY, 0u32));
                for &e in x {
                    let mut s = (e.0 as usize) & mask;
                    while table[s].1 != EMPTY {
                        s = (s + 1) & mask;
                    }
                    table[s] = e;
                }
                let mut out = Vec::new();
                for &(t, j, hi) in y {
                    let mut s = (t as usize) & mask;
                    while table[s].1 != EMPTY {
                        let (t2, i, hi2) = table[s];
                        if t2 == t
                            && hi2 == hi
                            && verify.is_none_or(|m| m[i as usize] == theirs[j as usize])
                        {
                            out.push((i, j));
                        }
                        s = (s + 1) & mask;
                    }
                }
                out
            })
            .flatten_iter()
            .collect()
    }
}

/// Hot paths for `cargo bench -p venn-psi` (not a stable API).
#[doc(hidden)]
pub mod bench {
    use super::*;

    /// Random keys and values (values cut to `vbits` bits).
    pub fn data(n: usize, vbits: usize) -> (Vec<u128>, Vec<u128>) {
        let mut prg = Prg::new(n as u128);
        let mask = if vbits >= 128 {
            u128::MAX
        } else {
            (1u128 << vbits) - 1
        };
        let keys = prg.blocks(n);
        let vals = prg.blocks(n).into_iter().map(|v| v & mask).collect();
        (keys, vals)
    }

    /// An encoded OKVS (opaque to the caller).
    pub struct Encoded(OkvsParams, OkvsHeader, Vec<u128>);

    /// Encodes with the fast (`low_comm = false`) or low-communication shape.
    pub fn okvs_encode(keys: &[u128], vals: &[u128], low_comm: bool) -> Encoded {
        let p = if low_comm {
            OkvsParams::low_comm(keys.len(), 40)
        } else {
            OkvsParams::new(keys.len(), 40)
        };
        let mut seeds = Prg::new(1);
        let (h, cells) = okvs::encode(&p, keys, vals, || seeds.block(), EncodeOptions::default())
            .expect("encodes");
        Encoded(p, h, cells)
    }

    /// Decodes every key.
    pub fn okvs_decode(e: &Encoded, keys: &[u128]) -> Vec<u128> {
        okvs::decode(&e.0, &e.1, &e.2, keys)
    }

    /// The cells, bit-packed at `vbits` bits.
    pub fn pack(e: &Encoded, vbits: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity((e.2.len() * vbits).div_ceil(8));
        pack_cells(&mut out, e.2.iter().copied(), vbits);
        out
    }

    /// Unpacks `count` cells.
    pub fn unpack(buf: &[u8], count: usize, vbits: usize) -> Vec<u128> {
        unpack_cells(buf, count, vbits).expect("well formed")
    }

    /// Number of cells.
    pub fn cells(e: &Encoded) -> usize {
        e.2.len()
    }

    /// The malicious mode's output hash on `vs` (in place).
    pub fn malicious_tags(items: &[u128], vs: &mut [u128]) {
        output_tags_mal(|i| items[i], vs, 7, 10);
    }

    /// The semi-honest output hash on `vs` (in place).
    pub fn tags(vs: &mut [u128]) {
        output_tags(vs, 10);
    }

    /// One fast-mode VOLE of `m` outputs between two threads over an
    /// in-process channel.
    pub fn vole(m: usize) {
        let (ca, cb) = crate::channel::memory_pair(8);
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                vole::send_with(&ca, m, &vole::VoleCfg::FAST, vole::Cheat::None).expect("sender")
            });
            let out = vole::recv(&cb, m, &vole::VoleCfg::FAST).expect("receiver");
            std::hint::black_box((out, h.join().expect("sender thread")));
        })
    }

    /// The receiver's tags and item positions and the sender's tags for
    /// the join: `n` each, the first half of the sender's shared, in
    /// another order; 10-byte tags as at 2^20 rows a side.
    pub fn join_data(n: usize) -> (Vec<u128>, Vec<u32>, Vec<u128>) {
        let tag = |x: u128| truncate(x, 10);
        let mut prg = Prg::new(n as u128 + 5);
        let mine: Vec<u128> = prg.blocks(n).into_iter().map(tag).collect();
        let mut theirs: Vec<u128> = prg.blocks(n).into_iter().map(tag).collect();
        for (k, t) in theirs.iter_mut().take(n / 2).enumerate() {
            *t = mine[(k * 7 + 3) % n];
        }
        (mine, (0..n as u32).collect(), theirs)
    }

    /// The receiver's join of [`join_data`]: the number of matches.
    pub fn join(mine: &[u128], idx: &[u32], theirs: &[u128]) -> usize {
        MineJoin::new(mine, idx, theirs.len(), 10)
            .matches(theirs)
            .len()
    }

    /// The Expand-Convolute code's two convolution passes over the tail
    /// half of `a`.
    pub fn convolve(a: &mut [u128]) {
        exconv::bench_convolve(a);
    }
}

/// Compile-time check that [`intersect`] has the engine's core shape.
const _: crate::core::CoreFn = intersect;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::memory_pair;
    use crate::core::testing::{check, naive, run_pair, run_pair_mode, sets};
    use crate::core::{CoreFn, Item};

    const LEARN: [(bool, bool); 3] = [(true, false), (false, true), (true, true)];

    fn check_run(core: CoreFn, a: &[Item], b: &[Item], learn: (bool, bool)) {
        let (oa, ob) = run_pair(core, a, b, learn);
        // the learner is party 0 if it alone learns or leads; else party 1
        // party 0 is the receiver when it learns (alone, or as the leader)
        if learn.0 {
            check(&oa, a, b);
            assert!(ob.matches.is_none());
        } else {
            check(&ob, b, a);
            assert!(oa.matches.is_none());
        }
    }

    fn psi_case(na: usize, nb: usize, common: usize, seed: u64) {
        let (a, b) = sets(na, nb, common, seed);
        assert_eq!(naive(&a, &b).len(), common);
        for learn in LEARN {
            check_run(intersect, &a, &b, learn);
        }
    }

    const LOW_COMM: (bool, bool) = (true, false);
    const MALICIOUS: (bool, bool) = (false, true);

    /// A mode's run against the naive answer (party 0 learns).
    fn check_mode(a: &[Item], b: &[Item], mode: (bool, bool), learn: (bool, bool)) {
        let (oa, ob) = run_pair_mode(intersect, a, b, learn, mode);
        if learn.0 {
            check(&oa, a, b);
        } else {
            check(&ob, b, a);
        }
    }

    #[test]
    fn pack_cells_roundtrip() {
        let mut prg = Prg::new(3);
        for vbits in [1usize, 7, 8, 59, 60, 63, 64, 65, 100, 127, 128] {
            let mask = if vbits == 128 {
                u128::MAX
            } else {
                (1u128 << vbits) - 1
            };
            for n in [0usize, 1, 7, 8, 9, 1001] {
                let cells: Vec<u128> = prg.blocks(n).iter().map(|c| c & mask).collect();
                let mut buf = Vec::new();
                pack_cells(&mut buf, cells.iter().copied(), vbits);
                assert_eq!(buf.len(), (n * vbits).div_ceil(8));
                assert_eq!(unpack_cells(&buf, n, vbits).unwrap(), cells, "{vbits} {n}");
                // a wrong length is a peer error
                buf.push(0);
                assert!(unpack_cells(&buf, n, vbits).is_err());
            }
        }
    }

    #[test]
    fn low_comm_psi_small_and_odd_sizes() {
        for (na, nb, common, seed) in [
            (1usize, 1usize, 1usize, 30u64),
            (3, 2, 2, 31),
            (1000, 1000, 500, 32),
            (1000, 37, 20, 33),
            (37, 1000, 37, 34),
        ] {
            let (a, b) = sets(na, nb, common, seed);
            for learn in LEARN {
                check_mode(&a, &b, LOW_COMM, learn);
            }
        }
    }

    #[test]
    fn low_comm_psi_65535() {
        let (a, b) = sets(65535, 65535, 30001, 35);
        check_mode(&a, &b, LOW_COMM, (true, false));
        check_mode(&a, &b, LOW_COMM, (false, true));
    }

    #[test]
    fn malicious_psi_small_and_odd_sizes() {
        for (na, nb, common, seed) in [
            (1usize, 1usize, 1usize, 40u64),
            (3, 2, 2, 41),
            (1000, 1000, 500, 42),
            (1000, 37, 20, 43),
        ] {
            let (a, b) = sets(na, nb, common, seed);
            for learn in LEARN {
                check_mode(&a, &b, MALICIOUS, learn);
            }
        }
    }

    #[test]
    fn malicious_psi_65535() {
        let (a, b) = sets(65535, 65535, 30001, 45);
        check_mode(&a, &b, MALICIOUS, (true, false));
    }

    #[test]
    fn modes_spanning_several_vole_chunks() {
        // more OKVS cells than one VOLE chunk of each mode
        let (a, b) = sets(200_000, 3000, 2500, 46);
        check_mode(&a, &b, MALICIOUS, (true, false));
        let (a, b) = sets(900_000, 3000, 2500, 47);
        assert!(OkvsParams::low_comm(900_000, 40).len() > LOW_COMM_CHUNK);
        check_mode(&a, &b, LOW_COMM, (true, false));
    }

    /// Runs a malicious-mode pair where the sender deviates; returns the
    /// receiver's result.
    fn cheating_sender(cheat: SenderCheat) -> Result<CoreOutput, PsiError> {
        let (a, b) = sets(2000, 2000, 1000, 48);
        let (ca, cb) = memory_pair(64);
        let input = |items: &'static [u128], learns: bool| CoreInput {
            items,
            peer_len: 2000,
            self_learns: learns,
            peer_learns: !learns,
            leader: learns,
            total_len: (2000, 2000),
            stat_sec: 40,
            low_comm: false,
            malicious: true,
            rr22_ahead: None,
            rr22_early: None,
        };
        let a: &'static [u128] = Box::leak(a.into_boxed_slice());
        let b: &'static [u128] = Box::leak(b.into_boxed_slice());
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                let opts = Options {
                    cheat,
                    ..Options::default()
                };
                let r = intersect_with(&cb, &input(b, false), opts);
                drop(cb);
                r
            });
            let r = intersect(&ca, &input(a, true));
            drop(ca);
            let _ = h.join().unwrap();
            r
        })
    }

    #[test]
    fn malicious_receiver_catches_an_inconsistent_vole() {
        let err = cheating_sender(SenderCheat::Vole).expect_err("cheat must be caught");
        assert!(err.to_string().contains("sparse-VOLE check"), "{err}");
        assert!(cheating_sender(SenderCheat::None).is_ok());
    }

    #[test]
    fn malicious_receiver_catches_a_wrong_opening() {
        let err = cheating_sender(SenderCheat::Opening).expect_err("cheat must be caught");
        assert!(err.to_string().contains("committed"), "{err}");
    }

    #[test]
    fn low_comm_with_malicious_is_refused() {
        let (a, b) = sets(10, 10, 5, 49);
        let (ca, _cb) = memory_pair(4);
        let input = CoreInput {
            items: &a,
            peer_len: b.len(),
            self_learns: true,
            peer_learns: false,
            leader: true,
            total_len: (10, 10),
            stat_sec: 40,
            low_comm: true,
            malicious: true,
            rr22_ahead: None,
            rr22_early: None,
        };
        let err = intersect(&ca, &input).unwrap_err().to_string();
        assert!(err.contains("--low-comm"), "{err}");
    }

    #[test]
    fn low_comm_shape_follows_rr22() {
        // 2^20 sender items at λ = 40: 60-bit cells (RR22 §5 / §6.2)
        let items = [0u128; 1];
        let input = CoreInput {
            items: &items,
            peer_len: 1 << 20,
            self_learns: true,
            peer_learns: false,
            leader: true,
            total_len: (1, 1 << 20),
            stat_sec: 40,
            low_comm: true,
            malicious: false,
            rr22_ahead: None,
            rr22_early: None,
        };
        let sh = Shape::new(&input, 1 << 20, 1 << 20).unwrap();
        assert_eq!(sh.vbits, 60);
        assert_eq!(sh.vole.bits, 60);
        assert_eq!(Shape::new(&input, 1000, 1000).unwrap().vbits, 50);
        assert_eq!(Shape::new(&input, 1000, 1024).unwrap().vbits, 50);
        assert_eq!(Shape::new(&input, 1000, 1025).unwrap().vbits, 51);
    }

    #[test]
    fn join_reports_every_equal_pair() {
        let mine = vec![5u128, 7, 5, 9, 1 << 63, u64::MAX as u128, (1 << 100) | 5];
        let theirs = vec![5u128, 8, 9, 9, u64::MAX as u128];
        let ident: Vec<u32> = (0..mine.len() as u32).collect();
        let mut got = join_tags(&mine, &ident, &theirs, 16);
        got.sort_unstable();
        assert_eq!(got, vec![(0, 0), (2, 0), (3, 2), (3, 3), (5, 4)]);
        // many parts
        let big: Vec<u128> = (0..50_000u128)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835))
            .collect();
        let other: Vec<u128> = big.iter().rev().step_by(3).copied().collect();
        let ident: Vec<u32> = (0..big.len() as u32).collect();
        assert_eq!(join_tags(&big, &ident, &other, 16).len(), other.len());
        assert_eq!(join_tags(&big, &ident, &other, 12).len(), other.len());
        // a permuted `mine` with its index map gives the same pairs
        let rev: Vec<u128> = big.iter().rev().copied().collect();
        let rev_idx: Vec<u32> = (0..big.len() as u32).rev().collect();
        let mut x = join_tags(&big, &ident, &other, 12);
        let mut y = join_tags(&rev, &rev_idx, &other, 12);
        let mut z = join_tags(&rev, &rev_idx, &other, 16);
        x.sort_unstable();
        y.sort_unstable();
        z.sort_unstable();
        assert_eq!(x, y);
        assert_eq!(x, z);
        // 12-byte tags differing only in bits 64..96 do not match
        let a = vec![(1u128 << 70) | 3];
        let b = vec![(1u128 << 71) | 3];
        assert!(join_tags(&a, &[0], &b, 12).is_empty());
    }

    #[test]
    fn psi_empty_sides() {
        psi_case(0, 0, 0, 1);
        psi_case(0, 5, 0, 2);
        psi_case(5, 0, 0, 3);
    }

    #[test]
    fn psi_tiny_sets() {
        psi_case(1, 1, 1, 4);
        psi_case(1, 1, 0, 5);
        psi_case(2, 3, 1, 6);
        psi_case(3, 2, 2, 7);
        psi_case(3, 3, 3, 8);
    }

    #[test]
    fn psi_1000_vs_1000() {
        psi_case(1000, 1000, 500, 9);
        psi_case(1000, 1000, 0, 10);
        psi_case(1000, 1000, 1000, 11);
    }

    #[test]
    fn psi_unequal_sizes() {
        psi_case(1000, 37, 20, 12);
        psi_case(37, 1000, 37, 13);
    }

    #[test]
    fn psi_65535() {
        let (a, b) = sets(65535, 65535, 30000, 14);
        for learn in LEARN {
            check_run(intersect, &a, &b, learn);
        }
    }

    #[test]
    fn psi_spanning_several_vole_chunks() {
        // 200k receiver items need an OKVS (and VOLE) longer than one VOLE
        // chunk, so the bootstrapped chunks are exercised end to end.
        let (a, b) = sets(200_000, 3000, 2500, 19);
        assert!(OkvsParams::new(200_000, 40).len() > vole::MAX_CHUNK);
        check_run(intersect, &a, &b, (true, false));
    }

    #[test]
    fn psi_with_forced_okvs_retry() {
        fn forced(chan: &dyn Channel, input: &CoreInput<'_>) -> Result<CoreOutput, PsiError> {
            intersect_with(
                chan,
                input,
                Options {
                    encode: EncodeOptions { force_retry: true },
                    ..Options::default()
                },
            )
        }
        let (a, b) = sets(20000, 3000, 1500, 15);
        check_run(forced, &a, &b, (true, false));
        check_run(forced, &a, &b, (false, true));
    }

    #[test]
    fn psi_catches_a_lying_peer() {
        // a sender that claims more items than it has: the receiver waits for
        // tags that never come, and must fail cleanly when the link closes.
        let (a, b) = sets(100, 100, 50, 16);
        let (ca, cb) = memory_pair(64);
        let r = std::thread::scope(|s| {
            let h = s.spawn(move || {
                let input = CoreInput {
                    items: &b[..60],
                    peer_len: 100,
                    self_learns: false,
                    peer_learns: true,
                    leader: false,
                    total_len: (100, 100),
                    stat_sec: 40,
                    low_comm: false,
                    malicious: false,
                    rr22_ahead: None,
                    rr22_early: None,
                };
                let r = intersect(&cb, &input);
                drop(cb);
                r
            });
            let input = CoreInput {
                items: &a,
                peer_len: 100,
                self_learns: true,
                peer_learns: false,
                leader: true,
                total_len: (100, 100),
                stat_sec: 40,
                low_comm: false,
                malicious: false,
                rr22_ahead: None,
                rr22_early: None,
            };
            let r = intersect(&ca, &input);
            h.join().unwrap().unwrap();
            r
        });
        assert!(r.is_err());
    }

    #[test]
    #[ignore]
    fn psi_1_000_003() {
        let (a, b) = sets(1_000_003, 999_999, 400_000, 17);
        check_run(intersect, &a, &b, (true, false));
    }

    #[test]
    #[ignore]
    fn low_comm_psi_1_000_003() {
        let (a, b) = sets(1_000_003, 999_999, 400_000, 17);
        check_mode(&a, &b, LOW_COMM, (true, false));
    }

    #[test]
    #[ignore]
    fn malicious_psi_1_000_003() {
        let (a, b) = sets(1_000_003, 999_999, 400_000, 17);
        check_mode(&a, &b, MALICIOUS, (true, false));
    }

    fn bench(n: usize) {
        bench_mode(n, (false, false));
    }

    fn bench_mode(n: usize, mode: (bool, bool)) {
        let (a, b) = sets(n, n, n / 2, 18);
        let (ca, cb) = memory_pair(64);
        let total = (n as u64, n as u64);
        let t0 = std::time::Instant::now();
        let (oa, _) = std::thread::scope(|s| {
            let hb = s.spawn(|| {
                let input = CoreInput {
                    items: &b,
                    peer_len: n,
                    self_learns: false,
                    peer_learns: true,
                    leader: false,
                    total_len: total,
                    stat_sec: 40,
                    low_comm: mode.0,
                    malicious: mode.1,
                    rr22_ahead: None,
                    rr22_early: None,
                };
                intersect(&cb, &input).unwrap()
            });
            let input = CoreInput {
                items: &a,
                peer_len: n,
                self_learns: true,
                peer_learns: false,
                leader: true,
                total_len: total,
                stat_sec: 40,
                low_comm: mode.0,
                malicious: mode.1,
                rr22_ahead: None,
                rr22_early: None,
            };
            (intersect(&ca, &input).unwrap(), hb.join().unwrap())
        });
        let secs = t0.elapsed().as_secs_f64();
        assert_eq!(oa.matches.as_ref().map(|m| m.len()), Some(n / 2));
        let up = ca.bytes_sent();
        let down = cb.bytes_sent();
        println!(
            "rr22 {mode:?} n={n}: {secs:.3} s, receiver->sender {up} B ({:.1} bits/item), \
             sender->receiver {down} B ({:.1} bits/item), total {:.1} bits/item",
            up as f64 * 8.0 / n as f64,
            down as f64 * 8.0 / n as f64,
            (up + down) as f64 * 8.0 / n as f64
        );
    }

    #[test]
    #[ignore]
    fn bench_rr22_2_16() {
        bench(1 << 16);
    }

    #[test]
    #[ignore]
    fn bench_rr22_2_20() {
        bench(1 << 20);
    }

    #[test]
    #[ignore]
    fn bench_rr22_modes_2_20() {
        bench_mode(1 << 20, (false, false));
        bench_mode(1 << 20, LOW_COMM);
        bench_mode(1 << 20, MALICIOUS);
    }

    #[test]
    #[ignore]
    fn bench_low_comm_2_20() {
        bench_mode(1 << 20, LOW_COMM);
    }

    #[test]
    #[ignore]
    fn bench_malicious_2_20() {
        bench_mode(1 << 20, MALICIOUS);
    }

    #[test]
    #[ignore]
    fn bench_rr22_2_24() {
        bench(1 << 24);
    }
}
