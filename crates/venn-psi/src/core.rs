//! The interface between the engine and a PSI protocol ("core").
//!
//! The engine reads the inputs, groups duplicate keys, splits the key space
//! into buckets, and for every bucket hands each protocol the same thing: this
//! party's unique items of that bucket as 128-bit values ([`Item`]), in a
//! random order that this party chose and keeps to itself, plus the size of the
//! peer's list. The protocol's only job is to tell a party that learns the
//! result which of its positions match which of the peer's positions. Counts,
//! duplicate expansion, sharing the result with a second receiver, ordering and
//! writing are the engine's (see `session`), identical for every protocol.
//!
//! Why positions in a shuffled order: the learner needs the peer's position of a
//! match to ask for its multiplicity and to tell the peer which of its items
//! matched (for `--receiver both`). A pseudorandom order (the session sorts
//! by AES under a secret per-run key) means a position says nothing about the
//! peer's other items.

use crate::channel::Channel;
use crate::error::PsiError;

/// A key as the protocols see it: 128 bits, see [`crate::item`].
pub type Item = u128;

/// What a protocol gets for one bucket.
#[derive(Debug, Clone, Copy)]
pub struct CoreInput<'a> {
    /// This party's unique items, in this party's random order.
    pub items: &'a [Item],
    /// How many unique items the peer has in this bucket.
    pub peer_len: usize,
    /// Whether this party must learn the intersection.
    pub self_learns: bool,
    /// Whether the peer must learn the intersection.
    pub peer_learns: bool,
    /// True at the listening party (party 0). Protocols that have one learner
    /// by nature (RR22: the OPRF receiver) use it to break the tie when both
    /// parties learn: the leader is then the protocol's receiver.
    pub leader: bool,
    /// Total unique items of each party over all buckets (self, peer):
    /// protocols size their output tags from these (λ + log2(n_x·n_y)).
    pub total_len: (u64, u64),
    /// Statistical security parameter λ in bits (40).
    pub stat_sec: u32,
    /// RR22: the low-communication (subfield-VOLE) variant; other protocols
    /// ignore it (the session refuses it for them).
    pub low_comm: bool,
    /// RR22: the malicious variant; other protocols ignore it (the session
    /// refuses it for them).
    pub malicious: bool,
    /// RR22 receiver: its noise, A and OKVS, if the session prepared them
    /// ahead of the run ([`crate::rr22::ReceiverAhead::spawn`]); other
    /// protocols ignore it.
    pub rr22_ahead: Option<&'a crate::rr22::ReceiverAhead>,
    /// RR22, either party: the VOLE the parties ran before the sizes, if
    /// the session ran one for this run ([`crate::rr22::EarlyVole`]); other
    /// protocols ignore it.
    pub rr22_early: Option<&'a crate::rr22::EarlyVole>,
}

/// A match: (position in my items, position in the peer's items).
pub type Match = (u32, u32);

/// What a protocol returns for one bucket.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CoreOutput {
    /// The matches, for a party that learned them from the protocol itself;
    /// `None` for a party that did not (it either learns nothing, or the
    /// engine forwards the result from the peer).
    pub matches: Option<Vec<Match>>,
}

/// Bytes a final comparison tag needs so that a false match among
/// `n_self × n_peer` pairs has probability at most 2^-λ:
/// ⌈(λ + log2(n_self·n_peer)) / 8⌉, at least 8 and at most 16.
pub fn tag_bytes(stat_sec: u32, n_self: u64, n_peer: u64) -> usize {
    let pairs = (n_self.max(1) as f64) * (n_peer.max(1) as f64);
    let bits = stat_sec as f64 + pairs.log2().ceil();
    ((bits / 8.0).ceil() as usize).clamp(8, 16)
}

