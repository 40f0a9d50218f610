//! Side-by-side comparison of devreg against raw sled, SQLite and plain
//! in-memory maps, measured in one run on the same machine.
//!
//! ```text
//! cargo bench --bench compare -- [--quick] [--n N] [--sweep] [--huge] [--sizes N,N,..]
//!                                [--rounds R|R1,R2,..] [--phase-ms MS] [--systems a,b,..]
//!                                [--glibc-tunables T]
//! cargo bench --bench compare -- --diff A.json B.json
//! ```
//!
//! The parent process measures each size in R interleaved rounds (default
//! 7, `--quick` 1; `--rounds R1,R2,..` gives each size of `--sizes` its
//! own; `rounds.rs`): in each it re-executes this binary once per
//! system (`--child run`, so that each system's peak RSS is its own), in an
//! order rotated every round, then once more to time devreg's open and a
//! plain scan of its sled tree in fresh processes. It prints a table of
//! medians with their min–max over the rounds, one `ratio <metric>
//! devreg/sqlite=.. devreg/sled=.. devreg/memory=..` line per metric (ratio
//! of the medians, then the min–max of the ratio within each round; above
//! 1 = devreg better) and the targets, judged "met", "MISSED" or "within
//! noise" (`stats.rs`; a quick run judges nothing). Every results file
//! starts with the machine, load, commit and date (`env.rs`). It writes
//! JSON, text and (for several sizes) an SVG plot under `bench-results/`,
//! and for a full run a copy in `bench-results/history/`; `--diff` compares
//! two such JSON files (`history.rs`).
//!
//! Every child runs on glibc's malloc with its default settings, as a
//! service linking the library does: the harness clears `GLIBC_TUNABLES`
//! for them unless `--glibc-tunables T` gives one setting for every system
//! (DESIGN.md section 6, "The harness's allocator").

mod env;
mod history;
mod latency;
mod plot;
mod report;
mod rounds;

/// Rounds per size unless `--rounds` says otherwise. Two runs of 5 rounds,
/// 30 minutes apart, disagreed on two verdicts (durable writes from 8
/// threads and durable 1 thread against the fsync floor): each was "within
/// noise" in one run and "met" in the other, because 5 rounds sample the
/// tails of a noisy value too thinly to see both sides of its threshold.
const DEFAULT_ROUNDS: usize = 7;
mod run;
mod schedule;
mod stats;
mod systems;
mod workload;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use run::Metrics;

const USAGE: &str = "compare [--quick] [--n N] [--sweep] [--huge] [--sizes N,N,...] \
                     [--rounds R|R1,R2,..] [--phase-ms MS] [--systems devreg,sled,sqlite,memory] \
                     [--glibc-tunables T] | --diff A.json B.json";

#[derive(Default)]
struct Args {
    quick: bool,
    sweep: bool,
    huge: bool,
    n: Option<usize>,
    sizes: Option<Vec<usize>>,
    /// `--rounds`: one count for every size, or one per size of `--sizes`.
    rounds: Option<Vec<usize>>,
    phase_ms: Option<u64>,
    systems: Vec<String>,
    diff: Option<(PathBuf, PathBuf)>,
    child: Option<String>,
    system: Option<String>,
    dir: Option<PathBuf>,
    /// `--glibc-tunables`: the children's `GLIBC_TUNABLES` (none if unset).
    glibc_tunables: Option<String>,
}

fn parse_args() -> Args {
    let mut a = Args {
        systems: systems::ALL.iter().map(|s| s.to_string()).collect(),
        ..Args::default()
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            // cargo bench passes --bench to harness = false targets.
            "--bench" => {}
            "--quick" => a.quick = true,
            "--sweep" => a.sweep = true,
            "--huge" => a.huge = true,
            "--diff" => {
                let mut file = || PathBuf::from(it.next().expect("--diff needs two JSON files"));
                a.diff = Some((file(), file()));
            }
            flag @ ("--n" | "--sizes" | "--rounds" | "--phase-ms" | "--systems" | "--child"
            | "--system" | "--dir" | "--glibc-tunables") => {
                let v = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
                set_value(&mut a, flag, v);
            }
            other => panic!("unknown argument {other:?}; usage: {USAGE}"),
        }
    }
    a
}

fn set_value(a: &mut Args, flag: &str, v: String) {
    let num = |v: &str| -> usize {
        v.parse()
            .unwrap_or_else(|_| panic!("{flag} takes a number (comma-separated for --sizes)"))
    };
    match flag {
        "--n" => a.n = Some(num(&v)),
        "--sizes" => a.sizes = Some(v.split(',').map(num).collect()),
        "--rounds" => {
            let r: Vec<usize> = v.split(',').map(num).collect();
            assert!(r.iter().all(|&r| r >= 1), "--rounds needs at least 1");
            a.rounds = Some(r);
        }
        "--phase-ms" => a.phase_ms = Some(num(&v) as u64),
        "--systems" => a.systems = v.split(',').map(str::to_owned).collect(),
        "--child" => a.child = Some(v),
        "--system" => a.system = Some(v),
        "--dir" => a.dir = Some(v.into()),
        "--glibc-tunables" => a.glibc_tunables = Some(v),
        other => unreachable!("{other} takes no value"),
    }
}

/// The `GLIBC_TUNABLES` every child runs with: none (glibc's defaults)
/// unless `--glibc-tunables` set one. Until 2026-12-07 the harness set
/// `glibc.malloc.mmap_threshold=65536` for every system, which kept
/// devreg's RSS after open down before its open returned the heap's free
/// pages (`heap.rs`); it now costs devreg's 10^7 import a fifth of its rate
/// and saves no RSS after open (DESIGN.md section 6).
static CHILD_GLIBC_TUNABLES: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// The children's `GLIBC_TUNABLES`, if any (set once, by `bench`).
pub fn child_glibc_tunables() -> Option<&'static str> {
    CHILD_GLIBC_TUNABLES.get().and_then(|t| t.as_deref())
}

