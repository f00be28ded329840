//! The RR22 oblivious key-value store ("Paxos" with w = 3 and a small binary
//! dense part, clustered into independent bins: "Baxos").
//!
//! Reference: Raghuraman–Rindal, "Blazing Fast PSI from Improved OKVS and
//! Subfield VOLE", CCS 2022 / eprint 2022/320, §3: the OKVS (sparse w = 3 rows
//! plus a few dense columns), its triangulation with a small "gap" solved on
//! the dense columns, the clustering into independent bins, and the fitted
//! parameters (expansion e and gap g as functions of n, w and λ). The binary
//! dense part of g + λ random bits is that of PaXoS (Pinkas–Rosulek–Trieu–
//! Yanai, Eurocrypt 2020, §5) and of the authors' volePSI code.
//!
//! * A key x is hashed into one of `bins` bins (keyed AES on x, Lemire
//!   reduction). Every bin has the same public capacity, chosen with a
//!   Chernoff bound so that no bin overflows except with probability 2^-λ;
//!   if one does, the encoder draws a new seed (sent to the decoder), so no
//!   key is ever dropped.
//! * Inside a bin with `sparse` + `dense` cells, key x has the row (1 at
//!   three distinct positions p0, p1, p2 < sparse; a random 0/1 mask h of
//!   `dense` bits on the dense cells), with the p's and h from two AES-128
//!   calls (three if `dense` > 64) under keys derived from (seed, bin,
//!   attempt). Decode(P, x) = P[p0] + P[p1] + P[p2] + Σ_{k ∈ h} P[sparse + k]:
//!   XOR only, by one table lookup per byte of h ([`ByteTables`]), so
//!   decoding is GF(2)-linear and values may live in any GF(2)-subspace of
//!   GF(2^128), which the low-communication mode needs (values of `vbits`
//!   bits, RR22 §5).
//! * Encoding solves the linear system "Decode(P, x_i) = v_i" by peeling
//!   (the 2-core / "triangulation" step of RR22 §3, done with the
//!   degree + XOR-of-rows trick of xor filters): a column of degree 1 fixes
//!   its row. When peeling stalls, RR22's rule applies: the remaining column
//!   of minimum degree fixes one of its rows and the others become "gap"
//!   rows. Every cell is then affine in the dense values over GF(2) (a value
//!   and a mask per cell in the back-substitution), and the g gap rows give
//!   a g × (g + λ) binary system that Gaussian elimination solves; it has
//!   full rank except with probability ≈ 2^-λ. If there are more gap rows
//!   than dense columns, or the system is singular, the bin is encoded again
//!   with the next attempt number (sent to the decoder). Free columns are set
//!   to zero: RR22 masks P with the receiver's uniformly random VOLE vector
//!   A, so P need not be random itself.
//! * Parameters: RR22's fit for w = 3 (the formula of the authors'
//!   volePSI code): log2(λ/e-slope) = 0.555·log2 n + 2.336,
//!   e = (λ + 9.2 + 1.223·slope)/slope, gap g = ⌊λ / log2(e·n)⌋, with n the bin
//!   capacity and λ = stat_sec + log2(bins); `dense` = g + λ. For bins of
//!   ~2^16 keys this gives e ≈ 1.245 and 2 + 44 dense columns (2^20 keys).
//!
//! Why binary and not GF(2^128) coefficients (h, h², …, h^g: g columns
//! only, which volePSI uses for its fast mode): the 46 extra cells per bin
//! are 0.2% more communication, but decoding is a third faster (2^20 keys on
//! two threads: 71 against 95 ms; encoding 97 against 110 ms), since three
//! dependent GF(2^128) multiplications per key become seven independent
//! table lookups, and one mode serves every variant.

use rayon::prelude::*;

use super::prim::{Aes, reduce64};
use crate::error::PsiError;
use crate::slices::split_starts;

/// Target number of keys per bin. RR22 uses 2^14, so that a bin's cells
/// stay in L2; larger bins need fewer cells (a smaller expansion e and bin
/// margin: at 2^20 keys m = 1.420M cells with 2^14, 1.375M with 2^15,
/// 1.345M with 2^16, 1.324M with 2^17), and every cell is a VOLE output
/// and 16 bytes on the wire. 2^16 (~1.3 MB of cells a bin, about this
/// machine's L2) decodes as fast as 2^14 here (21.7 against 25.1 ms for
/// 2^20 keys, `VENN_BENCH=okvs`) and encodes as fast (48.7 against 48.3
/// ms); 2^17 encodes slower (60.8 ms). Whole runs at 2^20, alternated
/// pairs: 2^16 against 2^14 −15.6 ms median (20 of 24 faster), 2^15
/// against 2^14 −8.1 ms (15 of 24), 2^17 against 2^16 +2.6 ms.
pub(crate) const BIN_TARGET: usize = 1 << 16;
/// Keys per bin in the low-communication mode: 2^18 keys (4 MiB of 16-byte
/// cells per bin, no longer cache-resident, but e ≈ 1.23 and a 1.5% bin
/// margin instead of 1.27 and 6%).
pub(crate) const BIN_TARGET_LOW_COMM: usize = 1 << 18;
/// Rows ahead whose cells a decode asks the CPU for while it sums a row
/// (a bin's cells share the L2 with the other hyperthread: with 2^14-key
/// bins, decoding 2^20 keys on two threads went from 34.5 to 27–30 ms).
const PREFETCH: usize = 8;
/// Attempts per bin before giving up (each fails with probability ≲ 2^-40).
const MAX_ATTEMPTS: u32 = 64;

/// The public shape of an OKVS, a function of the number of keys and λ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OkvsParams {
    pub(crate) bins: usize,
    pub(crate) cap: usize,
    pub(crate) sparse: usize,
    /// Dense columns: g + λ (at most 128), one bit each in a row's mask.
    pub(crate) dense: usize,
}