/// A protocol's entry point: the same shape for every protocol.
pub(crate) type CoreFn = fn(&dyn Channel, &CoreInput<'_>) -> Result<CoreOutput, PsiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_length_follows_the_paper() {
        // 2^20 x 2^20: 40 + 40 = 80 bits -> 10 bytes.
        assert_eq!(tag_bytes(40, 1 << 20, 1 << 20), 10);
        // 2^24 x 2^24: 40 + 48 = 88 bits -> 11 bytes.
        assert_eq!(tag_bytes(40, 1 << 24, 1 << 24), 11);
        // tiny sets still get 8 bytes.
        assert_eq!(tag_bytes(40, 1, 1), 8);
    }
}

/// Test support: runs a protocol's two parties on a memory channel.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::channel::memory_pair;
    use std::collections::HashMap;

    /// Runs `core` with party 0 holding `a` and party 1 holding `b`, and
    /// returns both outputs. `learn` is (party 0 learns, party 1 learns).
    pub(crate) fn run_pair(
        core: CoreFn,
        a: &[Item],
        b: &[Item],
        learn: (bool, bool),
    ) -> (CoreOutput, CoreOutput) {
        run_pair_mode(core, a, b, learn, (false, false))
    }

    /// [`run_pair`] with RR22's (low_comm, malicious) flags.
    pub(crate) fn run_pair_mode(
        core: CoreFn,
        a: &[Item],
        b: &[Item],
        learn: (bool, bool),
        mode: (bool, bool),
    ) -> (CoreOutput, CoreOutput) {
        let (ca, cb) = memory_pair(64);
        let total = (a.len() as u64, b.len() as u64);
        std::thread::scope(|s| {
            let ha = s.spawn(|| {
                let input = CoreInput {
                    items: a,
                    peer_len: b.len(),
                    self_learns: learn.0,
                    peer_learns: learn.1,
                    leader: true,
                    total_len: total,
                    stat_sec: 40,
                    low_comm: mode.0,
                    malicious: mode.1,
                    rr22_ahead: None,
                    rr22_early: None,
                };
                core(&ca, &input)
            });
            let hb = s.spawn(|| {
                let input = CoreInput {
                    items: b,
                    peer_len: a.len(),
                    self_learns: learn.1,
                    peer_learns: learn.0,
                    leader: false,
                    total_len: (total.1, total.0),
                    stat_sec: 40,
                    low_comm: mode.0,
                    malicious: mode.1,
                    rr22_ahead: None,
                    rr22_early: None,
                };
                core(&cb, &input)
            });
            (ha.join().unwrap().unwrap(), hb.join().unwrap().unwrap())
        })
    }

    /// The naive answer: all (i, j) with a[i] == b[j], sorted.
    pub(crate) fn naive(a: &[Item], b: &[Item]) -> Vec<Match> {
        let pos: HashMap<Item, u32> = b.iter().enumerate().map(|(j, x)| (*x, j as u32)).collect();
        let mut out: Vec<Match> = a
            .iter()
            .enumerate()
            .filter_map(|(i, x)| pos.get(x).map(|j| (i as u32, *j)))
            .collect();
        out.sort_unstable();
        out
    }

    /// Two random unique item lists of the given sizes sharing `common` items.
    pub(crate) fn sets(na: usize, nb: usize, common: usize, seed: u64) -> (Vec<Item>, Vec<Item>) {
        // splitmix64, enough for test data
        let mut s = seed;
        let mut next = || {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let mut fresh = || ((next() as u128) << 64) | next() as u128;
        let shared: Vec<Item> = (0..common).map(|_| fresh()).collect();
        let mut a = shared.clone();
        a.extend((common..na).map(|_| fresh()));
        let mut b = shared;
        b.extend((common..nb).map(|_| fresh()));
        // interleave so matches are not all at the front
        a.reverse();
        b.rotate_left(common / 3);
        (a, b)
    }

    /// Checks a learner's matches against the naive answer.
    pub(crate) fn check(out: &CoreOutput, a: &[Item], b: &[Item]) {
        let mut got = out.matches.clone().expect("this party should learn");
        got.sort_unstable();
        assert_eq!(got, naive(a, b));
    }
}
