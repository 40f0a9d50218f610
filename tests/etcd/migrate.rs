//! `Registry::migrate_to_etcd` and `migrate_from_etcd` (`devreg migrate`)
//! against a real 3-member cluster: a local database with devices, history
//! and a batch in flight goes into the cluster and back, and answers the
//! same everywhere; an occupied prefix and an unfinished migration are
//! refused.

use devreg::{Config, EtcdTarget, Registry, TxnLimits, DEFAULT_SINK};

use super::common::workload::Workload;
use super::common::Model;
use super::etcd_cluster::EtcdCluster;

const LIMITS: TxnLimits = TxnLimits {
    max_ops: 1024,
    max_request_bytes: 4 << 20,
};

fn target(cluster: &EtcdCluster, prefix: &str) -> EtcdTarget {
    EtcdTarget {
        endpoints: cluster.endpoints(),
        prefix: prefix.into(),
        limits: LIMITS,
    }
}

/// Everything a migration must keep, as one comparable value.
fn answers(
    reg: &Registry,
    tokens: &[String],
) -> (
    Vec<devreg::Device>,
    devreg::Stats,
    Vec<String>,
    Option<String>,
) {
    let histories = tokens
        .iter()
        .map(|t| format!("{:?}", reg.history(t).expect("history")))
        .collect();
    let batch = reg
        .export(DEFAULT_SINK, 50, 499_999)
        .expect("export")
        .map(|b| format!("{} {}", b.id(), b.body()));
    (reg.dump(), reg.stats(), histories, batch)
}

#[test]
fn a_database_goes_into_the_cluster_and_back_and_answers_the_same() {
    let cluster = EtcdCluster::start(3);
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, back) = (dir.path().join("db"), dir.path().join("back"));
    let mut model = Model::new(20);
    let mut w = Workload::new(21, 0);
    let local = Registry::open(&db).expect("open local");
    let mut tokens = Vec::new();
    for _ in 0..500 {
        let op = w.one();
        if let devreg::Op::Register(r) = &op {
            if tokens.len() < 10 {
                tokens.push(r.token.clone());
            }
        }
        assert_eq!(local.apply(op.clone()).expect("apply"), model.apply(&op));
    }
    // A batch in flight when it moves.
    let expected = answers(&local, &tokens);
    assert!(expected.3.is_some());
    local.close().expect("close");
    let report = Registry::migrate_to_etcd(&db, &target(&cluster, "g1/")).expect("migrate in");
    assert_eq!(report.devices, model.dump().len() as u64);
    assert!(report.keys > 0);
    let node = Registry::open_with(Config::etcd(cluster.endpoints(), "g1/").etcd_limits(LIMITS))
        .expect("open the node");
    assert_eq!(answers(&node, &tokens), expected);
    assert_eq!(node.dump(), model.dump());
    assert!(node.check().expect("check").is_clean());
    node.close().expect("close the node");
    // The occupied prefix is refused; the copy goes out to a new path.
    let e = Registry::migrate_to_etcd(&db, &target(&cluster, "g1/")).expect_err("occupied");
    assert!(e.to_string().contains("already holds a registry"), "{e}");
    let report = Registry::migrate_from_etcd(&target(&cluster, "g1/"), &back).expect("migrate out");
    assert_eq!(report.devices, model.dump().len() as u64);
    let copy = Registry::open(&back).expect("open the copy");
    assert_eq!(answers(&copy, &tokens), expected);
    assert!(copy.check().expect("check").is_clean());
}

#[test]
fn an_unfinished_migration_is_refused_at_open() {
    let cluster = EtcdCluster::start(3);
    let probe = devreg::internals::etcd::EtcdProbe::connect(&cluster.endpoints(), "g2/", LIMITS)
        .expect("probe");
    // What a migration leaves when it dies before its last transaction.
    probe
        .apply(&[
            (b"Mmigrating".to_vec(), Some(vec![1])),
            (b"Mcap".to_vec(), Some(20u32.to_be_bytes().to_vec())),
        ])
        .expect("apply");
    let e = Registry::open_with(Config::etcd(cluster.endpoints(), "g2/").etcd_limits(LIMITS))
        .err()
        .expect("refused");
    assert!(
        e.to_string()
            .contains("migration into this prefix did not finish"),
        "{e}"
    );
}

#[test]
fn a_migration_out_of_an_empty_prefix_creates_nothing() {
    let cluster = EtcdCluster::start(3);
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Registry::migrate_from_etcd(&target(&cluster, "g3/"), &dir.path().join("out"))
        .expect_err("nothing to migrate");
    assert!(matches!(e, devreg::Error::NoDatabase { .. }), "{e}");
    assert!(!dir.path().join("out").exists());
    // Still nothing there: a read-only open finds no registry.
    let config = Config::etcd(cluster.endpoints(), "g3/")
        .etcd_limits(LIMITS)
        .read_only(true);
    assert!(matches!(
        Registry::open_with(config),
        Err(devreg::Error::NoDatabase { .. })
    ));
}
