//! Cutting one mutable slice into consecutive parts.
//!
//! The engine fills many buffers in parallel by parts whose sizes it counted
//! first (radix partitions, OKVS bins, a block's pieces): the parts are
//! carved with `split_at_mut`, so each task owns its part and no `unsafe`
//! is needed. This is that loop, once.

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

#[cfg(test)]
mod tests {
    use super::*;

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
