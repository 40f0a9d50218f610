//! `devreg import`: JSON lines in, atomic batches out.

use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal};
use std::process::ExitCode;

use devreg::import::parse_line;
use devreg::limits::MAX_IMPORT_LINE_BYTES;
use devreg::{Op, Outcome, Registry};
use indicatif::{ProgressBar, ProgressStyle};

use crate::output::Out;
use crate::{CliError, CmdResult};

/// Valid ops per `apply_batch`: big enough to amortise the log write,
/// small enough that one batch's memory stays modest.
const BATCH_OPS: usize = 10_000;

/// The import's source, opened before the database.
pub struct Input {
    reader: Box<dyn BufRead>,
    /// Known for files; drives the progress bar's length.
    len: Option<u64>,
}

/// Opens FILE, or stdin for `-`.
pub fn open_input(path: &str) -> Result<Input, CliError> {
    if path == "-" {
        return Ok(Input {
            reader: Box::new(BufReader::with_capacity(1 << 16, io::stdin())),
            len: None,
        });
    }
    let file = File::open(path).map_err(|e| CliError(format!("cannot open {path}: {e}")))?;
    let len = file.metadata().ok().map(|m| m.len());
    Ok(Input {
        reader: Box::new(BufReader::with_capacity(1 << 16, file)),
        len,
    })
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

#[derive(Default)]
struct Counts {
    imported: u64,
    skipped: u64,
    rejected: u64,
}

/// Reports rejections without tearing the progress bar.
struct Progress(Option<ProgressBar>);

impl Progress {
    fn new(len: Option<u64>) -> Progress {
        if !io::stderr().is_terminal() {
            return Progress(None);
        }
        let bar = match len {
            Some(n) => ProgressBar::new(n).with_style(
                ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{spinner} {bytes} read, {bytes_per_sec}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        Progress(Some(bar))
    }

    fn warn(&self, msg: &str) {
        match &self.0 {
            Some(bar) => bar.println(msg),
            None => eprintln!("{msg}"),
        }
    }

    fn set(&self, pos: u64) {
        if let Some(bar) = &self.0 {
            bar.set_position(pos);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

fn apply(reg: &Registry, batch: &mut Vec<Op>, counts: &mut Counts) -> Result<(), CliError> {
    if batch.is_empty() {
        return Ok(());
    }
    let outcomes = reg
        .apply_batch(std::mem::take(batch))
        .map_err(|e| CliError(format!("applying a batch: {e}")))?;
    for o in outcomes {
        match o {
            Outcome::Applied { .. } => counts.imported += 1,
            Outcome::NotFound | Outcome::Skipped => counts.skipped += 1,
        }
    }
    Ok(())
}

/// Applies every valid line in file order; exit 2 if any line was rejected.
pub fn run(reg: &Registry, mut input: Input) -> CmdResult {
    let progress = Progress::new(input.len);
    let mut counts = Counts::default();
    let mut batch = Vec::with_capacity(BATCH_OPS);
    let mut buf = Vec::new();
    let (mut line_no, mut pos) = (0u64, 0u64);
    let reader: &mut dyn BufRead = &mut input.reader;
    loop {
        let line = read_line(reader, &mut buf)
            .map_err(|e| CliError(format!("reading line {}: {e}", line_no + 1)))?;
        line_no += 1;
        let verdict = match line {
            Line::Eof => break,
            Line::TooLong { len, consumed } => {
                pos += consumed;
                Err(format!(
                    "line is {len} bytes, the limit is {MAX_IMPORT_LINE_BYTES}"
                ))
            }
            Line::Ok { consumed } => {
                pos += consumed;
                if buf.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                parse_line(&buf)
            }
        };
        match verdict {
            Ok(op) => batch.push(op),
            Err(reason) => {
                counts.rejected += 1;
                progress.warn(&format!("line {line_no}: {reason}"));
            }
        }
        if batch.len() >= BATCH_OPS {
            apply(reg, &mut batch, &mut counts)?;
            progress.set(pos);
        }
    }
    apply(reg, &mut batch, &mut counts)?;
    progress.finish();
    let Counts {
        imported,
        skipped,
        rejected,
    } = counts;
    eprintln!("imported {imported}, skipped {skipped}, rejected {rejected}");
    let mut out = Out::stdout();
    out.json(&serde_json::json!({
        "imported": imported, "skipped": skipped, "rejected": rejected,
    }))?;
    out.flush()?;
    Ok(if rejected > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}
