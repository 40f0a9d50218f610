//! The etcd backend's key-value store and operation log against a real
//! 3-member cluster (`devreg::internals::etcd::EtcdProbe`): atomic batches
//! and their limits, fencing, paged scans, exactly-once appends, one order
//! for every node, and a leader killed mid-workload.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use devreg::internals::etcd::{EtcdProbe, OpId, TxnLimits, WatchItem};

use super::etcd_cluster::EtcdCluster;

/// The limits the test cluster is started with (`--max-txn-ops 1024`,
/// `--max-request-bytes 4 MiB`).
const CLUSTER_LIMITS: TxnLimits = TxnLimits {
    max_ops: 1024,
    max_request_bytes: 4 << 20,
};

fn probe(cluster: &EtcdCluster, prefix: &str) -> EtcdProbe {
    EtcdProbe::connect(&cluster.endpoints(), prefix, CLUSTER_LIMITS).expect("connect")
}

fn put(k: &str, v: &str) -> (Vec<u8>, Option<Vec<u8>>) {
    (k.as_bytes().to_vec(), Some(v.as_bytes().to_vec()))
}

/// The next `n` operations a watch delivers (panics after 30 s).
fn take_ops(
    rx: &crossbeam_channel::Receiver<devreg::Result<WatchItem>>,
    n: usize,
) -> Vec<(i64, OpId, Vec<u8>)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(WatchItem::Op { revision, id, body })) => out.push((revision, id, body)),
            Ok(Err(e)) => panic!("the watch failed after {} ops: {e}", out.len()),
            Err(e) => panic!("only {} of {n} ops arrived: {e}", out.len()),
        }
    }
    out
}

#[test]
fn batches_are_atomic_scans_are_ordered_and_limits_refuse_whole_batches() {
    let cluster = EtcdCluster::start(3);
    let p = probe(&cluster, "t1/");
    // 2,500 keys in three batches: a scan reads them back in three pages.
    let keys: Vec<String> = (0..2_500).map(|i| format!("D{i:05}")).collect();
    for chunk in keys.chunks(1_000) {
        let writes: Vec<_> = chunk.iter().map(|k| put(k, &format!("v{k}"))).collect();
        p.apply(&writes).expect("apply");
    }
    let scanned = p.scan(b"D").expect("scan");
    assert_eq!(scanned.len(), 2_500);
    assert!(scanned.windows(2).all(|w| w[0].0 < w[1].0), "key order");
    assert_eq!(scanned[1_234].0, b"D01234");
    assert_eq!(scanned[1_234].1, b"vD01234");
    // A delete and a put in one batch.
    p.apply(&[(b"D00000".to_vec(), None), put("M1", "x")])
        .expect("apply");
    assert_eq!(p.get(b"D00000").expect("get"), None);
    assert_eq!(p.get(b"M1").expect("get").as_deref(), Some(&b"x"[..]));
    // Over the limit devreg was told: refused before sending, nothing written.
    let big: Vec<_> = (0..1_025).map(|i| put(&format!("B{i:05}"), "v")).collect();
    let e = p.apply(&big).expect_err("over --max-txn-ops");
    assert!(e.to_string().contains("--max-txn-ops of 1024"), "{e}");
    assert!(p.scan(b"B").expect("scan").is_empty());
    // Told a larger limit than the cluster's: etcd refuses, not retried.
    let loose = TxnLimits {
        max_ops: 5_000,
        ..CLUSTER_LIMITS
    };
    let q = EtcdProbe::connect(&cluster.endpoints(), "t1/", loose).expect("connect");
    let t = Instant::now();
    let e = q.apply(&big).expect_err("etcd refuses");
    assert!(e.to_string().contains("too many operations"), "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "a refusal is not retried"
    );
    assert!(q.scan(b"B").expect("scan").is_empty());
}

