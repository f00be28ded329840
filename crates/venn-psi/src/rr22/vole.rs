//! Silent random VOLE over GF(2^128) from dual LPN with an Expand-Convolute code.
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
//!    H is the dual encoding of an Expand-Convolute code (Raghuraman–Rindal–
//!    Tanguy, CRYPTO 2023; see [`super::exconv`]). The receiver encodes its
//!    sparse A too (it is dense after the convolution). We do *not* use
//!    Silver (Couteau–Rindal–Raghuraman, CRYPTO 2021), whose codes turned out
//!    to have low minimum distance (see RRT23, which moved libOTe to
//!    Expand-Convolute codes).
//!
//! Parameters, following libOTe's default silent-VOLE code ("ExConv7x24"):
//! expansion N ≥ 2·m, expander weight 7, convolution width 24, assumed
//! minimum distance ratio δ = 0.15, and the number of noise positions from the
//! linear-test bound (1 − 2δ)^t ≤ 2^-128, i.e. t ≥ 128 / −log2(0.7) = 248.8
//! → 256 (a multiple of 8). Earlier versions of venn used the Expand-Accumulate
//! code of Boyle et al. (CRYPTO 2022) with libOTe's "ExAcc11" settings (N =
//! 5·m, weight 11, δ = 0.1, t = 400); the switch cut the VOLE of a 2^20-row
//! PSI from ~410 to ~240 ms (both parties in one process, this machine) and
//! its own messages from ~3.3 to ~2.0 MB: 2.5× fewer GGM leaves, and an
//! expander that reads a vector a fifth as long, 7 instead of 11 times.
//!
//! Chunking and bootstrapping: requests are cut into independent chunks of at
//! most 2^17 outputs (same Δ, fresh noise and GGM trees, code seeded per
//! chunk). This bounds memory and keeps the convolved vector (~2 MB), which
//! the expander reads at random, near the core's caches (2^15 and 2^16
//! measured the same, with more messages). Only the first chunk gets its t
//! noisy VOLEs from 128
//! correlated OTs each; every chunk also produces t extra outputs that serve
//! as the next chunk's noisy VOLEs (β_i = A_j, c_i = C_j, b_i = B_j), the
//! bootstrapping of Ferret (Yang–Weng–Lan–Zhang–Wang, CCS 2020). A later
//! chunk then costs t·h OTs and 2·t·h + t blocks of messages.
//!
//! Randomness: α_i, β_i and the GGM roots come from an AES-CTR PRG seeded by
//! the OS. Everything public (the code) is derived from fixed labels.

use rayon::prelude::*;

use super::exconv::ExConvCode;
use super::ot::{self, IknpReceiver, IknpSender, KAPPA};
use super::prim::{Aes, Prg, ggm_expand, reduce64, tccr};
use super::tags;
use crate::channel::Channel;
use crate::error::PsiError;
use crate::wire;

/// Noise positions per chunk (see module docs).
pub(crate) const NOISE: usize = 256;
/// Code length / message length.
pub(crate) const SCALER: usize = 2;
/// Largest number of outputs delivered by one chunk.
pub(crate) const MAX_CHUNK: usize = 1 << 17;

/// What kind of VOLE is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VoleCfg {
    /// The receiver's A lies in the GF(2)-subspace of GF(2^128) of
    /// polynomials of degree < `bits` (128: A ∈ GF(2^128), the plain VOLE;
    /// fewer: the subfield VOLE of RR22 §5 / Fig. 10, where the base
    /// "field" B is that subspace — every map we apply to A is GF(2)-linear,
    /// so closure under XOR is all the construction needs).
    pub(crate) bits: usize,
    /// Largest chunk (see module docs).
    pub(crate) max_chunk: usize,
    /// Run the malicious-security checks (see [`crate::rr22::ot`] for the
    /// OT extension check and the module docs for the sparse-VOLE check).
    pub(crate) malicious: bool,
}

impl VoleCfg {
    /// The semi-honest GF(2^128) VOLE of the fast mode.
    pub(crate) const FAST: VoleCfg = VoleCfg {
        bits: 128,
        max_chunk: MAX_CHUNK,
        malicious: false,
    };

