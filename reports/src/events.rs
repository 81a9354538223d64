//! Reading `events.jsonl`, the only input every renderer relies on.

use std::path::Path;

use anyhow::{Context, Result};
use phonerig_core::Event;

/// Reads every event of a run file.
///
/// The timeline writes each event with one `write` call, but a run killed
/// mid-write (power cut, `kill -9` during a flush) can still leave a partial
/// last line. That line is dropped with a warning so the rest of the run can
/// be reported; a bad line anywhere else means the file is not an event log
/// and is an error.
pub fn load_events(path: impl AsRef<Path>) -> Result<Vec<Event>> {
    let path = path.as_ref();
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_events(&text).with_context(|| format!("parsing {}", path.display()))
}

/// [`load_events`] on text already in memory.
pub fn parse_events(text: &str) -> Result<Vec<Event>> {
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .collect();
    let mut events = Vec::with_capacity(lines.len());
    for (position, (number, line)) in lines.iter().enumerate() {
        match serde_json::from_str::<Event>(line) {
            Ok(event) => events.push(event),
            Err(error) if position + 1 == lines.len() => {
                tracing::warn!(line = number + 1, %error, "dropping truncated last line of events.jsonl");
            }
            Err(error) => {
                return Err(error).with_context(|| format!("line {} is not an event", number + 1));
            }
        }
    }
    Ok(events)
}
