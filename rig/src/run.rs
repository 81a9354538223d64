//! A run folder: `runs/<timestamp>-<name>/` with `events.jsonl` written as
//! events happen, and the reports rendered from it at the end.

use std::path::{Path, PathBuf};

use phonerig_core::event::NewEvent;
use phonerig_core::{Source, Timeline};
use time::macros::format_description;
use time::OffsetDateTime;

use crate::runner::{CaseResult, Verdict};

pub const RIG_VERSION: &str = env!("CARGO_PKG_VERSION");

/// `runs/20261123-061500-htek-fetch-order/`; a numeric suffix if it exists.
pub fn create_run_dir(base: &Path, name: &str) -> std::io::Result<PathBuf> {
    let stamp = OffsetDateTime::now_utc()
        .format(format_description!(
            "[year][month][day]-[hour][minute][second]"
        ))
        .unwrap_or_default();
    let slug: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let slug = slug.trim_matches('-').chars().take(60).collect::<String>();
    let mut dir = base.join(format!("{stamp}-{slug}"));
    let mut n = 1;
    while dir.exists() {
        n += 1;
        dir = base.join(format!("{stamp}-{slug}-{n}"));
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

pub fn open_timeline(dir: &Path) -> std::io::Result<Timeline> {
    Timeline::with_file(&dir.join("events.jsonl"))
}

pub fn publish_run_start(timeline: &Timeline, run_name: &str, lab: &str, suite: Option<&str>) {
    timeline.publish(
        NewEvent::new(Source::Runner, "run.start")
            .field("run_name", run_name)
            .field("lab", lab)
            .field("rig_version", RIG_VERSION)
            .field("suite", suite)
            .field(
                "started_wall",
                timeline
                    .started_wall()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
            ),
    );
}

/// The run's verdict: fail if any case failed or errored, aborted if interrupted.
pub fn overall(results: &[CaseResult], interrupted: bool) -> Verdict {
    if interrupted {
        Verdict::Aborted
    } else if results
        .iter()
        .any(|r| matches!(r.verdict, Verdict::Fail | Verdict::Error | Verdict::Aborted))
    {
        Verdict::Fail
    } else {
        Verdict::Pass
    }
}

pub fn publish_run_end(timeline: &Timeline, results: &[CaseResult], verdict: Verdict) {
    let count = |v: Verdict| results.iter().filter(|r| r.verdict == v).count();
    timeline.publish(
        NewEvent::new(Source::Runner, "run.end")
            .field("verdict", verdict.as_str())
            .field("passed", count(Verdict::Pass))
            .field("failed", count(Verdict::Fail))
            .field("errors", count(Verdict::Error) + count(Verdict::Aborted))
            .field("skipped", count(Verdict::Skipped)),
    );
}

/// Finds scenario files under `dir` (sorted, so suites run in a stable order).
pub fn scenario_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let p = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if p.is_dir() {
                // Lab files and fixtures live beside scenarios but are not scenarios.
                if !matches!(name.as_ref(), "labs" | "fixtures") && !name.starts_with('.') {
                    stack.push(p);
                }
            } else if name.ends_with(".toml") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}
