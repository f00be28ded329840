//! Silent random VOLE over GF(2^128) from dual LPN with an Expand-Accumulate code.
//!
//! Goal (the random-VOLE functionality of RR22's preliminaries): the sender gets a random
//! Δ ∈ F and B ∈ F^m, the receiver gets random A, C ∈ F^m with
//! C = A·Δ + B, F = GF(2^128).
//!
//! Construction: the dual-LPN PCG of Boyle–Couteau–Gilboa–Ishai–Kohl–Scholl
//! (CCS 2019, "Efficient two-round OT extension and silent non-interactive
//! secure computation"), with the single-point VOLE over a large field of
//! Wolverine (Weng–Yang–Katz–Wang, IEEE S&P 2021) and the COT-based punctured
//! PRF and bootstrapping of Ferret (Yang–Weng–Lan–Zhang–Wang, CCS 2020):
//!
//! 1. *Sparse VOLE.* The length-N noise vector is split into t blocks of L
//!    entries (regular noise). In block i the receiver picks a point α_i and a
//!    random non-zero β_i ∈ F. A_sparse = β_i at α_i, zero elsewhere, and both
//!    parties get C_sparse = A_sparse·Δ + B_sparse:
//!    - a GGM tree (Goldreich–Goldwasser–Micali) expanded by the sender with the
//!      fixed-key AES PRG gives leaves v_0..v_{L-1} = B_sparse of the block;
//!      the receiver learns every leaf but v_{α_i} from one OT per tree level
//!      (the XOR of the left / right children on that level: the GGM
//!      punctured PRF of BCG+19 and Doerner–shelat, CCS 2017);
//!    - a "noisy" VOLE c_i = β_i·Δ + b_i from 128 correlated OTs whose
//!      choice bits are the bits of β_i (c_i = Σ_k x^k t_k, b_i = Σ_k x^k q_k;
//!      Gilboa's product with the IKNP Δ, as in Wolverine's sps-VOLE);
//!    - the sender sends d_i = b_i + Σ_j v_j and the receiver sets
//!      C[α_i] = c_i + d_i + Σ_{j≠α_i} v_j = β_i·Δ + v_{α_i}.
//! 2. *Compression by a public linear map* H: F^N → F^m with 0/1 entries, so
//!    C = H·C_sparse, A = H·A_sparse, B = H·B_sparse keep C = A·Δ + B.
//!    H is the transpose of an Expand-Accumulate code (Boyle–Couteau–Gilboa–
//!    Ishai–Kohl–Resch–Scholl, CRYPTO 2022, "Correlated pseudorandomness from
//!    Expand-Accumulate codes"): first accumulate (prefix sums over the N
//!    entries), then every output is the sum of `EA_WEIGHT` pseudorandom
//!    positions. We do *not* use Silver (Couteau–Rindal–Raghuraman, CRYPTO
//!    2021), whose codes turned out to have low minimum distance (see
//!    Raghuraman–Rindal–Tanguy, CRYPTO 2023, which moved libOTe to
//!    Expand-Convolute / Expand-Accumulate codes).
//!
//! Parameters, following libOTe's current EA settings ("ExAcc11"): expansion
//! N ≥ 5·m, expander weight 11, assumed minimum distance ratio δ = 0.1, and the
//! number of noise positions from the linear-test bound (1 − 2δ)^t ≤ 2^-128,
//! i.e. t = ⌈128 / −log2(0.8)⌉ → 400 (rounded to a multiple of 8).
//!
//! Chunking and bootstrapping: requests are cut into independent chunks of at
//! most 2^17 outputs (same Δ, fresh noise and GGM trees, code seeded per
//! chunk). This keeps the accumulated vector (N·16 bytes ≈ 10 MB) in the
//! last-level cache, which matters because the expander reads it at random
//! (measured: ~17% less CPU for the whole PSI at 2^20 than with 2^18-output
//! chunks, for ~3% more communication; 2^16 was slower again), and bounds
//! memory. Only the first chunk gets its t noisy VOLEs from 128
//! correlated OTs each; every chunk also produces t extra outputs that serve
//! as the next chunk's noisy VOLEs (β_i = A_j, c_i = C_j, b_i = B_j), the
//! bootstrapping of Ferret (Yang–Weng–Lan–Zhang–Wang, CCS 2020). A later
//! chunk then costs t·h OTs and 2·t·h + t blocks of messages.
//!
//! Randomness: α_i, β_i and the GGM roots come from an AES-CTR PRG seeded by
//! the OS. Everything public (the code) is derived from fixed labels.

