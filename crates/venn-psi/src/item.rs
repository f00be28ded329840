//! From the key columns of a row to a canonical key and a 128-bit item.
//!
//! **Canonical key.** One key column: its bytes exactly as in the file (after
//! CSV unquoting and the optional normalisation). Several columns: each
//! column's bytes with `0x00` escaped as `0x00 0xFF`, each followed by the
//! terminator `0x00 0x01`. That encoding is injective, and its bytewise order
//! is the lexicographic order of the column tuple, so "sorted by key" means
//! what a user expects for multi-column keys too.
//!
//! **Item.** The protocols work on 128-bit values. Three encodings, told
//! apart by the last byte, cover every key:
//!
//! - a canonical key of at most 15 bytes is *byte-packed*: its bytes, zero
//!   padded, then its length (0..=15) in the last byte;
//! - a key of 16 to 36 ASCII digits (18-digit national IDs, long account
//!   numbers) is *digit-packed*: its decimal value (< 10^36 < 2^120) in the
//!   first 15 bytes and 16 + its length (32..=52) in the last byte, so
//!   leading zeros still count;
//! - any other key becomes BLAKE3 (keyed with a fixed venn domain key)
//!   truncated to 128 bits, with the last byte forced into 53..=255.
//!
//! Both packings are injective — two different keys can never collide — and
//! cost a few nanoseconds instead of a ~100 ns hash. Collision resistance of that case is the 2^64
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
        return u128::from_be_bytes(b);
    }
    if key.len() <= 36
        && let Some(v) = decimal(key)
    {
        return (v << 8) | (16 + key.len()) as u128;
    }
    let h = blake3::keyed_hash(&LONG_KEY_DOMAIN, key);
    b.copy_from_slice(&h.as_bytes()[..16]);
    b[15] = 53 + (b[15] % 203);
    u128::from_be_bytes(b)
}

/// The value of a string of 16 to 36 ASCII digits; `None` if any byte is
/// not a digit. Eight digits at a time (SWAR, [`eight_digits`]): an 18-digit
/// ID costs two of those and two single digits instead of a chain of 18
/// dependent multiply-adds.
#[inline]
fn decimal(key: &[u8]) -> Option<u128> {
    let mut chunks = key.chunks_exact(8);
    // the first two chunks in u64: 10^16 < 2^64
    let mut head = 0u64;
    for c in chunks.by_ref().take(2) {
        head = head * 100_000_000 + eight_digits(c.try_into().expect("8 bytes"))?;
    }
    let mut v = head as u128;
    for c in chunks.by_ref() {
        v = v * 100_000_000 + eight_digits(c.try_into().expect("8 bytes"))? as u128;
    }
    for &d in chunks.remainder() {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (d - b'0') as u128;
    }
    Some(v)
}

/// The value of eight ASCII digits, the first most significant; `None` if
/// any byte is not a digit. Read as a little-endian u64, the first digit
/// is the lowest byte. A byte is a digit iff its high nibble is 3 and stays
/// 3 after adding 6 (0x3A..=0x3F become 0x40..=0x45; no carry can cross a
/// byte once every high nibble is 3). Then pairs, quads and the octet are
/// combined in place: each lane's value fits its lane at every step
/// (99 < 2^8, 9999 < 2^16, 99_999_999 < 2^32).
#[inline]
fn eight_digits(b: [u8; 8]) -> Option<u64> {
    const HI: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    const ZEROS: u64 = 0x3030_3030_3030_3030;
    let x = u64::from_le_bytes(b);
    if x & HI != ZEROS || x.wrapping_add(0x0606_0606_0606_0606) & HI != ZEROS {
        return None;
    }
    let v = x - ZEROS;
    let v = (v * 10 + (v >> 8)) & 0x00FF_00FF_00FF_00FF;
    let v = (v * 100 + (v >> 16)) & 0x0000_FFFF_0000_FFFF;
    Some((v * 10_000 + (v >> 32)) & 0xFFFF_FFFF)
}

/// Bytes of the buffer [`key_of`] writes a key into.
pub const KEY_BUF: usize = 40;

/// The canonical key of a packed item (the inverse of [`item_of`] on its
/// two packings), written into `out` (the returned slice); `None` for a
/// hashed item, whose key cannot be recovered.
///
/// The output renders matched keys from their items when a file's rows are
/// nothing but their key: no walk to the row text, which after the sort by
/// key is a random read per row. Digit keys are written right-aligned,
/// eight digits at a time with fixed-size stores ([`put_digits`]): no
/// variable-length copy per group, 13 against 18 ns for an 18-digit ID
/// here.
pub fn key_of(item: Item, out: &mut [u8; KEY_BUF]) -> Option<&[u8]> {
    match (item & 0xFF) as u8 {
        len @ 0..=15 => {
            out[..16].copy_from_slice(&item.to_be_bytes());
            Some(&out[..len as usize])
        }
        class @ 32..=52 => {
            let len = (class - 16) as usize;
            put_digits(item >> 8, out, len);
            Some(&out[KEY_BUF - len..])
        }
        _ => None,
    }
}

