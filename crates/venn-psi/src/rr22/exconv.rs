//! The Expand-Convolute code that compresses the silent VOLE's sparse vector.
//!
//! Raghuraman–Rindal–Tanguy, "Expand-Convolute Codes for Pseudorandom
//! Correlation Generators from LPN", CRYPTO 2023 (eprint 2023/882). The
//! generator is G = [I_k | B·T⁻¹]-shaped: the dual encoding of a length-N
//! noise vector e (k outputs, N ≥ 2k) is
//!
//! ```text
//! y     = T₂⁻¹ · T₁⁻¹ · e[k..N]          (the "convolution", twice)
//! out_i = e_i + Σ_{j ∈ row i of B} y_j   (systematic part + expander)
//! ```
//!
//! - T is an (N−k)×(N−k) unit lower-triangular matrix whose 24 sub-diagonals
//!   are uniformly random bits and whose 25th sub-diagonal is all ones;
//!   T⁻¹·x is the recursion y_i = x_i + y_{i−25} + Σ_{j=1..24} c_{i,j}·y_{i−j},
//!   which generalises the accumulator (y_i = x_i + y_{i−1}) of
//!   Expand-Accumulate codes. Two independent T (the second pass guards the
//!   last rows, whose convolution reaches few positions, as libOTe does).
//! - B has row weight 7: one position in each quarter of y (a "regular"
//!   part, 4 entries) and 3 uniform positions.
//!
//! These are the parameters of libOTe's default silent-VOLE code
//! `ExConv7x24`: expansion N = 2k, expander weight 7, convolution width 24,
//! and an estimated minimum distance ratio δ = 0.15, from which the VOLE's
//! number of noise positions follows (see [`super::vole`]). Against the
//! Expand-Accumulate code it replaces (N = 5k, weight 11, δ = 0.1) the GGM
//! trees are 2.5× smaller and the expander reads a vector a fifth as long,
//! 7 instead of 11 times per output (measured: the VOLE of a 2^20-row PSI
//! went from ~410 ms to
//! ~240 ms, both parties on this machine's two hyperthreads; `VENN_BENCH=vole
//! cargo bench -p venn-psi`).
//!
//! Implementation: the coefficients c_{i,·} are 24 bits per row taken from
//! AES-CTR under a public per-chunk key (3 bytes per row, 5 rows per block).
//! The window sum uses the "four Russians" method: y is cut into aligned
//! groups of 4 rows, each with a 16-entry table of the XORs of all subsets
//! of its rows, filled as the rows become final (15 XORs per group). A row
//! then adds 8 table entries indexed by nibbles of its coefficient bits:
//! ~8 lookups per row instead of 25 masked XORs, and no branches.

use rayon::prelude::*;

use super::prim::Aes;

/// Expander row weight.
const WEIGHT: usize = 7;
/// Expander positions drawn one per quarter of y.
const REGULAR: usize = 4;
/// Random sub-diagonals of T.
const WIDTH: usize = 24;
/// Rows per group of the four-Russians tables.
const GROUP: usize = 4;
/// Tables kept: the current group and the 7 before it (a window of 25 rows
/// reaches back at most 7 groups).
const RING: usize = 8;
/// Rows per batch of coefficients (5 rows per AES block).
const COEFF_ROWS: usize = 5 * 64;
/// Outputs per parallel task of the expander.
const STEP: usize = 2048;

/// The code of one VOLE chunk: k outputs from N inputs.
pub(crate) struct ExConvCode {
    k: usize,
    n: usize,
    conv: [Aes; 2],
    expander: Aes,
}

impl ExConvCode {
    /// The code for chunk `index` (public: both parties derive the same).
    pub(crate) fn new(k: usize, n: usize, index: usize) -> Self {
        assert!(
            n >= 2 * k,
            "Expand-Convolute needs N ≥ 2k (k = {k}, N = {n})"
        );
        let label = |what: &str| Aes::from_label(&format!("venn rr22 2026 ExConv {what} {index}"));
        ExConvCode {
            k,
            n,
            conv: [label("convolution 1"), label("convolution 2")],
            expander: label("expander"),
        }
    }

    /// Length of the convolved part y.
    fn y_len(&self) -> usize {
        self.n - self.k
    }