    fn mask(&self) -> u128 {
        if self.bits >= 128 {
            u128::MAX
        } else {
            (1u128 << self.bits) - 1
        }
    }
}

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
    /// correlated OTs per noisy VOLE in the first chunk (bits of β)
    pub(crate) beta_bits: usize,
    /// whether 128 extra COTs give the consistency check's mask
    pub(crate) check: bool,
}

impl ChunkParams {
    fn with_cfg(m: usize, reserve: usize, index: usize, cfg: &VoleCfg) -> Self {
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
            beta_bits: cfg.bits.min(KAPPA),
            check: cfg.malicious,
        }
    }
    /// Code length N.
    fn n(&self) -> usize {
        NOISE * self.leaves
    }
    /// Outputs computed (delivered + reserved).
    fn total(&self) -> usize {
        self.m + self.reserve
    }
    /// Whether the noisy VOLEs come from 128 correlated OTs each (first
    /// chunk) rather than from the previous chunk's reserve.
    fn uses_cots(&self) -> bool {
        self.index == 0
    }
    /// OTs: `beta_bits` per noise value (first chunk only), one per tree
    /// level, and 128 for the check's mask (malicious mode).
    fn num_ots(&self) -> usize {
        self.mask_ot() + if self.check { KAPPA } else { 0 }
    }
    /// First OT of the check's mask.
    fn mask_ot(&self) -> usize {
        self.pprf_ot(0, 0) + NOISE * self.depth
    }
    fn ot_blocks(&self) -> usize {
        self.num_ots().div_ceil(128)
    }
    fn pprf_ot(&self, tree: usize, level: usize) -> usize {
        let base = if self.uses_cots() {
            NOISE * self.beta_bits
        } else {
            0
        };
        base + tree * self.depth + level
    }
    fn tweak(&self) -> u128 {
        (self.index as u128) << 64
    }
    /// The chunk's compression code.
    fn code(&self) -> ExConvCode {
        ExConvCode::new(self.total(), self.n(), self.index)
    }

    /// Compresses the chunk's sparse vector (its tail is overwritten by the
    /// convolution): the delivered outputs go to `out` (`m` of them), the
    /// reserved ones (the next chunk's noisy VOLEs) are returned.
    fn compress(&self, sparse: &mut [u128], out: &mut [u128]) -> Vec<u128> {
        let code = self.code();
        code.convolve(sparse);
        code.expand(sparse, 0, out);
        let mut reserve = vec![0u128; self.reserve];
        code.expand(sparse, self.m, &mut reserve);
        reserve
    }
}

