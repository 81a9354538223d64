//! The machine-readable verdicts of a run (`summary.json`), derived from the
//! runner's `run.*`, `case.*` and `step.*` events.

use std::collections::BTreeMap;
use std::ops::Range;

use phonerig_core::{Event, Source};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Outcome of a case, and of the run as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    Error,
    /// The case started but did not end: the run was stopped (Ctrl-C, kill) or the runner gave up.
    Aborted,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Error => "error",
            Verdict::Aborted => "aborted",
        }
    }

    /// Reads a verdict written by the runner. An unknown word is reported as
    /// an error rather than guessed into a pass.
    pub fn parse(text: &str) -> Verdict {
        match text {
            "pass" => Verdict::Pass,
            "fail" => Verdict::Fail,
            "aborted" => Verdict::Aborted,
            _ => Verdict::Error,
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Outcome of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepVerdict {
    Pass,
    Fail,
    Error,
    Skipped,
}

impl StepVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            StepVerdict::Pass => "pass",
            StepVerdict::Fail => "fail",
            StepVerdict::Error => "error",
            StepVerdict::Skipped => "skipped",
        }
    }

    pub fn parse(text: &str) -> StepVerdict {
        match text {
            "pass" => StepVerdict::Pass,
            "fail" => StepVerdict::Fail,
            "skipped" => StepVerdict::Skipped,
            _ => StepVerdict::Error,
        }
    }
}

/// An event the runner quoted next to a failed expectation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NearestEvent {
    pub seq: u64,
    pub t_us: u64,
    pub source: String,
    pub kind: String,
    pub brief: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepSummary {
    pub index: u64,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `None` when the step started but the case ended (or the run stopped) before its verdict.
    pub verdict: Option<StepVerdict>,
    pub duration_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nearest: Vec<NearestEvent>,
}

/// The first step that did not pass, as shown in JUnit's failure message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub step_index: u64,
    pub step_name: String,
    pub explanation: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseSummary {
    /// Position in the run, from 1; also the anchor `#case-<number>` of the HTML report.
    pub number: usize,
    /// `vendor/scenario@phone`.
    pub id: String,
    pub scenario: String,
    pub file: String,
    /// The seed document and section the scenario asserts.
    pub source: String,
    pub phone: String,
    pub model: String,
    pub mac: String,
    /// From `case.start`, else from the `User-Agent` of the phone's last REGISTER.
    pub firmware: Option<String>,
    pub tags: Vec<String>,
    pub verdict: Verdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub failure: Option<Failure>,
    pub started_wall: String,
    pub started_t_us: u64,
    pub duration_us: u64,
    pub steps: Vec<StepSummary>,
    /// Index range of this case's events (from `case.start` to `case.end`) in the event list.
    #[serde(skip)]
    pub events: Range<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub total: usize,
    pub passed: usize,
    pub failed: usize,
    pub errors: usize,
    pub aborted: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_name: String,
    pub lab: String,
    pub rig_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suite: Option<String>,
    pub started_wall: String,
    /// False when `run.end` is missing: the run was killed and the report shows what it got to.
    pub complete: bool,
    pub verdict: Verdict,
    pub counts: Counts,
    pub duration_us: u64,
    pub cases: Vec<CaseSummary>,
}

impl RunSummary {
    /// The exit status the CLI should give: every case passed and the run ended normally.
    pub fn succeeded(&self) -> bool {
        self.complete && self.verdict == Verdict::Pass
    }

    /// Plain-text table of the cases: case, phone, verdict, duration.
    pub fn table(&self) -> String {
        let rows: Vec<[String; 4]> = self
            .cases
            .iter()
            .map(|case| {
                [
                    case.id.clone(),
                    case.phone.clone(),
                    case.verdict.as_str().to_uppercase(),
                    format_duration_us(case.duration_us),
                ]
            })
            .collect();
        render_table(["case", "phone", "verdict", "duration"], &rows)
    }
}

/// Fixed-width text table; shared by [`RunSummary::table`] and the live progress.
pub(crate) fn render_table(header: [&str; 4], rows: &[[String; 4]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 4]| {
        let mut out = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(&format!("{cell:<width$}"));
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header);
    out.push_str(&line(
        widths.map(|w| "-".repeat(w)).each_ref().map(String::as_str),
    ));
    for row in rows {
        out.push_str(&line(row.each_ref().map(String::as_str)));
    }
    out
}

