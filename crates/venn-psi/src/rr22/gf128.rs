//! Arithmetic in GF(2^128) = GF(2)[x] / (x^128 + x^7 + x^2 + x + 1).
//!
//! RR22 "fast" mode (Raghuraman–Rindal, CCS 2022, the instantiation with B = F) runs the VOLE,
//! the OKVS dense columns and the derandomisation `B' = B + A'·Δ` over
//! F = GF(2^128). An element is a `u128` whose bit `i` is the coefficient of
//! `x^i` (plain polynomial basis, *not* GCM's bit-reflected one), so addition
//! is XOR and multiplication by `x` is a left shift plus reduction by 0x87.
//!
//! Multiplication uses the carry-less multiply instruction (PCLMULQDQ) when
//! the CPU has it (checked once at run time by `is_x86_feature_detected!`),
//! otherwise a portable shift-and-xor version. Both compute the same 256-bit
//! product and share [`reduce`]; the tests compare them with a bit-by-bit
//! reference.

/// Reduces the 256-bit product `hi·x^128 + lo` modulo x^128 + x^7 + x^2 + x + 1.
#[inline(always)]
fn reduce(lo: u128, hi: u128) -> u128 {
    // hi·x^128 ≡ hi·(x^7 + x^2 + x + 1). Its low 128 bits:
    let t = hi ^ (hi << 1) ^ (hi << 2) ^ (hi << 7);
    // the bits that the shifts pushed past x^127 (at most 7 bits), reduced once more;
    // o·(x^7 + x^2 + x + 1) has degree < 14, so no further overflow.
    let o = (hi >> 127) ^ (hi >> 126) ^ (hi >> 121);
    lo ^ t ^ o ^ (o << 1) ^ (o << 2) ^ (o << 7)
}

/// Portable carry-less 64×64 → 128-bit multiply (branch-free in the data).
#[inline]
fn clmul64_soft(a: u64, b: u64) -> u128 {
    let a = a as u128;
    let mut r = 0u128;
    for i in 0..64 {
        let mask = 0u128.wrapping_sub(((b >> i) & 1) as u128);
        r ^= (a << i) & mask;
    }
    r
}

/// Portable GF(2^128) multiplication.
pub(crate) fn mul_soft(a: u128, b: u128) -> u128 {
    let (a0, a1) = (a as u64, (a >> 64) as u64);
    let (b0, b1) = (b as u64, (b >> 64) as u64);
    let lo = clmul64_soft(a0, b0);
    let hi = clmul64_soft(a1, b1);
    let mid = clmul64_soft(a0, b1) ^ clmul64_soft(a1, b0);
    reduce(lo ^ (mid << 64), hi ^ (mid >> 64))
}

#[cfg(target_arch = "x86_64")]
mod clmul {
    use core::arch::x86_64::{__m128i, _mm_clmulepi64_si128, _mm_set_epi64x, _mm_xor_si128};

    #[inline]
    #[target_feature(enable = "sse2")]
    fn to_m128(x: u128) -> __m128i {
        _mm_set_epi64x((x >> 64) as i64, x as i64)
    }

    #[inline(always)]
    #[allow(unsafe_code)]
    fn from_m128(x: __m128i) -> u128 {
        // SAFETY: __m128i and u128 are both 16 bytes of plain data with no
        // invalid bit patterns; on x86_64 (little-endian) lane 0 of the vector
        // is the low 64 bits of the integer, matching `to_m128`.
        unsafe { core::mem::transmute::<__m128i, u128>(x) }
    }

    /// GF(2^128) product with PCLMULQDQ. Callers must have checked that the
    /// CPU supports `pclmulqdq` (see [`super::has_clmul`]).
    #[inline]
    #[target_feature(enable = "pclmulqdq,sse2")]
    pub(super) fn mul(a: u128, b: u128) -> u128 {
        let va = to_m128(a);
        let vb = to_m128(b);
        let lo = _mm_clmulepi64_si128(va, vb, 0x00);
        let hi = _mm_clmulepi64_si128(va, vb, 0x11);
        let mid = _mm_xor_si128(
            _mm_clmulepi64_si128(va, vb, 0x01),
            _mm_clmulepi64_si128(va, vb, 0x10),
        );
        let mid = from_m128(mid);
        let lo = from_m128(lo) ^ (mid << 64);
        let hi = from_m128(hi) ^ (mid >> 64);
        super::reduce(lo, hi)
    }

    /// `acc[i] += xs[i]·d` for all i, with PCLMULQDQ.
    #[target_feature(enable = "pclmulqdq,sse2")]
    pub(super) fn mul_add_acc(acc: &mut [u128], d: u128, xs: &[u128]) {
        for (a, x) in acc.iter_mut().zip(xs) {
            *a ^= mul(*x, d);
        }
    }
}

