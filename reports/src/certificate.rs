//! Certificate-style summary for firmware certification: which models and
//! firmware versions were tested, which scenarios ran (grouped by tag), their
//! verdicts, when, and with which rig.

use std::collections::BTreeMap;

use phonerig_core::Event;
use serde::{Deserialize, Serialize};

use crate::summary::{firmware_seen, Counts, RunSummary, Verdict};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertifiedPhone {
    pub phone: String,
    pub model: String,
    pub mac: String,
    /// Every version the phone reported during the run, in the order seen
    /// (more than one when the run upgraded the firmware).
    pub firmware_versions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertifiedCase {
    pub case: String,
    pub scenario: String,
    pub phone: String,
    pub verdict: Verdict,
    pub duration_us: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Certificate {
    pub run_name: String,
    pub lab: String,
    pub rig_version: String,
    /// Day the run started, `YYYY-MM-DD` (UTC).
    pub date: String,
    pub started_wall: String,
    /// True only when the run completed and every scenario passed.
    pub passed: bool,
    pub complete: bool,
    pub counts: Counts,
    pub models: Vec<String>,
    pub phones: Vec<CertifiedPhone>,
    /// Tag → the cases carrying it. A case appears under each of its tags.
    pub by_tag: BTreeMap<String, Vec<CertifiedCase>>,
    pub cases: Vec<CertifiedCase>,
}

pub fn certificate(summary: &RunSummary, events: &[Event]) -> Certificate {
    let seen = firmware_seen(events);
    let mut phones: Vec<CertifiedPhone> = Vec::new();
    for case in &summary.cases {
        if phones.iter().any(|p| p.phone == case.phone) {
            continue;
        }
        phones.push(CertifiedPhone {
            phone: case.phone.clone(),
            model: case.model.clone(),
            mac: case.mac.clone(),
            firmware_versions: seen.get(&case.phone).cloned().unwrap_or_default(),
        });
    }
    let mut models: Vec<String> = phones.iter().map(|p| p.model.clone()).collect();
    models.sort();
    models.dedup();

    let cases: Vec<CertifiedCase> = summary
        .cases
        .iter()
        .map(|c| CertifiedCase {
            case: c.id.clone(),
            scenario: c.scenario.clone(),
            phone: c.phone.clone(),
            verdict: c.verdict,
            duration_us: c.duration_us,
        })
        .collect();
    let mut by_tag: BTreeMap<String, Vec<CertifiedCase>> = BTreeMap::new();
    for (case, certified) in summary.cases.iter().zip(&cases) {
        let tags = if case.tags.is_empty() {
            vec!["untagged".to_owned()]
        } else {
            case.tags.clone()
        };
        for tag in tags {
            by_tag.entry(tag).or_default().push(certified.clone());
        }
    }

    Certificate {
        run_name: summary.run_name.clone(),
        lab: summary.lab.clone(),
        rig_version: summary.rig_version.clone(),
        date: summary
            .started_wall
            .get(..10)
            .unwrap_or_default()
            .to_owned(),
        started_wall: summary.started_wall.clone(),
        passed: summary.succeeded(),
        complete: summary.complete,
        counts: summary.counts.clone(),
        models,
        phones,
        by_tag,
        cases,
    }
}
