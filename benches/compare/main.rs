//! Side-by-side comparison of devreg against raw sled, SQLite and plain
//! in-memory maps, measured in one run on the same machine.
//!
//! ```text
//! cargo bench --bench compare -- [--quick] [--n N] [--sweep] [--huge] [--phase-ms MS]
//! ```
//!
//! The parent process re-executes this binary once per system (`--child run`)
//! so that each system's peak RSS is its own, then once more to time devreg's
//! open and a plain scan of its sled tree in fresh processes. It prints a
//! table and one `ratio <metric> devreg/sqlite=.. devreg/sled=.. devreg/memory=..`
//! line per metric (above 1 = devreg better), and writes JSON (and, for the
//! sweep, an SVG plot) under `bench-results/`.

mod plot;
mod report;
mod run;
mod systems;
mod workload;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use run::Metrics;

struct Args {
    quick: bool,
    sweep: bool,
    huge: bool,
    n: Option<usize>,
    phase_ms: Option<u64>,
    systems: Vec<String>,
    child: Option<String>,
    system: Option<String>,
    dir: Option<PathBuf>,
}

fn parse_args() -> Args {
    let mut a = Args {
        quick: false,
        sweep: false,
        huge: false,
        n: None,
        phase_ms: None,
        systems: systems::ALL.iter().map(|s| s.to_string()).collect(),
        child: None,
        system: None,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    let value = |it: &mut dyn Iterator<Item = String>, flag: &str| {
        it.next().unwrap_or_else(|| panic!("{flag} needs a value"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            // cargo bench passes --bench to harness = false targets.
            "--bench" => {}
            "--quick" => a.quick = true,
            "--sweep" => a.sweep = true,
            "--huge" => a.huge = true,
            "--n" => a.n = Some(value(&mut it, "--n").parse().expect("--n takes a number")),
            "--phase-ms" => {
                a.phase_ms = Some(value(&mut it, "--phase-ms").parse().expect("a number"))
            }
            "--systems" => {
                a.systems = value(&mut it, "--systems")
                    .split(',')
                    .map(str::to_owned)
                    .collect()
            }
            "--child" => a.child = Some(value(&mut it, "--child")),
            "--system" => a.system = Some(value(&mut it, "--system")),
            "--dir" => a.dir = Some(value(&mut it, "--dir").into()),
            other => panic!(
                "unknown argument {other:?}; usage: compare [--quick] [--n N] [--sweep] [--huge] \
                 [--phase-ms MS] [--systems devreg,sled,sqlite,memory]"
            ),
        }
    }
    a
}

/// glibc malloc settings of every child process: allocations of 64 KiB and
/// more from mmap, as `devreg` sets with mallopt.
pub const CHILD_GLIBC_TUNABLES: &str = "glibc.malloc.mmap_threshold=65536";

/// Runs this binary as a child and parses the `RESULT {json}` line it prints.
fn child(kind: &str, system: &str, dir: &Path, n: usize, phase: Duration) -> Metrics {
    let exe = std::env::current_exe().expect("finding the bench binary");
    let out = Command::new(exe)
        // The allocator setting the devreg command makes for itself
        // (DESIGN.md section 6), given to every system alike.
        .env("GLIBC_TUNABLES", CHILD_GLIBC_TUNABLES)
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
        .unwrap_or_else(|| panic!("child {kind} {system} failed ({}): {stdout}", out.status));
    serde_json::from_str(line).expect("child result is JSON")
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

/// Everything measured at one size.
pub struct SizeRun {
    pub n: usize,
    pub floor: Metrics,
    pub systems: Vec<(String, Metrics)>,
    pub open: Metrics,
    pub scan: Metrics,
}

fn measure(n: usize, phase: Duration, systems: &[String]) -> SizeRun {
    // Same filesystem as the project (one disk on this machine).
    let tmp = tempfile::Builder::new()
        .prefix("devreg-compare-")
        .tempdir()
        .expect("creating a temporary directory");
    eprintln!("== n = {n}, {} ms per timed phase", phase.as_millis());
    let floor = run::fsync_floor(tmp.path(), phase);
    let mut out = Vec::new();
    for s in systems {
        let t = Instant::now();
        let m = child("run", s, &tmp.path().join(s), n, phase);
        eprintln!("  {s}: {:.1} s", t.elapsed().as_secs_f64());
        out.push((s.clone(), m));
    }
    let (open, scan) = if systems.iter().any(|s| s == "devreg") {
        let db = tmp.path().join("devreg");
        (
            child("open-devreg", "devreg", &db, n, phase),
            child("scan-sled", "devreg", &db.join("store"), n, phase),
        )
    } else {
        (Metrics::new(), Metrics::new())
    };
    SizeRun {
        n,
        floor,
        systems: out,
        open,
        scan,
    }
}

fn main() {
    let a = parse_args();
    if a.child.is_some() {
        child_main(&a);
        return;
    }
    let started = Instant::now();
    let phase = Duration::from_millis(a.phase_ms.unwrap_or(if a.quick { 300 } else { 2000 }));
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench-results");
    std::fs::create_dir_all(&out_dir).expect("creating bench-results/");
    let sizes: Vec<usize> = if a.sweep && !a.quick {
        let mut s = vec![10_000, 100_000, 1_000_000];
        if a.huge {
            s.push(10_000_000);
        }
        s
    } else {
        vec![a.n.unwrap_or(if a.quick { 20_000 } else { 200_000 })]
    };
    let runs: Vec<SizeRun> = sizes
        .iter()
        .map(|&n| measure(n, phase, &a.systems))
        .collect();
    let mut text = String::new();
    for r in &runs {
        text += &report::table(r);
    }
    if runs.len() > 1 {
        text += &report::growth(&runs);
    }
    print!("{text}");
    // A run of some systems only (a diagnostic) must not replace a full result.
    let partial = a.systems.len() < systems::ALL.len();
    let stem = if a.quick || partial {
        "quick".to_string()
    } else if runs.len() > 1 {
        "sweep".to_string()
    } else {
        format!("results-n{}", runs[0].n)
    };
    let cmd = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect::<Vec<_>>()
        .join(" ");
    let header = format!(
        "command: cargo bench --bench compare -- {cmd}\nwall time: {:.0} s\n\n",
        started.elapsed().as_secs_f64()
    );
    let json = report::json(&runs, &cmd);
    std::fs::write(out_dir.join(format!("{stem}.json")), json).expect("writing results JSON");
    std::fs::write(out_dir.join(format!("{stem}.txt")), header + &text)
        .expect("writing the results table");
    if runs.len() > 1 {
        plot::sweep(&runs, &out_dir.join(format!("{stem}.svg")));
    }
    eprintln!(
        "wrote bench-results/{stem}.* in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}
