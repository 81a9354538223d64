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

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const ONE: &str = r#"{"seq":0,"t_us":0,"wall":"2026-11-20T21:04:05Z","source":"runner","kind":"run.start","fields":{"run_name":"x"}}"#;
    const TWO: &str = r#"{"seq":1,"t_us":5,"wall":"2026-11-20T21:04:05Z","source":"dhcp","phone":"p1","kind":"dhcp.ack"}"#;

    #[rstest]
    #[case::whole(format!("{ONE}\n{TWO}\n"), 2)]
    #[case::no_final_newline(format!("{ONE}\n{TWO}"), 2)]
    #[case::killed_mid_line(format!("{ONE}\n{}", &TWO[..40]), 1)]
    #[case::blank_lines(format!("\n{ONE}\n\n{TWO}\n\n"), 2)]
    #[case::empty(String::new(), 0)]
    fn reads_whole_lines_and_drops_a_truncated_last_one(
        #[case] text: String,
        #[case] count: usize,
    ) {
        assert_eq!(parse_events(&text).unwrap().len(), count);
    }

    #[test]
    fn a_bad_line_before_the_end_is_an_error() {
        let text = format!("{ONE}\nnot json\n{TWO}\n");
        let error = parse_events(&text).unwrap_err();
        assert!(format!("{error:#}").contains("line 2"), "{error:#}");
    }

    #[test]
    fn load_events_names_the_file() {
        let error = load_events("/nonexistent/events.jsonl").unwrap_err();
        assert!(format!("{error:#}").contains("/nonexistent/events.jsonl"));
    }
}
