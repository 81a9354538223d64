//! Renderers for a run folder. Everything is derived from `events.jsonl`
//! (plus `capture.pcap` and console log files when present), so a report can
//! be rendered again later with `rig report <run-folder>`.
//!
//! Output files, all in the run folder:
//! - `junit.xml` — one test case per scenario per phone ([`junit::junit_xml`]);
//! - `summary.json` — [`RunSummary`]: verdicts, durations, phones, counts;
//! - `report.html` — self-contained page: suite index, steps, fetches, SIP ladder,
//!   console log, filterable timeline ([`html::render_html`]);
//! - `certificate.json` / `certificate.html` — [`certificate::Certificate`].
//!
//! [`Progress`] is the live view the runner drives during `rig suite`.

pub mod certificate;
pub mod events;
pub mod html;
pub mod junit;
pub mod ladder;
pub mod progress;
pub mod summary;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub use certificate::{certificate, Certificate};
pub use events::{load_events, parse_events};
pub use html::Attachments;
pub use progress::Progress;
pub use summary::{summarize, CaseSummary, Counts, RunSummary, StepSummary, StepVerdict, Verdict};

/// Where [`render_run_folder`] wrote each file, and what it concluded.
#[derive(Debug, Clone)]
pub struct RenderedReport {
    pub dir: PathBuf,
    pub junit: PathBuf,
    pub summary_json: PathBuf,
    pub html: PathBuf,
    pub certificate_html: PathBuf,
    pub certificate_json: PathBuf,
    pub summary: RunSummary,
}

/// Reads `<dir>/events.jsonl` and writes every report file beside it.
pub fn render_run_folder(dir: &Path) -> Result<RenderedReport> {
    let events = load_events(dir.join("events.jsonl"))?;
    let summary = summarize(&events);
    let attachments = find_attachments(dir)?;

    let write = |name: &str, content: &str| -> Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    let junit = write("junit.xml", &junit::junit_xml(&summary)?)?;
    let summary_json = write(
        "summary.json",
        &(serde_json::to_string_pretty(&summary)? + "\n"),
    )?;
    let html = write(
        "report.html",
        &html::render_html(&summary, &events, &attachments)?,
    )?;
    let cert = certificate(&summary, &events);
    let certificate_json = write(
        "certificate.json",
        &(serde_json::to_string_pretty(&cert)? + "\n"),
    )?;
    let certificate_html = write("certificate.html", &html::render_certificate_html(&cert)?)?;

    Ok(RenderedReport {
        dir: dir.to_owned(),
        junit,
        summary_json,
        html,
        certificate_html,
        certificate_json,
        summary,
    })
}

/// The capture and console logs the report links to: `capture.pcap`, and every
/// `*.log` file in the run folder or its `console/` subfolder.
pub fn find_attachments(dir: &Path) -> Result<Attachments> {
    let mut attachments = Attachments::default();
    if dir.join("capture.pcap").is_file() {
        attachments.pcap = Some("capture.pcap".to_owned());
    }
    for sub in ["", "console"] {
        let folder = dir.join(sub);
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries {
            let path = entry?.path();
            if path.is_file() && path.extension().is_some_and(|ext| ext == "log") {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                attachments.console_logs.push(if sub.is_empty() {
                    name
                } else {
                    format!("{sub}/{name}")
                });
            }
        }
    }
    attachments.console_logs.sort();
    Ok(attachments)
}
