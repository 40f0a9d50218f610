//! A devreg node SIGKILLed at arbitrary points while it writes and
//! checkpoints every 50 ms: another node has every acknowledged write,
//! takes the checkpoint lock over, and a node opened from its checkpoint
//! holds the same state, with `check` clean on both. The window a kill
//! rarely hits, between a checkpoint's mark and its commit, is made
//! deterministic by the second test (the holder fenced out after its mark:
//! the next holder must write the changes every node drained there).

use std::collections::BTreeSet;
use std::io::BufRead;
use std::time::{Duration, Instant};

use devreg::{Config, Op, Platform, Register, Registry, TxnLimits};

use super::common::workload::{spawn_child, MARK};
use super::etcd_cluster::EtcdCluster;

const LIMITS: TxnLimits = TxnLimits {
    max_ops: 1024,
    max_request_bytes: 4 << 20,
};

fn open(cluster_endpoints: Vec<String>, interval_ms: u64) -> Registry {
    let config = Config::etcd(cluster_endpoints, "x1/")
        .etcd_limits(LIMITS)
        .checkpoint_interval_ms(interval_ms);
    Registry::open_with(config).expect("open a node")
}

fn register(token: String, person: String, seen_ms: u64) -> Op {
    Op::Register(Register {
        token,
        platform: Platform::Android,
        person: Some(person),
        seen_ms,
        attributes: None,
    })
}

/// The child: writes until killed, printing `@@ACK <round> <i>` after each
/// acknowledged write, and checkpoints every 50 ms.
#[test]
#[ignore = "child process of the node crash test; does nothing unless DEVREG_ETCD_CRASH_CHILD is set"]
fn checkpointing_node_child() {
    let Ok(spec) = std::env::var("DEVREG_ETCD_CRASH_CHILD") else {
        return;
    };
    let (round, endpoints) = spec.split_once(' ').expect("round and endpoints");
    let reg = open(endpoints.split(',').map(str::to_owned).collect(), 50);
    for i in 0u64.. {
        let token = format!("c{round}-{i:06}");
        let op = register(token, format!("p{round}-{i}"), 10_000 + i);
        let _ = reg.apply(op).expect("apply");
        println!("{MARK}ACK {round} {i}");
    }
}

#[test]
fn a_node_killed_inside_its_checkpoints_loses_nothing() {
    let cluster = EtcdCluster::start(3);
    let b = open(cluster.endpoints(), 600_000);
    let mut acked = BTreeSet::new();
    for round in 0..3 * super::scale() as u64 {
        let spec = format!("{round} {}", cluster.endpoints().join(","));
        let mut child = spawn_child(
            "crash::checkpointing_node_child",
            &[("DEVREG_ETCD_CRASH_CHILD", spec)],
        );
        let stdout = child.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(at) = line.find(MARK) {
                    seen.push(line[at + MARK.len()..].to_owned());
                }
            }
            seen
        });
        // Long enough to open, take the lock and checkpoint a few times.
        std::thread::sleep(Duration::from_millis(1_500 + 400 * (round % 3)));
        let _ = child.kill();
        let _ = child.wait();
        for line in reader.join().expect("reader") {
            acked.insert(format!(
                "c{}",
                line.strip_prefix("ACK ").expect("ack").replace(' ', "-")
            ));
        }
    }
    assert!(acked.len() > 50, "the children wrote: {}", acked.len());
    b.catch_up().expect("catch up");
    let tokens: BTreeSet<String> = b.dump().into_iter().map(|d| d.token).collect();
    for t in &acked {
        // Tokens are c<round>-<i:06>; the child printed them unpadded.
        let (r, i) = t.trim_start_matches('c').split_once('-').expect("token");
        let token = format!("c{r}-{:06}", i.parse::<u64>().expect("i"));
        assert!(tokens.contains(&token), "acknowledged {token} is lost");
    }
    // The dead child's lease lapses; this node takes the lock over.
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = b.checkpoint() {
        assert!(Instant::now() < deadline, "never took the lock: {e}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let c = open(cluster.endpoints(), 600_000);
    assert_eq!(c.dump(), b.dump());
    for reg in [&b, &c] {
        let report = reg.check().expect("check");
        assert!(report.is_clean(), "{:#?}", report.problems);
    }
}

#[test]
fn a_checkpoint_that_fails_after_its_mark_is_written_by_the_next_holder() {
    let cluster = EtcdCluster::start(3);
    let (a, b) = (
        open(cluster.endpoints(), 600_000),
        open(cluster.endpoints(), 600_000),
    );
    let write = |reg: &Registry, from: u64| {
        for i in from..from + 100 {
            let op = register(format!("w{i:05}"), format!("q{i}"), 20_000 + i);
            assert!(reg.apply(op).expect("apply").is_applied());
        }
    };
    write(&a, 0);
    a.checkpoint().expect("a takes the lock and checkpoints");
    write(&a, 100);
    // a loses its lock without knowing it (as after a long pause): its
    // next checkpoint's mark drains every node, then its fenced write fails.
    let probe = devreg::internals::etcd::EtcdProbe::connect(&cluster.endpoints(), "x1/", LIMITS)
        .expect("probe");
    probe
        .delete_key(b"x1/checkpointer")
        .expect("take the lock away");
    let e = a.checkpoint().expect_err("fenced out");
    assert!(e.to_string().contains("no longer holds"), "{e}");
    write(&b, 200);
    // b checkpoints: the changes a drained but never wrote go with it.
    b.checkpoint().expect("b takes the lock");
    let c = open(cluster.endpoints(), 600_000);
    assert_eq!(c.dump().len(), 300);
    assert_eq!(c.dump(), b.dump());
    assert!(c.check().expect("check").is_clean());
}