/// Smallest c with bins·Pr[Binomial(n, 1/bins) ≥ c] ≤ 2^-λ, via the Chernoff
/// bound Pr[X ≥ c] ≤ exp(−n·KL(c/n ‖ p)).
fn bin_capacity(n: usize, bins: usize, lambda: f64) -> usize {
    if bins <= 1 {
        return n;
    }
    let p = 1.0 / bins as f64;
    let nf = n as f64;
    let target = lambda * std::f64::consts::LN_2 + (bins as f64).ln();
    let ok = |c: usize| -> bool {
        let q = c as f64 / nf;
        if q >= 1.0 {
            return true;
        }
        let kl = q * (q / p).ln() + (1.0 - q) * ((1.0 - q) / (1.0 - p)).ln();
        nf * kl >= target
    };
    let (mut lo, mut hi) = (n.div_ceil(bins), n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if ok(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

impl OkvsParams {
    pub(crate) fn new(n: usize, stat_sec: u32) -> Self {
        Self::with_bin_target(n, stat_sec, BIN_TARGET)
    }

    /// The low-communication mode's shape: larger bins
    /// ([`BIN_TARGET_LOW_COMM`]), whose smaller expansion and bin-capacity
    /// margin send fewer cells (RR22 §6.2 uses no clustering at all there).
    pub(crate) fn low_comm(n: usize, stat_sec: u32) -> Self {
        Self::with_bin_target(n, stat_sec, BIN_TARGET_LOW_COMM)
    }

    pub(crate) fn with_bin_target(n: usize, stat_sec: u32, target: usize) -> Self {
        let bins = n.div_ceil(target).max(1);
        let cap = bin_capacity(n, bins, stat_sec as f64).max(1);
        let lambda = stat_sec as f64 + (bins as f64).log2().ceil();
        // RR22's fit for w = 3
        let log_n = (cap as f64).log2();
        let log_w = 3f64.log2();
        let log_slope =
            0.555 * log_n + 0.093 * log_w.powi(3) - 1.01 * log_w.powi(2) + 2.925 * log_w - 0.133;
        let slope = 2f64.powf(log_slope);
        let b = -9.2 - slope * 1.223;
        let e = (lambda - b) / slope;
        let sparse = ((cap as f64 * e).ceil() as usize).max(3);
        let gap = (lambda / (e * cap as f64).log2().max(1.0)).floor() as usize;
        OkvsParams {
            bins,
            cap,
            sparse,
            dense: (gap.max(1) + lambda as usize).min(128),
        }
    }

    pub(crate) fn bin_len(&self) -> usize {
        self.sparse + self.dense
    }

    /// Total number of cells m.
    pub(crate) fn len(&self) -> usize {
        self.bins * self.bin_len()
    }
}

/// Row of one key inside its bin.
#[derive(Clone, Copy, Debug)]
struct Row {
    p: [u32; 3],
    h: u128,
}

/// Hashing of keys to bins and rows under one seed.
struct Hasher {
    seed_aes: Aes,
    bin_aes: Aes,
    bins: usize,
    sparse: usize,
    /// The mask of the `dense` bits of a row's dense part.
    dense_mask: u128,
}

impl Hasher {
    fn new(seed: u128, p: &OkvsParams) -> Self {
        let seed_aes = Aes::new(seed);
        let bin_aes = Aes::new(seed_aes.enc(u128::MAX));
        Hasher {
            seed_aes,
            bin_aes,
            bins: p.bins,
            sparse: p.sparse,
            dense_mask: if p.dense >= 128 {
                u128::MAX
            } else {
                (1u128 << p.dense) - 1
            },
        }
    }

    /// Bin of every key.
    fn bins_of(&self, keys: &[u128]) -> Vec<u32> {
        if self.bins == 1 {
            return vec![0; keys.len()];
        }
        let mut out = vec![0u32; keys.len()];
        out.par_chunks_mut(4096)
            .zip(keys.par_chunks(4096))
            .for_each_init(
                || vec![0u128; 4096],
                |buf, (o, k)| {
                    let b = &mut buf[..k.len()];
                    self.bin_aes.enc_to(k, b);
                    for (o, x) in o.iter_mut().zip(b.iter()) {
                        *o = reduce64(*x as u64, self.bins as u64) as u32;
                    }
                },
            );
        out
    }

    /// Rows of `keys` in bin `bin` at attempt `attempt`.
    fn rows(&self, bin: usize, attempt: u32, keys: &[u128]) -> Vec<Row> {
        let mut out = Vec::with_capacity(keys.len());
        self.for_each_row(bin, attempt, keys, |_, r| out.push(r));
        out
    }

    /// Calls `f(i, row of keys[i])` in order, hashing in stack-sized batches.
    ///
    /// Two AES blocks per key give the three sparse positions (64 bits each)
    /// and, for a binary dense part of at most 64 bits, its mask (the second
    /// block's high half); a wider dense part takes a third block. The
    /// positions are made distinct without branches (a data-dependent
    /// branch here is mispredicted half the time).
    fn for_each_row(&self, bin: usize, attempt: u32, keys: &[u128], mut f: impl FnMut(usize, Row)) {
        self.for_each_batch(bin, attempt, keys, |c, rows| {
            for (i, r) in rows.iter().enumerate() {
                f(c + i, *r)
            }
        })
    }

    /// Calls `f(first index, rows of keys[first..first + rows.len()])`
    /// batch by batch, in order.
    fn for_each_batch(
        &self,
        bin: usize,
        attempt: u32,
        keys: &[u128],
        mut f: impl FnMut(usize, &[Row]),
    ) {
        let k = self.row_keys(bin, attempt);
        let mut rows = [Row { p: [0; 3], h: 0 }; ROW_BATCH];
        for (c, chunk) in keys.chunks(ROW_BATCH).enumerate() {
            let rows = &mut rows[..chunk.len()];
            self.batch_rows(&k, chunk, rows);
            f(c * ROW_BATCH, rows);
        }
    }

    /// [`Self::for_each_batch`] over keys that `f` may overwrite: it gets
    /// each batch's rows and the batch's keys, whose rows are then known.
    fn for_each_batch_mut(
        &self,
        bin: usize,
        attempt: u32,
        keys: &mut [u128],
        mut f: impl FnMut(&[Row], &mut [u128]),
    ) {
        let k = self.row_keys(bin, attempt);
        let mut rows = [Row { p: [0; 3], h: 0 }; ROW_BATCH];
        for chunk in keys.chunks_mut(ROW_BATCH) {
            let rows = &mut rows[..chunk.len()];
            self.batch_rows(&k, chunk, rows);
            f(rows, chunk);
        }
    }

    /// The AES keys of bin `bin`'s rows at attempt `attempt`.
    fn row_keys(&self, bin: usize, attempt: u32) -> [Aes; 3] {
        let base = ((bin as u128) << 64) | ((attempt as u128) << 8);
        core::array::from_fn(|j| Aes::new(self.seed_aes.enc(base | j as u128)))
    }

    /// The rows of at most [`ROW_BATCH`] keys under a bin's keys `k`.
    fn batch_rows(&self, k: &[Aes; 3], keys: &[u128], rows: &mut [Row]) {
        let s = self.sparse as u64;
        let third = self.dense_mask >> 64 != 0;
        let n = keys.len();
        let mut b0 = [0u128; ROW_BATCH];
        let mut b1 = [0u128; ROW_BATCH];
        let mut bh = [0u128; ROW_BATCH];
        k[0].enc_to(keys, &mut b0[..n]);
        k[1].enc_to(keys, &mut b1[..n]);
        if third {
            k[2].enc_to(keys, &mut bh[..n]);
        }
        for (i, row) in rows.iter_mut().enumerate() {
            let p0 = reduce64(b0[i] as u64, s);
            let mut p1 = reduce64((b0[i] >> 64) as u64, s - 1);
            p1 += u64::from(p1 >= p0);
            let (lo, hi) = (p0.min(p1), p0.max(p1));
            let mut p2 = reduce64(b1[i] as u64, s - 2);
            p2 += u64::from(p2 >= lo);
            p2 += u64::from(p2 >= hi);
            let h = if third { bh[i] } else { b1[i] >> 64 } & self.dense_mask;
            *row = Row {
                p: [p0 as u32, p1 as u32, p2 as u32],
                h,
            };
        }
    }
}

/// Keys hashed to rows per AES batch.
const ROW_BATCH: usize = 256;

/// Σ_{k : bit k of mask} d[k] (the dense part).
#[inline]
fn dense_eval_bin(mut mask: u128, d: &[u128]) -> u128 {
    let mut acc = 0u128;
    while mask != 0 {
        let k = mask.trailing_zeros() as usize;
        acc ^= d[k];
        mask &= mask - 1;
    }
    acc
}

/// Σ_{k : bit k of mask} d[k] by table lookup: for every byte position j,
/// the XOR of each subset of d[8j..8j+8].
struct ByteTables {
    tab: Vec<[u128; 256]>,
}

impl ByteTables {
    fn new(d: &[u128]) -> Self {
        let tab = d
            .chunks(8)
            .map(|c| {
                let mut t = [0u128; 256];
                for b in 1..256usize {
                    let low = b.trailing_zeros() as usize;
                    t[b] = t[b & (b - 1)] ^ c.get(low).copied().unwrap_or(0);
                }
                t
            })
            .collect();
        ByteTables { tab }
    }

    #[inline]
    fn eval(&self, mask: u128) -> u128 {
        let mut acc = 0u128;
        for (j, t) in self.tab.iter().enumerate() {
            acc ^= t[((mask >> (8 * j)) & 0xff) as usize];
        }
        acc
    }
}

/// Keys (and values) laid out bin by bin, in one streaming pass: every bin
/// is written sequentially, so there are no random reads of the inputs.
struct Grouped {
    keys: Vec<u128>,
    vals: Vec<u128>,
    /// `Order::Pos`: grouped position of item i; `Order::Idx`: item at
    /// grouped position p; `Order::None`: empty
    order: Vec<u32>,
    starts: Vec<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    None,
    Pos,
    Idx,
}

/// Groups the keys by bin (`bins_of[i]` < `bins`), with the [`Order`]
/// asked for and, if given, the values beside them: a parallel stable
/// partition ([`crate::slices::partition`]).
fn group(
    keys: &[u128],
    vals: Option<&[u128]>,
    bins_of: &[u32],
    bins: usize,
    order: Order,
) -> Grouped {
    let n = keys.len();
    let mut gk = vec![0u128; n];
    // values travel through the item index: grouped keys and indices in
    // one pass, then each value fetched by its index
    let idx = order == Order::Idx || vals.is_some();
    let mut ord = vec![0u32; if idx { n } else { 0 }];
    let mut pos = vec![0u32; if order == Order::Pos { n } else { 0 }];
    let starts = if idx {
        crate::slices::partition(
            |i| bins_of[i] as usize,
            bins,
            &mut gk,
            &mut ord,
            &mut pos,
            |i| (keys[i], i as u32),
        )
    } else {
        crate::slices::partition_one(
            |i| bins_of[i] as usize,
            bins,
            &mut gk,
            &mut pos,
            |i| keys[i],
        )
    };
    let gv = match vals {
        Some(v) => ord.par_iter().map(|&i| v[i as usize]).collect(),
        None => Vec::new(),
    };
    Grouped {
        keys: gk,
        vals: gv,
        order: match order {
            Order::None => Vec::new(),
            Order::Idx => ord,
            Order::Pos => pos,
        },
        starts,
    }
}

/// What the decoder needs besides the cells: the seed and each bin's attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OkvsHeader {
    pub(crate) seed: u128,
    pub(crate) attempts: Vec<u32>,
}

/// Encoder options (the tests use them to force retries).
#[derive(Clone, Copy, Default)]
pub(crate) struct EncodeOptions {
    /// Treat the first attempt of every bin as failed.
    pub(crate) force_retry: bool,
}

/// The values an OKVS encodes.
#[derive(Clone, Copy)]
pub(crate) enum Values<'a> {
    /// `vals[i]` for `keys[i]`.
    Given(&'a [u128]),
    /// A function of the key: `f(keys, out)` writes each key's value. Values
    /// are then computed bin by bin after grouping, so no value array in item
    /// order is ever held beside the keys (16 bytes per item less at the
    /// receiver's peak; the PSI's values are H(x)).
    Of(&'a (dyn Fn(&[u128], &mut [u128]) + Sync)),
}

/// Encodes {keys[i] ↦ vals[i]} (keys distinct). Returns the header and the
/// `params.len()` cells.
pub(crate) fn encode(
    params: &OkvsParams,
    keys: &[u128],
    vals: &[u128],
    next_seed: impl FnMut() -> u128,
    opts: EncodeOptions,
) -> Result<(OkvsHeader, Vec<u128>), PsiError> {
    encode_values(params, keys, Values::Given(vals), next_seed, opts)
}

/// Encodes {keys[i] ↦ value of keys[i]} (keys distinct). Returns the header
/// and the `params.len()` cells.
pub(crate) fn encode_values(
    params: &OkvsParams,
    keys: &[u128],
    vals: Values<'_>,
    next_seed: impl FnMut() -> u128,
    opts: EncodeOptions,
) -> Result<(OkvsHeader, Vec<u128>), PsiError> {
    encode_with_layout(params, keys, vals, next_seed, opts, false).map(|(h, c, _)| (h, c))
}

/// The keys' rows as the encoder found them, kept for decoding the same
/// keys again ([`decode_layout`]): the RR22 receiver decodes its own items
/// in C, the VOLE's output, with the OKVS shape it encoded P in. Keeping
/// the rows spares that decode hashing every key to its bin, grouping the
/// keys by bin and hashing them to rows again — two thirds of its time —
/// at 20 bytes per key, held from the encoding (done ahead, while the peer
/// is not there yet) to the decode.
pub(crate) struct Layout {
    /// Key index at each grouped position (bin by bin).
    pub(crate) order: Vec<u32>,
    /// Bin b is `starts[b]..starts[b + 1]` of `order` and `rows`.
    starts: Vec<usize>,
    /// Each grouped key's row: h in bits 0..64, p0, p1, p2 in 21 bits each
    /// from bit 64 ([`pack_row`]).
    rows: Vec<u128>,
}

/// Bits per sparse position in a [`Layout`]'s rows.
const POS_BITS: u32 = 21;

/// Whether rows of this shape fit [`pack_row`] (always in the fast mode's
/// shape: bins of 2^16 keys have ~84,000 sparse cells and ~46 dense ones).
fn packable(params: &OkvsParams) -> bool {
    params.dense <= 64 && params.sparse <= 1 << POS_BITS
}

fn pack_row(r: &Row) -> u128 {
    let p = |k: usize| (r.p[k] as u128) << (64 + POS_BITS * k as u32);
    r.h | p(0) | p(1) | p(2)
}

fn unpack_row(x: u128) -> ([usize; 3], u128) {
    let m = (1usize << POS_BITS) - 1;
    let p = |k: u32| ((x >> (64 + POS_BITS * k)) as usize) & m;
    ([p(0), p(1), p(2)], x & u64::MAX as u128)
}

/// `dst[i]` = Decode of the row `at(&rows[i])` (its three sparse positions
/// and dense mask) in one bin's cells: `sp` sparse, `tab` for the dense
/// part. The cells of the row [`PREFETCH`] ahead are asked for meanwhile.
#[inline(always)]
fn decode_rows<R>(
    sp: &[u128],
    tab: &ByteTables,
    rows: &[R],
    at: impl Fn(&R) -> ([usize; 3], u128),
    dst: &mut [u128],
) {
    for (i, (o, r)) in dst.iter_mut().zip(rows).enumerate() {
        if let Some(n) = rows.get(i + PREFETCH) {
            at(n).0.iter().for_each(|&p| crate::store::prefetch(&sp[p]));
        }
        let ([p0, p1, p2], h) = at(r);
        *o = sp[p0] ^ sp[p1] ^ sp[p2] ^ tab.eval(h);
    }
}

/// [`encode_values`], also returning the keys' [`Layout`] if `keep` is set
/// and the shape's rows can be packed ([`packable`]).
pub(crate) fn encode_with_layout(
    params: &OkvsParams,
    keys: &[u128],
    vals: Values<'_>,
    mut next_seed: impl FnMut() -> u128,
    opts: EncodeOptions,
    keep: bool,
) -> Result<(OkvsHeader, Vec<u128>, Option<Layout>), PsiError> {
    let keep = keep && packable(params);
    let order = if keep { Order::Idx } else { Order::None };
    if let Values::Given(v) = vals {
        assert_eq!(keys.len(), v.len());
    }
    // choose a seed under which no bin overflows its capacity
    let mut tries = 0;
    let (seed, hasher, grouped) = loop {
        let seed = next_seed();
        let hasher = Hasher::new(seed, params);
        let bins_of = hasher.bins_of(keys);
        let given = match vals {
            Values::Given(v) => Some(v),
            Values::Of(_) => None,
        };
        let mut g = group(keys, given, &bins_of, params.bins, order);
        drop(bins_of);
        if g.starts.windows(2).all(|w| w[1] - w[0] <= params.cap) {
            if let Values::Of(f) = vals {
                let mut gv = vec![0u128; keys.len()];
                gv.par_chunks_mut(4096)
                    .zip(g.keys.par_chunks(4096))
                    .for_each(|(v, k)| f(k, v));
                g.vals = gv;
            }
            break (seed, hasher, g);
        }
        tries += 1;
        if tries > MAX_ATTEMPTS {
            return Err(PsiError::peer(
                "OKVS: could not place the items into bins (too many items for the agreed size?)",
            ));
        }
    };
    let bl = params.bin_len();
    let mut out = vec![0u128; params.len()];
    let mut kept = vec![0u128; if keep { keys.len() } else { 0 }];
    let kept_bins: Vec<&mut [u128]> = if keep {
        split_starts(&mut kept, &grouped.starts)
    } else {
        (0..params.bins).map(|_| <&mut [u128]>::default()).collect()
    };
    let attempts: Vec<Option<u32>> = out
        .par_chunks_mut(bl)
        .zip(kept_bins)
        .enumerate()
        .map(|(b, (cells, kept))| {
            let range = grouped.starts[b]..grouped.starts[b + 1];
            let bk = &grouped.keys[range.clone()];
            let bv = &grouped.vals[range];
            for attempt in 0..MAX_ATTEMPTS {
                if opts.force_retry && attempt == 0 {
                    continue;
                }
                let rows = hasher.rows(b, attempt, bk);
                if solve_bin(params, &rows, bv, cells) {
                    kept.iter_mut()
                        .zip(&rows)
                        .for_each(|(k, r)| *k = pack_row(r));
                    return Some(attempt);
                }
            }
            None
        })
        .collect();
    let attempts: Option<Vec<u32>> = attempts.into_iter().collect();
    let attempts = attempts.ok_or_else(|| {
        PsiError::peer(format!(
            "RR22 OKVS: a bin failed to encode {MAX_ATTEMPTS} times (duplicate items in this party's input?)"
        ))
    })?;
    let layout = keep.then_some(Layout {
        order: grouped.order,
        starts: grouped.starts,
        rows: kept,
    });
    Ok((OkvsHeader { seed, attempts }, out, layout))
}

/// Decodes every key: out[i] = Decode(cells, keys[i]).
pub(crate) fn decode(
    params: &OkvsParams,
    header: &OkvsHeader,
    cells: &[u128],
    keys: &[u128],
) -> Vec<u128> {
    let mut out = vec![0u128; keys.len()];
    decode_add(params, header, cells, keys, &mut out);
    out
}

/// acc[i] += Decode(cells, keys[i]): the bin-order results are gathered
/// straight into the caller's vector (the sender's Δ·H(y), which becomes
/// its tags), with no vector of decodes in item order.
pub(crate) fn decode_add(
    params: &OkvsParams,
    header: &OkvsHeader,
    cells: &[u128],
    keys: &[u128],
    acc: &mut [u128],
) {
    assert_eq!(acc.len(), keys.len());
    let g = decode_in_bins(params, header, cells, keys, Order::Pos);
    // back to item order: a parallel gather (the values are in g.keys)
    acc.par_iter_mut()
        .zip(g.order.par_iter())
        .for_each(|(o, p)| *o ^= g.keys[*p as usize]);
}

/// Decodes every key, in bin order: returns (values, item index of each).
pub(crate) fn decode_grouped(
    params: &OkvsParams,
    header: &OkvsHeader,
    cells: &[u128],
    keys: &[u128],
) -> (Vec<u128>, Vec<u32>) {
    let g = decode_in_bins(params, header, cells, keys, Order::Idx);
    (g.keys, g.order)
}

/// Decodes the keys a [`Layout`] was kept for, in its grouped order:
/// `out[p]` = Decode(cells, keys[layout.order[p]]). The cells must have the
/// shape and header the layout was encoded with.
pub(crate) fn decode_layout(params: &OkvsParams, cells: &[u128], layout: &Layout) -> Vec<u128> {
    assert_eq!(cells.len(), params.len());
    let bl = params.bin_len();
    let mut out = vec![0u128; layout.rows.len()];
    split_starts(&mut out, &layout.starts)
        .into_par_iter()
        .enumerate()
        .for_each(|(b, dst)| {
            let rows = &layout.rows[layout.starts[b]..layout.starts[b + 1]];
            let p = &cells[b * bl..(b + 1) * bl];
            let (sp, de) = p.split_at(params.sparse);
            let tab = ByteTables::new(de);
            decode_rows(sp, &tab, rows, |r| unpack_row(*r), dst);
        });
    out
}

/// Decodes every key bin by bin: the grouping of `keys` in the given
/// [`Order`], with each grouped key replaced by its decoded value.
fn decode_in_bins(
    params: &OkvsParams,
    header: &OkvsHeader,
    cells: &[u128],
    keys: &[u128],
    order: Order,
) -> Grouped {
    assert_eq!(cells.len(), params.len());
    assert_eq!(header.attempts.len(), params.bins);
    let hasher = Hasher::new(header.seed, params);
    let bins_of = hasher.bins_of(keys);
    let mut g = group(keys, None, &bins_of, params.bins, order);
    drop(bins_of);
    let bl = params.bin_len();
    // each value over its key: the grouped keys are read once, batch by
    // batch, and need no second vector beside them
    split_starts(&mut g.keys, &g.starts)
        .into_par_iter()
        .enumerate()
        .for_each(|(b, bk)| {
            let p = &cells[b * bl..(b + 1) * bl];
            let (sp, de) = p.split_at(params.sparse);
            // byte tables: one lookup per 8 dense columns instead of a XOR
            // per set bit of the row's mask
            let tab = ByteTables::new(de);
            hasher.for_each_batch_mut(b, header.attempts[b], bk, |rows, dst| {
                decode_rows(sp, &tab, rows, |r| (r.p.map(|p| p as usize), r.h), dst)
            });
        });
    g
}

/// Solves one bin; returns false if this attempt's rows cannot be solved.
fn solve_bin(params: &OkvsParams, rows: &[Row], vals: &[u128], cells: &mut [u128]) -> bool {
    let s = params.sparse;
    let d = params.dense;
    let n = rows.len();
    cells.iter_mut().for_each(|c| *c = 0);
    if n == 0 {
        return true;
    }
    // --- triangulation (peeling) ---
    let mut deg = vec![0u32; s];
    let mut xr = vec![0u32; s];
    for (i, r) in rows.iter().enumerate() {
        for &c in &r.p {
            deg[c as usize] += 1;
            xr[c as usize] ^= i as u32;
        }
    }
    let mut stack: Vec<u32> = (0..s as u32).filter(|c| deg[*c as usize] == 1).collect();
    let mut removed = vec![false; n];
    let mut main: Vec<(u32, u32)> = Vec::with_capacity(n); // (row, pivot column)
    let mut gap: Vec<u32> = Vec::new();
    let mut done = 0usize;
    let remove = |row: u32,
                  deg: &mut Vec<u32>,
                  xr: &mut Vec<u32>,
                  stack: &mut Vec<u32>,
                  removed: &mut Vec<bool>| {
        removed[row as usize] = true;
        for &c in &rows[row as usize].p {
            deg[c as usize] -= 1;
            xr[c as usize] ^= row;
            if deg[c as usize] == 1 {
                stack.push(c);
            }
        }
    };
    while done < n {
        if let Some(c) = stack.pop() {
            if deg[c as usize] != 1 {
                continue;
            }
            let row = xr[c as usize];
            main.push((row, c));
            remove(row, &mut deg, &mut xr, &mut stack, &mut removed);
            done += 1;
            continue;
        }
        // stalled: the remaining column of minimum degree (≥ 2) fixes one of
        // its rows; its other rows go to the gap (RR22 §3)
        let Some(c) = (0..s).filter(|c| deg[*c] >= 2).min_by_key(|c| deg[*c]) else {
            return false; // cannot happen: remaining rows have columns
        };
        let its_rows: Vec<u32> = (0..n as u32)
            .filter(|r| !removed[*r as usize] && rows[*r as usize].p.contains(&(c as u32)))
            .collect();
        if gap.len() + its_rows.len() - 1 > d {
            return false;
        }
        for (k, r) in its_rows.iter().enumerate() {
            if k == 0 {
                main.push((*r, c as u32));
            } else {
                gap.push(*r);
            }
            remove(*r, &mut deg, &mut xr, &mut stack, &mut removed);
            done += 1;
        }
    }
    let (sp, de) = cells.split_at_mut(s);
    if gap.is_empty() {
        // dense part zero: plain back-substitution in reverse peeling order
        for &(row, c) in main.iter().rev() {
            let r = &rows[row as usize];
            let mut v = vals[row as usize];
            for &q in &r.p {
                if q != c {
                    v ^= sp[q as usize];
                }
            }
            sp[c as usize] = v;
        }
        return true;
    }
    solve_gap(params, rows, vals, &main, &gap, sp, de)
}

/// The gap step: every cell
/// is affine in the dense values D over GF(2), cell = konst ⊕ Σ_{k ∈ bits}
/// D_k, with `bits` a d-bit mask, so the back-substitution carries one value
/// and one mask per cell; the gap rows then give a g × d binary system with
/// 128-bit right-hand sides, solved by Gaussian elimination over GF(2).
fn solve_gap(
    params: &OkvsParams,
    rows: &[Row],
    vals: &[u128],
    main: &[(u32, u32)],
    gap: &[u32],
    sp: &mut [u128],
    de: &mut [u128],
) -> bool {
    let s = params.sparse;
    let d = params.dense;
    let mut konst = vec![0u128; s];
    let mut bits = vec![0u128; s];
    for &(row, c) in main.iter().rev() {
        let r = &rows[row as usize];
        let (mut v, mut b) = (vals[row as usize], r.h);
        for &q in &r.p {
            if q != c {
                v ^= konst[q as usize];
                b ^= bits[q as usize];
            }
        }
        konst[c as usize] = v;
        bits[c as usize] = b;
    }
    // gap rows: (coefficient mask, right-hand side)
    let mut sys: Vec<(u128, u128)> = gap
        .iter()
        .map(|&row| {
            let r = &rows[row as usize];
            let (mut v, mut b) = (vals[row as usize], r.h);
            for &q in &r.p {
                v ^= konst[q as usize];
                b ^= bits[q as usize];
            }
            (b, v)
        })
        .collect();
    // elimination: pivot columns in order, free variables 0
    let mut pivots: Vec<usize> = Vec::with_capacity(sys.len());
    let mut row = 0;
    for col in 0..d {
        if row == sys.len() {
            break;
        }
        let Some(p) = (row..sys.len()).find(|r| (sys[*r].0 >> col) & 1 == 1) else {
            continue;
        };
        sys.swap(row, p);
        let (pm, pv) = sys[row];
        for (r, e) in sys.iter_mut().enumerate() {
            if r != row && (e.0 >> col) & 1 == 1 {
                e.0 ^= pm;
                e.1 ^= pv;
            }
        }
        pivots.push(col);
        row += 1;
    }
    if row < sys.len() {
        return false; // rank-deficient: next attempt
    }
    de.iter_mut().for_each(|x| *x = 0);
    for (r, &c) in pivots.iter().enumerate() {
        de[c] = sys[r].1;
    }
    for c in 0..s {
        sp[c] = konst[c] ^ dense_eval_bin(bits[c], de);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rr22::prim::Prg;

    fn roundtrip(n: usize, force_retry: bool, bin_target: usize) {
        roundtrip_with(
            OkvsParams::with_bin_target(n, 40, bin_target),
            n,
            force_retry,
        );
    }

    fn roundtrip_with(p: OkvsParams, n: usize, force_retry: bool) {
        let mut prg = Prg::new(n as u128 + 17);
        let keys = prg.blocks(n);
        let vals = prg.blocks(n);
        let mut seeds = Prg::new(99);
        let (hdr, cells) = encode(
            &p,
            &keys,
            &vals,
            || seeds.block(),
            EncodeOptions { force_retry },
        )
        .unwrap();
        assert_eq!(cells.len(), p.len());
        if force_retry {
            assert!(hdr.attempts.iter().all(|a| *a >= 1));
        }
        let got = decode(&p, &hdr, &cells, &keys);
        assert_eq!(got, vals, "n={n}");
        let (gv, gi) = decode_grouped(&p, &hdr, &cells, &keys);
        assert_eq!(gi.len(), n);
        for (v, i) in gv.iter().zip(&gi) {
            assert_eq!(*v, vals[*i as usize]);
        }
        // the same keys along the rows the encoder kept: every key once,
        // each to its value (the same seeds give the same encoding)
        let mut seeds = Prg::new(99);
        let (hdr2, cells2, layout) = encode_with_layout(
            &p,
            &keys,
            Values::Given(&vals),
            || seeds.block(),
            EncodeOptions { force_retry },
            true,
        )
        .unwrap();
        assert_eq!((&hdr2, &cells2), (&hdr, &cells));
        let layout = layout.expect("the fast shapes' rows pack");
        let lv = decode_layout(&p, &cells, &layout);
        let mut seen = vec![false; n];
        for (v, i) in lv.iter().zip(&layout.order) {
            assert_eq!(*v, vals[*i as usize]);
            assert!(!std::mem::replace(&mut seen[*i as usize], true));
        }
        assert!(seen.iter().all(|s| *s));
        // keys that were not encoded decode to something else
        let other = prg.blocks(50);
        let got = decode(&p, &hdr, &cells, &other);
        let hits = got
            .iter()
            .zip(&prg.blocks(50))
            .filter(|(a, b)| a == b)
            .count();
        assert_eq!(hits, 0);
    }

    #[test]
    fn okvs_decodes_every_key() {
        for n in [0usize, 1, 2, 3, 4, 5, 10, 1000, 65535] {
            roundtrip(n, false, BIN_TARGET);
        }
    }

    #[test]
    fn values_computed_from_keys_decode_like_given_values() {
        // Values::Of computes the values bin by bin after grouping: every key
        // must still decode to f(key), in both shapes of OKVS (the
        // low-communication one with 60-bit values).
        let f = |k: &[u128], v: &mut [u128]| {
            for (k, v) in k.iter().zip(v.iter_mut()) {
                *v = k.rotate_left(17) ^ 0x5555 ^ (k >> 3);
            }
        };
        for (p, n, vmask) in [
            (OkvsParams::new(40_000, 40), 40_000, u128::MAX),
            (OkvsParams::low_comm(30_001, 40), 30_001, (1 << 60) - 1),
        ] {
            let keys = Prg::new(n as u128).blocks(n);
            let mut want = vec![0u128; n];
            f(&keys, &mut want);
            want.iter_mut().for_each(|v| *v &= vmask);
            let mask = |k: &[u128], v: &mut [u128]| {
                f(k, v);
                v.iter_mut().for_each(|v| *v &= vmask);
            };
            let mut seeds = Prg::new(9);
            let (hdr, cells) = encode_values(
                &p,
                &keys,
                Values::Of(&mask),
                || seeds.block(),
                EncodeOptions::default(),
            )
            .unwrap();
            assert_eq!(decode(&p, &hdr, &cells, &keys), want);
        }
    }

    #[test]
    fn binary_okvs_decodes_every_key() {
        for n in [0usize, 1, 2, 3, 5, 1000, 65535, 300_001] {
            roundtrip_with(OkvsParams::low_comm(n, 40), n, false);
        }
        roundtrip_with(OkvsParams::low_comm(5000, 40), 5000, true);
    }

    #[test]
    fn binary_okvs_values_stay_in_the_subspace() {
        // XOR-only decoding: values of 60 bits give cells of 60 bits, which
        // is what lets the low-communication mode send 60-bit cells.
        let n = 20_000;
        let p = OkvsParams::low_comm(n, 40);
        let mut prg = Prg::new(5);
        let keys = prg.blocks(n);
        let vals: Vec<u128> = prg.blocks(n).iter().map(|v| v & ((1 << 60) - 1)).collect();
        let mut seeds = Prg::new(6);
        let (hdr, cells) = encode(
            &p,
            &keys,
            &vals,
            || seeds.block(),
            EncodeOptions { force_retry: false },
        )
        .unwrap();
        assert!(cells.iter().all(|c| *c >> 60 == 0));
        assert_eq!(decode(&p, &hdr, &cells, &keys), vals);
    }

    #[test]
    fn byte_tables_equal_bitwise_evaluation() {
        let mut prg = Prg::new(8);
        for d in [1usize, 7, 8, 9, 48, 127, 128] {
            let dense = prg.blocks(d);
            let t = ByteTables::new(&dense);
            let mask = if d == 128 { u128::MAX } else { (1 << d) - 1 };
            for m in prg.blocks(50) {
                assert_eq!(t.eval(m & mask), dense_eval_bin(m & mask, &dense));
            }
        }
    }

    #[test]
    fn binary_gap_solver_is_exercised() {
        // a tight binary table: peeling stalls and the binary gap system is
        // solved through the dense columns (a mask wider than 64 bits takes
        // the third AES block)
        for dense in [60, 100] {
            gap_roundtrips(OkvsParams {
                bins: 1,
                cap: 60,
                sparse: 62,
                dense,
            });
        }
    }

    fn gap_roundtrips(p: OkvsParams) {
        let mut used_dense = 0;
        for seed in 0..20u128 {
            let mut prg = Prg::new(2000 + seed);
            let keys = prg.blocks(60);
            let vals = prg.blocks(60);
            let mut seeds = Prg::new(seed);
            let (hdr, cells) = encode(
                &p,
                &keys,
                &vals,
                || seeds.block(),
                EncodeOptions { force_retry: false },
            )
            .unwrap();
            if cells[p.sparse..].iter().any(|c| *c != 0) {
                used_dense += 1;
            }
            assert_eq!(decode(&p, &hdr, &cells, &keys), vals);
        }
        assert!(used_dense > 10, "gap path used {used_dense} times");
    }

    #[test]
    fn okvs_forced_retry() {
        for n in [1usize, 3, 1000, 40_000] {
            roundtrip(n, true, BIN_TARGET);
        }
    }

    #[test]
    fn okvs_many_small_bins_and_gaps() {
        // tiny bins stall often, which exercises the gap solver
        for seed in 0..200usize {
            roundtrip(3 + seed % 40, false, 8);
        }
    }

    #[test]
    fn okvs_bin_overflow_draws_a_new_seed() {
        // capacity just above the mean load: many seeds overflow a bin, and
        // the encoder must move on to a new seed instead of dropping keys
        let p = OkvsParams {
            bins: 4,
            cap: 28,
            sparse: 60,
            dense: 8,
        };
        let mut reseeded = 0;
        for trial in 0..20u128 {
            let mut prg = Prg::new(trial);
            let keys = prg.blocks(100);
            let vals = prg.blocks(100);
            let mut drawn = 0;
            let mut seeds = Prg::new(500 + trial);
            let (hdr, cells) = encode(
                &p,
                &keys,
                &vals,
                || {
                    drawn += 1;
                    seeds.block()
                },
                EncodeOptions { force_retry: false },
            )
            .unwrap();
            if drawn > 1 {
                reseeded += 1;
            }
            assert_eq!(decode(&p, &hdr, &cells, &keys), vals);
        }
        assert!(reseeded > 0);
    }

    #[test]
    fn duplicate_keys_are_an_error_not_a_loss() {
        let p = OkvsParams::new(100, 40);
        let mut prg = Prg::new(77);
        let mut keys = prg.blocks(100);
        keys[7] = keys[3];
        let vals: Vec<u128> = keys.iter().map(|k| k ^ 1).collect();
        let mut seeds = Prg::new(1);
        let r = encode(
            &p,
            &keys,
            &vals,
            || seeds.block(),
            EncodeOptions { force_retry: false },
        );
        assert!(r.is_err());
    }

    #[test]
    fn gap_solver_is_exercised() {
        // Keys in a 3-column table always share all three columns, so all
        // but one are gap rows solved through the dense part.
        let p = OkvsParams {
            bins: 1,
            cap: 2,
            sparse: 3,
            dense: 2,
        };
        let rows = [
            Row { p: [0, 1, 2], h: 1 },
            Row { p: [2, 0, 1], h: 2 },
            Row { p: [1, 2, 0], h: 3 },
        ];
        let vals = [11u128, 22, 33];
        let mut cells = vec![0u128; p.bin_len()];
        assert!(solve_bin(&p, &rows, &vals, &mut cells));
        for (r, v) in rows.iter().zip(&vals) {
            let got = cells[r.p[0] as usize]
                ^ cells[r.p[1] as usize]
                ^ cells[r.p[2] as usize]
                ^ dense_eval_bin(r.h, &cells[3..]);
            assert_eq!(got, *v);
        }
        // a fourth identical-column row exceeds the two dense columns
        let rows4 = [rows[0], rows[1], rows[2], Row { p: [0, 1, 2], h: 0 }];
        assert!(!solve_bin(&p, &rows4, &[1, 2, 3, 4], &mut cells));
    }

    #[test]
    fn params_follow_rr22() {
        // RR22's bins of 2^14 keys
        let p = OkvsParams::with_bin_target(1 << 20, 40, 1 << 14);
        assert_eq!(p.bins, 64);
        let e = p.len() as f64 / (1 << 20) as f64;
        assert!(e > 1.25 && e < 1.40, "expansion {e}");
        // g = 2..4 gap columns plus λ = 40 + log2(64); at most 64 bits, so
        // a row takes two AES blocks
        assert!(p.dense >= 48 && p.dense <= 50, "dense {}", p.dense);
        // ours, of 2^16: fewer cells
        let q = OkvsParams::new(1 << 20, 40);
        assert_eq!(q.bins, 16);
        let e16 = q.len() as f64 / (1 << 20) as f64;
        assert!(e16 > 1.25 && e16 < e - 0.02, "expansion {e16}");
        assert!(q.dense >= 46 && q.dense <= 48, "dense {}", q.dense);
        let small = OkvsParams::new(1, 40);
        assert!(small.sparse >= 3);
        let lc = OkvsParams::low_comm(1 << 20, 40);
        let e = lc.len() as f64 / (1 << 20) as f64;
        assert!(e > 1.22 && e < 1.27, "low-comm expansion {e}");
        assert!(lc.dense >= 40 && lc.dense <= 128);
    }
}
