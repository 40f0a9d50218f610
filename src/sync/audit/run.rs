//! The audit's walk and its repair (issue 15 item 4, DESIGN.md 20.8):
//! `audit` reads Customer.io's view of each chosen person (a `Selection`)
//! through a `CioView` (the App API client, or a test's model), compares it
//! with devreg's devices of that person (pure reads of the registry: the
//! audit itself never writes), and reports the drift; `repair` re-marks the
//! drifted pairs in a sink's feed (`Registry::remark`, a logged write), so
//! the next sync sends them again.

use serde::Serialize;

use super::{compare, AppApiClient, CioDevice, Drift, DriftSummary, OwnDevice};
use crate::error::{Error, Result};
use crate::limits::MAX_AUDIT_SAMPLE;
use crate::model::{validate_person, validate_sink, validate_token, RemarkPair};
use crate::Registry;

/// Where the audit reads Customer.io's view of a person's devices.
pub trait CioView {
    /// Customer.io's devices of `person`; `None` when it has no such
    /// customer (then devreg's devices of the person are all missing).
    fn profile(&mut self, person: &str) -> Result<Option<Vec<CioDevice>>>;
}

impl CioView for AppApiClient {
    fn profile(&mut self, person: &str) -> Result<Option<Vec<CioDevice>>> {
        AppApiClient::profile(self, person)
    }
}

/// Which persons an audit reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Up to N identified persons, the same ones for the same persons
    /// (`Registry::sample_persons`), 1..=`MAX_AUDIT_SAMPLE`.
    Sample(usize),
    /// One person, whether devreg knows it or not.
    Person(String),
}

/// One audited person's drift.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PersonDrift {
    /// The person.
    pub person: String,
    /// Whether Customer.io has a customer of that identifier at all.
    pub in_customerio: bool,
    /// Each drifted pair, devreg's devices first (by recency), then
    /// Customer.io's extra ones.
    pub drift: Vec<Drift>,
}

/// What an audit found: `{"sink", "audited", "summary", "persons",
/// "repaired"?}`, where `persons` lists only the persons with drift.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    /// The sink audited (whose identifier names the persons).
    pub sink: String,
    /// Persons read from Customer.io.
    pub audited: u64,
    /// Counts of each drift kind.
    pub summary: DriftSummary,
    /// The persons with drift.
    pub persons: Vec<PersonDrift>,
    /// Pairs re-marked by `repair` (absent when not repaired).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repaired: Option<u64>,
    /// Drifted pairs `repair` could not re-mark: a token Customer.io holds
    /// that devreg would refuse (printed only when not 0).
    #[serde(skip_serializing_if = "is_zero")]
    pub unrepairable: u64,
    /// Drifted pairs `repair` left for later: Customer.io holds them and
    /// they are in the sink's batch in flight (printed only when not 0;
    /// sync, then audit again).
    #[serde(skip_serializing_if = "is_zero")]
    pub deferred: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl AuditReport {
    /// No drift found.
    pub fn is_clean(&self) -> bool {
        self.persons.is_empty()
    }

    /// The one-line summary the CLI prints on stderr.
    pub fn summary_line(&self) -> String {
        let s = &self.summary;
        let mut line = format!(
            "audit of sink {}: {} person(s) read, {} with drift: {} missing, {} stale, {} on the wrong person, {} last_used behind",
            self.sink,
            self.audited,
            self.persons.len(),
            s.missing,
            s.stale,
            s.wrong_person,
            s.last_used_behind
        );
        if let Some(n) = self.repaired {
            line.push_str(&format!("; {n} pair(s) re-marked for the next sync"));
        }
        if self.unrepairable > 0 {
            line.push_str(&format!(", {} not repairable", self.unrepairable));
        }
        if self.deferred > 0 {
            line.push_str(&format!(
                ", {} in the batch in flight (sync, then audit again)",
                self.deferred
            ));
        }
        line
    }

    /// The drifted pairs as `repair` re-marks them, and how many cannot be
    /// (a token devreg would refuse). `held` is whether Customer.io has the
    /// pair: every kind but `missing`.
    pub fn remark_pairs(&self) -> (Vec<RemarkPair>, u64) {
        let mut pairs = Vec::new();
        let mut bad = 0;
        for p in &self.persons {
            for d in &p.drift {
                let (token, held) = match d {
                    Drift::Missing { token } => (token, false),
                    Drift::Stale { token }
                    | Drift::WrongPerson { token, .. }
                    | Drift::LastUsedBehind { token, .. } => (token, true),
                };
                let pair = RemarkPair {
                    person: p.person.clone(),
                    token: token.clone(),
                    held,
                };
                match pair.validate() {
                    Ok(()) => pairs.push(pair),
                    Err(_) => bad += 1,
                }
            }
        }
        (pairs, bad)
    }
}

/// Audits the persons of `selection`: each is read from `view` (one
/// request each, the client keeps the rate) and compared with devreg's
/// devices of it. Only reads the registry. `sink` names the sink whose
/// view this is (for the report; `repair` writes to it).
pub fn audit(
    reg: &Registry,
    view: &mut dyn CioView,
    selection: &Selection,
    sink: &str,
) -> Result<AuditReport> {
    validate_sink(sink)?;
    let persons = match selection {
        Selection::Sample(n) if (1..=MAX_AUDIT_SAMPLE).contains(n) => reg.sample_persons(*n),
        Selection::Sample(n) => {
            return Err(Error::invalid(
                "sample",
                format!("{n} is outside 1..={MAX_AUDIT_SAMPLE}"),
            ))
        }
        Selection::Person(p) => {
            validate_person("person", p)?;
            vec![p.clone()]
        }
    };
    let mut report = AuditReport {
        sink: sink.to_owned(),
        audited: 0,
        summary: DriftSummary::default(),
        persons: Vec::new(),
        repaired: None,
        unrepairable: 0,
        deferred: 0,
    };
    for person in persons {
        let theirs = view.profile(&person)?;
        report.audited += 1;
        let own: Vec<OwnDevice> = reg
            .devices_of(&person)
            .into_iter()
            .map(|d| OwnDevice {
                token: d.token,
                last_seen_ms: d.last_seen_ms,
            })
            .collect();
        let owner_of = |t: &str| match validate_token("token", t) {
            Ok(()) => reg.device(t).and_then(|d| d.person),
            Err(_) => None,
        };
        let drift = compare(&own, theirs.as_deref().unwrap_or_default(), owner_of);
        if !drift.is_empty() {
            report.summary.add(&drift);
            report.persons.push(PersonDrift {
                person,
                in_customerio: theirs.is_some(),
                drift,
            });
        }
    }
    Ok(report)
}

/// Re-marks the report's drifted pairs in `sink`'s feed
/// (`Registry::remark`: logged, atomic per chunk, durable as configured);
/// records how many in `report.repaired`, `report.unrepairable` and
/// `report.deferred`, and returns the count re-marked. Nothing to re-mark writes nothing.
pub fn repair(reg: &Registry, sink: &str, report: &mut AuditReport) -> Result<u64> {
    let (pairs, bad) = report.remark_pairs();
    report.unrepairable = bad;
    let n = match pairs.is_empty() {
        true => 0,
        false => reg.remark(sink, &pairs)?,
    };
    report.repaired = Some(n);
    report.deferred = (pairs.len() as u64).saturating_sub(n);
    Ok(n)
}