/// `1.234s`, or `2m03.5s` past a minute: durations of phone scenarios run from
/// milliseconds (one fetch) to minutes (a reboot).
pub fn format_duration_us(us: u64) -> String {
    let ms = us / 1000;
    if ms < 60_000 {
        format!("{}.{:03}s", ms / 1000, ms % 1000)
    } else {
        format!(
            "{}m{:02}.{}s",
            ms / 60_000,
            (ms % 60_000) / 1000,
            (ms % 1000) / 100
        )
    }
}

/// Text of a field that is normally a string but may be written as another JSON value.
pub(crate) fn field_text(event: &Event, name: &str) -> Option<String> {
    match event.field(name)? {
        Value::Null => None,
        Value::String(text) => Some(text.clone()),
        other => Some(other.to_string()),
    }
}

fn is_runner(event: &Event, kind: &str) -> bool {
    event.source == Source::Runner && event.kind == kind
}

/// Derives the verdicts of a run from its events.
///
/// Cases run one after another, so every event between a `case.start` and
/// its `case.end` belongs to that case. A case without `case.end` (killed run,
/// or a new `case.start` arriving first) is reported as aborted.
pub fn summarize(events: &[Event]) -> RunSummary {
    let run_start = events.iter().find(|e| is_runner(e, "run.start"));
    let run_end = events.iter().rev().find(|e| is_runner(e, "run.end"));
    let text = |event: Option<&Event>, name: &str| event.and_then(|e| field_text(e, name));

    let mut cases = Vec::new();
    let mut open: Option<usize> = None;
    for (index, event) in events.iter().enumerate() {
        if is_runner(event, "case.start") {
            if let Some(start) = open.take() {
                cases.push(build_case(events, start..index, cases.len() + 1, false));
            }
            open = Some(index);
        } else if is_runner(event, "case.end") {
            if let Some(start) = open.take() {
                cases.push(build_case(events, start..index + 1, cases.len() + 1, true));
            }
        }
    }
    if let Some(start) = open {
        cases.push(build_case(
            events,
            start..events.len(),
            cases.len() + 1,
            false,
        ));
    }

    let mut counts = Counts {
        total: cases.len(),
        ..Counts::default()
    };
    for case in &cases {
        match case.verdict {
            Verdict::Pass => counts.passed += 1,
            Verdict::Fail => counts.failed += 1,
            Verdict::Error => counts.errors += 1,
            Verdict::Aborted => counts.aborted += 1,
        }
    }
    let computed = if counts.total > 0 && counts.passed == counts.total {
        Verdict::Pass
    } else if counts.errors > 0 || counts.aborted > 0 || counts.total == 0 {
        Verdict::Error
    } else {
        Verdict::Fail
    };
    let verdict = match run_end.and_then(|e| e.field_str("verdict")) {
        Some(word) => Verdict::parse(word),
        None if run_end.is_some() => computed,
        // A killed run can at best be reported as aborted, whatever its cases said so far.
        None => Verdict::Aborted,
    };

    RunSummary {
        run_name: text(run_start, "run_name").unwrap_or_default(),
        lab: text(run_start, "lab").unwrap_or_default(),
        rig_version: text(run_start, "rig_version").unwrap_or_default(),
        suite: text(run_start, "suite"),
        started_wall: text(run_start, "started_wall")
            .or_else(|| events.first().map(|e| e.wall.clone()))
            .unwrap_or_default(),
        complete: run_end.is_some(),
        verdict,
        counts,
        duration_us: match (events.first(), events.last()) {
            (Some(first), Some(last)) => last.t_us.saturating_sub(first.t_us),
            _ => 0,
        },
        cases,
    }
}