/// Writes `v` < 10^`len` (`len` ≤ 36) as the last `len` bytes of `out`,
/// leading zeros included: whole groups of eight digits from the right,
/// each by [`put_eight_digits`], so up to seven bytes before the last `len`
/// get leading zeros too (the buffer has room: 5 · 8 = 40).
fn put_digits(mut v: u128, out: &mut [u8; KEY_BUF], len: usize) {
    debug_assert!(len <= 36);
    let mut end = KEY_BUF;
    while end > KEY_BUF - len {
        let low = if v >> 64 == 0 {
            let x = v as u64;
            v = (x / 100_000_000) as u128;
            (x % 100_000_000) as u32
        } else {
            let low = (v % 100_000_000) as u32;
            v /= 100_000_000;
            low
        };
        out[end - 8..end].copy_from_slice(&put_eight_digits(low));
        end -= 8;
    }
    debug_assert_eq!(v, 0, "the value has more digits than its key");
}

/// The eight ASCII digits of `v` < 10^8, most significant first: the
/// inverse of [`eight_digits`], in lanes of one u64. The first four digits
/// go to the low 32-bit lane and the last four to the high one; each lane
/// is split into two-digit halves (x / 100 as x·5243 >> 19, exact for
/// x < 10^4), then each half into digits (y / 10 as y·103 >> 10, exact for
/// y < 100). Read little-endian, the lowest byte is the first digit.
fn put_eight_digits(v: u32) -> [u8; 8] {
    debug_assert!(v < 100_000_000);
    let v = v as u64;
    let x = (v / 10_000) | ((v % 10_000) << 32);
    let h = ((x * 5243) >> 19) & 0x0000_007F_0000_007F;
    let y = h | ((x - h * 100) << 16);
    let t = ((y * 103) >> 10) & 0x000F_000F_000F_000F;
    let z = t | ((y - t * 10) << 8);
    (z | 0x3030_3030_3030_3030).to_le_bytes()
}

