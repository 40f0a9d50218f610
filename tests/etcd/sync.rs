//! The sync worker on a cluster node: it exports under the sink's lease,
//! and delivers to the Customer.io emulator (`tests/support/emu.rs`, the
//! one test model) what every node wrote.

use std::collections::BTreeSet;
use std::time::Duration;

use devreg::sync::{Credentials, SyncConfig, SyncWorker};
use devreg::{Config, Op, Platform, Register, Registry, TxnLimits};

use super::emu::{Emu, KEY, SITE};
use super::etcd_cluster::EtcdCluster;

const LIMITS: TxnLimits = TxnLimits {
    max_ops: 1024,
    max_request_bytes: 4 << 20,
};

fn node(cluster: &EtcdCluster) -> Registry {
    Registry::open_with(Config::etcd(cluster.endpoints(), "s1/").etcd_limits(LIMITS))
        .expect("open a node")
}

#[test]
fn a_sync_worker_on_one_node_delivers_what_every_node_wrote() {
    let cluster = EtcdCluster::start(3);
    let (a, b) = (node(&cluster), node(&cluster));
    for i in 0..40u64 {
        let reg = if i % 2 == 0 { &a } else { &b };
        let op = Op::Register(Register {
            token: format!("t{i:03}"),
            platform: Platform::Ios,
            person: Some(format!("p{}", i % 5)),
            seen_ms: 1_000 + i,
            attributes: None,
        });
        assert!(reg.apply(op).expect("apply").is_applied());
    }
    let emu = Emu::start(Vec::new());
    let config = SyncConfig::new(Credentials::new(SITE, KEY).expect("credentials"))
        .endpoint(emu.url())
        .max_ops(7)
        .timeout(Duration::from_millis(2_000))
        .poll_interval(Duration::from_millis(20));
    let stats = SyncWorker::new(a.clone(), config)
        .expect("worker")
        .run_once()
        .expect("drained");
    assert!(stats.requests >= 6, "{stats:?}");
    let delivered: BTreeSet<(String, String)> = emu.with(|s| s.pairs()).into_keys().collect();
    b.catch_up().expect("catch up");
    let expected: BTreeSet<(String, String)> = b
        .dump()
        .into_iter()
        .filter_map(|d| Some((d.person?, d.token)))
        .collect();
    assert_eq!(delivered, expected);
    // The worker's node holds the sink: b may not export it meanwhile.
    let e = b
        .export(devreg::DEFAULT_SINK, 10, 499_999)
        .expect_err("a exports");
    assert!(e.to_string().contains("exporter lease"), "{e}");
    assert!(a
        .export(devreg::DEFAULT_SINK, 10, 499_999)
        .expect("export")
        .is_none());
}