fn build_case(events: &[Event], range: Range<usize>, number: usize, ended: bool) -> CaseSummary {
    let slice = &events[range.clone()];
    let start = &slice[0];
    let text = |name: &str| field_text(start, name).unwrap_or_default();
    let phone = field_text(start, "phone")
        .or_else(|| start.phone.clone())
        .unwrap_or_default();

    let mut steps: BTreeMap<u64, StepSummary> = BTreeMap::new();
    for event in slice.iter().filter(|e| e.source == Source::Runner) {
        let Some(index) = event.field_u64("index") else {
            continue;
        };
        let step = steps.entry(index).or_insert_with(|| StepSummary {
            index,
            name: field_text(event, "name").unwrap_or_default(),
            description: None,
            verdict: None,
            duration_us: None,
            explanation: None,
            nearest: Vec::new(),
        });
        match event.kind.as_str() {
            "step.start" => step.description = field_text(event, "description"),
            "step.verdict" => {
                step.verdict = event.field_str("verdict").map(StepVerdict::parse);
                step.duration_us = event.field_u64("duration_us");
                step.explanation = field_text(event, "explanation");
                step.nearest = event
                    .field("nearest")
                    .cloned()
                    .and_then(|value| serde_json::from_value(value).ok())
                    .unwrap_or_default();
            }
            _ => {}
        }
    }
    let steps: Vec<StepSummary> = steps.into_values().collect();

    let end = slice.last().filter(|_| ended);
    let (verdict, reason) = match end {
        Some(end) => (
            end.field_str("verdict")
                .map(Verdict::parse)
                .unwrap_or(Verdict::Error),
            field_text(end, "reason"),
        ),
        None => (
            Verdict::Aborted,
            Some("the run stopped before this case ended".to_owned()),
        ),
    };
    let duration_us = end
        .and_then(|e| e.field_u64("duration_us"))
        .unwrap_or_else(|| {
            slice
                .last()
                .map_or(0, |last| last.t_us.saturating_sub(start.t_us))
        });

    let failure = steps
        .iter()
        .find(|s| matches!(s.verdict, Some(StepVerdict::Fail | StepVerdict::Error)))
        .map(|s| Failure {
            step_index: s.index,
            step_name: s.name.clone(),
            explanation: s
                .explanation
                .clone()
                .unwrap_or_else(|| format!("step {} did not pass", s.name)),
        })
        .or_else(|| {
            // No failed step, yet the case did not pass (aborted, runner error): say why.
            (verdict != Verdict::Pass).then(|| {
                let open_step = steps.iter().find(|s| s.verdict.is_none());
                Failure {
                    step_index: open_step.map_or(0, |s| s.index),
                    step_name: open_step.map(|s| s.name.clone()).unwrap_or_default(),
                    explanation: reason
                        .clone()
                        .unwrap_or_else(|| format!("case ended with verdict {verdict}")),
                }
            })
        });

    let firmware = field_text(start, "firmware")
        .or_else(|| last_ua_version(slice, &phone))
        .or_else(|| last_ua_version(events, &phone));

    CaseSummary {
        number,
        id: text("case"),
        scenario: text("scenario"),
        file: text("file"),
        source: text("source"),
        phone,
        model: text("model"),
        mac: text("mac"),
        firmware,
        tags: start
            .field("tags")
            .and_then(Value::as_array)
            .map(|tags| {
                tags.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        verdict,
        reason,
        failure,
        started_wall: start.wall.clone(),
        started_t_us: start.t_us,
        duration_us,
        steps,
        events: range,
    }
}

/// The firmware version the phone announced in its `User-Agent` when it registered.
fn last_ua_version(events: &[Event], phone: &str) -> Option<String> {
    events
        .iter()
        .rev()
        .filter(|e| e.source == Source::Sip && e.kind == "sip.register")
        .filter(|e| e.phone.as_deref() == Some(phone))
        .find_map(|e| field_text(e, "ua_version"))
}

/// Every firmware version each phone showed during the run (phone → versions, in order seen).
pub fn firmware_seen(events: &[Event]) -> BTreeMap<String, Vec<String>> {
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for event in events {
        let (phone, version) = if is_runner(event, "case.start") {
            (field_text(event, "phone"), field_text(event, "firmware"))
        } else if event.source == Source::Sip && event.kind == "sip.register" {
            (event.phone.clone(), field_text(event, "ua_version"))
        } else {
            continue;
        };
        if let (Some(phone), Some(version)) = (phone, version) {
            let versions = seen.entry(phone).or_default();
            if !versions.contains(&version) {
                versions.push(version);
            }
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(0, "0.000s")]
    #[case(1_234_567, "1.234s")]
    #[case(59_999_000, "59.999s")]
    #[case(123_456_000, "2m03.4s")]
    fn durations_read_like_a_stopwatch(#[case] us: u64, #[case] text: &str) {
        assert_eq!(format_duration_us(us), text);
    }

    #[rstest]
    #[case("pass", Verdict::Pass)]
    #[case("fail", Verdict::Fail)]
    #[case("aborted", Verdict::Aborted)]
    #[case("error", Verdict::Error)]
    #[case("PASSED", Verdict::Error)]
    fn unknown_verdict_words_are_errors(#[case] word: &str, #[case] verdict: Verdict) {
        assert_eq!(Verdict::parse(word), verdict);
    }

    fn event(seq: u64, source: Source, kind: &str, fields: serde_json::Value) -> Event {
        Event {
            seq,
            t_us: seq * 1_000_000,
            wall: format!("2026-11-20T21:04:{:02}Z", seq),
            source,
            phone: None,
            kind: kind.to_owned(),
            fields: fields.as_object().cloned().unwrap_or_default(),
        }
    }

    fn case_start(seq: u64, case: &str) -> Event {
        event(
            seq,
            Source::Runner,
            "case.start",
            serde_json::json!({"case": case, "scenario": "s", "phone": "p1", "model": "UC924", "mac": "00:1f:c1:00:00:01", "tags": ["t"]}),
        )
    }

    #[test]
    fn a_killed_run_reports_the_open_case_as_aborted() {
        let events = vec![
            event(
                0,
                Source::Runner,
                "run.start",
                serde_json::json!({"run_name": "r"}),
            ),
            case_start(1, "a@p1"),
            event(
                2,
                Source::Runner,
                "step.start",
                serde_json::json!({"case": "a@p1", "index": 1, "name": "one"}),
            ),
            event(
                3,
                Source::Runner,
                "step.verdict",
                serde_json::json!({"case": "a@p1", "index": 1, "name": "one", "verdict": "pass", "duration_us": 10}),
            ),
            event(
                4,
                Source::Runner,
                "case.end",
                serde_json::json!({"case": "a@p1", "verdict": "pass", "duration_us": 3_000_000}),
            ),
            case_start(5, "b@p1"),
            event(
                6,
                Source::Runner,
                "step.start",
                serde_json::json!({"case": "b@p1", "index": 1, "name": "wait-for-register"}),
            ),
            event(
                9,
                Source::Sip,
                "sip.register",
                serde_json::json!({"ua_version": "2.0"}),
            ),
        ];
        let summary = summarize(&events);
        assert!(!summary.complete);
        assert_eq!(summary.verdict, Verdict::Aborted);
        assert!(!summary.succeeded());
        assert_eq!(
            summary.counts,
            Counts {
                total: 2,
                passed: 1,
                aborted: 1,
                ..Counts::default()
            }
        );
        let open = &summary.cases[1];
        assert_eq!(open.verdict, Verdict::Aborted);
        assert_eq!(open.duration_us, 4_000_000, "until the last event seen");
        assert_eq!(open.steps[0].verdict, None);
        let failure = open
            .failure
            .as_ref()
            .expect("an aborted case explains itself");
        assert_eq!(failure.step_name, "wait-for-register");
        assert_eq!(open.events, 5..8);
        // The register event carries no phone, so it is no evidence of p1's firmware.
        assert_eq!(open.firmware, None);
    }

    #[test]
    fn a_case_start_without_an_end_is_closed_by_the_next_case() {
        let events = vec![
            case_start(0, "a@p1"),
            case_start(1, "b@p1"),
            event(
                2,
                Source::Runner,
                "case.end",
                serde_json::json!({"case": "b@p1", "verdict": "pass", "duration_us": 1}),
            ),
            event(
                3,
                Source::Runner,
                "run.end",
                serde_json::json!({"verdict": "error"}),
            ),
        ];
        let summary = summarize(&events);
        let verdicts: Vec<Verdict> = summary.cases.iter().map(|c| c.verdict).collect();
        assert_eq!(verdicts, [Verdict::Aborted, Verdict::Pass]);
        assert_eq!(summary.cases[0].events, 0..1);
        assert!(summary.complete);
        assert_eq!(summary.verdict, Verdict::Error);
    }

    #[test]
    fn firmware_comes_from_the_phones_own_register() {
        let mut register = event(
            1,
            Source::Sip,
            "sip.register",
            serde_json::json!({"ua_version": "2.42.6.5.64"}),
        );
        register.phone = Some("p1".into());
        let mut other = event(
            2,
            Source::Sip,
            "sip.register",
            serde_json::json!({"ua_version": "9.9"}),
        );
        other.phone = Some("p2".into());
        let events = vec![register, other, case_start(3, "a@p1")];
        let summary = summarize(&events);
        assert_eq!(summary.cases[0].firmware.as_deref(), Some("2.42.6.5.64"));
        let seen = firmware_seen(&events);
        assert_eq!(seen["p1"], ["2.42.6.5.64"]);
        assert_eq!(seen["p2"], ["9.9"]);
    }

    #[test]
    fn no_cases_is_not_a_pass() {
        let events = vec![event(0, Source::Runner, "run.end", serde_json::json!({}))];
        let summary = summarize(&events);
        assert_eq!(summary.verdict, Verdict::Error);
        assert!(!summary.succeeded());
    }
}
