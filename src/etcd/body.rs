//! The body of an operation in the log (DESIGN.md 15.1): the write
//! requests of one group, or a checkpoint mark.
//!
//! ```text
//! writes  b'O' then, per request: entries (u32 BE) length (u32 BE) body
//!                                 (encode_entries of the request,
//!                                 Entry::Clock first)
//! mark    b'C' confirmed (i64 BE) pin (i64 BE)   (15.3)
//! ```

/// First byte of an operation holding write requests.
pub(crate) const OP_WRITES: u8 = b'O';
/// First byte of a checkpoint mark.
pub(crate) const OP_MARK: u8 = b'C';
/// Bytes of one request's header.
pub(crate) const REQUEST_HEADER_BYTES: usize = 8;

/// An empty operation of writes.
pub(crate) fn new_writes() -> Vec<u8> {
    vec![OP_WRITES]
}

/// Appends one request (`count` entries encoded as `encoded`) to `body`.
pub(crate) fn push_request(body: &mut Vec<u8>, count: u32, encoded: &[u8]) {
    body.extend_from_slice(&count.to_be_bytes());
    body.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    body.extend_from_slice(encoded);
}

/// One request of an operation: `(entries, encoded)`, or what is wrong.
pub(crate) type Request<'a> = Result<(u32, &'a [u8]), String>;

/// The requests of an operation of writes, in order; None if `body` is not
/// one.
pub(crate) fn requests(body: &[u8]) -> Option<Vec<Request<'_>>> {
    let mut rest = body.strip_prefix(&[OP_WRITES])?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let Some((count, len, tail)) = split_header(rest) else {
            out.push(Err("truncated request header".into()));
            break;
        };
        let Some((encoded, next)) = tail.split_at_checked(len) else {
            out.push(Err("truncated request body".into()));
            break;
        };
        out.push(Ok((count, encoded)));
        rest = next;
    }
    Some(out)
}

/// (entries, body length, the rest) of a request header.
fn split_header(b: &[u8]) -> Option<(u32, usize, &[u8])> {
    let count = u32::from_be_bytes(b.get(0..4)?.try_into().ok()?);
    let len = u32::from_be_bytes(b.get(4..8)?.try_into().ok()?) as usize;
    Some((count, len, b.get(REQUEST_HEADER_BYTES..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_damage_is_named() {
        let mut body = new_writes();
        push_request(&mut body, 2, b"abc");
        push_request(&mut body, 1, b"");
        let got = requests(&body).expect("writes");
        assert_eq!(got, vec![Ok((2, &b"abc"[..])), Ok((1, &b""[..]))]);
        let cut = &body[..body.len() - 9];
        let got = requests(cut).expect("writes");
        assert_eq!(got.last(), Some(&Err("truncated request body".to_string())));
        assert!(requests(b"C\0").is_none());
    }
}