use rayon::prelude::*;

use super::ot::{self, IknpReceiver, IknpSender, KAPPA};
use super::prim::{Aes, Prg, ggm_expand, reduce64, tccr};
use super::tags;
use crate::channel::Channel;
use crate::error::PsiError;
use crate::wire;

/// Noise positions per chunk (see module docs).
pub(crate) const NOISE: usize = 400;
/// Code length / message length.
pub(crate) const SCALER: usize = 5;
/// Expander row weight.
pub(crate) const EA_WEIGHT: usize = 11;
/// Largest number of outputs delivered by one chunk.
pub(crate) const MAX_CHUNK: usize = 1 << 17;

/// Shape of one chunk.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChunkParams {
    /// outputs delivered to the caller
    pub(crate) m: usize,
    /// extra outputs kept as the next chunk's noisy VOLEs (0 for the last)
    pub(crate) reserve: usize,
    /// leaves used per tree (block length L)
    pub(crate) leaves: usize,
    /// tree depth h, 2^h ≥ L
    pub(crate) depth: usize,
    /// chunk index (domain separation of the code and the OT tweaks)
    pub(crate) index: usize,
}

impl ChunkParams {
    fn new(m: usize, reserve: usize, index: usize) -> Self {
        // even, so that the last GGM level is exactly the block (no copy)
        let leaves = (SCALER * (m + reserve))
            .div_ceil(NOISE)
            .max(2)
            .next_multiple_of(2);
        let depth = leaves.next_power_of_two().trailing_zeros() as usize;
        ChunkParams {
            m,
            reserve,
            leaves,
            depth,
            index,
        }
    }
    /// Code length N.
    fn n(&self) -> usize {
        NOISE * self.leaves
    }
    /// Outputs computed (delivered + reserved).
    #[cfg(test)]
    fn total(&self) -> usize {
        self.m + self.reserve
    }
    /// Whether the noisy VOLEs come from 128 correlated OTs each (first
    /// chunk) rather than from the previous chunk's reserve.
    fn uses_cots(&self) -> bool {
        self.index == 0
    }
    /// OTs: 128 per noise value (first chunk only), then one per tree level.
    fn num_ots(&self) -> usize {
        NOISE * self.depth + if self.uses_cots() { NOISE * KAPPA } else { 0 }
    }
    fn ot_blocks(&self) -> usize {
        self.num_ots().div_ceil(128)
    }
    fn pprf_ot(&self, tree: usize, level: usize) -> usize {
        let base = if self.uses_cots() { NOISE * KAPPA } else { 0 };
        base + tree * self.depth + level
    }
    fn tweak(&self) -> u128 {
        (self.index as u128) << 64
    }
}

/// Splits m outputs into chunks of at most MAX_CHUNK; every chunk but the
/// last also produces NOISE outputs for the next one (Ferret's
/// bootstrapping, Yang–Weng–Lan–Zhang–Wang CCS 2020).
pub(crate) fn chunks(m: usize) -> Vec<ChunkParams> {
    let k = m.div_ceil(MAX_CHUNK).max(1);
    let base = m / k;
    let extra = m % k;
    (0..k)
        .map(|i| {
            let reserve = if i + 1 < k { NOISE } else { 0 };
            ChunkParams::new(base + usize::from(i < extra), reserve, i)
        })
        .collect()
}

/// x·a in GF(2^128).
#[inline]
fn mul_x(a: u128) -> u128 {
    (a << 1) ^ if a >> 127 == 1 { 0x87 } else { 0 }
}

/// Σ_k x^k·v[k] for k < 128 (Horner).
fn pack_gf(v: &[u128]) -> u128 {
    v.iter().rev().fold(0u128, |acc, x| mul_x(acc) ^ x)
}

