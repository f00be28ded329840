//! Cutting one mutable slice into consecutive parts, and a parallel
//! stable partition built on it.
//!
//! The engine fills many buffers in parallel by parts whose sizes it counted
//! first (radix partitions, OKVS bins, a block's pieces): the parts are
//! carved with `split_at_mut`, so each task owns its part and no `unsafe`
//! is needed. This is that loop, once.
//!
//! [`partition`] is the counting scatter of a radix sort, on every core:
//! the items are cut into ranges, each range counts its items per part,
//! and each range then writes its items into its own slice of every part.
//! The result equals the one-thread scatter's (a part keeps its items in
//! index order); only the work is spread.

use rayon::prelude::*;

/// `v` cut into consecutive parts of the given lengths, in order. The
/// lengths must sum to at most `v.len()` (a shorter sum leaves a tail out).
pub(crate) fn split_lens<T>(
    mut v: &mut [T],
    lens: impl IntoIterator<Item = usize>,
) -> Vec<&mut [T]> {
    let lens = lens.into_iter();
    let mut out = Vec::with_capacity(lens.size_hint().0);
    for len in lens {
        let (head, tail) = std::mem::take(&mut v).split_at_mut(len);
        out.push(head);
        v = tail;
    }
    out
}

/// `v` cut at `starts` (ascending offsets, the first 0): part k is
/// `v[starts[k]..starts[k + 1]]`, as [`partition`] returns them.
pub(crate) fn split_starts<'a, T>(v: &'a mut [T], starts: &[usize]) -> Vec<&'a mut [T]> {
    split_lens(v, starts.windows(2).map(|w| w[1] - w[0]))
}

/// Items per range of [`partition`], at least (fewer ranges than this
/// would cost more in per-range counts than they save).
const MIN_RANGE: usize = 1 << 14;

/// Stable partition of the items 0..n (n = `a.len()` = `b.len()`) into
/// `parts` parts, in parallel: item i belongs to part `part(i)` (< `parts`)
/// and its destination p is the next free slot of that part, in index order
/// within the part. Writes `val(i)` to `a[p]` and `b[p]`, and `p` to
/// `dest[i]` unless `dest` is empty. Returns the parts' starts (`parts + 1`
/// offsets). One column: [`partition_one`].
pub(crate) fn partition<A: Send, B: Send>(
    part: impl Fn(usize) -> usize + Sync,
    parts: usize,
    a: &mut [A],
    b: &mut [B],
    dest: &mut [u32],
    val: impl Fn(usize) -> (A, B) + Sync,
) -> Vec<usize> {
    let n = a.len();
    assert_eq!(b.len(), n);
    assert!(dest.is_empty() || dest.len() == n);
    let per = n
        .div_ceil(rayon::current_num_threads().max(1))
        .max(MIN_RANGE);
    let ranges: Vec<std::ops::Range<usize>> =
        (0..n).step_by(per).map(|s| s..(s + per).min(n)).collect();
    let hist: Vec<Vec<usize>> = ranges
        .par_iter()
        .map(|r| {
            let mut h = vec![0usize; parts];
            r.clone().for_each(|i| h[part(i)] += 1);
            h
        })
        .collect();
    let mut starts = vec![0usize; parts + 1];
    for p in 0..parts {
        starts[p + 1] = starts[p] + hist.iter().map(|h| h[p]).sum::<usize>();
    }
    // every range's slice of every part, and where it starts
    fn by_range<'a, T>(
        v: &'a mut [T],
        starts: &[usize],
        hist: &[Vec<usize>],
    ) -> Vec<Vec<&'a mut [T]>> {
        let mut out: Vec<Vec<&mut [T]>> = hist.iter().map(|_| Vec::new()).collect();
        for (p, s) in split_starts(v, starts).into_iter().enumerate() {
            for (r, sub) in split_lens(s, hist.iter().map(|h| h[p]))
                .into_iter()
                .enumerate()
            {
                out[r].push(sub);
            }
        }
        out
    }
    let mut base: Vec<Vec<usize>> = Vec::with_capacity(ranges.len());
    let mut next = starts[..parts].to_vec();
    for h in &hist {
        base.push(next.clone());
        next.iter_mut().zip(h).for_each(|(x, c)| *x += c);
    }
    let dests: Vec<&mut [u32]> = if dest.is_empty() {
        ranges.iter().map(|_| <&mut [u32]>::default()).collect()
    } else {
        split_lens(dest, ranges.iter().map(|r| r.len()))
    };
    ranges
        .into_par_iter()
        .zip(by_range(a, &starts, &hist))
        .zip(by_range(b, &starts, &hist))
        .zip(dests)
        .zip(base)
        .for_each(|((((r, mut a), mut b), dest), base)| {
            let mut fill = vec![0usize; parts];
            let first = r.start;
            for i in r {
                let p = part(i);
                let (x, y) = val(i);
                let k = fill[p];
                a[p][k] = x;
                b[p][k] = y;
                if let Some(d) = dest.get_mut(i - first) {
                    *d = (base[p] + k) as u32;
                }
                fill[p] = k + 1;
            }
        });
    starts
}

/// [`partition`] of one column: writes `val(i)` to `a[p]`.
pub(crate) fn partition_one<A: Send>(
    part: impl Fn(usize) -> usize + Sync,
    parts: usize,
    a: &mut [A],
    dest: &mut [u32],
    val: impl Fn(usize) -> A + Sync,
) -> Vec<usize> {
    let n = a.len();
    partition(part, parts, a, &mut vec![(); n], dest, |i| (val(i), ()))
}

