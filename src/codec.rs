//! Byte layouts: packed tokens, sled keys and the versioned device record.
//!
//! DESIGN.md describes each layout byte by byte; keep the two in step.

use std::cmp::Ordering;

use bincode::Options;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::limits::*;
use crate::model::{Attributes, Platform};

/// Version byte that starts every device record and the format stored in metadata.
pub const FORMAT_VERSION: u8 = 1;

/// The store's layout version, in `Mformat`: 1 was a key per record; 2
/// keeps the per-record keyspaces in pages (`store::paged`); 3 deletes
/// superseded pages and merged delta chunks after the commit, marking the
/// merge with `Mdelta_merged`; 4 may keep a page or delta chunk compressed
/// (`store::frame`); 5 may hold a sink's backfill in its metadata and
/// backfill adds in its batch in flight (`feed::backfill`); 6 may hold a
/// sink's format and identifier kind in its metadata (layout 4,
/// `feed::persist`) and `AddSinkWith` entries in its log; 7 may hold
/// deliverability records (`'Q'`), `HardFailure` history entries, day
/// counters with the feedback counts and `Op::Feedback` in its log
/// (DESIGN.md 20). Values keep their own version byte (`FORMAT_VERSION`).
pub const STORE_FORMAT: u32 = 7;

/// Key prefix of device records.
pub const DEVICE_PREFIX: u8 = b'D';

/// Key prefix of deliverability records (`'Q'` packed-token: version byte
/// 1 + bincode `Deliverability`), one per device that had feedback.
pub const DELIV_PREFIX: u8 = b'Q';

/// The store key of a device's deliverability record.
pub(crate) fn deliv_key(packed: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(packed.len() + 1);
    k.push(DELIV_PREFIX);
    k.extend_from_slice(packed);
    k
}

/// Metadata key: the format version (u32 big-endian).
pub const META_FORMAT: &[u8] = b"Mformat";
/// Metadata key: the log position the store reflects (u64 big-endian).
pub const META_CHECKPOINT_LSN: &[u8] = b"Mcheckpoint_lsn";
/// Metadata key: the per-person cap in effect (u32 big-endian).
pub const META_CAP: &[u8] = b"Mmax_devices_per_person";

const TAG_RAW: u8 = 0;
const TAG_HEX: u8 = 1;

/// The one bincode configuration devreg uses: varint, little-endian, bounded.
pub(crate) fn bincode_opts() -> impl Options + Copy {
    bincode::DefaultOptions::new()
        .with_limit(MAX_LOG_RECORD_BYTES as u64 * 2)
        .with_varint_encoding()
        .with_little_endian()
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

fn nibble(b: u8) -> u8 {
    if b.is_ascii_digit() {
        b - b'0'
    } else {
        b - b'a' + 10
    }
}

/// Packs a token: lowercase hex of even length becomes raw bytes (half the size).
pub fn pack_token(token: &str) -> Box<[u8]> {
    let b = token.as_bytes();
    let hex = packs_as_hex(b);
    let mut out = vec![0u8; packed_len(b, hex)];
    pack_into(b, hex, &mut out);
    out.into_boxed_slice()
}

/// Whether a token's text packs as hex: lowercase hex digits, even length.
fn packs_as_hex(b: &[u8]) -> bool {
    !b.is_empty() && b.len().is_multiple_of(2) && b.iter().all(|&c| is_lower_hex(c))
}

fn packed_len(b: &[u8], hex: bool) -> usize {
    1 + if hex { b.len() / 2 } else { b.len() }
}

/// Writes the packed form of `b` into `out`, which is `packed_len` long.
fn pack_into(b: &[u8], hex: bool, out: &mut [u8]) {
    let Some((tag, body)) = out.split_first_mut() else {
        return;
    };
    if hex {
        *tag = TAG_HEX;
        for (o, pair) in body.iter_mut().zip(b.chunks_exact(2)) {
            if let [hi, lo] = pair {
                *o = (nibble(*hi) << 4) | nibble(*lo);
            }
        }
    } else {
        *tag = TAG_RAW;
        body.copy_from_slice(b);
    }
}

/// Longest packed token `with_packed` builds on the stack: a tag and 256
/// bytes, which covers APNs's 64 hex characters and FCM's registration
/// tokens (about 160 characters); a longer one is packed on the heap.
const STACK_PACKED_BYTES: usize = 1 + 256;

/// Calls `f` with `pack_token(token)`'s bytes, built in a stack buffer when
/// they fit, so that finding a device by its token allocates nothing (unit
/// test `stack_packing_equals_pack_token`).
pub(crate) fn with_packed<R>(token: &str, f: impl FnOnce(&[u8]) -> R) -> R {
    let b = token.as_bytes();
    let hex = packs_as_hex(b);
    let mut buf = [0u8; STACK_PACKED_BYTES];
    match buf.get_mut(..packed_len(b, hex)) {
        Some(out) => {
            pack_into(b, hex, out);
            f(out)
        }
        None => f(&pack_token(token)),
    }
}

/// Unpacks a packed token back to its text; `None` if the bytes are not a packed token.
pub fn unpack_token(packed: &[u8]) -> Option<String> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    if !is_packed_token(packed) {
        return None;
    }
    let (&tag, body) = packed.split_first()?;
    if tag == TAG_HEX {
        let mut text = Vec::with_capacity(body.len() * 2);
        for &byte in body {
            text.extend_from_slice(&[HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0xf)]]);
        }
        // Only hex digits were written: this cannot fail.
        String::from_utf8(text).ok()
    } else {
        std::str::from_utf8(body).ok().map(str::to_owned)
    }
}

