//! From the key columns of a row to a canonical key and a 128-bit item.
//!
//! **Canonical key.** One key column: its bytes exactly as in the file (after
//! CSV unquoting and the optional normalisation). Several columns: each
//! column's bytes with `0x00` escaped as `0x00 0xFF`, each followed by the
//! terminator `0x00 0x01`. That encoding is injective, and its bytewise order
//! is the lexicographic order of the column tuple, so "sorted by key" means
//! what a user expects for multi-column keys too.
//!
//! **Item.** The protocols work on 128-bit values. A canonical key of at most
//! 15 bytes (every 18-digit ID, phone number or short code) is *packed*: its
//! bytes, zero padded, then its length in the last byte. Packing is injective,
//! so two different short keys can never collide, and it costs a copy instead of
//! a hash. A longer key becomes BLAKE3 (keyed with a fixed venn domain key)
//! truncated to 128 bits, with the last byte forced to 16..=255 so it never
//! equals a packed value. Collision resistance of that case is the 2^64
//! birthday bound of a 128-bit hash — the same as SecretFlow's Blake3-128
//! item hash — while short keys have none to worry about. Every protocol
//! hashes items again with its own keyed or random-oracle hash before use, so
//! the structure of packed items is never exposed.

/// The 128-bit representation of a key, see the module docs.
pub type Item = u128;

const LONG_KEY_DOMAIN: [u8; 32] = *b"venn-psi item v1 long key hash..";

/// Maps a canonical key to its item.
pub fn item_of(key: &[u8]) -> Item {
    let mut b = [0u8; 16];
    if key.len() <= 15 {
        b[..key.len()].copy_from_slice(key);
        b[15] = key.len() as u8;
    } else {
        let h = blake3::keyed_hash(&LONG_KEY_DOMAIN, key);
        b.copy_from_slice(&h.as_bytes()[..16]);
        b[15] = 16 + (b[15] % 240);
    }
    u128::from_be_bytes(b)
}

/// A well-mixed 64-bit value of an item, for bucketing and hash tables. The
/// item itself may be structured (packed keys), so never bucket on its raw bits.
#[inline]
pub fn mix(item: Item) -> u64 {
    let lo = item as u64;
    let hi = (item >> 64) as u64;
    let mut z = lo ^ hi.rotate_left(29).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Appends the canonical encoding of a multi-column key's next column.
pub fn push_column(out: &mut Vec<u8>, col: &[u8]) {
    for &c in col {
        out.push(c);
        if c == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 1]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_keys_pack_without_collisions() {
        assert_ne!(item_of(b"ab"), item_of(b"ab\0"));
        assert_ne!(item_of(b""), item_of(b"\0"));
        assert!(item_of(b"123456789012345678").to_be_bytes()[15] >= 16);
        assert_eq!(item_of(b"abc").to_be_bytes()[15], 3);
    }

    proptest! {
        #[test]
        fn items_are_injective_on_short_keys(a in proptest::collection::vec(any::<u8>(), 0..16),
                                             b in proptest::collection::vec(any::<u8>(), 0..16)) {
            prop_assert_eq!(a == b, item_of(&a) == item_of(&b));
        }

        #[test]
        fn short_item_order_is_key_order(a in proptest::collection::vec(any::<u8>(), 0..16),
                                         b in proptest::collection::vec(any::<u8>(), 0..16)) {
            prop_assert_eq!(a.cmp(&b), item_of(&a).cmp(&item_of(&b)));
        }

        #[test]
        fn tuple_encoding_keeps_tuple_order(a in proptest::collection::vec(proptest::collection::vec(0u8..3, 0..4), 2),
                                            b in proptest::collection::vec(proptest::collection::vec(0u8..3, 0..4), 2)) {
            let enc = |t: &Vec<Vec<u8>>| { let mut o = Vec::new(); for c in t { push_column(&mut o, c); } o };
            prop_assert_eq!(a.cmp(&b), enc(&a).cmp(&enc(&b)));
        }
    }
}
