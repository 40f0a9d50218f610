//! `devreg import`: JSON lines in, atomic batches out.

use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal};
use std::process::ExitCode;

use devreg::import::parse_line;
use devreg::limits::{
    IMPORT_REJECTIONS_SHOWN, MAX_IMPORT_BATCH_BYTES, MAX_IMPORT_LINE_BYTES,
    SECONDS_LOOKALIKE_BEFORE_MS,
};
use devreg::{Op, Registry};
use indicatif::{ProgressBar, ProgressStyle};

use crate::output::Out;
use crate::{CliError, CmdResult};

/// `devreg import --help`: what a line holds.
pub const LONG_ABOUT: &str = "\
Apply JSON events, one per line (NDJSON), from FILE (or `-` for stdin), in
file order, in atomic batches. A bad line is reported as `line N: <reason>`
(the first 100; after that they are only counted) and the others still
apply; the run ends with `imported X, skipped Y, rejected Z` and exits 2 if
any line was rejected. A CSV file or a JSON array is refused as a whole.

Each line is one JSON object; \"op\" says which event it is.
Times are Unix milliseconds (a seen_ms that looks like seconds gets a warning):

  {\"op\":\"register\",\"token\":T,\"platform\":\"ios\"|\"android\",\"person\":P,\"seen_ms\":MS,
   \"attributes\":{\"name\":\"value\",...}}
        upsert; person (null: anonymous) and attributes (string values)
        are optional; last_seen_ms is taken for seen_ms, so `dump` lines import
  {\"op\":\"touch\",\"token\":T,\"seen_ms\":MS}
  {\"op\":\"rotate\",\"old_token\":T,\"new_token\":T2,\"seen_ms\":MS}
  {\"op\":\"logout\",\"token\":T,\"policy\":\"keep\"|\"remove\"}
  {\"op\":\"merge\",\"primary\":P,\"secondary\":P2}
  {\"op\":\"remove\",\"token\":T}
  {\"op\":\"invalidate\",\"token\":T,\"provider_ms\":MS}
  {\"op\":\"prune\",\"before_ms\":MS}

Tokens are visible ASCII (1 to 4096 bytes), persons 1 to 150 bytes of UTF-8;
unknown fields and repeated keys are refused.";

/// Valid ops per `apply_batch`: big enough to amortise the log write,
/// small enough that one batch's memory stays modest.
const BATCH_OPS: usize = 10_000;

/// The import's source, opened before the database.
pub struct Input {
    reader: Box<dyn BufRead>,
    /// Known for files; drives the progress bar's length.
    len: Option<u64>,
}

impl Input {
    /// Refuses input that is plainly not NDJSON events, from what the
    /// first read holds (nothing is consumed): a JSON array (first
    /// non-blank byte `[`), or CSV (`looks_like_csv`). Any other line is
    /// judged on its own, as usual.
    pub fn check_shape(&mut self, name: &str) -> Result<(), CliError> {
        let head = self
            .reader
            .fill_buf()
            .map_err(|e| CliError(format!("reading {name}: {e}")))?;
        let text = String::from_utf8_lossy(head);
        let text = text.trim_start_matches('\u{feff}').trim_start();
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let first_line = lines.next().unwrap_or_default();
        let ndjson = "devreg import reads one JSON object per line (NDJSON); \
                      `devreg import --help` shows the events";
        if text.starts_with('[') {
            return Err(CliError(format!(
                "{name} is a JSON array, not one event per line: {ndjson} \
                 (convert it with: jq -c '.[]' FILE | devreg import -); nothing was imported"
            )));
        }
        if looks_like_csv(first_line, lines.next()) {
            let shown: String = first_line.chars().take(80).collect();
            return Err(CliError(format!(
                "{name} looks like CSV (its first line is {shown:?}), not JSON events: \
                 {ndjson}; nothing was imported"
            )));
        }
        Ok(())
    }
}

/// CSV: a first line with commas and no `{`, and a second line (when the
/// first read holds one) with as many commas and no `{` either. A single
/// bad line followed by JSON events is not CSV.
fn looks_like_csv(first: &str, second: Option<&str>) -> bool {
    let commas = |l: &str| l.matches(',').count();
    let plain = |l: &str| !l.contains('{') && commas(l) > 0;
    plain(first) && second.is_none_or(|s| plain(s) && commas(s) == commas(first))
}

/// A `seen_ms` that looks like Unix seconds: before 2001 as milliseconds,
/// but at least 2001 read as seconds.
fn seconds_lookalike(op: &Op) -> Option<u64> {
    let ms = match op {
        Op::Register(r) => r.seen_ms,
        Op::Touch { seen_ms, .. } | Op::Rotate { seen_ms, .. } => *seen_ms,
        _ => return None,
    };
    let from = SECONDS_LOOKALIKE_BEFORE_MS / 1000;
    (from..SECONDS_LOOKALIKE_BEFORE_MS)
        .contains(&ms)
        .then_some(ms)
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
    /// The last input line whose batch is committed (0: none yet).
    committed_line: u64,
}

/// Valid operations waiting for one `apply_batch`, bounded by count and by
/// encoded bytes (finding 3: a count alone let 10,000 large lines outgrow a
/// log record and fail the whole import).
struct Pending {
    ops: Vec<Op>,
    bytes: usize,
    max_bytes: usize,
    /// The input line of the last op.
    last_line: u64,
}

impl Pending {
    fn new(reg: &Registry) -> Pending {
        Pending {
            ops: Vec::with_capacity(BATCH_OPS),
            bytes: 0,
            max_bytes: reg.max_batch_bytes().min(MAX_IMPORT_BATCH_BYTES),
            last_line: 0,
        }
    }

    /// Whether `op` must start a new batch.
    fn full_for(&self, op: &Op) -> bool {
        !self.ops.is_empty()
            && (self.ops.len() >= BATCH_OPS
                || self.bytes.saturating_add(op.encoded_len()) > self.max_bytes)
    }

    fn push(&mut self, op: Op, line: u64) {
        self.bytes = self.bytes.saturating_add(op.encoded_len());
        self.ops.push(op);
        self.last_line = line;
    }
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

/// On a failure: what is committed is every line up to the last good batch.
fn report_partial(counts: &Counts) {
    eprintln!(
        "imported {}, skipped {}, rejected {}; last line committed: {}",
        counts.imported, counts.skipped, counts.rejected, counts.committed_line
    );
}

fn apply(reg: &Registry, batch: &mut Pending, counts: &mut Counts) -> Result<(), CliError> {
    if batch.ops.is_empty() {
        return Ok(());
    }
    let first_line = counts.committed_line + 1;
    let last_line = batch.last_line;
    batch.bytes = 0;
    let outcomes = reg
        .apply_batch(std::mem::take(&mut batch.ops))
        .map_err(|e| {
            report_partial(counts);
            CliError(format!(
                "applying the batch of lines {first_line}..={last_line}: {e}"
            ))
        })?;
    counts.committed_line = last_line;
    for o in outcomes {
        match o.is_applied() {
            true => counts.imported += 1,
            // NotFound, Skipped (and any kind added later): nothing applied.
            false => counts.skipped += 1,
        }
    }
    Ok(())
}

/// What the loop over the lines keeps: the batch being built, the counts
/// and what has been reported.
struct Importer<'a> {
    reg: &'a Registry,
    progress: Progress,
    counts: Counts,
    batch: Pending,
    /// A seen_ms that looks like seconds was warned about (once per run).
    warned_seconds: bool,
}

impl Importer<'_> {
    /// Takes one line's verdict: a valid op joins the batch (applying the
    /// full one first), a rejection is reported (the first
    /// `IMPORT_REJECTIONS_SHOWN`, then only counted).
    fn take(
        &mut self,
        verdict: Result<Op, String>,
        line_no: u64,
        pos: u64,
    ) -> Result<(), CliError> {
        match verdict {
            Ok(op) => {
                if let (false, Some(ms)) = (self.warned_seconds, seconds_lookalike(&op)) {
                    self.warned_seconds = true;
                    self.progress.warn(&format!(
                        "warning: line {line_no}: seen_ms {ms} is before 2001 as Unix milliseconds \
                         and looks like seconds (imported as it is; devreg takes milliseconds; \
                         later such lines are not reported)"
                    ));
                }
                if self.batch.full_for(&op) {
                    apply(self.reg, &mut self.batch, &mut self.counts)?;
                    self.progress.set(pos);
                }
                self.batch.push(op, line_no);
            }
            Err(reason) => {
                self.counts.rejected += 1;
                match self.counts.rejected {
                    n if n <= IMPORT_REJECTIONS_SHOWN => {
                        self.progress.warn(&format!("line {line_no}: {reason}"));
                    }
                    n if n == IMPORT_REJECTIONS_SHOWN + 1 => self.progress.warn(&format!(
                        "line {line_no}: rejected too; more than {IMPORT_REJECTIONS_SHOWN} lines \
                         were rejected, the rest are only counted (see the summary)"
                    )),
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// Applies every valid line in file order; exit 2 if any line was rejected.
pub fn run(reg: Registry, mut input: Input) -> CmdResult {
    let mut imp = Importer {
        reg: &reg,
        progress: Progress::new(input.len),
        counts: Counts::default(),
        batch: Pending::new(&reg),
        warned_seconds: false,
    };
    let mut buf = Vec::new();
    let (mut line_no, mut pos) = (0u64, 0u64);
    let reader: &mut dyn BufRead = &mut input.reader;
    loop {
        let line = read_line(reader, &mut buf).map_err(|e| {
            report_partial(&imp.counts);
            CliError(format!("reading line {}: {e}", line_no + 1))
        })?;
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
                parse_line(&buf).map_err(|e| e.to_string())
            }
        };
        imp.take(verdict, line_no, pos)?;
    }
    let Importer {
        mut counts,
        mut batch,
        progress,
        ..
    } = imp;
    apply(&reg, &mut batch, &mut counts)?;
    progress.finish();
    finish(reg, &counts)
}

/// Closes the database, then reports: in eventual mode the final sync is
/// what makes the import durable, and its failure must not follow a
/// success line.
fn finish(reg: Registry, counts: &Counts) -> CmdResult {
    if let Err(e) = reg.close() {
        report_partial(counts);
        return Err(CliError(format!(
            "closing the database (lines after the last durable sync may be lost): {e}"
        )));
    }
    let Counts {
        imported,
        skipped,
        rejected,
        ..
    } = *counts;
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
