//! One NDJSON import line, from arbitrary bytes, through the real import
//! parser (`devreg::import::parse_line`, which `devreg import` uses) to a
//! validated `Op`; never a panic.
//!
//! Properties: no panic; an `Op` that validates survives a JSON round trip
//! of its own serde form and still validates.
#![no_main]

use devreg::import::parse_line;
use devreg::limits::MAX_IMPORT_LINE_BYTES;
use devreg::Op;
use libfuzzer_sys::fuzz_target;

fn round_trips(op: &Op) {
    let json = serde_json::to_string(op).expect("an Op serialises");
    let back: Op = serde_json::from_str(&json).expect("an Op's JSON parses");
    assert_eq!(&back, op, "serde round trip of {json}");
    back.validate().expect("a valid Op stays valid");
}

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_IMPORT_LINE_BYTES {
        return;
    }
    // The line as the importer sees it (newline stripped by the reader).
    let line = data.split(|&b| b == b'\n').next().unwrap_or_default();
    if let Ok(op) = parse_line(line) {
        round_trips(&op);
        // Errors must render without panicking, too (Display of every variant).
        let _ = Op::Touch {
            token: String::new(),
            seen_ms: 0,
        }
        .validate()
        .map_err(|e| e.to_string());
    }
    // The library's own serde form of Op, from the same bytes.
    if let Ok(op) = serde_json::from_slice::<Op>(data) {
        match op.validate() {
            Ok(()) => round_trips(&op),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
});
