//! Per-thread CPU from `/proc/self/task` for the examples that say which
//! thread a cost falls on (`readers_and_writer`, `scale_probe`). Included
//! with `#[path]`; Linux only (empty elsewhere).

/// Per thread name: [CPU s, run-queue wait s, involuntary switches,
/// voluntary switches] so far (threads of one name summed)
/// (Linux; empty elsewhere).
pub fn cpu_by_thread() -> std::collections::BTreeMap<String, [f64; 4]> {
    let mut by = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return by;
    };
    for t in tasks.flatten() {
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let sched = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let f: Vec<f64> = sched
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        let count = |key: &str| -> f64 {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|x| x.parse().ok())
                .unwrap_or(0.0)
        };
        let invol = count("nonvoluntary_ctxt_switches");
        let vol = count("voluntary_ctxt_switches");
        let e = by.entry(name.trim().to_string()).or_insert([0.0; 4]);
        e[0] += f.first().copied().unwrap_or(0.0) / 1e9;
        e[1] += f.get(1).copied().unwrap_or(0.0) / 1e9;
        e[2] += invol;
        e[3] += vol;
    }
    by
}