/// Whether `packed` is a canonical packed token (what `unpack_token` accepts),
/// without building the text. A raw body must not be one `pack_token`
/// would have packed.
pub fn is_packed_token(packed: &[u8]) -> bool {
    match packed.split_first() {
        Some((&TAG_HEX, body)) => !body.is_empty(),
        Some((&TAG_RAW, body)) => {
            !body.is_empty()
                && body.iter().all(|b| (0x21..=0x7e).contains(b))
                && (body.len() % 2 == 1 || !body.iter().all(|&c| is_lower_hex(c)))
        }
        _ => false,
    }
}

/// Orders packed tokens as their texts would order.
pub fn cmp_packed(a: &[u8], b: &[u8]) -> Ordering {
    match (a.first(), b.first()) {
        // Equal-tag hex: byte order of packed nibbles is the text order.
        (Some(&TAG_HEX), Some(&TAG_HEX)) | (Some(&TAG_RAW), Some(&TAG_RAW)) => a.cmp(b),
        _ => unpack_token(a).cmp(&unpack_token(b)),
    }
}

/// The sled key of a device record.
pub fn device_key(packed: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + packed.len());
    k.push(DEVICE_PREFIX);
    k.extend_from_slice(packed);
    k
}

/// The blob of `attributes` in a buffer of its own.
#[cfg(test)]
pub(crate) fn encode_attributes(attributes: &Attributes) -> Vec<u8> {
    let mut out = Vec::new();
    encode_attributes_into(attributes, &mut out);
    out
}

/// Encodes attributes into `out` (replacing what it held), as the blob
/// stored (and interned) with a device.
///
/// The layout is bincode's for a sequence of string pairs (a varint count,
/// then per pair a varint length and the bytes of the name and the value),
/// written directly, reserving the exact size: every register with
/// attributes encodes a blob, and serde's path collected a vector of pairs
/// and grew the output (3 to 5 allocations per device, DESIGN 13 step 10);
/// a buffer reused across registers allocates only when a blob outgrows it.
/// Unit test `the_direct_attribute_encoder_agrees_with_bincode` and its
/// proptest hold it to bincode's bytes.
pub(crate) fn encode_attributes_into(attributes: &Attributes, out: &mut Vec<u8>) {
    let strings = attributes
        .iter()
        .flat_map(|(k, v)| [k.as_str(), v.as_str()]);
    let size = varint_len(attributes.len() as u64)
        + strings
            .clone()
            .map(|x| varint_len(x.len() as u64) + x.len())
            .sum::<usize>();
    out.clear();
    out.reserve_exact(size);
    write_varint(out, attributes.len() as u64);
    for x in strings {
        write_varint(out, x.len() as u64);
        out.extend_from_slice(x.as_bytes());
    }
    debug_assert_eq!(out.len(), size);
}