    /// Replaces `e[k..N]` by y = T₂⁻¹·T₁⁻¹·e[k..N].
    pub(crate) fn convolve(&self, e: &mut [u128]) {
        debug_assert_eq!(e.len(), self.n);
        convolve_passes([&self.conv[0], &self.conv[1]], &mut e[self.k..]);
    }

    /// Expander positions (indices into y) of outputs [first, first +
    /// count) into `pos`, `WEIGHT` per output: 4 regular, then 3 uniform.
    /// Output o's come from the 32-bit words 0..7 of AES_expander(2o) ‖
    /// AES_expander(2o + 1), reduced by Lemire's multiply-shift (the code is
    /// public; 32 bits leave a relative bias below len/2^32 < 2^-13 in a
    /// position's distribution, which does not change the code's shape).
    fn positions(&self, first: usize, count: usize, blocks: &mut Vec<u128>, pos: &mut Vec<u32>) {
        let len = self.y_len() as u64;
        let step = len / REGULAR as u64;
        debug_assert!(step > 0 && len < 1 << 32);
        blocks.clear();
        blocks.extend((2 * first..2 * (first + count)).map(|b| b as u128));
        self.expander.enc_inplace(blocks);
        pos.clear();
        let reduce =
            |r: u128, j: usize, n: u64| ((((r >> (32 * j)) as u32) as u64 * n) >> 32) as u32;
        for o in blocks.chunks_exact(2) {
            for j in 0..REGULAR {
                pos.push(j as u32 * step as u32 + reduce(o[0], j, step));
            }
            for j in 0..WEIGHT - REGULAR {
                pos.push(reduce(o[1], j, len));
            }
        }
    }

    /// out[i] = e[first + i] + Σ_j y[pos_j(first + i)] for a convolved `e`,
    /// in parallel tasks of `STEP` outputs.
    ///
    /// y (~2 MB per chunk) does not fit in L2, so each output's 7 reads are
    /// cache misses; the loop asks for the entries of output i + `AHEAD`
    /// while it sums output i.
    pub(crate) fn expand(&self, e: &[u128], first: usize, out: &mut [u128]) {
        debug_assert_eq!(e.len(), self.n);
        debug_assert!(first + out.len() <= self.k);
        const AHEAD: usize = 4;
        let (sys, y) = e.split_at(self.k);
        out.par_chunks_mut(STEP).enumerate().for_each_init(
            || (Vec::new(), Vec::new()),
            |(blocks, pos), (ci, o)| {
                let start = first + ci * STEP;
                self.positions(start, o.len(), blocks, pos);
                for (i, o) in o.iter_mut().enumerate() {
                    if let Some(next) = pos.get((i + AHEAD) * WEIGHT..(i + AHEAD + 1) * WEIGHT) {
                        for &j in next {
                            crate::store::prefetch(&y[j as usize]);
                        }
                    }
                    let p = &pos[i * WEIGHT..(i + 1) * WEIGHT];
                    *o = p.iter().fold(sys[start + i], |s, &j| s ^ y[j as usize]);
                }
            },
        );
    }

    /// Dual encoding of `e` (its tail is overwritten): all k outputs.
    #[cfg(test)]
    pub(crate) fn encode(&self, e: &mut [u128]) -> Vec<u128> {
        self.convolve(e);
        let mut out = vec![0u128; self.k];
        self.expand(e, 0, &mut out);
        out
    }
}

/// The 24 coefficient bits of rows [row0, row0 + out.len()): bytes 3r..3r+3
/// (little-endian) of AES(⌊r/5⌋) for r = row mod 5 (the 16th byte is unused).
fn coefficients(aes: &Aes, row0: usize, out: &mut [u32], blocks: &mut Vec<u128>) {
    debug_assert_eq!(row0 % 5, 0);
    let b0 = row0 / 5;
    blocks.clear();
    blocks.extend((b0..b0 + out.len().div_ceil(5)).map(|b| b as u128));
    aes.enc_inplace(blocks);
    for (rows, blk) in out.chunks_mut(5).zip(blocks.iter()) {
        let bytes = blk.to_le_bytes();
        for (r, w) in rows.iter_mut().enumerate() {
            *w = u32::from_le_bytes([bytes[3 * r], bytes[3 * r + 1], bytes[3 * r + 2], 0]);
        }
    }
}

/// Both convolution passes over the tail half of `a` under chunk 0's code
/// (`cargo bench -p venn-psi`; not a stable API).
pub(crate) fn bench_convolve(a: &mut [u128]) {
    ExConvCode::new(a.len() / 2, a.len(), 0).convolve(a);
}

