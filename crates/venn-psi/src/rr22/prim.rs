//! Symmetric building blocks from AES-128, all on `u128` blocks.
//!
//! * [`Aes`]: AES-128 under a fixed or derived key, with bulk encryption
//!   (`encrypt_blocks` of the `aes` 0.9 crate, which uses AES-NI/VAES when the
//!   CPU has them). Blocks are serialised little-endian, so both parties get
//!   the same bytes on any machine.
//! * [`Prg`]: AES-128 in counter mode under a secret key: the party's source
//!   of protocol randomness (seeded from the OS through `rand`'s thread RNG).
//! * Fixed-key hashes, in the style of Guo–Katz–Wang–Weng–Yu (S&P 2020,
//!   "Efficient and secure multiparty computation from fixed-key block
//!   ciphers"), with π a fixed-key AES permutation:
//!   - [`tccr`]: π(π(x) ⊕ i) ⊕ π(x), the tweakable correlation-robust hash
//!     (GKWW20) that turns IKNP correlated OTs into random OTs;
//!   - [`ggm_expand`]: the length-doubling PRG s ↦ (π₀(s) ⊕ s, π₁(s) ⊕ s) of the
//!     GGM trees (as in the libOTe/BCG+19 PPRF);
//!   - [`hash_value`]: RR22's H(x) (Fig. 4), the value the receiver encodes
//!     for its item x: π_H(x) ⊕ x;
//!   - [`hash_out`]: RR22's output hash H_o (Fig. 4), two chained MMO
//!     steps u = π₁(v) ⊕ v, H_o = π₂(u) ⊕ u. RR22 models H_o as a random
//!     oracle; like the authors' volePSI code we instantiate it with fixed-key
//!     AES (heuristic, standard in this line of work).
//!
//! Every fixed key is derived from a distinct domain-separation string with
//! BLAKE3's key derivation, once per process.

use aes::Aes128;
use aes::cipher::{Array, BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use std::sync::LazyLock;

/// AES-128 on `u128` blocks.
#[derive(Clone)]
pub(crate) struct Aes(Aes128);

type Block = aes::Block;

impl Aes {
    pub(crate) fn new(key: u128) -> Self {
        Aes(Aes128::new(&Array::from(key.to_le_bytes())))
    }

    /// Key derived from a domain-separation label.
    pub(crate) fn from_label(label: &str) -> Self {
        let k = blake3::derive_key(label, b"venn rr22 fixed key");
        let mut b = [0u8; 16];
        b.copy_from_slice(&k[..16]);
        Self::new(u128::from_le_bytes(b))
    }

    /// AES_k(x).
    #[inline]
    pub(crate) fn enc(&self, x: u128) -> u128 {
        let mut b = Array::from(x.to_le_bytes());
        self.0.encrypt_block(&mut b);
        u128::from_le_bytes(b.into())
    }

    /// Encrypts `xs` in place, in batches (pipelined AES-NI/VAES).
    ///
    /// The staging buffer is per thread and reused: a fresh 4 KiB stack
    /// array per call was zeroed on every call, which the GGM trees (many
    /// calls on a few blocks each) paid for in memset time.
    pub(crate) fn enc_inplace(&self, xs: &mut [u128]) {
        staged(xs, |b| self.0.encrypt_blocks(b));
    }

    /// Decrypts `xs` in place (the inverse of [`Aes::enc_inplace`]).
    pub(crate) fn dec_inplace(&self, xs: &mut [u128]) {
        staged(xs, |b| self.0.decrypt_blocks(b));
    }

    /// out[i] = AES_k(xs[i]).
    pub(crate) fn enc_to(&self, xs: &[u128], out: &mut [u128]) {
        out.copy_from_slice(xs);
        self.enc_inplace(out);
    }

    /// out[i] = AES_k(xs[i]) ⊕ xs[i] (MMO / Davies–Meyer with fixed key).
    pub(crate) fn mmo_to(&self, xs: &[u128], out: &mut [u128]) {
        self.enc_to(xs, out);
        for (o, x) in out.iter_mut().zip(xs) {
            *o ^= *x;
        }
    }
}

/// Applies `f` to `xs` as AES blocks.
///
/// On a little-endian machine a `u128` is its 16 little-endian bytes in
/// memory, so the blocks are the slice itself, reinterpreted without a copy
/// (`bytemuck` checks size and alignment; every bit pattern is valid for
/// both). Measured: staging through a per-thread buffer, in and out, was
/// 18% of the silent VOLE's time (`VENN_BENCH=vole`), mostly in the GGM
/// trees. Elsewhere the blocks go through such a buffer of `CHUNK` blocks.
fn staged(xs: &mut [u128], f: impl Fn(&mut [Block])) {
    #[cfg(target_endian = "little")]
    {
        let bytes: &mut [[u8; 16]] = bytemuck::cast_slice_mut(xs);
        f(Array::cast_slice_from_core_mut(bytes))
    }
    #[cfg(not(target_endian = "little"))]
    {
        const CHUNK: usize = 256;
        thread_local! {
            static BUF: std::cell::RefCell<[Block; CHUNK]> =
                std::cell::RefCell::new([Array::from([0u8; 16]); CHUNK]);
        }
        BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            for chunk in xs.chunks_mut(CHUNK) {
                let n = chunk.len();
                for (b, x) in buf.iter_mut().zip(chunk.iter()) {
                    *b = Array::from(x.to_le_bytes());
                }
                f(&mut buf[..n]);
                for (b, x) in buf.iter().zip(chunk.iter_mut()) {
                    *x = u128::from_le_bytes((*b).into());
                }
            }
        })
    }
}

