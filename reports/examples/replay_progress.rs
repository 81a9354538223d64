//! Replays a run folder's runner events through [`Progress`], to see the live
//! view without phones: `cargo run -p phonerig-reports --example replay_progress -- <run-folder>`.
//! Waits 100 ms per step so the bar is visible on a terminal.

use std::time::Duration;

use phonerig_reports::{load_events, summarize, Progress};

fn main() -> anyhow::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: replay_progress <run-folder>"))?;
    let events = load_events(std::path::Path::new(&dir).join("events.jsonl"))?;
    let summary = summarize(&events);
    let progress = Progress::new();
    let total = summary.cases.len();
    for case in &summary.cases {
        progress.case_started(&case.id, case.number, total);
        for step in &case.steps {
            progress.step(&case.id, step.index as usize, &step.name);
            std::thread::sleep(Duration::from_millis(100));
        }
        let explanation = case.failure.as_ref().map(|f| f.explanation.as_str());
        progress.case_finished(
            &case.id,
            case.verdict,
            Duration::from_micros(case.duration_us),
            explanation,
        );
    }
    progress.finish();
    Ok(())
}