/// x ← T_P⁻¹·…·T_1⁻¹·x in place, for P matrices T (coefficients from
/// `aes[p]`) in one loop: row i of pass p + 1 needs only row i of pass p,
/// so the passes run side by side and their dependency chains (each row
/// waits for the one before it) overlap in the CPU. Measured on `rr22
/// exconv convolution` (`cargo bench -p venn-psi`): see docs/psi.md.
///
/// Row i = 4q + t: bit j−1 of w_i (j = 1..24) is c_{i,j}, and bit 24 is the
/// fixed tap at j = 25. Shifted left by 4 − t, the nibble d of w_i selects
/// positions 4(q−d) + 3 − b (b its bit), so y_i = x_i + Σ_{d=0..7}
/// table_{q−d}[nibble d]: table_g holds the XORs of all subsets of group g
/// (entry bit b ↔ y[4g + 3 − b]). The current group's table is filled as its
/// rows become final (row t adds the 2^t entries with bit 3 − t and only
/// higher bits), and the nibble never selects a row that is not yet final.
/// Groups before the start read a zero table.
fn convolve_passes<const P: usize>(aes: [&Aes; P], x: &mut [u128]) {
    let len = x.len();
    let mut coeff = [[0u32; COEFF_ROWS]; P];
    let mut blocks = Vec::with_capacity(COEFF_ROWS / 5);
    let mut tabs = [[[ent::zero(); 16]; RING]; P];
    let mut row0 = 0;
    while row0 < len {
        let rows = COEFF_ROWS.min(len - row0);
        for (aes, c) in aes.iter().zip(coeff.iter_mut()) {
            coefficients(aes, row0, &mut c[..rows], &mut blocks);
        }
        let x = &mut x[row0..row0 + rows];
        // whole rings of RING groups (row0 is a multiple of COEFF_ROWS,
        // itself a multiple of RING·GROUP rows): the table of group q − d
        // is then a constant index in each unrolled step
        const SPAN: usize = RING * GROUP;
        const _: () = assert!(COEFF_ROWS.is_multiple_of(SPAN));
        let whole = rows / SPAN * SPAN;
        for (k, xs) in x[..whole].chunks_exact_mut(SPAN).enumerate() {
            let c: [&[u32]; P] = core::array::from_fn(|p| &coeff[p][k * SPAN..(k + 1) * SPAN]);
            ring_step::<P, 0>(&mut tabs, &c, xs);
            ring_step::<P, 1>(&mut tabs, &c, xs);
            ring_step::<P, 2>(&mut tabs, &c, xs);
            ring_step::<P, 3>(&mut tabs, &c, xs);
            ring_step::<P, 4>(&mut tabs, &c, xs);
            ring_step::<P, 5>(&mut tabs, &c, xs);
            ring_step::<P, 6>(&mut tabs, &c, xs);
            ring_step::<P, 7>(&mut tabs, &c, xs);
        }
        // the rest, with the ring index computed per row
        for (d, x) in x.iter_mut().enumerate().skip(whole) {
            let i = row0 + d;
            let (q, t) = (i / GROUP, i % GROUP);
            let mut y = ent::from(*x);
            for (tabs, c) in tabs.iter_mut().zip(&coeff) {
                y = ent::xor(y, window(tabs, q, (c[d] | 1 << WIDTH) << (GROUP - t)));
                fill(&mut tabs[q % RING], t, y);
            }
            *x = ent::to(y);
        }
        row0 += rows;
    }
}

/// The GROUP rows of group G of a ring of RING groups (`xs`, `c`: the ring's
/// rows and coefficients per pass), every pass side by side.
#[inline(always)]
fn ring_step<const P: usize, const G: usize>(
    tabs: &mut [[[ent::Ent; 16]; RING]; P],
    c: &[&[u32]; P],
    xs: &mut [u128],
) {
    for t in 0..GROUP {
        let r = G * GROUP + t;
        let mut y = ent::from(xs[r]);
        for (tabs, c) in tabs.iter_mut().zip(c) {
            y = ent::xor(y, window(tabs, G, (c[r] | 1 << WIDTH) << (GROUP - t)));
            fill(&mut tabs[G], t, y);
        }
        xs[r] = ent::to(y);
    }
}

