//! Device records and attribute blobs (src/codec.rs) from arbitrary bytes.
//!
//! - `decode_record` and `decode_attributes` never panic on any input;
//! - a record that decodes re-encodes (same bincode options as devreg) to a
//!   record that decodes to the same value, and attributes that decode
//!   re-encode to a blob that decodes to the same map;
//! - with `DEVREG_FUZZ_KNOWN_BUGS=1`, also the strict property that the
//!   attribute blob starts exactly where the record head ends (BUG: bincode
//!   accepts non-canonical varints, and `decode_record` computes the head's
//!   length by re-serialising it, so a non-canonical head shifts the blob
//!   start into the head; reproducer in
//!   fuzz/artifacts-kept/record_decode-noncanonical-varint).
#![no_main]

use bincode::Options;
use devreg::internals::{decode_attributes, decode_record};
use devreg::limits::MAX_LOG_RECORD_BYTES;
use devreg::Platform;
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};

fn opts() -> impl Options + Copy {
    bincode::DefaultOptions::new()
        .with_limit(MAX_LOG_RECORD_BYTES as u64 * 2)
        .with_varint_encoding()
        .with_little_endian()
}

/// Mirror of `RecordHead` in src/codec.rs (bincode does not encode names).
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Head<'a> {
    platform: u8,
    last_seen_ms: u64,
    #[serde(borrow)]
    person: Option<&'a str>,
}

/// The same head, owned, to read it from an `io::Read` and see where it ends.
#[derive(Deserialize)]
struct HeadOwned {
    #[allow(dead_code)]
    platform: u8,
    last_seen_ms: u64,
    #[allow(dead_code)]
    person: Option<String>,
}

fn platform_byte(p: Platform) -> u8 {
    match p {
        Platform::Ios => 0,
        Platform::Android => 1,
    }
}

fn strict() -> bool {
    std::env::var_os("DEVREG_FUZZ_KNOWN_BUGS").is_some()
}

fuzz_target!(|data: &[u8]| {
    // Attribute blobs on their own.
    if let Ok(map) = decode_attributes("fuzz", data) {
        let pairs: Vec<(&str, &str)> = map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let blob = opts().serialize(&pairs).expect("encoding attributes");
        let again = decode_attributes("fuzz", &blob).expect("re-encoded attributes decode");
        assert_eq!(again, map, "attributes round trip");
    }

    // Whole records.
    let Ok(rec) = decode_record("fuzz", data) else {
        return;
    };
    assert_eq!(data[0], 1, "only format version 1 decodes");
    let head = Head {
        platform: platform_byte(rec.platform),
        last_seen_ms: rec.last_seen_ms,
        person: rec.person,
    };
    let mut bytes = vec![1u8];
    opts()
        .serialize_into(&mut bytes, &head)
        .expect("encoding head");
    let head_len = bytes.len();
    bytes.extend_from_slice(rec.attributes_blob);
    let back = decode_record("fuzz", &bytes).expect("a re-encoded record decodes");
    assert_eq!(back, rec, "record round trip");
    assert_eq!(&bytes[head_len..], rec.attributes_blob);
    // The blob is always a suffix of the input.
    assert!(data.ends_with(rec.attributes_blob));
    if let Ok(attrs) = decode_attributes("fuzz", rec.attributes_blob) {
        assert!(attrs.len() <= devreg::limits::MAX_ATTRIBUTES);
    }
    if strict() {
        // Where the head really ends in the input.
        let mut rd = &data[1..];
        let real: HeadOwned = opts()
            .allow_trailing_bytes()
            .deserialize_from(&mut rd)
            .expect("the head decoded once already");
        assert_eq!(real.last_seen_ms, rec.last_seen_ms);
        assert_eq!(
            rd.len(),
            rec.attributes_blob.len(),
            "the attribute blob must start where the head ends (non-canonical head {:02x?})",
            &data[..data.len() - rd.len()]
        );
    }
});