/// Bytes of one bincode varint (see [`read_varint`]).
fn varint_len(v: u64) -> usize {
    match v {
        0..=250 => 1,
        251..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// Appends one bincode varint (see [`read_varint`]).
fn write_varint(out: &mut Vec<u8>, v: u64) {
    if let Ok(b @ 0..=250) = u8::try_from(v) {
        out.push(b);
    } else if let Ok(x) = u16::try_from(v) {
        out.push(251);
        out.extend_from_slice(&x.to_le_bytes());
    } else if let Ok(x) = u32::try_from(v) {
        out.push(252);
        out.extend_from_slice(&x.to_le_bytes());
    } else {
        out.push(253);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Decodes an attribute blob that was checked when it entered memory.
///
/// Every read of a device decodes its blob, so this reads the layout
/// `encode_attributes_into` writes (bincode's varint count, then per
/// pair a varint length and UTF-8 bytes for the name and the value) into
/// the map, without serde's intermediate vector of pairs. It accepts
/// exactly what bincode accepts, and a blob bincode would refuse decodes
/// to no attributes, as before (unit test
/// `the_direct_attribute_decoder_agrees_with_bincode`).
pub(crate) fn decode_attributes_trusted(blob: &[u8]) -> Attributes {
    decode_attribute_pairs(blob).unwrap_or_default()
}

fn decode_attribute_pairs(blob: &[u8]) -> Option<Attributes> {
    let mut rest = blob;
    let pairs = read_varint(&mut rest)?;
    let mut map = Attributes::new();
    for _ in 0..pairs {
        let name = read_str(&mut rest)?;
        let value = read_str(&mut rest)?;
        map.insert(name.to_owned(), value.to_owned());
    }
    // bincode's default options refuse trailing bytes.
    rest.is_empty().then_some(map)
}

/// One bincode varint (1.3, `with_varint_encoding`): a byte below 251 is
/// the value, 251/252/253 announce a little-endian u16/u32/u64; anything
/// else cannot be a u64.
fn read_varint(rest: &mut &[u8]) -> Option<u64> {
    let (&tag, tail) = rest.split_first()?;
    let (value, used) = match tag {
        0..=250 => (u64::from(tag), 0),
        251 => (u64::from(u16::from_le_bytes(le_bytes(tail)?)), 2),
        252 => (u64::from(u32::from_le_bytes(le_bytes(tail)?)), 4),
        253 => (u64::from_le_bytes(le_bytes(tail)?), 8),
        _ => return None,
    };
    *rest = tail.get(used..)?;
    Some(value)
}

fn le_bytes<const N: usize>(b: &[u8]) -> Option<[u8; N]> {
    b.get(..N)?.try_into().ok()
}

fn read_str<'a>(rest: &mut &'a [u8]) -> Option<&'a str> {
    let len = usize::try_from(read_varint(rest)?).ok()?;
    let bytes = rest.get(..len)?;
    *rest = rest.get(len..)?;
    std::str::from_utf8(bytes).ok()
}

/// Decodes an attribute blob, checking for duplicate names and the limits.
pub fn decode_attributes(location: &str, blob: &[u8]) -> Result<Attributes> {
    let pairs: Vec<(String, String)> = bincode_opts()
        .deserialize(blob)
        .map_err(|e| Error::corrupt(location, format!("attributes: {e}")))?;
    let n = pairs.len();
    let map: Attributes = pairs.into_iter().collect();
    if map.len() != n {
        return Err(Error::corrupt(location, "duplicate attribute names"));
    }
    crate::model::validate_attributes(&map).map_err(|e| Error::corrupt(location, e.to_string()))?;
    Ok(map)
}

#[derive(Serialize, Deserialize)]
struct RecordHead<'a> {
    platform: u8,
    last_seen_ms: u64,
    #[serde(borrow)]
    person: Option<&'a str>,
}

/// A device record as stored: everything but the token, which is in the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// The platform.
    pub platform: Platform,
    /// Last seen, Unix ms.
    pub last_seen_ms: u64,
    /// The owner.
    pub person: Option<&'a str>,
    /// The encoded attributes blob (see [`encode_attributes_into`]).
    pub attributes_blob: &'a [u8],
}