/// The table entries' type: a 128-bit SIMD register on x86_64, whose
/// loads and stores are single 16-byte accesses. With `u128` entries the
/// compiler wrote each entry as two 8-byte stores from general registers
/// and read it back with one 16-byte load, which the CPU cannot forward
/// from the store buffer: every read of the current group's table (a
/// store a few cycles old) stalled until the stores retired. Measured on
/// `rr22 exconv convolution` (`cargo bench -p venn-psi`): see docs/psi.md.
#[cfg(target_arch = "x86_64")]
mod ent {
    use core::arch::x86_64::{__m128i, _mm_xor_si128};

    // the SSE2 instructions used below are part of the x86_64 baseline
    const _: () = assert!(cfg!(target_feature = "sse2"));

    pub(super) type Ent = __m128i;
    #[inline(always)]
    pub(super) fn zero() -> Ent {
        bytemuck::Zeroable::zeroed()
    }

    #[inline(always)]
    #[allow(unsafe_code)]
    pub(super) fn xor(a: Ent, b: Ent) -> Ent {
        // SAFETY: `_mm_xor_si128` needs only SSE2, which every x86_64 CPU
        // has (asserted at compile time above); it reads no memory.
        unsafe { _mm_xor_si128(a, b) }
    }

    #[inline(always)]
    pub(super) fn from(x: u128) -> Ent {
        bytemuck::cast(x)
    }

    #[inline(always)]
    pub(super) fn to(x: Ent) -> u128 {
        bytemuck::cast(x)
    }
}

/// The table entries' type elsewhere: plain `u128`.
#[cfg(not(target_arch = "x86_64"))]
mod ent {
    pub(super) type Ent = u128;
    #[inline(always)]
    pub(super) fn zero() -> Ent {
        0
    }

    #[inline(always)]
    pub(super) fn xor(a: Ent, b: Ent) -> Ent {
        a ^ b
    }

    #[inline(always)]
    pub(super) fn from(x: u128) -> Ent {
        x
    }

    #[inline(always)]
    pub(super) fn to(x: Ent) -> u128 {
        x
    }
}

/// Σ_{d=0..7} table_{q−d}[nibble d of wv].
#[inline(always)]
fn window(tabs: &[[ent::Ent; 16]; RING], q: usize, wv: u32) -> ent::Ent {
    let mut s = ent::zero();
    for d in 0..RING {
        s = ent::xor(
            s,
            tabs[q.wrapping_sub(d) % RING][((wv >> (GROUP * d)) & 15) as usize],
        );
    }
    s
}

