//! `report.html`: one self-contained page per run (inline CSS, JS and SVG, no
//! network fetches), so it can be archived or attached to a bug as one file.
//!
//! Layout: run header, suite index (one row per case linking `#case-<n>`),
//! then per case its steps, provisioning fetches, SIP ladder, console log and
//! filterable timeline.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use minijinja::value::{Serde, Value};
use minijinja::Environment;
use phonerig_core::{Event, Source};
use serde::Serialize;
use serde_json::Value as Json;

use crate::ladder::{build_ladder, Ladder};
use crate::summary::{field_text, format_duration_us, CaseSummary, RunSummary};

const REPORT_TEMPLATE: &str = include_str!("../templates/report.html");
const CERTIFICATE_TEMPLATE: &str = include_str!("../templates/certificate.html");
const STYLE: &str = include_str!("../templates/report.css");
const SCRIPT: &str = include_str!("../templates/report.js");

/// Files of the run folder the report links to (relative to the folder).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Attachments {
    pub pcap: Option<String>,
    pub console_logs: Vec<String>,
}

#[derive(Debug, Serialize)]
struct TimelineRow {
    seq: u64,
    /// Run-relative time, the same clock as every other time shown in the report.
    t: String,
    /// Time since the case started.
    since_case: String,
    source: &'static str,
    phone: String,
    kind: String,
    detail: String,
    raw: Option<String>,
    /// Quoted by the runner next to a failed expectation.
    nearest: bool,
}

#[derive(Debug, Serialize)]
struct FetchRow {
    seq: u64,
    t: String,
    file: String,
    protocol: String,
    outcome: String,
    code: String,
    bytes: String,
    duration: String,
    ok: bool,
}

#[derive(Debug, Serialize)]
struct ConsoleRow {
    seq: u64,
    t: String,
    since_case: String,
    device: String,
    line: String,
}

#[derive(Debug, Serialize)]
struct SourceFilter {
    name: &'static str,
    count: usize,
}

#[derive(Debug, Serialize)]
struct CaseView<'a> {
    case: &'a CaseSummary,
    duration: String,
    /// The failure explanation cut for the index table; the case section shows it whole.
    failure_short: String,
    steps: Vec<StepView>,
    timeline: Vec<TimelineRow>,
    filters: Vec<SourceFilter>,
    fetches: Vec<FetchRow>,
    console: Vec<ConsoleRow>,
    ladder: Option<Ladder>,
}

#[derive(Debug, Serialize)]
struct StepView {
    index: u64,
    name: String,
    description: Option<String>,
    verdict: String,
    duration: String,
    explanation: Option<String>,
    nearest: Vec<(u64, String)>,
}

/// `+12.345678s`: the run-relative clock of `Event::brief`, so times match the CLI's output.
pub(crate) fn run_time(t_us: u64) -> String {
    format!("+{}.{:06}s", t_us / 1_000_000, t_us % 1_000_000)
}

fn detail_of(event: &Event) -> String {
    event
        .fields
        .iter()
        .filter(|(key, _)| key.as_str() != "raw")
        .map(|(key, value)| {
            let text = match value {
                Json::String(s) => s.clone(),
                other => other.to_string(),
            };
            // Long values (SDP, option lists) stay readable in a table cell; the raw text is one click away.
            format!("{key}={}", shorten(&text, 200))
        })
        .collect::<Vec<_>>()
        .join("  ")
}

fn shorten(text: &str, max_chars: usize) -> String {
    if text.chars().count() > max_chars {
        text.chars().take(max_chars).collect::<String>() + "…"
    } else {
        text.to_owned()
    }
}

fn is_fetch(event: &Event) -> bool {
    matches!(event.source, Source::Tftp | Source::Http | Source::Ftp)
        && event.kind.ends_with(".fetch")
}

