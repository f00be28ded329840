//! Oblivious transfer: 128 base OTs, then IKNP correlated-OT extension.
//!
//! * Base OT: Chou–Orlandi "The Simplest Protocol for Oblivious Transfer"
//!   (LATINCRYPT 2015, eprint 2015/267) on the ristretto255 group
//!   (`curve25519-dalek`). Sender: a, A = aG. Receiver with bit c: b,
//!   B = bG + cA, key H(A, B, bA). Sender keys k₀ = H(A, B, aB),
//!   k₁ = H(A, B, a(B − A)). H is BLAKE3 over the index and the transcript,
//!   truncated to 128 bits. Semi-honest security is all RR22's semi-honest
//!   protocol needs.
//! * Extension: Ishai–Kilian–Nissim–Petrank (CRYPTO 2003) in its
//!   correlated form (as in Asharov–Lindell–Schneider–Zohner CCS 2013 and the
//!   Ferret/Wolverine silent-VOLE papers): the extension *sender* is the
//!   base-OT *receiver* with choice string Δ ∈ {0,1}^128; after transposition
//!   it holds q_i and the extension receiver, with choice bit r_i, holds
//!   t_i = q_i ⊕ r_i·Δ. Reading Δ as an element of GF(2^128) this is a
//!   subfield VOLE over GF(2) with the same Δ that the silent VOLE uses (see
//!   `vole.rs`), and hashing with the TCCR hash gives random OTs.
//!
//! * Malicious mode: the KOS check (Keller–Orsini–Scholl, "Actively secure OT
//!   extension with optimal overhead", CRYPTO 2015, §3 Fig. 7, the
//!   correlation check): the receiver adds 256 ≥ κ + λ OTs with random
//!   choice bits, derives χ_i ∈ GF(2^128) from a hash of its message u
//!   (Fiat–Shamir instead of KOS's coin toss) and sends x = Σ χ_i·r_i and
//!   t = Σ χ_i·t_i; the sender checks Σ χ_i·q_i = t + x·Δ and fails
//!   otherwise. A receiver that used inconsistent choice bits across the
//!   128 columns (to learn bits of Δ, which is also the VOLE's Δ) is caught
//!   except with the probability KOS bound. The base OTs stay
//!   Chou–Orlandi, whose proof against a malicious *receiver* of the base
//!   OT (here the VOLE sender) has known gaps in the UC model; we assume it.
//!
//! Why IKNP rather than more base OTs: the silent VOLE needs ~60k OTs per
//! chunk (GGM levels + 128 per noise value); one Chou–Orlandi OT costs three
//! scalar multiplications (~40 µs), IKNP a few AES calls.

use curve25519_dalek::constants::RISTRETTO_BASEPOINT_TABLE;
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;

use super::gf128;
use super::prim::{Aes, os_random};
use super::tags;
use crate::channel::Channel;
use crate::error::PsiError;
use crate::wire;

/// Number of base OTs = computational security parameter κ.
pub(crate) const KAPPA: usize = 128;

fn random_scalar() -> Scalar {
    let mut wide = [0u8; 64];
    wide[..16].copy_from_slice(&os_random().to_le_bytes());
    wide[16..32].copy_from_slice(&os_random().to_le_bytes());
    wide[32..48].copy_from_slice(&os_random().to_le_bytes());
    wide[48..].copy_from_slice(&os_random().to_le_bytes());
    Scalar::from_bytes_mod_order_wide(&wide)
}

fn ot_hash(i: usize, a: &[u8; 32], b: &[u8; 32], p: &CompressedRistretto) -> u128 {
    let mut h = blake3::Hasher::new_derive_key("venn rr22 2026 chou-orlandi base ot");
    h.update(&(i as u64).to_le_bytes());
    h.update(a);
    h.update(b);
    h.update(p.as_bytes());
    let out = h.finalize();
    let mut k = [0u8; 16];
    k.copy_from_slice(&out.as_bytes()[..16]);
    u128::from_le_bytes(k)
}

/// Points per batch of [`double_compress`].
const BATCH: usize = 32;

/// `compress(2·P)` for every point P, in batches that share one field
/// inversion each (`double_and_compress_batch`): a lone `compress` costs an
/// inversion per point. Callers hand in halves (k/2·Q for the k·Q they
/// need, or a random half h for b = 2h), as the ECDH module does; the
/// results, and so the OT keys, are those of compressing k·Q.
///
/// On the calling thread, as the whole base OT: it runs at the start of
/// the VOLE, where the thread pool is busy reading the input (the early
/// VOLE at the connector), and tasks handed to the pool would wait behind
/// the read's. Both parties' base OT, in one process on this machine's
/// two hyperthreads: 5.9–6.9 ms before, 4.6–6.5 ms batched.
fn double_compress(points: &[RistrettoPoint]) -> Vec<CompressedRistretto> {
    points
        .chunks(BATCH)
        .flat_map(RistrettoPoint::double_and_compress_batch)
        .collect()
}