/// Outputs ahead of the current one whose inputs are prefetched.
const PREFETCH: usize = 8;

/// Hints the CPU to load `x` into cache (the expander reads are random over
/// N·16 bytes, far more than the caches; prefetching overlaps the misses).
#[inline(always)]
#[allow(unsafe_code)]
fn prefetch(x: &u128) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` needs only SSE, which every x86_64 CPU has; it
    // is a hint that never faults, and the pointer comes from a reference.
    unsafe {
        use core::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>((x as *const u128).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

/// The Expand-Accumulate compression for one chunk.
pub(crate) struct EaCode {
    n: usize,
    blocks: usize,
    block_len: usize,
    aes: Aes,
}

impl EaCode {
    pub(crate) fn new(p: &ChunkParams) -> Self {
        EaCode {
            n: p.n(),
            blocks: NOISE,
            block_len: p.leaves,
            aes: Aes::from_label(&format!("venn rr22 2026 EA code chunk {}", p.index)),
        }
    }

    /// Expander positions of outputs [start, start + count): position q =
    /// output·w + k is the 64-bit half (q mod 2) of AES_code(⌊q/2⌋), reduced
    /// to [0, N) by Lemire's multiply-shift. Returns (block, offset, flat
    /// index) with block = ⌊pos/L⌋ computed exactly by a multiply with
    /// ⌈2^64/L⌉ (exact because pos < 2^32 and L < 2^32).
    fn positions(&self, start: usize, count: usize) -> Vec<(u32, u32, u32)> {
        let q0 = start * EA_WEIGHT;
        let q1 = q0 + count * EA_WEIGHT;
        let b0 = q0 / 2;
        let mut blocks: Vec<u128> = (b0..q1.div_ceil(2)).map(|b| b as u128).collect();
        self.aes.enc_inplace(&mut blocks);
        let n = self.n as u64;
        let len = self.block_len as u64;
        let recip = u64::MAX / len + 1;
        (q0..q1)
            .map(|q| {
                let r = blocks[q / 2 - b0];
                let v = if q % 2 == 0 {
                    r as u64
                } else {
                    (r >> 64) as u64
                };
                let pos = reduce64(v, n);
                let b = ((pos as u128 * recip as u128) >> 64) as u64;
                let off = pos - b * len;
                debug_assert!(b == pos / len && off < len);
                (b as u32, off as u32, pos as u32)
            })
            .collect()
    }

    /// In-place prefix XOR ("accumulate").
    pub(crate) fn accumulate(v: &mut [u128]) {
        let mut acc = 0u128;
        for x in v.iter_mut() {
            acc ^= *x;
            *x = acc;
        }
    }

    /// out[i] = Σ_k acc[pos(first + i, k)] for an already accumulated vector.
    pub(crate) fn expand(&self, acc: &[u128], first: usize, out: &mut [u128]) {
        debug_assert_eq!(acc.len(), self.n);
        const STEP: usize = 2048;
        out.par_chunks_mut(STEP).enumerate().for_each(|(ci, o)| {
            let pos = self.positions(first + ci * STEP, o.len());
            for (i, y) in o.iter_mut().enumerate() {
                if let Some(ahead) =
                    pos.get((i + PREFETCH) * EA_WEIGHT..(i + PREFETCH + 1) * EA_WEIGHT)
                {
                    for &(_, _, j) in ahead {
                        prefetch(&acc[j as usize]);
                    }
                }
                let mut s = 0u128;
                for &(_, _, j) in &pos[i * EA_WEIGHT..(i + 1) * EA_WEIGHT] {
                    s ^= acc[j as usize];
                }
                *y = s;
            }
        });
    }

    /// Dual encoding of a full sparse vector (overwritten): accumulate, then expand.
    #[cfg(test)]
    pub(crate) fn encode(&self, mut e: Vec<u128>, out: &mut [u128]) {
        Self::accumulate(&mut e);
        self.expand(&e, 0, out);
    }

    /// Prefix sums of the regular sparse vector with `beta[i]` at `alpha[i]`
    /// in block i, at block starts: β_0 + … + β_{b-1}.
    fn regular_prefix(&self, beta: &[u128]) -> Vec<u128> {
        let mut before = vec![0u128; self.blocks];
        let mut acc = 0u128;
        for (b, x) in before.iter_mut().enumerate() {
            *x = acc;
            acc ^= beta[b];
        }
        before
    }

    /// Encoding of the regular sparse vector with value `beta[i]` at
    /// `alpha[i]` in block i, without materialising it: its prefix sum at
    /// (block b, offset o) is β_0 + … + β_{b-1} (+ β_b if o ≥ α_b).
    #[cfg(test)]
    pub(crate) fn encode_regular(&self, alpha: &[usize], beta: &[u128], out: &mut [u128]) {
        let mut dummy = vec![0u128; out.len()];
        let acc = vec![0u128; self.n];
        self.encode_pair(&acc, alpha, beta, 0, out, &mut dummy);
    }

    /// The receiver's two encodings with shared expander positions:
    /// `out_c` = expand(acc) for an accumulated vector, `out_a` = the
    /// encoding of the regular sparse vector (alpha, beta).
    pub(crate) fn encode_pair(
        &self,
        acc: &[u128],
        alpha: &[usize],
        beta: &[u128],
        first: usize,
        out_a: &mut [u128],
        out_c: &mut [u128],
    ) {
        let before = self.regular_prefix(beta);
        const STEP: usize = 2048;
        out_a
            .par_chunks_mut(STEP)
            .zip(out_c.par_chunks_mut(STEP))
            .enumerate()
            .for_each(|(ci, (oa, oc))| {
                let pos = self.positions(first + ci * STEP, oa.len());
                for (i, (ya, yc)) in oa.iter_mut().zip(oc.iter_mut()).enumerate() {
                    if let Some(ahead) =
                        pos.get((i + PREFETCH) * EA_WEIGHT..(i + PREFETCH + 1) * EA_WEIGHT)
                    {
                        for &(_, _, j) in ahead {
                            prefetch(&acc[j as usize]);
                        }
                    }
                    let (mut sa, mut sc) = (0u128, 0u128);
                    for &(b, off, j) in &pos[i * EA_WEIGHT..(i + 1) * EA_WEIGHT] {
                        let b = b as usize;
                        sc ^= acc[j as usize];
                        sa ^= before[b];
                        if off as usize >= alpha[b] {
                            sa ^= beta[b];
                        }
                    }
                    *ya = sa;
                    *yc = sc;
                }
            });
    }
}

impl ChunkParams {
    /// Nodes kept on level l (1..=depth) of a tree truncated to `leaves`
    /// leaves: the ancestors of leaves < L, rounded up to whole sibling pairs
    /// (both parties expand every kept parent fully).
    fn kept(&self, l: usize) -> usize {
        self.leaves.div_ceil(1 << (self.depth - l))
    }
}

/// Expands a truncated GGM tree from `root`, calling `on_level(l, nodes)` for
/// each level l = 1..=depth with all children of the kept parents, and
/// returning the leaves.
fn ggm_tree(
    p: &ChunkParams,
    root: u128,
    mut on_level: impl FnMut(usize, &[u128]),
    leaves: &mut [u128],
) {
    let mut cur = vec![root];
    let mut next = Vec::with_capacity(p.leaves);
    for l in 1..p.depth {
        next.clear();
        next.resize(2 * cur.len(), 0);
        ggm_expand(&cur, &mut next);
        on_level(l, &next);
        next.truncate(p.kept(l));
        std::mem::swap(&mut cur, &mut next);
    }
    // L is even, so the kept parents have exactly L children: the leaves
    debug_assert_eq!(2 * cur.len(), leaves.len());
    ggm_expand(&cur, leaves);
    on_level(p.depth, leaves);
}

/// The VOLE sender's side: returns (Δ, B) with |B| = m.
pub(crate) fn send(chan: &dyn Channel, m: usize) -> Result<(u128, Vec<u128>), PsiError> {
    let mut prg = Prg::from_os();
    let delta = prg.block();
    let t0 = std::time::Instant::now();
    let keys = ot::base_recv(chan, delta)?;
    super::trace!(t0, "S: base OT");
    let mut iknp = IknpSender::new(delta, &keys);
    let mut out = vec![0u128; m];
    let mut done = 0;
    let mut reserve: Vec<u128> = Vec::new();
    let mut sparse: Vec<u128> = Vec::new();
    for p in chunks(m) {
        let msg = wire::recv(chan, tags::VOLE_OT, "VOLE OT extension")?;
        let q = iknp.extend(p.ot_blocks(), &msg)?;
        // noisy VOLE: b_i = Σ x^k q_{128i+k}, or the previous chunk's reserve
        let b: Vec<u128> = if p.uses_cots() {
            (0..NOISE)
                .map(|i| pack_gf(&q[i * KAPPA..(i + 1) * KAPPA]))
                .collect()
        } else {
            std::mem::take(&mut reserve)
        };
        // OT pads for the PPRF levels
        let pprf_q = &q[p.pprf_ot(0, 0)..p.pprf_ot(0, 0) + NOISE * p.depth];
        let q1: Vec<u128> = pprf_q.iter().map(|x| x ^ delta).collect();
        let mut m0 = vec![0u128; pprf_q.len()];
        let mut m1 = vec![0u128; pprf_q.len()];
        tccr(pprf_q, p.tweak(), &mut m0);
        tccr(&q1, p.tweak(), &mut m1);
        // GGM trees
        let roots = prg.blocks(NOISE);
        sparse.resize(p.n(), 0);
        let mut reply = vec![0u128; NOISE * (2 * p.depth + 1)];
        sparse
            .par_chunks_mut(p.leaves)
            .zip(reply.par_chunks_mut(2 * p.depth + 1))
            .enumerate()
            .for_each(|(i, (leaves, r))| {
                ggm_tree(
                    &p,
                    roots[i],
                    |l, nodes| {
                        let (mut k0, mut k1) = (0u128, 0u128);
                        for pair in nodes.chunks_exact(2) {
                            k0 ^= pair[0];
                            k1 ^= pair[1];
                        }
                        let o = i * p.depth + (l - 1);
                        r[2 * (l - 1)] = k0 ^ m0[o];
                        r[2 * (l - 1) + 1] = k1 ^ m1[o];
                    },
                    leaves,
                );
                let sum = leaves.iter().fold(0u128, |a, x| a ^ x);
                r[2 * p.depth] = b[i] ^ sum;
            });
        let mut bytes = Vec::new();
        wire::put_u128s(&mut bytes, &reply);
        wire::send(chan, tags::VOLE_PPRF, &bytes)?;
        super::trace!(t0, "S: pprf sent");
        let code = EaCode::new(&p);
        EaCode::accumulate(&mut sparse);
        code.expand(&sparse, 0, &mut out[done..done + p.m]);
        reserve = vec![0u128; p.reserve];
        code.expand(&sparse, p.m, &mut reserve);
        super::trace!(t0, "S: EA encoded");
        done += p.m;
    }
    Ok((delta, out))
}

/// The VOLE receiver's side: returns (A, C) with C = A·Δ + B, |A| = |C| = m.
pub(crate) fn recv(chan: &dyn Channel, m: usize) -> Result<(Vec<u128>, Vec<u128>), PsiError> {
    let mut prg = Prg::from_os();
    let t0 = std::time::Instant::now();
    let base = ot::base_send(chan)?;
    super::trace!(t0, "R: base OT");
    let mut iknp = IknpReceiver::new(&base);
    // Phase 1: every chunk's noise and OT extension message. None depends on
    // the sender's replies (a bootstrapped chunk's β_i come from the
    // previous chunk's outputs, but its OT choices do not involve β_i).
    let mut pending: Vec<Pending> = Vec::new();
    let mut msgs = Vec::new();
    for p in chunks(m) {
        // noise: α_i uniform in [0, L), β_i uniform non-zero
        let alpha: Vec<usize> = prg
            .blocks(NOISE)
            .iter()
            .map(|r| reduce64(*r as u64, p.leaves as u64) as usize)
            .collect();
        let beta: Vec<u128> = if p.uses_cots() {
            prg.blocks(NOISE)
                .into_iter()
                .map(|b| if b == 0 { 1 } else { b })
                .collect()
        } else {
            Vec::new()
        };
        // choice bits: bits of β_i (first chunk), then for tree i level l
        // (1-based) the complement of α_i's bit at that level (the sibling's side)
        let mut choices = vec![0u128; p.ot_blocks()];
        let mut set = |idx: usize, bit: bool| {
            if bit {
                choices[idx / 128] |= 1u128 << (idx % 128);
            }
        };
        for i in 0..NOISE {
            if p.uses_cots() {
                for k in 0..KAPPA {
                    set(i * KAPPA + k, (beta[i] >> k) & 1 == 1);
                }
            }
            for l in 1..=p.depth {
                let a_bit = (alpha[i] >> (p.depth - l)) & 1 == 1;
                set(p.pprf_ot(i, l - 1), !a_bit);
            }
        }
        let (msg, t) = iknp.extend(&choices);
        msgs.push(msg);
        let first = p.uses_cots().then(|| {
            let c = (0..NOISE)
                .map(|i| pack_gf(&t[i * KAPPA..(i + 1) * KAPPA]))
                .collect();
            (beta, c)
        });
        let pprf_t = &t[p.pprf_ot(0, 0)..p.pprf_ot(0, 0) + NOISE * p.depth];
        let mut mr = vec![0u128; pprf_t.len()];
        tccr(pprf_t, p.tweak(), &mut mr);
        pending.push((p, alpha, first, mr));
    }
    // Phase 2: one thread streams the OT messages out while this one
    // processes the sender's replies (so neither side blocks on a full link).
    std::thread::scope(|s| {
        let out = s.spawn(move || -> Result<(), PsiError> {
            for msg in msgs {
                wire::send(chan, tags::VOLE_OT, &msg)?;
            }
            Ok(())
        });
        let r = recv_replies(chan, m, pending, t0);
        let o = out
            .join()
            .unwrap_or_else(|_| Err(PsiError::peer("VOLE: sending thread panicked")));
        let r = r?;
        o?;
        Ok(r)
    })
}

/// A chunk prepared by the receiver before the sender's reply: parameters,
/// α_i, (β_i, c_i) for the first chunk, and the PPRF OT pads m_r.
type Pending = (
    ChunkParams,
    Vec<usize>,
    Option<(Vec<u128>, Vec<u128>)>,
    Vec<u128>,
);

/// Phase 2 of [`recv`], per chunk: punctured trees, sparse vector, EA code.
fn recv_replies(
    chan: &dyn Channel,
    m: usize,
    pending: Vec<Pending>,
    t0: std::time::Instant,
) -> Result<(Vec<u128>, Vec<u128>), PsiError> {
    let mut a_out = vec![0u128; m];
    let mut c_out = vec![0u128; m];
    let mut done = 0;
    let mut reserve: (Vec<u128>, Vec<u128>) = (Vec::new(), Vec::new());
    let mut sparse: Vec<u128> = Vec::new();
    for (p, alpha, first, mr) in pending {
        // β_i and c_i = β_i·Δ + b_i: fresh (first chunk) or the previous
        // chunk's reserved outputs (A_j, C_j)
        let (beta, c) = match first {
            Some(bc) => bc,
            None => std::mem::take(&mut reserve),
        };
        let reply = wire::recv(chan, tags::VOLE_PPRF, "VOLE punctured-PRF message")?;
        let reply = wire::get_u128s(&reply, "VOLE punctured-PRF message")?;
        if reply.len() != NOISE * (2 * p.depth + 1) {
            return Err(PsiError::peer(format!(
                "VOLE punctured-PRF message has {} blocks, expected {}",
                reply.len(),
                NOISE * (2 * p.depth + 1)
            )));
        }
        sparse.resize(p.n(), 0);
        sparse
            .par_chunks_mut(p.leaves)
            .zip(reply.par_chunks(2 * p.depth + 1))
            .enumerate()
            .for_each(|(i, (leaves, r))| {
                let a = alpha[i];
                let mut cur = vec![0u128; 1];
                let mut scratch = Vec::with_capacity(p.leaves);
                let mut path = 0usize; // index of the unknown node on this level
                for l in 1..=p.depth {
                    let side = (a >> (p.depth - l)) & 1; // path goes to child `side`
                    // the last level is written straight into the block
                    let next: &mut [u128] = if l == p.depth {
                        &mut leaves[..]
                    } else {
                        scratch.clear();
                        scratch.resize(2 * cur.len(), 0);
                        &mut scratch[..]
                    };
                    debug_assert_eq!(next.len(), 2 * cur.len());
                    ggm_expand(&cur, next);
                    // the children of the unknown node are garbage: clear them
                    next[2 * path] = 0;
                    next[2 * path + 1] = 0;
                    let o = i * p.depth + (l - 1);
                    let sib_side = 1 - side;
                    let k = r[2 * (l - 1) + sib_side] ^ mr[o];
                    let known = next
                        .iter()
                        .skip(sib_side)
                        .step_by(2)
                        .fold(0u128, |acc, x| acc ^ x);
                    next[2 * path + sib_side] = k ^ known;
                    path = 2 * path + side;
                    if l < p.depth {
                        scratch.truncate(p.kept(l));
                        std::mem::swap(&mut cur, &mut scratch);
                    }
                }
                debug_assert_eq!(path, a);
                let others = leaves.iter().fold(0u128, |acc, x| acc ^ x); // leaf α is 0
                leaves[a] = c[i] ^ r[2 * p.depth] ^ others;
            });
        super::trace!(t0, "R: pprf received + trees");
        let code = EaCode::new(&p);
        EaCode::accumulate(&mut sparse);
        code.encode_pair(
            &sparse,
            &alpha,
            &beta,
            0,
            &mut a_out[done..done + p.m],
            &mut c_out[done..done + p.m],
        );
        let mut ra = vec![0u128; p.reserve];
        let mut rc = vec![0u128; p.reserve];
        code.encode_pair(&sparse, &alpha, &beta, p.m, &mut ra, &mut rc);
        reserve = (ra, rc);
        super::trace!(t0, "R: EA A");
        done += p.m;
    }
    Ok((a_out, c_out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::memory_pair;
    use crate::rr22::gf128;

    fn run(m: usize) -> (u128, Vec<u128>, Vec<u128>, Vec<u128>) {
        let (ca, cb) = memory_pair(8);
        std::thread::scope(|s| {
            let h = s.spawn(|| send(&ca, m).unwrap());
            let (a, c) = recv(&cb, m).unwrap();
            let (delta, b) = h.join().unwrap();
            (delta, b, a, c)
        })
    }

    #[test]
    fn vole_correlation_holds_at_every_index() {
        for m in [1usize, 7, 1000, 70_001, 2 * MAX_CHUNK + 3] {
            let (delta, b, a, c) = run(m);
            assert_eq!(a.len(), m);
            for i in 0..m {
                assert_eq!(c[i], gf128::mul(a[i], delta) ^ b[i], "m={m} i={i}");
            }
            // and the outputs are not degenerate
            if m > 100 {
                assert!(a.iter().filter(|x| **x == 0).count() < 2);
                assert!(b.iter().filter(|x| **x == 0).count() < 2);
                assert_ne!(a[0], a[1]);
            }
        }
    }

    #[test]
    fn chunking_covers_request() {
        let cs = chunks(MAX_CHUNK * 2 + 5);
        assert_eq!(cs.len(), 3);
        assert_eq!(cs.iter().map(|c| c.m).sum::<usize>(), MAX_CHUNK * 2 + 5);
        assert!(
            cs.iter()
                .all(|c| c.m <= MAX_CHUNK && c.n() >= SCALER * c.total())
        );
        assert_eq!(cs[0].reserve, NOISE);
        assert_eq!(cs[2].reserve, 0);
        assert!(cs[0].uses_cots() && !cs[1].uses_cots());
        assert_eq!(chunks(0).len(), 1);
    }

    #[test]
    fn ea_code_is_linear_and_regular_encoding_agrees() {
        let p = ChunkParams::new(3000, 0, 0);
        let code = EaCode::new(&p);
        let mut prg = Prg::new(1);
        let x = prg.blocks(p.n());
        let y = prg.blocks(p.n());
        let xy: Vec<u128> = x.iter().zip(&y).map(|(a, b)| a ^ b).collect();
        let mut ex = vec![0u128; p.m];
        let mut ey = vec![0u128; p.m];
        let mut exy = vec![0u128; p.m];
        code.encode(x, &mut ex);
        code.encode(y, &mut ey);
        code.encode(xy, &mut exy);
        for i in 0..p.m {
            assert_eq!(exy[i], ex[i] ^ ey[i]);
        }
        // expanding a range of outputs from an offset gives the same outputs
        let mut acc = prg.blocks(p.n());
        EaCode::accumulate(&mut acc);
        let mut full = vec![0u128; p.m];
        code.expand(&acc, 0, &mut full);
        let mut tail = vec![0u128; p.m - 1000];
        code.expand(&acc, 1000, &mut tail);
        assert_eq!(&full[1000..], &tail[..]);
        // a regular sparse vector encodes the same implicitly and explicitly
        let alpha: Vec<usize> = (0..NOISE).map(|i| (i * 7919) % p.leaves).collect();
        let beta = prg.blocks(NOISE);
        let mut e = vec![0u128; p.n()];
        for i in 0..NOISE {
            e[i * p.leaves + alpha[i]] = beta[i];
        }
        let mut explicit = vec![0u128; p.m];
        let mut implicit = vec![0u128; p.m];
        code.encode(e, &mut explicit);
        code.encode_regular(&alpha, &beta, &mut implicit);
        assert_eq!(explicit, implicit);
        // every output depends on the input: a single non-zero input entry
        // changes some outputs
        let mut one = vec![0u128; p.n()];
        one[p.n() / 2] = 1;
        let mut eo = vec![0u128; p.m];
        code.encode(one, &mut eo);
        assert!(eo.iter().any(|v| *v != 0));
    }

    #[test]
    #[ignore]
    fn ea_speed() {
        for lg in [16, 18, 20] {
            let p = ChunkParams::new(1 << lg, 0, 0);
            let code = EaCode::new(&p);
            let acc = Prg::new(1).blocks(p.n());
            let mut out = vec![0u128; p.m];
            let t = std::time::Instant::now();
            for _ in 0..(1 << (20 - lg)) {
                code.expand(&acc, 0, &mut out);
            }
            let dt = t.elapsed().as_secs_f64() * 1e3;
            println!(
                "EA 2^20 outputs, chunks of 2^{lg} (N = {}): {dt:.1} ms",
                p.n()
            );
        }
        let p = ChunkParams::new(1 << 20, 0, 0);
        let acc = Prg::new(1).blocks(p.n());
        let mut e = acc;
        let t = std::time::Instant::now();
        EaCode::accumulate(&mut e);
        println!("accumulate: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    }

    #[test]
    fn expander_positions_are_exact() {
        for m in [1usize, 10, 3000, MAX_CHUNK] {
            let p = ChunkParams::new(m, NOISE, 0);
            let code = EaCode::new(&p);
            for (b, off, j) in code.positions(3, 500) {
                assert!((j as usize) < p.n());
                assert_eq!(b as usize, j as usize / p.leaves);
                assert_eq!(off as usize, j as usize % p.leaves);
            }
        }
    }

    #[test]
    fn noisy_vole_packing_is_gf_linear() {
        // Σ x^k (q_k ⊕ r_k Δ) = Σ x^k q_k + (Σ r_k x^k)·Δ
        let mut prg = Prg::new(9);
        let q = prg.blocks(128);
        let delta = prg.block();
        let beta = prg.block();
        let t: Vec<u128> = (0..128)
            .map(|k| q[k] ^ if (beta >> k) & 1 == 1 { delta } else { 0 })
            .collect();
        assert_eq!(pack_gf(&t), pack_gf(&q) ^ gf128::mul(beta, delta));
    }
}
