//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use phonerig_core::{Event, Timeline};

/// Waits until the timeline holds an event matching `pred`; panics with the
/// timeline's contents after `within`.
pub async fn wait_for(
    timeline: &Timeline,
    within: Duration,
    pred: impl Fn(&Event) -> bool,
) -> Arc<Event> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(event) = timeline.snapshot().into_iter().find(|e| pred(e)) {
            return event;
        }
        if Instant::now() > deadline {
            let seen: Vec<String> = timeline.snapshot().iter().map(|e| e.brief()).collect();
            panic!(
                "no matching event within {within:?}; timeline:\n{}",
                seen.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn kinds(timeline: &Timeline) -> Vec<String> {
    timeline.snapshot().iter().map(|e| e.kind.clone()).collect()
}

pub fn lines(timeline: &Timeline) -> Vec<String> {
    timeline
        .snapshot()
        .iter()
        .filter(|e| e.kind == "console.line")
        .map(|e| e.field_str("line").unwrap_or_default().to_owned())
        .collect()
}

pub fn spec(json: serde_json::Value) -> phonerig_drivers::BackendSpec {
    let table = json.as_object().expect("a table").clone();
    phonerig_drivers::BackendSpec::from_table(phonerig_drivers::Capability::Button, table)
        .expect("has backend")
}