/// Fresh 128 bits from the operating system's CSPRNG (through `rand`).
pub(crate) fn os_random() -> u128 {
    use rand::Rng;
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    u128::from_le_bytes(b)
}

/// AES-CTR pseudorandom generator under a secret key.
pub(crate) struct Prg {
    aes: Aes,
    ctr: u128,
}

impl Prg {
    pub(crate) fn new(seed: u128) -> Self {
        Prg {
            aes: Aes::new(seed),
            ctr: 0,
        }
    }

    /// A generator seeded from the OS.
    pub(crate) fn from_os() -> Self {
        Self::new(os_random())
    }

    pub(crate) fn fill(&mut self, out: &mut [u128]) {
        for (i, o) in out.iter_mut().enumerate() {
            *o = self.ctr.wrapping_add(i as u128);
        }
        self.ctr = self.ctr.wrapping_add(out.len() as u128);
        self.aes.enc_inplace(out);
    }

    pub(crate) fn block(&mut self) -> u128 {
        let v = self.aes.enc(self.ctr);
        self.ctr = self.ctr.wrapping_add(1);
        v
    }

    pub(crate) fn blocks(&mut self, n: usize) -> Vec<u128> {
        let mut v = vec![0u128; n];
        self.fill(&mut v);
        v
    }
}

/// Fixed-key permutations, one per purpose.
pub(crate) struct FixedKeys {
    pub(crate) tccr: Aes,
    pub(crate) ggm0: Aes,
    pub(crate) ggm1: Aes,
    pub(crate) value: Aes,
    pub(crate) out1: Aes,
    pub(crate) out2: Aes,
}

pub(crate) static KEYS: LazyLock<FixedKeys> = LazyLock::new(|| FixedKeys {
    tccr: Aes::from_label("venn rr22 2026 tccr hash"),
    ggm0: Aes::from_label("venn rr22 2026 ggm left"),
    ggm1: Aes::from_label("venn rr22 2026 ggm right"),
    value: Aes::from_label("venn rr22 2026 okvs value hash H"),
    out1: Aes::from_label("venn rr22 2026 output hash Ho step 1"),
    out2: Aes::from_label("venn rr22 2026 output hash Ho step 2"),
});

/// TCCR hash of `xs[i]` with tweak `tweak0 + i`: π(π(x) ⊕ t) ⊕ π(x).
pub(crate) fn tccr(xs: &[u128], tweak0: u128, out: &mut [u128]) {
    let k = &KEYS.tccr;
    let mut px = vec![0u128; xs.len()];
    k.enc_to(xs, &mut px);
    for (i, (o, p)) in out.iter_mut().zip(&px).enumerate() {
        *o = *p ^ tweak0.wrapping_add(i as u128);
    }
    k.enc_inplace(out);
    for (o, p) in out.iter_mut().zip(&px) {
        *o ^= *p;
    }
}