/// Partition of `keys` in place, each `vals[i]` moving with `keys[i]`,
/// into `parts` parts: part p of the result is `starts[p]..starts[p + 1]`
/// (returned, `parts + 1` offsets) and holds exactly the pairs with
/// `part(key) == p`, in no particular order. Counts the parts on every
/// thread, then moves each pair once, on this thread: the permutation of
/// American flag sort (McIlroy, Bostic and McIlroy, "Engineering radix
/// sort", Computing Systems 6(1), 1993, §2.3): every part has a head, the
/// next slot not yet holding one of its own pairs; a pair found out of
/// place is swapped into its part's head, and the pair it displaces
/// carried on, until one belongs where the cycle began.
///
/// Why, beside [`partition`]: it needs no second array. The grouping of a
/// party's items scattered them into a fresh copy, 16 bytes an item of
/// pages faulted in (16 MB at 2^20 rows, 256 MB at 2^24, where it was the
/// read's peak); in place, the one pass costs about what the faults did.
pub(crate) fn partition_in_place<K: Copy + Sync, V: Copy>(
    keys: &mut [K],
    vals: &mut [V],
    parts: usize,
    part: impl Fn(&K) -> usize + Sync,
) -> Vec<usize> {
    let n = keys.len();
    assert_eq!(vals.len(), n);
    let counts = keys
        .par_iter()
        .with_min_len(MIN_RANGE)
        .fold(
            || vec![0usize; parts],
            |mut h, k| {
                h[part(k)] += 1;
                h
            },
        )
        .reduce(
            || vec![0usize; parts],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        );
    let mut starts = vec![0usize; parts + 1];
    for p in 0..parts {
        starts[p + 1] = starts[p] + counts[p];
    }
    let mut head = starts[..parts].to_vec();
    for p in 0..parts {
        let end = starts[p + 1];
        while head[p] < end {
            let i = head[p];
            let (mut k, mut v) = (keys[i], vals[i]);
            let mut q = part(&k);
            // carry the pair to its part, picking up the one it displaces,
            // until the pair in hand belongs to part p (at slot i)
            while q != p {
                let j = head[q];
                head[q] += 1;
                std::mem::swap(&mut k, &mut keys[j]);
                std::mem::swap(&mut v, &mut vals[j]);
                q = part(&k);
            }
            keys[i] = k;
            vals[i] = v;
            head[p] += 1;
        }
    }
    starts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_in_place_puts_every_pair_in_its_part() {
        // empty input, one part, uneven and empty parts, many parts
        for (n, parts) in [(0usize, 3usize), (1, 1), (5, 4), (40_000, 7), (70_001, 256)] {
            let key = |i: usize| (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let part = |k: &u64| {
                let p = (k >> 40) as usize % parts;
                if parts > 3 && p == 2 { 1 } else { p }
            };
            let mut keys: Vec<u64> = (0..n).map(key).collect();
            let mut vals: Vec<u32> = (0..n as u32).collect();
            let starts = partition_in_place(&mut keys, &mut vals, parts, part);
            assert_eq!(starts.len(), parts + 1);
            assert_eq!((starts[0], starts[parts]), (0, n));
            let mut seen = vec![false; n];
            for p in 0..parts {
                for s in starts[p]..starts[p + 1] {
                    assert_eq!(part(&keys[s]), p, "n {n} slot {s}");
                    // the value still travels with its key
                    assert_eq!(keys[s], key(vals[s] as usize));
                    assert!(!std::mem::replace(&mut seen[vals[s] as usize], true));
                }
                let want = (0..n).filter(|&i| part(&key(i)) == p).count();
                assert_eq!(starts[p + 1] - starts[p], want, "n {n} part {p}");
            }
            assert!(seen.iter().all(|&s| s));
        }
    }

    #[test]
    fn partition_equals_a_one_thread_stable_scatter() {
        // sizes around the range length, uneven parts, empty parts
        for (n, parts) in [(0usize, 3usize), (1, 1), (5, 4), (40_000, 7), (70_001, 256)] {
            let part =
                |i: usize| ((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as usize % parts;
            let part = |i: usize| {
                if parts > 3 && part(i) == 2 {
                    1
                } else {
                    part(i)
                }
            };
            let mut a = vec![0u64; n];
            let mut b = vec![0u32; n];
            let mut dest = vec![0u32; n];
            // four threads, so the larger cases run in several ranges
            // whatever this machine has
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(4)
                .build()
                .expect("a thread pool");
            let starts = pool.install(|| {
                partition(part, parts, &mut a, &mut b, &mut dest, |i| {
                    (i as u64 * 3, i as u32)
                })
            });
            // the reference: one pass, in index order
            let mut want: Vec<Vec<usize>> = vec![Vec::new(); parts];
            (0..n).for_each(|i| want[part(i)].push(i));
            let flat: Vec<usize> = want.concat();
            assert_eq!(starts.len(), parts + 1);
            for p in 0..parts {
                assert_eq!(starts[p + 1] - starts[p], want[p].len(), "n {n} part {p}");
            }
            assert_eq!(b.iter().map(|&i| i as usize).collect::<Vec<_>>(), flat);
            assert!(a.iter().zip(&b).all(|(x, i)| *x == *i as u64 * 3));
            assert!(flat.iter().enumerate().all(|(p, &i)| dest[i] as usize == p));
        }
    }

    #[test]
    fn parts_are_consecutive_and_of_the_given_lengths() {
        let mut v: Vec<u32> = (0..10).collect();
        let parts = split_lens(&mut v, [3, 0, 5]);
        let got: Vec<Vec<u32>> = parts.iter().map(|p| p.to_vec()).collect();
        assert_eq!(got, vec![vec![0, 1, 2], vec![], vec![3, 4, 5, 6, 7]]);
        for p in parts {
            p.iter_mut().for_each(|x| *x += 100);
        }
        assert_eq!(v, [100, 101, 102, 103, 104, 105, 106, 107, 8, 9]);
    }
}