/// Adds the now final row t of its group to the group's table: every entry
/// with bit 3 − t and only higher bits (2^t entries).
#[inline(always)]
fn fill(tab: &mut [ent::Ent; 16], t: usize, y: ent::Ent) {
    let mut put = |to: usize, from: usize| tab[to] = ent::xor(tab[from], y);
    match t {
        0 => put(8, 0),
        1 => {
            put(4, 0);
            put(12, 8);
        }
        2 => {
            for h in [0, 4, 8, 12] {
                put(2 | h, h);
            }
        }
        _ => {
            for h in [0, 2, 4, 6, 8, 10, 12, 14] {
                put(1 | h, h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rr22::prim::Prg;

    /// y = T⁻¹·x by forward substitution over an explicit T (the definition).
    fn solve_naive(aes: &Aes, x: &[u128]) -> Vec<u128> {
        let len = x.len();
        let mut coeff = vec![0u32; len.next_multiple_of(5)];
        let mut blocks = Vec::new();
        for r0 in (0..coeff.len()).step_by(COEFF_ROWS) {
            let end = (r0 + COEFF_ROWS).min(coeff.len());
            coefficients(aes, r0, &mut coeff[r0..end], &mut blocks);
        }
        // T[i][i-j] = c_{i,j} (j = 1..24), T[i][i-25] = 1, T[i][i] = 1
        let t = |i: usize, col: usize| -> bool {
            if col == i || (col + WIDTH + 1 == i) {
                return true;
            }
            col < i && i - col <= WIDTH && (coeff[i] >> (i - col - 1)) & 1 == 1
        };
        let mut y = vec![0u128; len];
        for i in 0..len {
            // row i of T·y = x: y_i = x_i + Σ_{col<i} T[i][col]·y_col
            let s = (0..i)
                .filter(|&col| t(i, col))
                .fold(x[i], |s, col| s ^ y[col]);
            y[i] = s;
        }
        y
    }

    #[test]
    fn convolution_is_t_inverse_by_its_definition() {
        let aes = Aes::from_label("test convolution");
        for len in [1usize, 5, 24, 25, 26, 31, 32, 33, 100, 641, 2000] {
            let x = Prg::new(len as u128).blocks(len);
            let mut fast = x.clone();
            convolve_passes([&aes], &mut fast);
            assert_eq!(fast, solve_naive(&aes, &x), "len {len}");
            // two passes side by side: T₂⁻¹·T₁⁻¹·x
            let aes2 = Aes::from_label("test convolution 2");
            let mut both = x.clone();
            convolve_passes([&aes, &aes2], &mut both);
            assert_eq!(both, solve_naive(&aes2, &fast), "len {len}, two passes");
        }
    }

    #[test]
    fn coefficients_are_24_random_bits_per_row() {
        let aes = Aes::from_label("test coefficients");
        let mut c = vec![0u32; 5000];
        let mut blocks = Vec::new();
        coefficients(&aes, 0, &mut c, &mut blocks);
        assert!(c.iter().all(|w| *w < 1 << 24));
        let ones: u32 = c.iter().map(|w| w.count_ones()).sum();
        // 120,000 fair bits: within ~6 standard deviations of half
        assert!((ones as i64 - 60_000).abs() < 1100, "{ones}");
        // batches at any multiple of 5 agree with one long run
        let mut tail = vec![0u32; 1000];
        coefficients(&aes, 4000, &mut tail, &mut blocks);
        assert_eq!(&c[4000..], &tail[..]);
    }

    #[test]
    fn encoding_is_systematic_linear_and_uses_the_tail() {
        let (k, n) = (3000, 6400);
        let code = ExConvCode::new(k, n, 0);
        let mut prg = Prg::new(3);
        // linear: enc(x + y) = enc(x) + enc(y)
        let x = prg.blocks(n);
        let y = prg.blocks(n);
        let mut xy: Vec<u128> = x.iter().zip(&y).map(|(a, b)| a ^ b).collect();
        let (mut x, mut y) = (x, y);
        let ex = code.encode(&mut x);
        let ey = code.encode(&mut y);
        let exy = code.encode(&mut xy);
        assert!((0..k).all(|i| exy[i] == ex[i] ^ ey[i]));
        // systematic: a vector that is zero past k encodes to its head
        let mut head = prg.blocks(k);
        head.resize(n, 0);
        let eh = code.encode(&mut head.clone());
        assert_eq!(&eh[..], &head[..k]);
        // a single tail entry reaches many outputs (convolution + expander)
        let mut one = vec![0u128; n];
        one[k + 10] = 1;
        let eo = code.encode(&mut one);
        let touched = eo.iter().filter(|v| **v != 0).count();
        assert!(touched > 100, "{touched}");
    }

    #[test]
    fn expanding_a_range_matches_the_full_expansion() {
        let (k, n) = (5000, 10_240);
        let code = ExConvCode::new(k, n, 4);
        let mut prg = Prg::new(5);
        let mut a = prg.blocks(n);
        code.convolve(&mut a);
        let mut full = vec![0u128; k];
        code.expand(&a, 0, &mut full);
        let mut tail = vec![0u128; k - 1234];
        code.expand(&a, 1234, &mut tail);
        assert_eq!(&full[1234..], &tail[..]);
    }

    #[test]
    fn expander_rows_have_one_position_per_quarter() {
        let code = ExConvCode::new(1000, 2560, 1);
        let len = 2560 - 1000;
        let step = len / REGULAR;
        let (mut blocks, mut pos) = (Vec::new(), Vec::new());
        code.positions(17, 300, &mut blocks, &mut pos);
        assert_eq!(pos.len(), 300 * WEIGHT);
        for row in pos.chunks_exact(WEIGHT) {
            for (j, p) in row.iter().enumerate() {
                let p = *p as usize;
                assert!(p < len);
                if j < REGULAR {
                    assert!((j * step..(j + 1) * step).contains(&p), "{j}: {p}");
                }
            }
        }
        // positions of a range equal those of the same outputs in a longer run
        let mut longer = Vec::new();
        code.positions(10, 307, &mut blocks, &mut longer);
        assert_eq!(&longer[7 * WEIGHT..], &pos[..]);
    }
}
