//! `devreg import`'s reading stage: lines are read (never more than
//! `MAX_IMPORT_LINE_BYTES` of one held) and parsed into operations on a
//! thread of their own, and handed to the importing thread in chunks of at
//! most `PARSED_CHUNK_LINES` lines and `PARSED_CHUNK_BYTES` bytes, with at
//! most `PARSED_CHUNKS_IN_FLIGHT` chunks waiting: so the parsing overlaps
//! the engine's work in bounded memory, and the lines keep file order.

use std::io::{self, BufRead};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};
use devreg::import::parse_line;
use devreg::limits::MAX_IMPORT_LINE_BYTES;
use devreg::Op;

use crate::CliError;

/// Most lines in one chunk handed to the importing thread.
const PARSED_CHUNK_LINES: usize = 1_024;
/// Most bytes of input lines in one chunk (a chunk closes at the line
/// that reaches it).
const PARSED_CHUNK_BYTES: u64 = 4 << 20;
/// Most chunks parsed ahead of the importing thread.
const PARSED_CHUNKS_IN_FLIGHT: usize = 4;

/// One input line, parsed, or the read error that ends the input.
pub enum Parsed {
    Line {
        verdict: Result<Op, String>,
        line_no: u64,
        /// Bytes of input up to the end of this line.
        pos: u64,
    },
    ReadError(String),
}

/// Starts the reading thread; the chunks come in file order.
pub fn spawn_parser(
    reader: Box<dyn BufRead + Send>,
) -> Result<(Receiver<Vec<Parsed>>, JoinHandle<()>), CliError> {
    let (tx, rx) = bounded(PARSED_CHUNKS_IN_FLIGHT);
    let handle = std::thread::Builder::new()
        .name("devreg-parse".into())
        .spawn(move || parse_all(reader, &tx))
        .map_err(|e| CliError(format!("starting the thread that reads the input: {e}")))?;
    Ok((rx, handle))
}

/// Reads and parses every line, sending them a chunk at a time; stops at
/// the end of the input, a read error, or when the receiver is gone.
fn parse_all(mut reader: Box<dyn BufRead + Send>, tx: &Sender<Vec<Parsed>>) {
    let mut buf = Vec::new();
    let (mut line_no, mut pos) = (0u64, 0u64);
    let mut chunk = Vec::with_capacity(PARSED_CHUNK_LINES);
    let mut chunk_bytes = 0u64;
    loop {
        let line = match read_line(&mut *reader, &mut buf) {
            Ok(line) => line,
            Err(e) => {
                chunk.push(Parsed::ReadError(format!(
                    "reading line {}: {e}",
                    line_no + 1
                )));
                let _ = tx.send(chunk);
                return;
            }
        };
        line_no += 1;
        let verdict = match line {
            Line::Eof => break,
            Line::TooLong { len, consumed } => {
                pos += consumed;
                chunk_bytes += consumed;
                Err(format!(
                    "line is {len} bytes, the limit is {MAX_IMPORT_LINE_BYTES}"
                ))
            }
            Line::Ok { consumed } => {
                pos += consumed;
                chunk_bytes += consumed;
                if buf.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                parse_line(&buf).map_err(|e| e.to_string())
            }
        };
        chunk.push(Parsed::Line {
            verdict,
            line_no,
            pos,
        });
        if chunk.len() >= PARSED_CHUNK_LINES || chunk_bytes >= PARSED_CHUNK_BYTES {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(PARSED_CHUNK_LINES));
            chunk_bytes = 0;
            if tx.send(full).is_err() {
                return;
            }
        }
    }
    if !chunk.is_empty() {
        let _ = tx.send(chunk);
    }
}

enum Line {
    Eof,
    /// A line in `buf`; `consumed` counts its bytes including the newline.
    Ok {
        consumed: u64,
    },
    /// Longer than the limit: skipped to its end without buffering it all.
    TooLong {
        len: u64,
        consumed: u64,
    },
}

/// Reads one line into `buf` (newline stripped), never holding more than
/// `MAX_IMPORT_LINE_BYTES` of it, so a huge line cannot exhaust memory.
fn read_line(r: &mut dyn BufRead, buf: &mut Vec<u8>) -> io::Result<Line> {
    buf.clear();
    let (mut len, mut consumed, mut any) = (0u64, 0u64, false);
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        any = true;
        let (part, newline) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], true),
            None => (chunk, false),
        };
        len += part.len() as u64;
        if len <= MAX_IMPORT_LINE_BYTES as u64 {
            buf.extend_from_slice(part);
        }
        let used = part.len() + usize::from(newline);
        consumed += used as u64;
        r.consume(used);
        if newline {
            break;
        }
    }
    Ok(match (any, len > MAX_IMPORT_LINE_BYTES as u64) {
        (false, _) => Line::Eof,
        (true, false) => Line::Ok { consumed },
        (true, true) => Line::TooLong { len, consumed },
    })
}