/// Encodes a device record: version byte, head, attribute blob.
pub fn encode_record(r: &RecordRef<'_>) -> Vec<u8> {
    let head = RecordHead {
        platform: r.platform.index() as u8,
        last_seen_ms: r.last_seen_ms,
        person: r.person,
    };
    // Version, platform, a varint time (at most 9 bytes), the option tag,
    // the name's length (at most 9) and bytes, the blob: one allocation.
    let person_bytes = r.person.map_or(0, |p| 9 + p.len());
    let mut out = Vec::with_capacity(12 + person_bytes + r.attributes_blob.len());
    out.push(FORMAT_VERSION);
    // Serializing into a Vec cannot fail.
    let _ = bincode_opts().serialize_into(&mut out, &head);
    out.extend_from_slice(r.attributes_blob);
    out
}

/// Decodes a device record; `location` names the key in errors. The attribute
/// blob is returned undecoded; the caller checks it (once per distinct blob).
pub fn decode_record<'a>(location: &str, bytes: &'a [u8]) -> Result<RecordRef<'a>> {
    let (&version, mut rest) = bytes
        .split_first()
        .ok_or_else(|| Error::corrupt(location, "empty record"))?;
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedFormat {
            location: location.to_owned(),
            found: u32::from(version),
            supported: u32::from(FORMAT_VERSION),
        });
    }
    let head: RecordHead<'a> = bincode_opts()
        .allow_trailing_bytes()
        .deserialize(rest)
        .map_err(|e| Error::corrupt(location, format!("record head: {e}")))?;
    // bincode accepts over-long varints; only the canonical encoding says
    // where the head ends, so anything else is damage.
    // A head is at most ~170 bytes: encode it on the stack (open decodes
    // every record, so no allocation here).
    let mut buf = [0u8; 256];
    let left = {
        let mut w: &mut [u8] = &mut buf;
        bincode_opts()
            .serialize_into(&mut w, &head)
            .map_err(|e| Error::corrupt(location, e.to_string()))?;
        w.len()
    };
    let len = buf.len() - left;
    let canonical = buf.get(..len).unwrap_or_default();
    if !rest.starts_with(canonical) {
        return Err(Error::corrupt(
            location,
            "record head is not canonically encoded",
        ));
    }
    rest = rest
        .get(len..)
        .ok_or_else(|| Error::corrupt(location, "record truncated"))?;
    let platform = Platform::from_index(head.platform)
        .ok_or_else(|| Error::corrupt(location, format!("platform byte {}", head.platform)))?;
    if let Some(p) = head.person {
        crate::model::validate_person("person", p)
            .map_err(|e| Error::corrupt(location, e.to_string()))?;
    }
    if head.last_seen_ms > MAX_TIMESTAMP_MS {
        return Err(Error::corrupt(location, "last_seen_ms after the year 3000"));
    }
    Ok(RecordRef {
        platform,
        last_seen_ms: head.last_seen_ms,
        person: head.person,
        attributes_blob: rest,
    })
}

/// Encodes a value stored in sled: the format version byte, then bincode.
///
/// Fails when the value is over the codec's size limit: a caller must never
/// store a short value in its place (reliability finding 1: a dropped error
/// once checkpointed a lone version byte and the database never opened again).
pub(crate) fn encode_versioned<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    encode_versioned_with_capacity(v, 16)
}

/// [`encode_versioned`] into a buffer of `capacity` bytes at first (a
/// value that is usually larger than 16 bytes would grow it several times).
pub(crate) fn encode_versioned_with_capacity<T: Serialize>(
    v: &T,
    capacity: usize,
) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(capacity.max(1));
    out.push(FORMAT_VERSION);
    bincode_opts()
        .serialize_into(&mut out, v)
        .map_err(|e| Error::Encode(e.to_string()))?;
    Ok(out)
}

/// Decodes what `encode_versioned` wrote; errors name the key.
pub(crate) fn decode_versioned<T: for<'de> Deserialize<'de>>(
    key: &[u8],
    bytes: &[u8],
) -> Result<T> {
    let (&v, body) = bytes
        .split_first()
        .ok_or_else(|| Error::corrupt(describe_key(key), "empty value"))?;
    if v != FORMAT_VERSION {
        return Err(Error::UnsupportedFormat {
            location: describe_key(key),
            found: u32::from(v),
            supported: u32::from(FORMAT_VERSION),
        });
    }
    bincode_opts()
        .deserialize(body)
        .map_err(|e| Error::corrupt(describe_key(key), e.to_string()))
}