/// Splits m outputs into chunks of at most MAX_CHUNK; every chunk but the
/// last also produces NOISE outputs for the next one (Ferret's
/// bootstrapping, Yang–Weng–Lan–Zhang–Wang CCS 2020).
pub(crate) fn chunks(m: usize, cfg: &VoleCfg) -> Vec<ChunkParams> {
    let k = m.div_ceil(cfg.max_chunk).max(1);
    let base = m / k;
    let extra = m % k;
    (0..k)
        .map(|i| {
            let reserve = if i + 1 < k { NOISE } else { 0 };
            ChunkParams::with_cfg(base + usize::from(i < extra), reserve, i, cfg)
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
        // every entry is overwritten by ggm_expand: only grow (no zero fill
        // of what is already there)
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

/// The sparse-VOLE consistency check's challenge for one chunk: χ_j =
/// AES_k(j) with k = BLAKE3(chunk index ‖ the sender's PPRF message)
/// (Fiat–Shamir: the sender's message is fixed before χ is known).
fn check_chi(index: usize, reply: &[u8]) -> Aes {
    let mut h = blake3::Hasher::new_derive_key("venn rr22 2026 sparse VOLE check challenge");
    h.update(&(index as u64).to_le_bytes());
    h.update(reply);
    let mut k = [0u8; 16];
    k.copy_from_slice(&h.finalize().as_bytes()[..16]);
    Aes::new(u128::from_le_bytes(k))
}

/// Σ_j χ_j·v[j] over GF(2^128), in parallel.
fn check_combine(chi: &Aes, v: &[u128]) -> u128 {
    const STEP: usize = 4096;
    v.par_chunks(STEP)
        .enumerate()
        .map(|(ci, c)| {
            let mut idx: Vec<u128> = (0..c.len()).map(|i| (ci * STEP + i) as u128).collect();
            chi.enc_inplace(&mut idx);
            idx.iter()
                .zip(c)
                .fold(0u128, |acc, (x, y)| acc ^ super::gf128::mul(*x, *y))
        })
        .reduce(|| 0, |a, b| a ^ b)
}

/// Digest of the check values of every chunk (what the sender reveals).
fn check_digest(vs: &[u128]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("venn rr22 2026 sparse VOLE check digest");
    for v in vs {
        h.update(&v.to_le_bytes());
    }
    *h.finalize().as_bytes()
}

/// Test hook: how a sender deviates (malicious-mode tests only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cheat {
    None,
    /// flip a bit of both sums of one GGM level (so the receiver's tree is
    /// wrong whatever its α: the receiver's C no longer equals A·Δ + B)
    PprfLevel,
}

/// The VOLE sender's side: returns (Δ, B) with |B| = m.
#[cfg(test)]
pub(crate) fn send(
    chan: &dyn Channel,
    m: usize,
    cfg: &VoleCfg,
) -> Result<(u128, Vec<u128>), PsiError> {
    send_with(chan, m, cfg, Cheat::None)
}

pub(crate) fn send_with(
    chan: &dyn Channel,
    m: usize,
    cfg: &VoleCfg,
    cheat: Cheat,
) -> Result<(u128, Vec<u128>), PsiError> {
    let delta = Prg::from_os().block();
    send_with_delta(chan, m, cfg, cheat, delta).map(|b| (delta, b))
}

/// [`send_with`] under a Δ the caller drew (uniformly at random, and kept
/// to itself): returns B.
pub(crate) fn send_with_delta(
    chan: &dyn Channel,
    m: usize,
    cfg: &VoleCfg,
    cheat: Cheat,
    delta: u128,
) -> Result<Vec<u128>, PsiError> {
    let mut prg = Prg::from_os();
    let t0 = std::time::Instant::now();
    let keys = ot::base_recv(chan, delta)?;
    super::trace!(t0, "S: base OT");
    let mut iknp = IknpSender::new(delta, &keys);
    let mut out = vec![0u128; m];
    let mut done = 0;
    let mut reserve: Vec<u128> = Vec::new();
    let mut sparse: Vec<u128> = Vec::new();
    // per chunk: Σ χ_j·v_j + v* (malicious mode)
    let mut checks: Vec<u128> = Vec::new();
    for p in chunks(m, cfg) {
        let msg = wire::recv(chan, tags::VOLE_OT, "VOLE OT extension")?;
        let q = if cfg.malicious {
            iknp.extend_checked(p.ot_blocks(), &msg)?
        } else {
            iknp.extend(p.ot_blocks(), &msg)?
        };
        // noisy VOLE: b_i = Σ x^k q_{bb·i+k}, or the previous chunk's reserve
        let bb = p.beta_bits;
        let b: Vec<u128> = if p.uses_cots() {
            (0..NOISE)
                .map(|i| pack_gf(&q[i * bb..(i + 1) * bb]))
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
        if cheat == Cheat::PprfLevel && p.index == 0 {
            // tree 0, first level, both sums: the receiver's whole sibling
            // subtree (half the block) is wrong. (A last-level flip spoils
            // one leaf, whose error the compression misses about one time in
            // three: the unchecked half of the test then failed at random.)
            reply[0] ^= 1;
            reply[1] ^= 1;
        }
        let mut bytes = Vec::new();
        wire::put_u128s(&mut bytes, &reply);
        if p.check {
            let mo = p.mask_ot();
            let v_star = pack_gf(&q[mo..mo + KAPPA]);
            checks.push(check_combine(&check_chi(p.index, &bytes), &sparse) ^ v_star);
        }
        wire::send(chan, tags::VOLE_PPRF, &bytes)?;
        super::trace!(t0, "S: pprf sent");
        reserve = p.compress(&mut sparse, &mut out[done..done + p.m]);
        super::trace!(t0, "S: encoded");
        done += p.m;
    }
    if cfg.malicious {
        // the receiver's x* per chunk; reply with the digest of
        // Σ χ_j·v_j + v* + x*·Δ, which equals Σ χ_j·w_j + z* at the receiver
        let xs = wire::recv(chan, tags::VOLE_CHECK, "VOLE consistency check")?;
        let xs = wire::get_u128s(&xs, "VOLE consistency check")?;
        if xs.len() != checks.len() {
            return Err(PsiError::peer(format!(
                "VOLE consistency check has {} values, expected {}",
                xs.len(),
                checks.len()
            )));
        }
        let vs: Vec<u128> = checks
            .iter()
            .zip(&xs)
            .map(|(c, x)| c ^ super::gf128::mul(*x, delta))
            .collect();
        wire::send(chan, tags::VOLE_CHECK, &check_digest(&vs))?;
    }
    Ok(out)
}

/// The VOLE receiver's side: returns (A, C) with C = A·Δ + B, |A| = |C| = m.
///
/// The all-in-one form of [`RecvNoise`], [`RecvNoise::a`], [`recv_c`] and
/// [`recv_check`]: A is computed on a thread of its own beside the messages.
pub(crate) fn recv(
    chan: &dyn Channel,
    m: usize,
    cfg: &VoleCfg,
) -> Result<(Vec<u128>, Vec<u128>), PsiError> {
    let noise = RecvNoise::new(m, cfg);
    std::thread::scope(|s| {
        let a = s.spawn(|| noise.a());
        let (c, checks, ()) = recv_c(chan, &noise, || Ok(()))?;
        let (a, betas) = a
            .join()
            .map_err(|_| PsiError::peer("VOLE: the thread computing A panicked"))?;
        recv_check(chan, &noise, &betas, checks)?;
        Ok((a, c))
    })
}

/// Everything the VOLE receiver picks alone, chunk by chunk: the noise
/// positions α_i, the first chunk's noise values β_i and the check's mask y*
/// (malicious mode). Later chunks' β_i are the previous chunk's reserved A
/// outputs, so they too follow from this alone ([`RecvNoise::a`]).
///
/// Why it is a value of its own: the receiver's A = H·A_sparse needs no
/// message, only this noise. A receiver that is ready before its peer
/// computes A (the dearer half of its compression) in that idle time, and
/// in the run only C waits on the sender's replies. The distribution of
/// everything sent is the same whenever the noise is drawn.
#[derive(Clone)]
pub(crate) struct RecvNoise {
    m: usize,
    cfg: VoleCfg,
    chunks: Vec<ChunkNoise>,
}

#[derive(Clone)]
struct ChunkNoise {
    p: ChunkParams,
    alpha: Vec<usize>,
    /// β_i of the first chunk (empty for bootstrapped chunks)
    beta: Vec<u128>,
    /// the check's mask y* (malicious mode; else 0)
    y_star: u128,
}

/// Every chunk's β_i, computed with A (the malicious check needs them).
pub(crate) struct Betas(Vec<Vec<u128>>);

/// Per chunk of a malicious-mode run, what the check needs from the
/// sender's message: the challenge χ and Σ_j χ_j·w_j + z*.
pub(crate) struct PendingChecks(Vec<(Aes, u128)>);

impl RecvNoise {
    /// Draws the noise of an m-output VOLE (from the OS's randomness).
    pub(crate) fn new(m: usize, cfg: &VoleCfg) -> Self {
        let mut prg = Prg::from_os();
        let bmask = cfg.mask();
        let chunks = chunks(m, cfg)
            .into_iter()
            .map(|p| {
                // α_i uniform in [0, L), β_i uniform non-zero in the subspace
                let alpha = prg
                    .blocks(NOISE)
                    .iter()
                    .map(|r| reduce64(*r as u64, p.leaves as u64) as usize)
                    .collect();
                let beta = if p.uses_cots() {
                    prg.blocks(NOISE)
                        .into_iter()
                        .map(|b| if b & bmask == 0 { 1 } else { b & bmask })
                        .collect()
                } else {
                    Vec::new()
                };
                let y_star = if p.check { prg.block() } else { 0 };
                ChunkNoise {
                    p,
                    alpha,
                    beta,
                    y_star,
                }
            })
            .collect();
        RecvNoise {
            m,
            cfg: *cfg,
            chunks,
        }
    }

    /// Whether this noise is for an m-output VOLE of kind `cfg`.
    pub(crate) fn fits(&self, m: usize, cfg: &VoleCfg) -> bool {
        self.m == m && self.cfg == *cfg
    }

    /// A = H·A_sparse, chunk by chunk (A_sparse: β_i at α_i of block i; a
    /// bootstrapped chunk's β_i are the previous chunk's reserved outputs).
    pub(crate) fn a(&self) -> (Vec<u128>, Betas) {
        let mut a = vec![0u128; self.m];
        let mut betas = Vec::with_capacity(self.chunks.len());
        let mut reserve = Vec::new();
        let mut sparse = Vec::new();
        let mut done = 0;
        for ch in &self.chunks {
            let p = &ch.p;
            let beta = if p.uses_cots() {
                ch.beta.clone()
            } else {
                std::mem::take(&mut reserve)
            };
            sparse.clear();
            sparse.resize(p.n(), 0);
            for (i, (al, b)) in ch.alpha.iter().zip(&beta).enumerate() {
                sparse[i * p.leaves + al] = *b;
            }
            reserve = p.compress(&mut sparse, &mut a[done..done + p.m]);
            betas.push(beta);
            done += p.m;
        }
        (a, Betas(betas))
    }
}

/// The VOLE receiver's C = A·Δ + B for `noise`, from the messages: base OTs,
/// OT extension, punctured trees, compression. A is not computed here (see
/// [`RecvNoise::a`]).
///
/// `after_ot` runs on the thread that streamed the OT extension messages out,
/// once they are all sent: the caller may send more there (the semi-honest
/// receiver sends its OKVS, which the sender reads after the VOLE). Its
/// result comes back with C. In malicious mode the caller finishes with
/// [`recv_check`].
pub(crate) fn recv_c<T: Send>(
    chan: &dyn Channel,
    noise: &RecvNoise,
    after_ot: impl FnOnce() -> Result<T, PsiError> + Send,
) -> Result<(Vec<u128>, PendingChecks, T), PsiError> {
    let t0 = std::time::Instant::now();
    let base = ot::base_send(chan)?;
    super::trace!(t0, "R: base OT");
    let mut iknp = IknpReceiver::new(&base);
    // Phase 1: every chunk's OT extension message. None depends on the
    // sender's replies (a bootstrapped chunk's OT choices do not involve β_i).
    let mut pending: Vec<Pending> = Vec::new();
    let mut msgs = Vec::new();
    for ch in &noise.chunks {
        let p = &ch.p;
        // choice bits: bits of β_i (first chunk), then for tree i level l
        // (1-based) the complement of α_i's bit at that level (the sibling's
        // side), then the bits of y*
        let mut choices = vec![0u128; p.ot_blocks()];
        let mut set = |idx: usize, bit: bool| {
            if bit {
                choices[idx / 128] |= 1u128 << (idx % 128);
            }
        };
        let bb = p.beta_bits;
        for i in 0..NOISE {
            if p.uses_cots() {
                for k in 0..bb {
                    set(i * bb + k, (ch.beta[i] >> k) & 1 == 1);
                }
            }
            for l in 1..=p.depth {
                let a_bit = (ch.alpha[i] >> (p.depth - l)) & 1 == 1;
                set(p.pprf_ot(i, l - 1), !a_bit);
            }
        }
        if p.check {
            for k in 0..KAPPA {
                set(p.mask_ot() + k, (ch.y_star >> k) & 1 == 1);
            }
        }
        let (msg, t) = if noise.cfg.malicious {
            iknp.extend_checked(&choices)
        } else {
            iknp.extend(&choices)
        };
        msgs.push(msg);
        // c_i = β_i·Δ + b_i of the first chunk
        let first_c = p.uses_cots().then(|| {
            (0..NOISE)
                .map(|i| pack_gf(&t[i * bb..(i + 1) * bb]))
                .collect()
        });
        let z_star = if p.check {
            let mo = p.mask_ot();
            pack_gf(&t[mo..mo + KAPPA])
        } else {
            0
        };
        let pprf_t = &t[p.pprf_ot(0, 0)..p.pprf_ot(0, 0) + NOISE * p.depth];
        let mut mr = vec![0u128; pprf_t.len()];
        tccr(pprf_t, p.tweak(), &mut mr);
        pending.push(Pending {
            first_c,
            mr,
            z_star,
        });
    }
    // Phase 2: one thread streams the OT messages out (then runs
    // `after_ot`) while this one processes the sender's replies (so neither
    // side blocks on a full link).
    std::thread::scope(|s| {
        let out = s.spawn(move || -> Result<T, PsiError> {
            for msg in msgs {
                wire::send(chan, tags::VOLE_OT, &msg)?;
            }
            after_ot()
        });
        let r = recv_replies(chan, noise, pending, t0);
        let o = out
            .join()
            .unwrap_or_else(|_| Err(PsiError::peer("VOLE: sending thread panicked")));
        let (c, checks) = r?;
        Ok((c, checks, o?))
    })
}

/// Malicious mode: the sparse-VOLE consistency check of every chunk, once A
/// (and so every β_i) is known. Sends x* = x + y* per chunk and compares the
/// sender's digest with Σ χ_j·w_j + z*. A no-op in the other modes.
pub(crate) fn recv_check(
    chan: &dyn Channel,
    noise: &RecvNoise,
    betas: &Betas,
    checks: PendingChecks,
) -> Result<(), PsiError> {
    if !noise.cfg.malicious {
        return Ok(());
    }
    let mut xs = Vec::with_capacity(checks.0.len());
    let mut vs = Vec::with_capacity(checks.0.len());
    for ((chi, v), (ch, beta)) in checks.0.iter().zip(noise.chunks.iter().zip(&betas.0)) {
        // x = Σ_i χ_{i·L+α_i}·β_i (the sparse A)
        let x = (0..NOISE).fold(0u128, |acc, i| {
            let j = (i * ch.p.leaves + ch.alpha[i]) as u128;
            acc ^ super::gf128::mul(chi.enc(j), beta[i])
        });
        xs.push(x ^ ch.y_star);
        vs.push(*v);
    }
    let mut bytes = Vec::new();
    wire::put_u128s(&mut bytes, &xs);
    wire::send(chan, tags::VOLE_CHECK, &bytes)?;
    let theirs = wire::recv(chan, tags::VOLE_CHECK, "VOLE consistency check")?;
    if theirs[..] != check_digest(&vs)[..] {
        return Err(PsiError::peer(
            "malicious-security check failed: the peer's VOLE is inconsistent (sparse-VOLE check)",
        ));
    }
    Ok(())
}

/// A chunk's state between the receiver's OT extension and the sender's
/// reply: c_i of the first chunk, the PPRF OT pads m_r, and the check's z*.
struct Pending {
    first_c: Option<Vec<u128>>,
    mr: Vec<u128>,
    z_star: u128,
}

/// Phase 2 of [`recv_c`], per chunk: punctured trees, sparse C, code.
fn recv_replies(
    chan: &dyn Channel,
    noise: &RecvNoise,
    pending: Vec<Pending>,
    t0: std::time::Instant,
) -> Result<(Vec<u128>, PendingChecks), PsiError> {
    let mut c_out = vec![0u128; noise.m];
    let mut done = 0;
    let mut reserve: Vec<u128> = Vec::new();
    let mut sparse: Vec<u128> = Vec::new();
    let mut checks = Vec::new();
    for (
        ch,
        Pending {
            first_c,
            mr,
            z_star,
        },
    ) in noise.chunks.iter().zip(pending)
    {
        let (p, alpha) = (&ch.p, &ch.alpha);
        // c_i = β_i·Δ + b_i: fresh (first chunk) or the previous chunk's
        // reserved outputs C_j
        let c = first_c.unwrap_or_else(|| std::mem::take(&mut reserve));
        let reply_bytes = wire::recv(chan, tags::VOLE_PPRF, "VOLE punctured-PRF message")?;
        let reply = wire::get_u128s(&reply_bytes, "VOLE punctured-PRF message")?;
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
                        // fully overwritten by ggm_expand below
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
        if p.check {
            let chi = check_chi(p.index, &reply_bytes);
            let w = check_combine(&chi, &sparse) ^ z_star;
            checks.push((chi, w));
        }
        reserve = p.compress(&mut sparse, &mut c_out[done..done + p.m]);
        super::trace!(t0, "R: encoded");
        done += p.m;
    }
    Ok((c_out, PendingChecks(checks)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::memory_pair;
    use crate::rr22::gf128;

    fn run(m: usize) -> (u128, Vec<u128>, Vec<u128>, Vec<u128>) {
        run_cfg(m, &VoleCfg::FAST)
    }

    fn run_cfg(m: usize, cfg: &VoleCfg) -> (u128, Vec<u128>, Vec<u128>, Vec<u128>) {
        let (ca, cb) = memory_pair(8);
        std::thread::scope(|s| {
            let h = s.spawn(|| send(&ca, m, cfg).unwrap());
            let (a, c) = recv(&cb, m, cfg).unwrap();
            let (delta, b) = h.join().unwrap();
            (delta, b, a, c)
        })
    }

    #[test]
    fn subfield_vole_correlation_holds_and_a_is_short() {
        // RR22 §5 / Fig. 10: A ∈ B^m (here: polynomials of degree < 60),
        // Δ ∈ GF(2^128), C = A·Δ + B; small chunks force bootstrapping
        for (m, max_chunk) in [(1usize, 1 << 17), (5000, 1 << 17), (70_001, 30_000)] {
            let cfg = VoleCfg {
                bits: 60,
                max_chunk,
                malicious: false,
            };
            let (delta, b, a, c) = run_cfg(m, &cfg);
            for i in 0..m {
                assert_eq!(a[i] >> 60, 0, "A outside the subfield at {i}");
                assert_eq!(c[i], gf128::mul(a[i], delta) ^ b[i], "m={m} i={i}");
            }
            if m > 100 {
                assert!(a.iter().filter(|x| **x == 0).count() < 2);
                // every bit of the 60 is used
                assert_eq!(a.iter().fold(0u128, |x, y| x | y), (1 << 60) - 1);
            }
        }
    }

    #[test]
    fn malicious_vole_correlation_holds() {
        let cfg = VoleCfg {
            bits: 128,
            max_chunk: 30_000,
            malicious: true,
        };
        let m = 70_001;
        let (delta, b, a, c) = run_cfg(m, &cfg);
        for i in 0..m {
            assert_eq!(c[i], gf128::mul(a[i], delta) ^ b[i], "i={i}");
        }
    }

    #[test]
    fn malicious_vole_catches_an_inconsistent_sender() {
        let cfg = VoleCfg {
            bits: 128,
            max_chunk: 1 << 17,
            malicious: true,
        };
        let (ca, cb) = memory_pair(8);
        let (rs, rr) = std::thread::scope(|s| {
            let h = s.spawn(|| {
                let r = send_with(&ca, 5000, &cfg, Cheat::PprfLevel);
                drop(ca);
                r
            });
            let r = recv(&cb, 5000, &cfg);
            drop(cb);
            (h.join().unwrap(), r)
        });
        let err = rr
            .expect_err("the receiver must detect the cheat")
            .to_string();
        assert!(err.contains("sparse-VOLE check"), "{err}");
        // the sender itself finished its part
        assert!(rs.is_ok());
        // without the check the same cheat goes unnoticed and breaks the
        // correlation: that is what the check is for
        let fast = VoleCfg::FAST;
        let (ca, cb) = memory_pair(8);
        let (delta, b, a, c) = std::thread::scope(|s| {
            let h = s.spawn(|| send_with(&ca, 5000, &fast, Cheat::PprfLevel).unwrap());
            let (a, c) = recv(&cb, 5000, &fast).unwrap();
            let (d, b) = h.join().unwrap();
            (d, b, a, c)
        });
        assert!((0..5000).any(|i| c[i] != gf128::mul(a[i], delta) ^ b[i]));
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
        let cs = chunks(MAX_CHUNK * 2 + 5, &VoleCfg::FAST);
        assert_eq!(cs.len(), 3);
        assert_eq!(cs.iter().map(|c| c.m).sum::<usize>(), MAX_CHUNK * 2 + 5);
        assert!(
            cs.iter()
                .all(|c| c.m <= MAX_CHUNK && c.n() >= SCALER * c.total())
        );
        assert_eq!(cs[0].reserve, NOISE);
        assert_eq!(cs[2].reserve, 0);
        assert!(cs[0].uses_cots() && !cs[1].uses_cots());
        assert_eq!(chunks(0, &VoleCfg::FAST).len(), 1);
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