/// Base-OT sender: returns `KAPPA` random key pairs (k₀, k₁).
pub(crate) fn base_send(chan: &dyn Channel) -> Result<Vec<(u128, u128)>, PsiError> {
    let a = random_scalar();
    let big_a = RISTRETTO_BASEPOINT_TABLE * &a;
    let a_bytes = big_a.compress().to_bytes();
    wire::send(chan, tags::BASE_A, &a_bytes)?;
    let msg = wire::recv(chan, tags::BASE_B, "base OT reply")?;
    if msg.len() != 32 * KAPPA {
        return Err(PsiError::peer(format!(
            "base OT reply has {} bytes, expected {}",
            msg.len(),
            32 * KAPPA
        )));
    }
    let half = a * Scalar::from(2u8).invert();
    let half_a = half * big_a;
    let bs: Vec<[u8; 32]> = msg
        .chunks_exact(32)
        .map(|c| c.try_into().expect("32-byte chunks"))
        .collect();
    // (a/2)·B and (a/2)·B − (a/2)·A for each B: doubled, a·B and a·(B − A)
    let halves: Vec<RistrettoPoint> = bs
        .iter()
        .map(|b| {
            CompressedRistretto(*b)
                .decompress()
                .map(|big_b| half * big_b)
                .ok_or_else(|| PsiError::peer("base OT reply: invalid group element"))
        })
        .collect::<Result<_, _>>()?;
    let pairs: Vec<RistrettoPoint> = halves.iter().flat_map(|&p| [p, p - half_a]).collect();
    let comp = double_compress(&pairs);
    Ok(bs
        .iter()
        .zip(comp.chunks_exact(2))
        .enumerate()
        .map(|(i, (b, k))| {
            (
                ot_hash(i, &a_bytes, b, &k[0]),
                ot_hash(i, &a_bytes, b, &k[1]),
            )
        })
        .collect())
}

/// Base-OT receiver with the 128 choice bits of `choices`; returns k_{c_i}.
pub(crate) fn base_recv(chan: &dyn Channel, choices: u128) -> Result<Vec<u128>, PsiError> {
    let msg = wire::recv(chan, tags::BASE_A, "base OT setup")?;
    let a_bytes: [u8; 32] = msg
        .as_slice()
        .try_into()
        .map_err(|_| PsiError::peer("base OT setup: expected 32 bytes"))?;
    let big_a = CompressedRistretto(a_bytes)
        .decompress()
        .ok_or_else(|| PsiError::peer("base OT setup: invalid group element"))?;
    // b = 2h for a random h (as uniform as b): h·G + c·(A/2) doubles to
    // B = b·G + c·A, and h·A to b·A
    let half_big_a = Scalar::from(2u8).invert() * big_a;
    let hs: Vec<Scalar> = (0..KAPPA).map(|_| random_scalar()).collect();
    let halves: Vec<RistrettoPoint> = hs
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let p = RISTRETTO_BASEPOINT_TABLE * h;
            if (choices >> i) & 1 == 1 {
                p + half_big_a
            } else {
                p
            }
        })
        .collect();
    let reply: Vec<u8> = double_compress(&halves)
        .iter()
        .flat_map(|b| b.to_bytes())
        .collect();
    wire::send(chan, tags::BASE_B, &reply)?;
    let shared: Vec<RistrettoPoint> = hs.iter().map(|h| h * big_a).collect();
    Ok(double_compress(&shared)
        .iter()
        .zip(reply.chunks_exact(32))
        .enumerate()
        .map(|(i, (p, b))| ot_hash(i, &a_bytes, b.try_into().expect("32 bytes"), p))
        .collect())
}

/// Transposes a 128×128 bit matrix in place: bit c of row r ↔ bit r of row c.
pub(crate) fn transpose128(m: &mut [u128; 128]) {
    let mut s = 64usize;
    let mut mask: u128 = u128::MAX >> 64; // bits c with (c & s) == 0
    while s > 0 {
        for r in 0..128 {
            if r & s == 0 {
                let a = m[r];
                let b = m[r + s];
                m[r] = (a & mask) | ((b & mask) << s);
                m[r + s] = ((a >> s) & mask) | (b & !mask);
            }
        }
        s >>= 1;
        mask ^= mask << s;
    }
}