/// Renders a key for error messages: the prefix letter and the token if it is one.
pub fn describe_key(key: &[u8]) -> String {
    match key.split_first() {
        Some((&DEVICE_PREFIX, packed)) => match unpack_token(packed) {
            Some(t) => format!("device record {t:?}"),
            None => format!("device key {packed:02x?}"),
        },
        Some((&DELIV_PREFIX, packed)) => match unpack_token(packed) {
            Some(t) => format!("deliverability record {:?}", crate::model::token_label(&t)),
            None => format!("deliverability key {packed:02x?}"),
        },
        _ => format!("key {}", String::from_utf8_lossy(key)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_order_like_text() {
        let toks = [
            "ab", "abcd", "ABCD", "abc", "zz", "0f", "a", "ff00", "f:APA91b",
        ];
        for t in toks {
            assert_eq!(unpack_token(&pack_token(t)).as_deref(), Some(t));
        }
        assert_eq!(pack_token("abcd").len(), 3);
        for a in toks {
            for b in toks {
                assert_eq!(
                    cmp_packed(&pack_token(a), &pack_token(b)),
                    a.cmp(b),
                    "{a} vs {b}"
                );
            }
        }
        // Over-long varints are damage, not another spelling.
        assert!(decode_record("k", &[1, 0, 0xfb, 5, 0, 0, 0, 0]).is_err());
        // A raw encoding of a packable token is not canonical.
        assert_eq!(unpack_token(b"\0ab"), None);
        assert_eq!(unpack_token(b""), None);
        assert_eq!(unpack_token(b"\x01"), None);
        for p in [&b"\0ab"[..], b"", b"\x01", b"\x02ab", b"\0a b"] {
            assert_eq!(is_packed_token(p), unpack_token(p).is_some(), "{p:?}");
        }
        for t in toks {
            assert!(is_packed_token(&pack_token(t)));
        }
    }

    #[test]
    fn record_round_trips_and_rejects_damage() {
        let mut attrs = Attributes::new();
        attrs.insert("app_version".into(), "1.2.3".into());
        let blob = encode_attributes(&attrs);
        let r = RecordRef {
            platform: Platform::Android,
            last_seen_ms: 1_700_000_000_000,
            person: Some("p1"),
            attributes_blob: &blob,
        };
        let bytes = encode_record(&r);
        let back = decode_record("k", &bytes).unwrap();
        assert_eq!(back, r);
        assert_eq!(decode_attributes("k", back.attributes_blob).unwrap(), attrs);
        let mut future = bytes.clone();
        future[0] = 9;
        assert!(matches!(
            decode_record("k", &future),
            Err(Error::UnsupportedFormat { found: 9, .. })
        ));
        for cut in 0..bytes.len() {
            let part = &bytes[..cut];
            if let Ok(r) = decode_record("k", part) {
                assert!(decode_attributes("k", r.attributes_blob).is_err());
            }
        }
    }

    fn bincode_attributes(blob: &[u8]) -> Attributes {
        bincode_opts()
            .deserialize::<Vec<(String, String)>>(blob)
            .map(|pairs| pairs.into_iter().collect())
            .unwrap_or_default()
    }

    #[test]
    fn the_direct_attribute_decoder_agrees_with_bincode() {
        let mut long = Attributes::new();
        long.insert("n".repeat(300), "v".repeat(70_000));
        long.insert("é".into(), String::new());
        let blob = encode_attributes(&long);
        assert_eq!(decode_attributes_trusted(&blob), long);
        // A u16-length name (tag 251) and a u32-length value (tag 252).
        assert!(blob.contains(&251) && blob.contains(&252));
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0, 0],                                  // trailing byte
            vec![1, 1, b'a', 1, b'b'],                   // one pair
            vec![2, 1, b'a', 1, b'b', 1, b'a', 1, b'c'], // duplicate: last wins
            vec![1, 1, 0xff, 0],                         // not UTF-8
            vec![1, 251, 1, 0, b'a', 0],                 // non-minimal length
            vec![254, 0],                                // u128 tag
            vec![1, 5, b'a'],                            // short
            vec![253, 255, 255, 255, 255, 255, 255, 255, 255],
        ];
        for c in &cases {
            assert_eq!(decode_attributes_trusted(c), bincode_attributes(c), "{c:?}");
        }
        assert_eq!(
            decode_attributes_trusted(&cases[4])
                .get("a")
                .map(String::as_str),
            Some("c")
        );
        assert!(decode_attributes_trusted(&cases[5]).is_empty());
    }

    /// What serde's path wrote before `encode_attributes_into` wrote directly.
    fn bincode_encoding(attributes: &Attributes) -> Vec<u8> {
        let pairs: Vec<(&str, &str)> = attributes
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        bincode_opts().serialize(&pairs).unwrap_or_default()
    }

    #[test]
    fn the_direct_attribute_encoder_agrees_with_bincode() {
        let mut cases = vec![Attributes::new()];
        for len in [0usize, 1, 250, 251, 0xffff, 0x1_0000, 70_000] {
            let mut a = Attributes::new();
            a.insert("k".repeat(len.min(300)), "v".repeat(len));
            a.insert("é".into(), String::new());
            cases.push(a);
        }
        let mut many = Attributes::new();
        for i in 0..300 {
            many.insert(format!("name{i}"), format!("value{i}"));
        }
        cases.push(many); // a u16 count (tag 251)
        for a in &cases {
            let blob = encode_attributes(a);
            assert_eq!(blob, bincode_encoding(a), "{} pairs", a.len());
            assert_eq!(blob.capacity(), blob.len(), "sized exactly");
        }
        assert_eq!(varint_len(u64::from(u32::MAX) + 1), 9);
        let mut big = Vec::new();
        write_varint(&mut big, u64::from(u32::MAX) + 1);
        assert_eq!(
            big,
            bincode_opts()
                .serialize(&(u64::from(u32::MAX) + 1))
                .unwrap_or_default()
        );
    }

    #[test]
    fn a_record_is_encoded_into_one_allocation_of_its_size() {
        let blob = encode_attributes(&Attributes::from([("a".to_string(), "b".to_string())]));
        for person in [
            None,
            Some("p"),
            Some("person-00000001"),
            Some(&*"p".repeat(MAX_PERSON_BYTES)),
        ] {
            for last_seen_ms in [0, 250, 251, MAX_TIMESTAMP_MS] {
                let r = RecordRef {
                    platform: Platform::Android,
                    last_seen_ms,
                    person,
                    attributes_blob: &blob,
                };
                let out = encode_record(&r);
                assert!(out.capacity() >= out.len());
                assert!(
                    out.capacity() <= out.len() + 18,
                    "{person:?} {last_seen_ms}"
                );
                let back = decode_record("k", &out).map(|d| (d.person, d.last_seen_ms));
                assert_eq!(back.ok(), Some((person, last_seen_ms)));
            }
        }
    }

    #[test]
    fn stack_packing_equals_pack_token() {
        let long_hex = "ab".repeat(300);
        let long_raw = "f:".repeat(200);
        let edge_hex = "0f".repeat(256); // exactly the stack buffer
        let edge_raw = "x".repeat(256);
        for t in [
            "", "a", "ab", "AB", "f:APA91b", &long_hex, &long_raw, &edge_hex, &edge_raw,
        ] {
            assert_eq!(
                with_packed(t, |p| p.to_vec()),
                pack_token(t).to_vec(),
                "{t:?}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn stack_packing_matches_pack_token(t in "[0-9a-f]{0,600}|.{0,300}") {
            proptest::prop_assert_eq!(with_packed(&t, |p| p.to_vec()), pack_token(&t).to_vec());
        }

        #[test]
        fn direct_attribute_decoding_matches_bincode_on_any_bytes(
            attrs in proptest::collection::btree_map(".{0,12}", ".{0,300}", 0..8),
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            cut in 0usize..400,
            flip in 0usize..400,
        ) {
            let blob = encode_attributes(&attrs);
            proptest::prop_assert_eq!(&blob, &bincode_encoding(&attrs));
            proptest::prop_assert_eq!(decode_attributes_trusted(&blob), attrs);
            let mut damaged = blob.clone();
            if let Some(b) = damaged.get_mut(flip) {
                *b ^= 0x41;
            }
            damaged.truncate(cut.max(1));
            for c in [&damaged, &noise] {
                proptest::prop_assert_eq!(decode_attributes_trusted(c), bincode_attributes(c));
            }
        }
    }
}