#[test]
fn a_fenced_store_writes_nothing_once_its_lock_changed_hands() {
    let cluster = EtcdCluster::start(3);
    let owner = probe(&cluster, "t2/");
    owner.apply(&[put("lock", "a")]).expect("take the lock");
    let rev = owner.create_revision(b"t2/store/lock").expect("read");
    assert!(rev > 0);
    let fenced = probe(&cluster, "t2/").fence(b"t2/store/lock", rev);
    fenced.apply(&[put("D1", "one")]).expect("holding the lock");
    // Another node takes the lock: deleted and created again.
    owner.apply(&[(b"lock".to_vec(), None)]).expect("release");
    owner.apply(&[put("lock", "b")]).expect("retake");
    let e = fenced
        .apply(&[put("D1", "two"), put("D2", "x")])
        .expect_err("fenced");
    assert!(e.to_string().contains("no longer holds"), "{e}");
    assert_eq!(owner.get(b"D1").expect("get").as_deref(), Some(&b"one"[..]));
    assert_eq!(owner.get(b"D2").expect("get"), None);
}

#[test]
fn every_node_sees_every_operation_once_in_one_order() {
    let cluster = EtcdCluster::start(3);
    let (a, b) = (probe(&cluster, "t3/"), probe(&cluster, "t3/"));
    assert_ne!(a.node(), b.node());
    let (wa, wb) = (a.watch(1), b.watch(1));
    let acked: Vec<(OpId, i64)> = std::thread::scope(|s| {
        let ha = s.spawn(|| append_n(&a, "a", 150));
        let hb = s.spawn(|| append_n(&b, "b", 150));
        let mut v = ha.join().expect("a");
        v.extend(hb.join().expect("b"));
        v
    });
    let (seen_a, seen_b) = (take_ops(&wa, 300), take_ops(&wb, 300));
    assert_eq!(seen_a, seen_b, "both nodes see the same order");
    assert!(seen_a.windows(2).all(|w| w[0].0 < w[1].0), "revision order");
    let by_id: HashMap<OpId, i64> = seen_a.iter().map(|(r, id, _)| (*id, *r)).collect();
    assert_eq!(by_id.len(), 300, "each operation once");
    for (id, rev) in &acked {
        assert_eq!(
            by_id.get(id),
            Some(rev),
            "acknowledged at the revision watched"
        );
    }
    let last = acked.iter().map(|x| x.1).max().expect("some");
    assert_eq!(a.last_revision().expect("tail"), last);
    // Trimmed operations leave the keyspace; a later watch starts after them.
    assert_eq!(a.trim(last).expect("trim"), 300);
    let (_, next) = a.append(b"after".to_vec()).expect("append");
    let later = take_ops(&b.watch(last + 1), 1);
    assert_eq!((later[0].0, later[0].2.as_slice()), (next, &b"after"[..]));
}

fn append_n(p: &EtcdProbe, tag: &str, n: usize) -> Vec<(OpId, i64)> {
    (0..n)
        .map(|i| p.append(format!("{tag}{i}").into_bytes()).expect("append"))
        .collect()
}

#[test]
fn appends_survive_the_leader_killed_mid_workload_exactly_once() {
    let mut cluster = EtcdCluster::start(3);
    let p = probe(&cluster, "t4/");
    let watch = p.watch(1);
    let acked = super::writes_through_a_leader_kill(&mut cluster, |i| {
        let r = p.append(format!("op{i}").into_bytes());
        (i, r.expect("an append rides out the election").1)
    });
    let seen = take_ops(&watch, acked.len());
    let bodies: Vec<&[u8]> = seen.iter().map(|x| x.2.as_slice()).collect();
    let expected: Vec<Vec<u8>> = acked
        .iter()
        .map(|((i, _), _)| format!("op{i}").into_bytes())
        .collect();
    assert_eq!(
        bodies,
        expected.iter().map(Vec::as_slice).collect::<Vec<_>>()
    );
    for (((_, rev), _), (seen_rev, ..)) in acked.iter().zip(&seen) {
        assert_eq!(rev, seen_rev);
    }
    // Nothing more than what was acknowledged.
    assert!(watch.recv_timeout(Duration::from_millis(300)).is_err());
}