/// Expands `seeds` column PRGs from block counter `ctr`: `nb` blocks each.
fn expand_columns(prgs: &[Aes], ctr: u128, nb: usize) -> Vec<u128> {
    let mut cols = vec![0u128; prgs.len() * nb];
    for (j, p) in prgs.iter().enumerate() {
        let col = &mut cols[j * nb..(j + 1) * nb];
        for (c, x) in col.iter_mut().enumerate() {
            *x = ctr.wrapping_add(c as u128);
        }
        p.enc_inplace(col);
    }
    cols
}

/// Rows from 128 columns of `nb` blocks: row 128c+i has bit j = bit i of column j's block c.
fn transpose_columns(cols: &[u128], nb: usize) -> Vec<u128> {
    let mut rows = vec![0u128; nb * 128];
    let mut m = [0u128; 128];
    for c in 0..nb {
        for (j, x) in m.iter_mut().enumerate() {
            *x = cols[j * nb + c];
        }
        transpose128(&mut m);
        rows[c * 128..(c + 1) * 128].copy_from_slice(&m);
    }
    rows
}

/// IKNP extension receiver (holds the base-OT *sender* keys).
pub(crate) struct IknpReceiver {
    g0: Vec<Aes>,
    g1: Vec<Aes>,
    ctr: u128,
}

impl IknpReceiver {
    pub(crate) fn new(base: &[(u128, u128)]) -> Self {
        IknpReceiver {
            g0: base.iter().map(|k| Aes::new(k.0)).collect(),
            g1: base.iter().map(|k| Aes::new(k.1)).collect(),
            ctr: 0,
        }
    }

    /// Correlated OTs with choice bits `choices` (bit i of word c = OT 128c+i).
    /// Returns the message for the sender and the rows t_i (= q_i ⊕ r_i·Δ).
    pub(crate) fn extend(&mut self, choices: &[u128]) -> (Vec<u8>, Vec<u128>) {
        let nb = choices.len();
        let t = expand_columns(&self.g0, self.ctr, nb);
        let g = expand_columns(&self.g1, self.ctr, nb);
        self.ctr = self.ctr.wrapping_add(nb as u128);
        let mut msg = Vec::with_capacity(t.len() * 16);
        for j in 0..KAPPA {
            for c in 0..nb {
                let u = t[j * nb + c] ^ g[j * nb + c] ^ choices[c];
                msg.extend_from_slice(&u.to_le_bytes());
            }
        }
        (msg, transpose_columns(&t, nb))
    }
}

/// Extra OT blocks (128 OTs each) with random choices that hide the
/// receiver's choice bits in the KOS check (κ + λ = 168 ≤ 256).
const KOS_EXTRA: usize = 2;

/// The KOS challenge χ_i = AES_k(i), k = BLAKE3(u) (Fiat–Shamir).
fn kos_chi(msg: &[u8]) -> Aes {
    let mut h = blake3::Hasher::new_derive_key("venn rr22 2026 KOS check challenge");
    h.update(msg);
    let mut k = [0u8; 16];
    k.copy_from_slice(&h.finalize().as_bytes()[..16]);
    Aes::new(u128::from_le_bytes(k))
}

/// Σ_i χ_i·rows[i] over GF(2^128).
fn kos_combine(chi: &Aes, rows: &[u128]) -> u128 {
    let mut idx: Vec<u128> = (0..rows.len() as u128).collect();
    chi.enc_inplace(&mut idx);
    idx.iter()
        .zip(rows)
        .fold(0u128, |acc, (c, r)| acc ^ gf128::mul(*c, *r))
}

impl IknpReceiver {
    /// [`IknpReceiver::extend`] with the KOS consistency check (see module
    /// docs): the message carries u, then x and t.
    pub(crate) fn extend_checked(&mut self, choices: &[u128]) -> (Vec<u8>, Vec<u128>) {
        let mut all = choices.to_vec();
        all.extend((0..KOS_EXTRA).map(|_| os_random()));
        let (mut msg, mut t) = self.extend(&all);
        let tail = kos_tail(&all, &t, &msg);
        msg.extend_from_slice(&tail);
        t.truncate(choices.len() * 128);
        (msg, t)
    }
}

