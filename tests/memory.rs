//! Memory the engine gives back (DESIGN.md 6, "The heap after close").
//!
//! A registry's state, indexes and store buffers are freed when it closes,
//! but glibc's malloc keeps freed memory inside its arenas (it returns an
//! arena's memory to the kernel only from its top). In the comparison
//! harness at 10^7 devices, a closed registry left about 860 MiB resident,
//! and the next open in the same process peaked on top of it. The test runs
//! in a child process of its own (re-executing this binary), so that no
//! other test's allocations move its resident size.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use devreg::*;

const CHILD_ENV: &str = "DEVREG_MEMORY_CHILD";
const DEVICES: u64 = 200_000;
const BATCH: u64 = 1_000;

/// Resident bytes of this process (`VmRSS`).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib << 10
}

fn register(i: u64) -> Op {
    let attributes: BTreeMap<String, String> = [
        ("app_version".to_string(), format!("4.{}.0", i % 7)),
        ("locale".to_string(), format!("l{}", i % 31)),
    ]
    .into_iter()
    .collect();
    Op::Register(Register {
        token: format!("{:064x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        platform: if i.is_multiple_of(3) {
            Platform::Android
        } else {
            Platform::Ios
        },
        person: Some(format!("person-{}", i / 2)),
        seen_ms: 1_700_000_000_000 + i,
        attributes: Some(attributes),
    })
}

#[test]
#[ignore = "child process of a_closed_registry_gives_its_heap_back"]
fn memory_child() {
    let Ok(db) = std::env::var(CHILD_ENV) else {
        return;
    };
    let before = rss_bytes();
    let reg = Registry::open_with(Config::new(&db).durability(Durability::Eventual)).unwrap();
    for start in (0..DEVICES).step_by(BATCH as usize) {
        reg.apply_batch((start..start + BATCH).map(register).collect())
            .unwrap();
    }
    assert_eq!(reg.stats().devices, DEVICES);
    let loaded = rss_bytes();
    reg.close().unwrap();
    let closed = rss_bytes();
    println!("RSS {before} {loaded} {closed}");
}

#[test]
fn a_closed_registry_gives_its_heap_back() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "memory_child",
            "--nocapture",
            "--ignored",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path().join("db"))
        // glibc's defaults, whatever the parent was given.
        .env_remove("GLIBC_TUNABLES")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nums: Vec<u64> = stdout
        .lines()
        .find_map(|l| l.split("RSS ").nth(1))
        .unwrap_or_else(|| panic!("no RSS line in {stdout}"))
        .split(' ')
        .map(|n| n.parse().unwrap())
        .collect();
    let (before, loaded, closed) = (nums[0], nums[1], nums[2]);
    let grown = loaded.saturating_sub(before);
    let kept = closed.saturating_sub(before);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "RSS before open {:.1} MiB, with {DEVICES} devices {:.1}, after close {:.1}",
        mib(before),
        mib(loaded),
        mib(closed)
    );
    assert!(
        grown > 20 << 20,
        "the registry grew by {:.1} MiB only: the test measures nothing",
        mib(grown)
    );
    // Measured at 200,000 devices: 77-82 MiB kept of 162-169 grown with
    // the heap handed back at close, 211-238 MiB without (the final
    // checkpoint's buffers on top of the state, all freed but resident).
    assert!(
        kept * 4 < grown * 3,
        "the closed registry kept {:.1} MiB of the {:.1} MiB it grew by",
        mib(kept),
        mib(grown)
    );
}