/// Whether the PCLMULQDQ path can be used (cached by the standard library).
#[inline(always)]
fn has_clmul() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// GF(2^128) multiplication.
#[inline]
#[allow(unsafe_code)]
pub(crate) fn mul(a: u128, b: u128) -> u128 {
    #[cfg(target_arch = "x86_64")]
    if has_clmul() {
        // SAFETY: `clmul::mul` only needs the `pclmulqdq` and `sse2` target
        // features; sse2 is part of the x86_64 baseline and pclmulqdq was
        // detected at run time just above.
        return unsafe { clmul::mul(a, b) };
    }
    mul_soft(a, b)
}

/// `acc[i] += xs[i]·d` (the sender's `K = B + A'·Δ` of RR22 Fig. 4, in place of B).
#[allow(unsafe_code)]
pub(crate) fn mul_add_acc(acc: &mut [u128], d: u128, xs: &[u128]) {
    assert_eq!(acc.len(), xs.len());
    #[cfg(target_arch = "x86_64")]
    if has_clmul() {
        // SAFETY: as in `mul`: pclmulqdq detected at run time, sse2 baseline.
        unsafe { clmul::mul_add_acc(acc, d, xs) };
        return;
    }
    for (a, x) in acc.iter_mut().zip(xs) {
        *a ^= mul_soft(*x, d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit-by-bit reference: schoolbook shift-and-add with reduction per step.
    fn mul_ref(a: u128, b: u128) -> u128 {
        let mut r = 0u128;
        let mut a = a;
        for i in 0..128 {
            if (b >> i) & 1 == 1 {
                r ^= a;
            }
            let carry = a >> 127;
            a <<= 1;
            if carry == 1 {
                a ^= 0x87;
            }
        }
        r
    }

    fn rand_u128(s: &mut u64) -> u128 {
        let mut next = || {
            *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = *s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        ((next() as u128) << 64) | next() as u128
    }

    #[test]
    fn known_values() {
        // x^127 · x = x^128 = x^7 + x^2 + x + 1
        assert_eq!(mul(1u128 << 127, 2), 0x87);
        assert_eq!(mul_soft(1u128 << 127, 2), 0x87);
        // x^127 · x^127 = x^254 = x^126·(x^7+x^2+x+1) = x^133 + x^128 + x^127 + x^126,
        // x^133 = x^12 + x^7 + x^6 + x^5 and x^128 = x^7 + x^2 + x + 1, so
        // x^254 = x^127 + x^126 + x^12 + x^6 + x^5 + x^2 + x + 1.
        let expect = (1u128 << 127) | (1u128 << 126) | (1 << 12) | (1 << 6) | (1 << 5) | 0b111;
        assert_eq!(mul_ref(1u128 << 127, 1u128 << 127), expect);
        assert_eq!(mul(1u128 << 127, 1u128 << 127), expect);
        assert_eq!(mul(0, 12345), 0);
        assert_eq!(mul(1, 0xdead_beef), 0xdead_beef);
    }

    #[test]
    fn clmul_and_soft_match_reference() {
        let mut s = 7u64;
        for _ in 0..2000 {
            let a = rand_u128(&mut s);
            let b = rand_u128(&mut s);
            let r = mul_ref(a, b);
            assert_eq!(mul_soft(a, b), r);
            assert_eq!(mul(a, b), r);
        }
        // edge operands
        for a in [0u128, 1, u128::MAX, 1 << 127, 1 << 64, (1 << 64) - 1] {
            for b in [0u128, 1, u128::MAX, 1 << 127, 1 << 63, 0x87] {
                assert_eq!(mul(a, b), mul_ref(a, b));
                assert_eq!(mul_soft(a, b), mul_ref(a, b));
            }
        }
    }

    #[test]
    fn field_laws_and_inverse() {
        let mut s = 99u64;
        for _ in 0..50 {
            let a = rand_u128(&mut s);
            let b = rand_u128(&mut s);
            let c = rand_u128(&mut s);
            assert_eq!(mul(a, b), mul(b, a));
            assert_eq!(mul(a, b ^ c), mul(a, b) ^ mul(a, c));
            assert_eq!(mul(mul(a, b), c), mul(a, mul(b, c)));
        }
        let xs0 = vec![3u128, 5, 7];
        let mut xs = vec![1u128, 2, 3];
        mul_add_acc(&mut xs, 0x1234, &xs0);
        assert_eq!(
            xs,
            vec![mul(3, 0x1234) ^ 1, mul(5, 0x1234) ^ 2, mul(7, 0x1234) ^ 3]
        );
    }
}