/// The receiver's KOS values x = Σ χ_i·r_i and t = Σ χ_i·t_i for message u.
fn kos_tail(choices: &[u128], t: &[u128], u: &[u8]) -> [u8; 32] {
    let chi = kos_chi(u);
    let mut idx: Vec<u128> = (0..t.len() as u128).collect();
    chi.enc_inplace(&mut idx);
    let x = idx
        .iter()
        .enumerate()
        .filter(|(i, _)| (choices[i / 128] >> (i % 128)) & 1 == 1)
        .fold(0u128, |acc, (_, c)| acc ^ c);
    let tt = kos_combine(&chi, t);
    let mut out = [0u8; 32];
    out[..16].copy_from_slice(&x.to_le_bytes());
    out[16..].copy_from_slice(&tt.to_le_bytes());
    out
}

impl IknpSender {
    /// [`IknpSender::extend`] for a message of
    /// [`IknpReceiver::extend_checked`]: fails if the KOS check does not hold.
    pub(crate) fn extend_checked(&mut self, nb: usize, msg: &[u8]) -> Result<Vec<u128>, PsiError> {
        let body = KAPPA * (nb + KOS_EXTRA) * 16;
        if msg.len() != body + 32 {
            return Err(PsiError::peer(format!(
                "OT extension message has {} bytes, expected {}",
                msg.len(),
                body + 32
            )));
        }
        let (u, tail) = msg.split_at(body);
        let mut q = self.extend(nb + KOS_EXTRA, u)?;
        let x = u128::from_le_bytes(tail[..16].try_into().expect("16 bytes"));
        let tt = u128::from_le_bytes(tail[16..].try_into().expect("16 bytes"));
        let qq = kos_combine(&kos_chi(u), &q);
        if qq ^ gf128::mul(x, self.delta) != tt {
            return Err(PsiError::peer(
                "malicious-security check failed: the peer's OT extension is inconsistent (KOS check)",
            ));
        }
        q.truncate(nb * 128);
        Ok(q)
    }
}

/// IKNP extension sender (holds Δ and the base-OT *receiver* keys).
pub(crate) struct IknpSender {
    delta: u128,
    g: Vec<Aes>,
    ctr: u128,
}

impl IknpSender {
    pub(crate) fn new(delta: u128, keys: &[u128]) -> Self {
        IknpSender {
            delta,
            g: keys.iter().map(|k| Aes::new(*k)).collect(),
            ctr: 0,
        }
    }

