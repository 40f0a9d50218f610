//! The machine and the code a run measured, written into every results
//! file: CPU model, cores, kernel, the filesystem of the benchmark's
//! temporary directory, load average before and after, git commit (with
//! "-dirty" when tracked files differ from it), UTC date, command line,
//! wall time, and the memory's latency (`latency.rs`), which the growth
//! rows depend on.

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

pub struct Env {
    pub command: String,
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    /// Filesystem of the directory the databases are created in.
    pub bench_dir: String,
    pub fs: String,
    pub commit: String,
    /// UTC, ISO 8601, when the run started.
    pub date_utc: String,
    pub load_before: String,
    pub load_after: String,
    /// Seconds the measurements took (`finish` sets it).
    pub wall_s: f64,
    /// The host's dependent-load latency, measured before anything else.
    pub memory: Vec<crate::latency::Chase>,
}

impl Env {
    /// Everything but the load after the run (`finish` adds it).
    pub fn start(command: &str, repo: &Path, bench_dir: &Path) -> Env {
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|v| v.split_once(':'))
            .map_or("unknown".into(), |(_, v)| v.trim().to_owned());
        Env {
            command: command.to_owned(),
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            bench_dir: bench_dir.display().to_string(),
            fs: fs_type(bench_dir),
            commit: commit(repo),
            date_utc: utc_now(),
            load_before: load(),
            load_after: String::new(),
            wall_s: 0.0,
            memory: crate::latency::measure(),
        }
    }

    /// Records the load after the run and how long it took.
    pub fn finish(&mut self, wall: std::time::Duration) {
        self.load_after = load();
        self.wall_s = wall.as_secs_f64();
    }

    /// The header of a results text file.
    pub fn text(&self) -> String {
        format!(
            "wall time: {:.0} s\n\
             machine: {}, {} cores, Linux {}; databases in {} on {}\n\
             commit: {}, started {}\n\
             load average (1, 5, 15 min): {} before, {} after\n\
             {}",
            self.wall_s,
            self.cpu,
            self.cores,
            self.kernel,
            self.bench_dir,
            self.fs,
            self.commit,
            self.date_utc,
            self.load_before,
            self.load_after,
            crate::latency::text(&self.memory)
        )
    }

    pub fn json(&self) -> Value {
        json!({
            "command": self.command,
            "cpu": self.cpu,
            "cores": self.cores,
            "kernel": self.kernel,
            "bench_dir": self.bench_dir,
            "filesystem": self.fs,
            "commit": self.commit,
            "date_utc": self.date_utc,
            "loadavg_before": self.load_before,
            "loadavg_after": self.load_after,
            "wall_time_s": self.wall_s,
            "memory_latency": self
                .memory
                .iter()
                .map(|c| json!({
                    "mib": c.mib,
                    "huge_pages": c.huge_pages,
                    "ns_per_load": c.ns_per_load,
                }))
                .collect::<Vec<_>>(),
        })
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The 1, 5 and 15 minute load averages.
fn load() -> String {
    let l = read("/proc/loadavg");
    l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// Trimmed stdout of a command, or "" if it cannot run or fails.
fn output(cmd: &str, args: &[&str], dir: &Path) -> String {
    Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The type of the filesystem `dir` is on: its mount in /proc/self/mounts
/// (the longest mount point that contains it; "ext4", not statfs's
/// "ext2/ext3"), else `stat -f`.
fn fs_type(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let mounts = read("/proc/self/mounts");
    let mount = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && dir.starts_with(f[1])).then(|| (f[0], f[1], f[2]))
        })
        // The last of equally long mount points is the one on top.
        .max_by_key(|(_, point, _)| point.len());
    match mount {
        Some((dev, point, fs)) => format!("{fs} ({dev} on {point})"),
        None => {
            let fs = output("stat", &["-f", "-c", "%T", "."], &dir);
            if fs.is_empty() {
                "unknown".into()
            } else {
                fs
            }
        }
    }
}

/// `git rev-parse --short HEAD`, plus "-dirty" when a tracked file differs
/// (untracked files, such as earlier results, do not count).
fn commit(repo: &Path) -> String {
    let head = output("git", &["rev-parse", "--short", "HEAD"], repo);
    if head.is_empty() {
        return "unknown".into();
    }
    let status = output(
        "git",
        &["status", "--porcelain", "--untracked-files=no"],
        repo,
    );
    if status.is_empty() {
        head
    } else {
        format!("{head}-dirty")
    }
}

/// Now, UTC, as 2026-11-30T16:52:07Z (devreg's own days-to-civil-date
/// function, so no date crate is needed).
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let rem = secs % 86_400;
    let (year, month, day) = devreg::internals::civil_from_days(secs / 86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
