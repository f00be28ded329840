//! Radix sorts for the engine's result paths.
//!
//! After a protocol, a receiver sorts its matches three times: by the
//! peer's positions (to forward them), by group (to read counts and rows
//! in order), and by item or key (the output order). Comparison sorts of
//! ~2^21 entries took 0.5 s of a 2^22-row run on one core; these sorts do
//! one or two linear passes instead.
//!
//! - [`by_u32`]: LSD radix sort on a `u32` key (stable), 11 bits per pass,
//!   as many passes as the largest key needs (two for keys below 2^22).
//! - [`by_u128`]: one MSD counting pass on the highest bits in which the
//!   keys differ (up to 12: ~256 entries per bucket), then each bucket
//!   sorted in cache by (key, tie-break).
//!   Items and key prefixes of one class differ only in their low bits
//!   (digit-packed IDs use ~60 of 128), so the pass looks at the bits that
//!   spread them, and buckets hold a few dozen entries.

use rayon::prelude::*;
use std::cmp::Ordering;

/// Below this many entries a comparison sort is as fast.
const SMALL: usize = 1 << 12;

/// Sorts `v` by `key` (stable).
pub(crate) fn by_u32<T: Copy + Send + Sync>(v: &mut Vec<T>, key: impl Fn(&T) -> u32 + Sync) {
    if v.len() < SMALL {
        v.sort_by_key(|x| key(x));
        return;
    }
    const BITS: u32 = 11;
    const MASK: u32 = (1 << BITS) - 1;
    let max = v.par_iter().map(&key).max().unwrap_or(0);
    let passes = (32 - max.leading_zeros()).div_ceil(BITS);
    let mut tmp = v.clone();
    for p in 0..passes {
        let shift = p * BITS;
        let mut starts = vec![0usize; (MASK + 2) as usize];
        for x in v.iter() {
            starts[((key(x) >> shift) & MASK) as usize + 1] += 1;
        }
        for d in 0..=MASK as usize {
            starts[d + 1] += starts[d];
        }
        for x in v.iter() {
            let d = ((key(x) >> shift) & MASK) as usize;
            tmp[starts[d]] = *x;
            starts[d] += 1;
        }
        std::mem::swap(v, &mut tmp);
    }
}

/// Sorts `v` by its `u128` key, equal keys by `tie`.
pub(crate) fn by_u128<T: Copy + Send + Sync>(
    v: &mut Vec<(u128, T)>,
    tie: impl Fn(&T, &T) -> Ordering + Sync,
) {
    let cmp = |a: &(u128, T), b: &(u128, T)| a.0.cmp(&b.0).then_with(|| tie(&a.1, &b.1));
    if v.len() < SMALL {
        v.sort_unstable_by(cmp);
        return;
    }
    let first = v[0].0;
    let diff = v
        .par_iter()
        .map(|e| e.0 ^ first)
        .reduce(|| 0, |a, b| a | b);
    if diff == 0 {
        v.par_sort_unstable_by(cmp);
        return;
    }
    // bits above `top` are the same in every key: the digit is the `bits`
    // bits from `top` down, and its order is the keys' order
    let top = 127 - diff.leading_zeros();
    // ~256 entries per bucket (sorted in L1), at most 2^12 buckets: more
    // write streams than that make the scatter miss the TLB on every write
    let want = (v.len().ilog2().saturating_sub(8)).clamp(1, 12);
    let bits = want.min(top + 1);
    let shift = top + 1 - bits;
    let mask = (1u128 << bits) - 1;
    let digit = |k: u128| ((k >> shift) & mask) as usize;
    let mut starts = vec![0usize; (1 << bits) + 1];
    for e in v.iter() {
        starts[digit(e.0) + 1] += 1;
    }
    for d in 0..1usize << bits {
        starts[d + 1] += starts[d];
    }
    let mut out = vec![v[0]; v.len()];
    let mut fill = starts.clone();
    for e in v.iter() {
        let d = digit(e.0);
        out[fill[d]] = *e;
        fill[d] += 1;
    }
    // each bucket on its own, in parallel
    let mut parts: Vec<&mut [(u128, T)]> = Vec::with_capacity(1 << bits);
    let mut rest = &mut out[..];
    for w in starts.windows(2) {
        let (head, tail) = rest.split_at_mut(w[1] - w[0]);
        if head.len() > 1 {
            parts.push(head);
        }
        rest = tail;
    }
    parts
        .into_par_iter()
        .with_min_len(256)
        .for_each(|p| p.sort_unstable_by(cmp));
    *v = out;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn by_u32_equals_a_stable_sort(
            v in proptest::collection::vec((0u32..1 << 23, any::<u32>()), 0..20_000)
        ) {
            let mut want = v.clone();
            want.sort_by_key(|x| x.0);
            let mut got = v;
            by_u32(&mut got, |x| x.0);
            prop_assert_eq!(got, want);
        }

        #[test]
        fn by_u128_equals_a_sort_by_key_then_tie(
            v in proptest::collection::vec((any::<u64>(), 0u8..4, any::<u32>()), 0..20_000),
            shift in 0u32..64,
        ) {
            // keys spread over bits `shift..shift + 64`, with repeats
            let mut got: Vec<(u128, u32)> =
                v.iter().map(|&(k, r, t)| (((k >> r) as u128) << shift, t)).collect();
            let mut want = got.clone();
            want.sort_unstable();
            by_u128(&mut got, |a, b| a.cmp(b));
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn large_inputs_and_edge_keys() {
        // all keys equal (ties only), and keys that differ only in bit 127
        let mut same: Vec<(u128, u32)> = (0..10_000u32).rev().map(|t| (7, t)).collect();
        by_u128(&mut same, |a, b| a.cmp(b));
        assert!(same.windows(2).all(|w| w[0].1 < w[1].1));
        let mut hi: Vec<(u128, u32)> = (0..10_000u32)
            .map(|t| (((t as u128 & 1) << 127) | t as u128, t))
            .collect();
        let mut want = hi.clone();
        want.sort_unstable();
        by_u128(&mut hi, |a, b| a.cmp(b));
        assert_eq!(hi, want);
        // u32 keys up to the top bit
        let mut v: Vec<u32> = (0..50_000u32).map(|i| i.wrapping_mul(2_654_435_761)).collect();
        let mut want = v.clone();
        want.sort_unstable();
        by_u32(&mut v, |&x| x);
        assert_eq!(v, want);
    }
}