    /// Processes the receiver's message for `nb`·128 OTs; returns the rows q_i.
    pub(crate) fn extend(&mut self, nb: usize, msg: &[u8]) -> Result<Vec<u128>, PsiError> {
        if msg.len() != KAPPA * nb * 16 {
            return Err(PsiError::peer(format!(
                "OT extension message has {} bytes, expected {}",
                msg.len(),
                KAPPA * nb * 16
            )));
        }
        let mut q = expand_columns(&self.g, self.ctr, nb);
        self.ctr = self.ctr.wrapping_add(nb as u128);
        for (j, col) in q.chunks_exact_mut(nb).enumerate() {
            if (self.delta >> j) & 1 == 1 {
                let off = j * nb * 16;
                for (c, x) in col.iter_mut().enumerate() {
                    let b = &msg[off + c * 16..off + c * 16 + 16];
                    *x ^= u128::from_le_bytes(b.try_into().expect("16 bytes"));
                }
            }
        }
        Ok(transpose_columns(&q, nb))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::memory_pair;
    use crate::rr22::prim::{Prg, tccr};

    #[test]
    fn transpose_is_a_transpose() {
        let mut prg = Prg::new(3);
        let orig: Vec<u128> = prg.blocks(128);
        let mut m = [0u128; 128];
        m.copy_from_slice(&orig);
        transpose128(&mut m);
        for (r, row) in orig.iter().enumerate() {
            for (c, col) in m.iter().enumerate() {
                assert_eq!((row >> c) & 1, (col >> r) & 1, "r={r} c={c}");
            }
        }
        transpose128(&mut m);
        assert_eq!(&m[..], &orig[..]);
    }

    #[test]
    fn base_ot_correlation_holds() {
        let (ca, cb) = memory_pair(8);
        let choices = os_random();
        let (sent, got) = std::thread::scope(|s| {
            let h = s.spawn(|| base_send(&ca).unwrap());
            let g = base_recv(&cb, choices).unwrap();
            (h.join().unwrap(), g)
        });
        for i in 0..KAPPA {
            let c = (choices >> i) & 1 == 1;
            let (k0, k1) = sent[i];
            assert_ne!(k0, k1);
            if c {
                assert_eq!(got[i], k1);
                assert_ne!(got[i], k0);
            } else {
                assert_eq!(got[i], k0);
                assert_ne!(got[i], k1);
            }
        }
    }

    #[test]
    fn iknp_correlation_and_random_ot() {
        let (ca, cb) = memory_pair(8);
        let delta = os_random();
        let (base_pairs, base_keys) = std::thread::scope(|s| {
            let h = s.spawn(|| base_send(&ca).unwrap());
            let g = base_recv(&cb, delta).unwrap();
            (h.join().unwrap(), g)
        });
        let mut recv = IknpReceiver::new(&base_pairs);
        let mut send = IknpSender::new(delta, &base_keys);
        for round in 0..2 {
            let nb = 3 + round;
            let choices = Prg::new(round as u128 + 10).blocks(nb);
            let (msg, t) = recv.extend(&choices);
            let q = send.extend(nb, &msg).unwrap();
            assert_eq!(t.len(), nb * 128);
            for i in 0..nb * 128 {
                let r = (choices[i / 128] >> (i % 128)) & 1 == 1;
                assert_eq!(t[i], q[i] ^ if r { delta } else { 0 });
            }
            // random OT: the receiver's message equals m_r and differs from m_{1-r}
            let mut m0 = vec![0u128; t.len()];
            let mut m1 = vec![0u128; t.len()];
            let mut mr = vec![0u128; t.len()];
            let qd: Vec<u128> = q.iter().map(|x| x ^ delta).collect();
            tccr(&q, 0, &mut m0);
            tccr(&qd, 0, &mut m1);
            tccr(&t, 0, &mut mr);
            for i in 0..t.len() {
                let r = (choices[i / 128] >> (i % 128)) & 1 == 1;
                let (want, other) = if r { (m1[i], m0[i]) } else { (m0[i], m1[i]) };
                assert_eq!(mr[i], want);
                assert_ne!(mr[i], other);
            }
        }
        // a truncated message is a peer error, not a panic
        assert!(send.extend(2, &[0u8; 10]).is_err());
    }

    fn iknp_pair() -> (IknpReceiver, IknpSender, u128) {
        let (ca, cb) = memory_pair(8);
        let delta = os_random();
        let (base_pairs, base_keys) = std::thread::scope(|s| {
            let h = s.spawn(|| base_send(&ca).unwrap());
            let g = base_recv(&cb, delta).unwrap();
            (h.join().unwrap(), g)
        });
        (
            IknpReceiver::new(&base_pairs),
            IknpSender::new(delta, &base_keys),
            delta,
        )
    }

    #[test]
    fn kos_checked_extension_holds_and_catches_inconsistent_columns() {
        let (mut recv, mut send, delta) = iknp_pair();
        let choices = Prg::new(44).blocks(5);
        let (msg, t) = recv.extend_checked(&choices);
        let q = send.extend_checked(5, &msg).unwrap();
        assert_eq!(t.len(), 5 * 128);
        for i in 0..t.len() {
            let r = (choices[i / 128] >> (i % 128)) & 1 == 1;
            assert_eq!(t[i], q[i] ^ if r { delta } else { 0 });
        }
        // A cheating receiver uses choice bit r_i in every column but one
        // (the attack that would reveal Δ_j, also the VOLE's Δ): it flips
        // bit i of column j of u and sends the x, t an honest receiver with
        // its choices would send, under the challenge of the tampered u.
        // Then q_i changes by Δ_j·e_j, so the check fails exactly when
        // Δ_j = 1: the cheater learns Δ_j only at the price of being caught.
        let (mut caught, mut passed) = (0, 0);
        for trial in 0..16 {
            let (mut recv, mut send, delta) = iknp_pair();
            let mut all = choices.clone();
            all.extend([trial as u128 * 77 + 1, 99]);
            let (mut u, t) = recv.extend(&all);
            let nb = all.len();
            let (j, i) = (17usize, 3usize);
            u[j * nb * 16 + i / 8] ^= 1 << (i % 8);
            let mut msg = u.clone();
            msg.extend_from_slice(&kos_tail(&all, &t, &u));
            let r = send.extend_checked(5, &msg);
            assert_eq!(r.is_err(), (delta >> j) & 1 == 1, "trial {trial}");
            if r.is_err() {
                caught += 1;
            } else {
                passed += 1;
            }
        }
        assert!(caught > 0 && passed > 0);
        // tampering with x is always caught
        let (mut recv, mut send, _) = iknp_pair();
        let (mut msg, _) = recv.extend_checked(&choices);
        let n = msg.len();
        msg[n - 20] ^= 1;
        assert!(send.extend_checked(5, &msg).is_err());
    }
}