/// Runs this binary as a child and parses the `RESULT {json}` line it
/// prints; or says why it gave no result (killed for memory at 10^7, say).
fn try_child(
    kind: &str,
    system: &str,
    dir: &Path,
    n: usize,
    phase: Duration,
) -> Result<Metrics, String> {
    let exe = std::env::current_exe().expect("finding the bench binary");
    let mut child = Command::new(exe);
    // The same glibc settings for every system (DESIGN.md section 6): the
    // defaults, unless `--glibc-tunables` gave some; never the caller's.
    match child_glibc_tunables() {
        Some(t) => child.env("GLIBC_TUNABLES", t),
        None => child.env_remove("GLIBC_TUNABLES"),
    };
    let out = child
        .args(["--child", kind, "--system", system, "--n", &n.to_string()])
        .args(["--phase-ms", &phase.as_millis().to_string()])
        .arg("--dir")
        .arg(dir)
        .stderr(Stdio::inherit())
        .output()
        .expect("starting a child bench process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .ok_or_else(|| format!("child {kind} {system} at n = {n} failed ({})", out.status))?;
    serde_json::from_str(line).map_err(|e| format!("child {kind} {system}: result: {e}"))
}

fn child_main(a: &Args) {
    let kind = a.child.as_deref().unwrap_or_default();
    let dir = a.dir.as_deref().expect("--dir");
    let phase = Duration::from_millis(a.phase_ms.unwrap_or(2000));
    let m = match kind {
        "run" => run::run_system(
            a.system.as_deref().expect("--system"),
            dir,
            a.n.expect("--n"),
            phase,
        ),
        "open-devreg" => run::open_devreg(dir),
        "scan-sled" => run::scan_sled(dir),
        other => panic!("unknown child kind {other:?}"),
    };
    println!(
        "RESULT {}",
        serde_json::to_string(&m).expect("metrics serialize")
    );
}

fn main() {
    let a = parse_args();
    if a.child.is_some() {
        child_main(&a);
    } else if let Some((x, y)) = &a.diff {
        history::diff(x, y);
    } else {
        bench(&a);
    }
}

fn sizes(a: &Args) -> Vec<usize> {
    if let Some(sizes) = a.sizes.clone() {
        sizes
    } else if a.sweep && !a.quick {
        let mut s = vec![10_000, 100_000, 1_000_000];
        if a.huge {
            s.push(10_000_000);
        }
        s
    } else {
        vec![a.n.unwrap_or(if a.quick { 20_000 } else { 200_000 })]
    }
}

/// Rounds for each of `sizes` sizes: `--rounds R` for all of them, or
/// `--rounds R1,R2,..` one per size (a sweep can give its small sizes,
/// whose rounds take seconds and vary most, more rounds than 10^7's ten
/// minutes each); else the default.
fn rounds_per_size(a: &Args, sizes: usize) -> Vec<usize> {
    match a.rounds.as_deref() {
        None => vec![if a.quick { 1 } else { DEFAULT_ROUNDS }; sizes],
        Some(&[r]) => vec![r; sizes],
        Some(r) => {
            assert_eq!(
                r.len(),
                sizes,
                "--rounds takes one count, or one per size ({sizes} sizes)"
            );
            r.to_vec()
        }
    }
}

fn bench(a: &Args) {
    let started = Instant::now();
    let _once = CHILD_GLIBC_TUNABLES.set(a.glibc_tunables.clone());
    let phase = Duration::from_millis(a.phase_ms.unwrap_or(if a.quick { 300 } else { 2000 }));
    let sizes = sizes(a);
    let rounds = rounds_per_size(a, sizes.len());
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out_dir = repo.join("bench-results");
    std::fs::create_dir_all(&out_dir).expect("creating bench-results/");
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let cmd = format!("cargo bench --bench compare -- {}", args.join(" "));
    let mut machine = env::Env::start(&cmd, repo, &std::env::temp_dir());
    let sized: Vec<(usize, usize)> = sizes.into_iter().zip(rounds).collect();
    let runs = rounds::measure_all(&sized, phase, &a.systems);
    machine.finish(started.elapsed());
    let mut text = String::new();
    for r in &runs {
        text += &report::table(r, a.quick);
    }
    if runs.len() > 1 {
        text += &report::growth(&runs);
    }
    // A run of some systems only (a diagnostic) must not replace a full result.
    let partial = a.systems.len() < systems::ALL.len();
    let stem = if a.quick || partial {
        "quick".to_string()
    } else if runs.len() > 1 {
        "sweep".to_string()
    } else {
        format!("results-n{}", runs[0].n)
    };
    let header = format!("command: {cmd}\n{}\n", machine.text());
    let json = report::json(&runs, &machine, a.quick);
    let text = header + &text;
    print!("{text}");
    std::fs::write(out_dir.join(format!("{stem}.json")), &json).expect("writing results JSON");
    std::fs::write(out_dir.join(format!("{stem}.txt")), &text).expect("writing the results table");
    if runs.len() > 1 {
        plot::sweep(&runs, &out_dir.join(format!("{stem}.svg")));
    }
    if stem != "quick" {
        let path = history::write(&out_dir, &machine, &stem, &json, &text);
        eprintln!("wrote {}", path.display());
    }
    eprintln!(
        "wrote bench-results/{stem}.* in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}