fn case_view<'a>(case: &'a CaseSummary, events: &[Event]) -> CaseView<'a> {
    let slice = &events[case.events.clone()];
    let since_case = |e: &Event| {
        format!(
            "+{}",
            format_duration_us(e.t_us.saturating_sub(case.started_t_us))
        )
    };
    let nearest_seqs: BTreeSet<u64> = case
        .steps
        .iter()
        .flat_map(|s| s.nearest.iter().map(|n| n.seq))
        .collect();

    let timeline = slice
        .iter()
        .map(|e| TimelineRow {
            seq: e.seq,
            t: run_time(e.t_us),
            since_case: since_case(e),
            source: e.source.as_str(),
            phone: e.phone.clone().unwrap_or_default(),
            kind: e.kind.clone(),
            detail: detail_of(e),
            raw: field_text(e, "raw"),
            nearest: nearest_seqs.contains(&e.seq),
        })
        .collect();
    let filters = Source::ALL
        .iter()
        .map(|source| SourceFilter {
            name: source.as_str(),
            count: slice.iter().filter(|e| e.source == *source).count(),
        })
        .collect();
    let fetches = slice
        .iter()
        .filter(|e| is_fetch(e))
        .map(|e| {
            let outcome = field_text(e, "outcome").unwrap_or_default();
            FetchRow {
                seq: e.seq,
                t: run_time(e.t_us),
                file: field_text(e, "file").unwrap_or_default(),
                protocol: field_text(e, "protocol").unwrap_or_else(|| e.source.as_str().to_owned()),
                ok: outcome == "complete",
                outcome,
                code: field_text(e, "code").unwrap_or_default(),
                bytes: match (e.field_u64("bytes"), e.field_u64("size")) {
                    (Some(sent), Some(size)) if size != sent => format!("{sent} of {size}"),
                    (Some(sent), _) => sent.to_string(),
                    _ => String::new(),
                },
                duration: e
                    .field_u64("duration_us")
                    .map(format_duration_us)
                    .unwrap_or_default(),
            }
        })
        .collect();
    let console = slice
        .iter()
        .filter(|e| e.source == Source::Console && e.kind == "console.line")
        .map(|e| ConsoleRow {
            seq: e.seq,
            t: run_time(e.t_us),
            since_case: since_case(e),
            device: field_text(e, "device").unwrap_or_default(),
            line: field_text(e, "line").unwrap_or_default(),
        })
        .collect();
    let steps = case
        .steps
        .iter()
        .map(|s| StepView {
            index: s.index,
            name: s.name.clone(),
            description: s.description.clone(),
            verdict: s.verdict.map_or("not judged", |v| v.as_str()).to_owned(),
            duration: s
                .duration_us
                .map(format_duration_us)
                .unwrap_or_else(|| "-".to_owned()),
            explanation: s.explanation.clone(),
            nearest: s.nearest.iter().map(|n| (n.seq, n.brief.clone())).collect(),
        })
        .collect();

    CaseView {
        case,
        duration: format_duration_us(case.duration_us),
        failure_short: case
            .failure
            .as_ref()
            .map(|f| shorten(&f.explanation, 140))
            .unwrap_or_default(),
        steps,
        timeline,
        filters,
        fetches,
        console,
        ladder: build_ladder(slice, |e| run_time(e.t_us)),
    }
}

fn environment() -> Result<Environment<'static>> {
    let mut env = Environment::new();
    env.add_template("report.html", REPORT_TEMPLATE)?;
    env.add_template("certificate.html", CERTIFICATE_TEMPLATE)?;
    Ok(env)
}

