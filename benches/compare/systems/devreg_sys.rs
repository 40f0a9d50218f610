//! devreg itself, through its public API only.

use std::path::Path;

use devreg::{Config, Device, Durability, Op, Register, Registry};

use super::{System, Worker};
use crate::workload::Dev;

pub struct DevregSys {
    reg: Registry,
}

impl DevregSys {
    pub fn open(dir: &Path, durable: bool) -> DevregSys {
        let mode = if durable {
            Durability::Immediate
        } else {
            Durability::Eventual
        };
        let reg = Registry::open_with(Config::new(dir).durability(mode)).expect("opening devreg");
        DevregSys { reg }
    }
}

fn register_op(d: &Dev, seen_ms: u64) -> Op {
    Op::Register(Register {
        token: d.token.clone(),
        platform: d.platform,
        person: d.person.clone(),
        seen_ms,
        attributes: Some((*d.attrs).clone()),
    })
}

struct W<'a>(&'a Registry);

impl Worker for W<'_> {
    fn import(&mut self, batch: &[Dev]) {
        let ops = batch.iter().map(|d| register_op(d, d.seen_ms)).collect();
        self.0.apply_batch(ops).expect("devreg import");
    }

    fn register(&mut self, d: &Dev, seen_ms: u64) {
        let _ = self
            .0
            .apply(register_op(d, seen_ms))
            .expect("devreg register");
    }

    fn get(&mut self, token: &str) -> Option<Device> {
        self.0.device(token)
    }

    fn most_recent(&mut self, person: &str) -> Option<Device> {
        self.0.most_recent(person, None)
    }

    fn active_count(&mut self, since_ms: u64) -> u64 {
        self.0.active_since(since_ms, None)
    }

    fn merge(&mut self, primary: &str, secondary: &str) {
        let _ = self.0.merge(primary, secondary).expect("devreg merge");
    }
}

impl System for DevregSys {
    fn worker(&self) -> Box<dyn Worker + '_> {
        Box::new(W(&self.reg))
    }

    fn settle(&self) {
        self.reg.checkpoint().expect("devreg checkpoint");
    }

    fn disk_bytes(&self) -> u64 {
        self.reg.disk_bytes()
    }

    fn background(&self) -> String {
        let m = self.reg.metrics();
        format!(
            "; so far {} checkpoints, {} page merges, {} compactions, {} MiB to the store",
            m.checkpoints,
            m.page_merges,
            m.compactions,
            m.store_bytes_written >> 20
        )
    }

    fn export_drain(&self, phase: std::time::Duration) -> Option<(u64, f64)> {
        let sink = devreg::DEFAULT_SINK;
        // The first export adds the sink with a snapshot; keep that out of the timing.
        self.reg.add_sink(sink).expect("devreg add_sink");
        let t = std::time::Instant::now();
        let mut ops = 0u64;
        while t.elapsed() < phase {
            let Some(b) = self
                .reg
                .export(sink, devreg::DEFAULT_MAX_OPS, 499_999)
                .expect("devreg export")
            else {
                break;
            };
            ops += b.len() as u64;
            self.reg.ack(sink, b.id()).expect("devreg ack");
        }
        Some((ops, t.elapsed().as_secs_f64()))
    }
}
