//! Page values (src/store/paged.rs in frames of src/store/frame.rs) from
//! arbitrary bytes.
//!
//! - `page_records` never panics on any input, plain or compressed (a
//!   damaged LZ4 block, a length over the limit, a frame in a frame);
//! - records that decode re-encode (`page_value`, compressed when that
//!   pays) to a value that decodes to the same map, by key;
//! - records cut from the input (the first byte picks a record size) survive
//!   the same round trip, so both frame kinds are written and read back.
#![no_main]

use std::collections::BTreeMap;

use devreg::internals::{page_records, page_value};
use libfuzzer_sys::fuzz_target;

fn round_trip(records: &[(Vec<u8>, Vec<u8>)]) {
    let want: BTreeMap<Vec<u8>, Vec<u8>> = records.iter().cloned().collect();
    let value = page_value(records);
    let back = page_records(&value).expect("an encoded page decodes");
    let got: BTreeMap<Vec<u8>, Vec<u8>> = back.iter().cloned().collect();
    assert_eq!(back.len(), got.len(), "an encoded page has each key once");
    assert_eq!(got, want, "page round trip");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(records) = page_records(data) {
        round_trip(&records);
    }
    let Some((&size, rest)) = data.split_first() else {
        return;
    };
    let size = usize::from(size % 64) + 1;
    let records: Vec<(Vec<u8>, Vec<u8>)> = rest
        .chunks(size)
        .enumerate()
        .map(|(i, c)| (format!("D{:04}", i % 37).into_bytes(), c.repeat(1 + i % 3)))
        .collect();
    round_trip(&records);
});
