//! Packed tokens (the sled key layout, src/codec.rs) from arbitrary bytes.
//!
//! - `unpack_token` never panics; what it returns is a valid token whose
//!   packing is exactly the input (one canonical packing per token);
//! - for the input read as a token: if `validate_token` accepts it,
//!   `unpack_token(pack_token(t)) == t`, hex tokens pack to half their size,
//!   and packing keeps the text order of two tokens (the key order sled
//!   iterates in) within one packing kind.
#![no_main]

use devreg::internals::{pack_token, unpack_token};
use devreg::validate_token;
use libfuzzer_sys::fuzz_target;

fn is_packed_hex(t: &str) -> bool {
    !t.is_empty()
        && t.len().is_multiple_of(2)
        && t.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn check_token(t: &str) {
    if validate_token("token", t).is_err() {
        return;
    }
    let packed = pack_token(t);
    assert_eq!(
        unpack_token(&packed).as_deref(),
        Some(t),
        "pack/unpack round trip of {t:?} (packed {packed:02x?})"
    );
    if is_packed_hex(t) {
        assert_eq!(packed.len(), 1 + t.len() / 2, "hex packs to half");
    } else {
        assert_eq!(packed.len(), 1 + t.len(), "raw packs with a tag byte");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some(t) = unpack_token(data) {
        assert!(
            validate_token("token", &t).is_ok() || t.len() > devreg::limits::MAX_TOKEN_BYTES,
            "unpacked token {t:?} is not a token"
        );
        assert_eq!(
            &*pack_token(&t),
            data,
            "{data:02x?} unpacks to {t:?}, which packs differently"
        );
    }
    // The input as one token, and split in two to compare orders.
    if let Ok(text) = std::str::from_utf8(data) {
        check_token(text);
        if let Some(mid) = text.len().checked_div(2) {
            if text.is_char_boundary(mid) {
                let (a, b) = text.split_at(mid);
                check_token(a);
                check_token(b);
                if validate_token("a", a).is_ok()
                    && validate_token("b", b).is_ok()
                    && is_packed_hex(a) == is_packed_hex(b)
                {
                    // Same packing kind: byte order of the packed forms is text order.
                    assert_eq!(
                        pack_token(a).cmp(&pack_token(b)),
                        a.cmp(b),
                        "order of {a:?} and {b:?}"
                    );
                }
            }
        }
    }
});