/// GGM length-doubling PRG on a whole level: children[2i], children[2i+1]
/// from parents[i] (children may be longer than needed: extra entries stay).
pub(crate) fn ggm_expand(parents: &[u128], children: &mut [u128]) {
    debug_assert!(children.len() >= 2 * parents.len());
    const B: usize = 256;
    // per-thread staging buffers: zeroing two fresh 4 KiB arrays per call
    // cost more than the AES for the small top levels of every tree
    thread_local! {
        static LR: std::cell::RefCell<([u128; B], [u128; B])> =
            const { std::cell::RefCell::new(([0u128; B], [0u128; B])) };
    }
    LR.with(|lr| {
        let (l, r) = &mut *lr.borrow_mut();
        for (pc, cc) in parents.chunks(B).zip(children.chunks_mut(2 * B)) {
            let n = pc.len();
            l[..n].copy_from_slice(pc);
            r[..n].copy_from_slice(pc);
            KEYS.ggm0.enc_inplace(&mut l[..n]);
            KEYS.ggm1.enc_inplace(&mut r[..n]);
            for i in 0..n {
                cc[2 * i] = l[i] ^ pc[i];
                cc[2 * i + 1] = r[i] ^ pc[i];
            }
        }
    })
}

/// RR22's H(x): the value encoded in the OKVS for item x.
pub(crate) fn hash_value(xs: &[u128], out: &mut [u128]) {
    KEYS.value.mmo_to(xs, out);
}

/// RR22's output hash H_o, in place.
pub(crate) fn hash_out(vs: &mut [u128]) {
    let mut tmp = vec![0u128; vs.len()];
    KEYS.out1.mmo_to(vs, &mut tmp);
    KEYS.out2.mmo_to(&tmp, vs);
}

/// Lemire's multiply-shift reduction of 64 random bits into [0, n).
#[inline(always)]
pub(crate) fn reduce64(r: u64, n: u64) -> u64 {
    ((r as u128 * n as u128) >> 64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decryption_inverts_encryption() {
        let aes = Aes::new(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210);
        let xs: Vec<u128> = (0..1000u128).map(|i| i * 0x9e37_79b9_7f4a_7c15).collect();
        let mut ys = xs.clone();
        aes.enc_inplace(&mut ys);
        assert_ne!(ys, xs);
        assert_eq!(ys[7], aes.enc(xs[7]));
        aes.dec_inplace(&mut ys);
        assert_eq!(ys, xs);
    }

    #[test]
    fn bulk_aes_matches_single_blocks() {
        let a = Aes::new(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10);
        let xs: Vec<u128> = (0..200u128).map(|i| i * 0x1234_5678_9abc).collect();
        let mut ys = xs.clone();
        a.enc_inplace(&mut ys);
        for (x, y) in xs.iter().zip(&ys) {
            assert_eq!(a.enc(*x), *y);
            assert_ne!(x, y);
        }
    }

    #[test]
    fn aes_known_answer() {
        // FIPS-197 Appendix C.1: key 000102..0f, plaintext 00112233..ff.
        let key = u128::from_le_bytes(core::array::from_fn(|i| i as u8));
        let pt = u128::from_le_bytes(core::array::from_fn(|i| (i as u8) * 0x11));
        let ct = Aes::new(key).enc(pt).to_le_bytes();
        assert_eq!(
            ct,
            [
                0x69, 0xc4, 0xe0, 0xd8, 0x6a, 0x7b, 0x04, 0x30, 0xd8, 0xcd, 0xb7, 0x80, 0x70, 0xb4,
                0xc5, 0x5a
            ]
        );
    }

    #[test]
    fn prg_is_deterministic_and_streams() {
        let mut a = Prg::new(5);
        let mut b = Prg::new(5);
        let x = a.blocks(10);
        let mut y = b.blocks(4);
        y.extend(b.blocks(6));
        assert_eq!(x, y);
        assert_ne!(Prg::new(6).blocks(10), x);
    }
}

#[cfg(test)]
mod speed {
    use super::*;
    #[test]
    #[ignore]
    fn aes_speed() {
        let a = Aes::new(1);
        let mut v: Vec<u128> = (0..1u128 << 22).collect();
        let t = std::time::Instant::now();
        a.enc_inplace(&mut v);
        let dt = t.elapsed().as_secs_f64();
        println!("enc_inplace: {:.2} ns/block", dt * 1e9 / v.len() as f64);
        let t = std::time::Instant::now();
        let mut s = 0u128;
        for x in v.iter().take(1 << 20) {
            s ^= a.enc(*x);
        }
        let dt = t.elapsed().as_secs_f64();
        println!(
            "enc single: {:.2} ns/block {s}",
            dt * 1e9 / (1 << 20) as f64
        );
        let t = std::time::Instant::now();
        let mut s = 0u128;
        for x in v.iter().take(1 << 20) {
            s ^= crate::rr22::gf128::mul(*x, s | 1);
        }
        let dt = t.elapsed().as_secs_f64();
        println!("gf mul chain: {:.2} ns {s}", dt * 1e9 / (1 << 20) as f64);
    }
}