/// Items of one class sort like their canonical keys: every byte-packed key
/// (class 0: bytes, zero padding, then the length), and digit-packed keys of
/// one length (class 16 + length: the decimal value, whose order is the
/// digits' order when the lengths agree). Hashed keys have no class.
///
/// The engine sorts matches by item instead of by key bytes when all of
/// them share a class: one read per match instead of a walk to the key.
pub fn order_class(item: Item) -> Option<u8> {
    match (item & 0xFF) as u8 {
        0..=15 => Some(0),
        c @ 32..=52 => Some(c),
        _ => None,
    }
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

    /// The plain definition: every byte a digit, folded one at a time.
    fn decimal_naive(key: &[u8]) -> Option<u128> {
        key.iter()
            .all(u8::is_ascii_digit)
            .then(|| key.iter().fold(0u128, |v, d| v * 10 + (d - b'0') as u128))
    }

    #[test]
    fn eight_digits_rejects_every_non_digit_byte_in_every_position() {
        for pos in 0..8 {
            for b in 0..=255u8 {
                let mut s = *b"12345678";
                s[pos] = b;
                let want = decimal_naive(&s).map(|v| v as u64);
                assert_eq!(eight_digits(s), want, "byte {b:#04x} at {pos}");
            }
        }
        assert_eq!(eight_digits(*b"00000000"), Some(0));
        assert_eq!(eight_digits(*b"99999999"), Some(99_999_999));
        assert_eq!(eight_digits(*b"01234567"), Some(1_234_567));
    }

    proptest! {
        #[test]
        fn decimal_equals_the_plain_fold(digits in "[0-9]{16,36}") {
            prop_assert_eq!(decimal(digits.as_bytes()), decimal_naive(digits.as_bytes()));
        }

        #[test]
        fn decimal_of_any_bytes_equals_the_plain_fold(
            key in proptest::collection::vec(prop_oneof![b'0'..=b'9', any::<u8>()], 16..=36)
        ) {
            prop_assert_eq!(decimal(&key), decimal_naive(&key));
        }
    }

    #[test]
    fn digit_keys_pack_without_collisions() {
        let a = item_of(b"110101199003074321");
        assert_eq!(a & 0xFF, 16 + 18);
        assert_eq!(a >> 8, 110101199003074321);
        assert_ne!(
            item_of(b"0110101199003074321"),
            item_of(b"110101199003074321")
        );
        let max = "9".repeat(36);
        assert_eq!(item_of(max.as_bytes()) >> 8, 10u128.pow(36) - 1);
        // 37 digits and non-digits are hashed into the third range
        for k in ["9".repeat(37), "12345678901234567x".to_string()] {
            assert!((53..=255).contains(&(item_of(k.as_bytes()) & 0xFF)));
        }
    }

    proptest! {
        #[test]
        fn the_three_encodings_never_meet(a in "[0-9]{16,36}|.{16,40}|.{0,15}", b in "[0-9]{16,36}|.{16,40}|.{0,15}") {
            prop_assert_eq!(a == b, item_of(a.as_bytes()) == item_of(b.as_bytes()));
        }
    }

    #[test]
    fn eight_digits_render_and_parse_back() {
        for v in [
            0u32, 1, 9, 10, 99, 100, 9_999, 10_000, 12_345_678, 99_999_999,
        ] {
            let b = put_eight_digits(v);
            assert_eq!(&b[..], format!("{v:08}").as_bytes());
            assert_eq!(eight_digits(b), Some(v as u64));
        }
        // every value of four digits in either lane
        for v in (0..10_000u32).chain((0..10_000).map(|v| v * 10_000 + 9_999 - v)) {
            assert_eq!(&put_eight_digits(v)[..], format!("{v:08}").as_bytes());
        }
    }

    proptest! {
        #[test]
        fn packed_items_give_back_their_key(key in "[0-9]{16,36}|[ -~]{0,15}") {
            let mut out = [0u8; KEY_BUF];
            prop_assert_eq!(key_of(item_of(key.as_bytes()), &mut out), Some(key.as_bytes()));
        }

        #[test]
        fn short_byte_keys_give_back_their_key(key in proptest::collection::vec(any::<u8>(), 0..16)) {
            let mut out = [0u8; KEY_BUF];
            prop_assert_eq!(key_of(item_of(&key), &mut out), Some(&key[..]));
        }
    }

    #[test]
    fn hashed_items_give_back_nothing() {
        let mut out = [0u8; KEY_BUF];
        for key in [
            "a key of more than fifteen bytes",
            "1234567890123456x",
            &"9".repeat(37),
        ] {
            assert_eq!(key_of(item_of(key.as_bytes()), &mut out), None, "{key}");
        }
        // the extremes of the digit packing
        for key in [
            "0000000000000000",
            &"9".repeat(36),
            &"0".repeat(36),
            "1000000000000000000000",
        ] {
            assert_eq!(
                key_of(item_of(key.as_bytes()), &mut out),
                Some(key.as_bytes())
            );
        }
    }

    #[test]
    fn classes_tell_the_encodings_apart() {
        assert_eq!(order_class(item_of(b"abc")), Some(0));
        assert_eq!(order_class(item_of(b"")), Some(0));
        assert_eq!(order_class(item_of(b"110101199003074321")), Some(34));
        assert_eq!(order_class(item_of(b"1101011990030743210")), Some(35));
        assert_eq!(order_class(item_of(b"a long key of many bytes")), None);
        // different digit lengths are different classes: "9…" > "10…" as bytes
        let (nine, ten) = (item_of(b"9000000000000000"), item_of(b"10000000000000000"));
        assert_ne!(order_class(nine), order_class(ten));
        assert!(nine < ten && b"9000000000000000"[..] > b"10000000000000000"[..]);
    }

    #[test]
    fn short_keys_pack_without_collisions() {
        assert_ne!(item_of(b"ab"), item_of(b"ab\0"));
        assert_ne!(item_of(b""), item_of(b"\0"));
        assert!(item_of(b"123456789012345678x").to_be_bytes()[15] >= 53);
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
        fn items_of_one_class_sort_like_their_keys(a in "[0-9]{16,36}|.{16,40}|.{0,15}", b in "[0-9]{16,36}|.{16,40}|.{0,15}") {
            let (x, y) = (item_of(a.as_bytes()), item_of(b.as_bytes()));
            if let (Some(cx), Some(cy)) = (order_class(x), order_class(y))
                && cx == cy
            {
                prop_assert_eq!(a.as_bytes().cmp(b.as_bytes()), x.cmp(&y));
            }
        }

        #[test]
        fn equal_length_digit_keys_sort_like_their_keys(a in "[0-9]{18}", b in "[0-9]{18}") {
            let (x, y) = (item_of(a.as_bytes()), item_of(b.as_bytes()));
            prop_assert_eq!(order_class(x), Some(16 + 18));
            prop_assert_eq!(a.as_bytes().cmp(b.as_bytes()), x.cmp(&y));
        }

        #[test]
        fn tuple_encoding_keeps_tuple_order(a in proptest::collection::vec(proptest::collection::vec(0u8..3, 0..4), 2),
                                            b in proptest::collection::vec(proptest::collection::vec(0u8..3, 0..4), 2)) {
            let enc = |t: &Vec<Vec<u8>>| { let mut o = Vec::new(); for c in t { push_column(&mut o, c); } o };
            prop_assert_eq!(a.cmp(&b), enc(&a).cmp(&enc(&b)));
        }
    }
}