/// Renders `report.html` from the run's events and its summary.
pub fn render_html(
    summary: &RunSummary,
    events: &[Event],
    attachments: &Attachments,
) -> Result<String> {
    let env = environment()?;
    let cases: Vec<CaseView> = summary
        .cases
        .iter()
        .map(|case| case_view(case, events))
        .collect();
    // Events before the first case and after the last (services starting and stopping).
    let in_cases: BTreeSet<usize> = summary
        .cases
        .iter()
        .flat_map(|c| c.events.clone())
        .collect();
    let run_events: Vec<TimelineRow> = events
        .iter()
        .enumerate()
        .filter(|(i, _)| !in_cases.contains(i))
        .map(|(_, e)| TimelineRow {
            seq: e.seq,
            t: run_time(e.t_us),
            since_case: String::new(),
            source: e.source.as_str(),
            phone: e.phone.clone().unwrap_or_default(),
            kind: e.kind.clone(),
            detail: detail_of(e),
            raw: None,
            nearest: false,
        })
        .collect();
    let phones: Vec<Json> = {
        let mut seen = BTreeSet::new();
        summary
            .cases
            .iter()
            .filter(|c| seen.insert(c.phone.clone()))
            .map(|c| {
                serde_json::json!({"phone": c.phone, "model": c.model, "mac": c.mac, "firmware": c.firmware})
            })
            .collect()
    };
    let context = Value::from(Serde(serde_json::json!({
        "run": summary,
        "duration": format_duration_us(summary.duration_us),
        "phones": phones,
        "cases": serde_json::to_value(&cases)?,
        "run_events": serde_json::to_value(&run_events)?,
        "attachments": attachments,
        "style": STYLE,
        "script": SCRIPT,
    })));
    env.get_template("report.html")?
        .render(context)
        .context("rendering report.html")
}

/// Renders `certificate.html` from the certificate data.
pub fn render_certificate_html(certificate: &crate::certificate::Certificate) -> Result<String> {
    let env = environment()?;
    let context = Value::from(Serde(
        serde_json::json!({ "cert": certificate, "style": STYLE }),
    ));
    env.get_template("certificate.html")?
        .render(context)
        .context("rendering certificate.html")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::summarize;
    use serde_json::json;

    fn event(seq: u64, source: Source, kind: &str, fields: Json) -> Event {
        Event {
            seq,
            t_us: seq * 1000,
            wall: "2026-11-20T21:04:05Z".into(),
            source,
            phone: Some("p1".into()),
            kind: kind.into(),
            fields: fields.as_object().cloned().unwrap_or_default(),
        }
    }

    /// Wire data (SIP text, console lines, file names) is written by phones and
    /// must show as text, never become markup of the report.
    #[test]
    fn wire_text_is_escaped() {
        let hostile = "<script>alert(1)</script>";
        let events = vec![
            event(
                0,
                Source::Runner,
                "case.start",
                json!({"case": "c@p1", "phone": "p1"}),
            ),
            event(
                1,
                Source::Sip,
                "sip.message",
                json!({"direction": "in", "first_line": hostile, "raw": hostile, "peer": "198.18.0.50:5060"}),
            ),
            event(
                2,
                Source::Console,
                "console.line",
                json!({"line": hostile, "device": "tty"}),
            ),
            event(
                3,
                Source::Http,
                "http.fetch",
                json!({"file": hostile, "protocol": "http", "outcome": "complete"}),
            ),
            event(
                4,
                Source::Runner,
                "case.end",
                json!({"case": "c@p1", "verdict": "pass"}),
            ),
        ];
        let html = render_html(&summarize(&events), &events, &Attachments::default()).unwrap();
        assert!(!html.contains(hostile));
        assert!(html.contains("&lt;script&gt;"));
        assert_eq!(
            html.matches("<script>").count(),
            1,
            "only the report's own script"
        );
    }

    #[test]
    fn fetch_rows_show_partial_transfers() {
        let events = vec![
            event(
                0,
                Source::Runner,
                "case.start",
                json!({"case": "c@p1", "phone": "p1"}),
            ),
            event(
                1,
                Source::Tftp,
                "tftp.fetch",
                json!({"file": "cfg.xml", "protocol": "tftp", "outcome": "truncated", "bytes": 512, "size": 2048}),
            ),
            event(
                2,
                Source::Runner,
                "case.end",
                json!({"case": "c@p1", "verdict": "fail"}),
            ),
        ];
        let summary = summarize(&events);
        let view = case_view(&summary.cases[0], &events);
        assert_eq!(view.fetches.len(), 1);
        assert_eq!(view.fetches[0].bytes, "512 of 2048");
        assert!(!view.fetches[0].ok);
    }
}
