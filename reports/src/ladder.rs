//! Geometry of the SIP ladder diagram: one column per party, one arrow per
//! `sip.message`. Computed here so the template only draws, and so the
//! diagram exists in the page without any script having to run.

use phonerig_core::{Event, Source};
use serde::Serialize;

use crate::summary::field_text;

const COLUMN_GAP: u32 = 240;
const MARGIN: u32 = 130;
const HEADER: u32 = 56;
const ROW: u32 = 36;

#[derive(Debug, Clone, Serialize)]
pub struct Column {
    pub x: u32,
    pub label: String,
    /// Second header line: the address, or what the rig played.
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Arrow {
    /// Index of the message within the case, from 0; names the raw-message element.
    pub index: usize,
    pub seq: u64,
    pub t: String,
    pub x1: u32,
    pub x2: u32,
    pub y: u32,
    /// Where the arrowhead's base sits: a few pixels back from `x2`.
    pub head_x: i64,
    pub label: String,
    /// `request`, `provisional`, `success` or `failure`: picks the colour.
    pub class: &'static str,
    pub raw: String,
    pub call_id: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ladder {
    pub width: u32,
    pub height: u32,
    pub line_bottom: u32,
    pub columns: Vec<Column>,
    pub arrows: Vec<Arrow>,
}

/// The rig-side party of a message: the extension it played, else its registrar/notifier.
fn rig_party(event: &Event) -> (String, String) {
    match field_text(event, "role") {
        Some(role) => (role, "played by the rig".to_owned()),
        None => ("rig".to_owned(), "registrar / notifier".to_owned()),
    }
}

/// The phone-side party: the lab name of the phone, else the address it spoke from.
fn phone_party(event: &Event) -> (String, String) {
    let peer = field_text(event, "peer").unwrap_or_default();
    match &event.phone {
        Some(phone) => (phone.clone(), peer),
        None => (peer.clone(), "unknown phone".to_owned()),
    }
}

/// Builds the ladder of every `sip.message` among `events`; `None` when there is none.
pub fn build_ladder(events: &[Event], time_of: impl Fn(&Event) -> String) -> Option<Ladder> {
    let messages: Vec<&Event> = events
        .iter()
        .filter(|e| e.source == Source::Sip && e.kind == "sip.message")
        .collect();
    if messages.is_empty() {
        return None;
    }
    // Phones on the left, rig parties on the right, each in order of first appearance.
    let mut phones: Vec<(String, String)> = Vec::new();
    let mut rig: Vec<(String, String)> = Vec::new();
    for message in &messages {
        let phone = phone_party(message);
        if !phones.iter().any(|(name, _)| *name == phone.0) {
            phones.push(phone);
        }
        let party = rig_party(message);
        if !rig.iter().any(|(name, _)| *name == party.0) {
            rig.push(party);
        }
    }
    let parties: Vec<(String, String)> = phones.into_iter().chain(rig).collect();
    let column_x = |i: usize| MARGIN + COLUMN_GAP * i as u32;
    let position = |name: &str| parties.iter().position(|(n, _)| n == name).unwrap_or(0);

    let arrows: Vec<Arrow> = messages
        .iter()
        .enumerate()
        .map(|(index, message)| {
            let phone = position(&phone_party(message).0);
            let rig = position(&rig_party(message).0);
            let incoming = message.field_str("direction") != Some("out");
            let (from, to) = if incoming { (phone, rig) } else { (rig, phone) };
            let (x1, x2) = (column_x(from), column_x(to));
            let status = message.field_u64("status");
            let class = match status {
                None => "request",
                Some(100..=199) => "provisional",
                Some(200..=299) => "success",
                Some(_) => "failure",
            };
            let label = field_text(message, "first_line")
                .map(|line| short_first_line(&line))
                .unwrap_or_else(|| "?".to_owned());
            Arrow {
                index,
                seq: message.seq,
                t: time_of(message),
                x1,
                x2,
                y: HEADER + ROW * (index as u32 + 1),
                head_x: if x2 > x1 {
                    x2 as i64 - 10
                } else {
                    x2 as i64 + 10
                },
                label,
                class,
                raw: field_text(message, "raw").unwrap_or_default(),
                call_id: field_text(message, "call_id").unwrap_or_default(),
            }
        })
        .collect();
    let line_bottom = HEADER + ROW * (arrows.len() as u32 + 1);
    Some(Ladder {
        width: column_x(parties.len() - 1) + MARGIN,
        height: line_bottom + 10,
        line_bottom,
        columns: parties
            .into_iter()
            .enumerate()
            .map(|(i, (label, detail))| Column {
                x: column_x(i),
                label,
                detail,
            })
            .collect(),
        arrows,
    })
}

/// `INVITE sip:4004@198.18.0.1 SIP/2.0` → `INVITE sip:4004@198.18.0.1`;
/// `SIP/2.0 180 Ringing` → `180 Ringing`.
fn short_first_line(line: &str) -> String {
    let line = line.trim();
    let short = line
        .strip_prefix("SIP/2.0 ")
        .or_else(|| line.strip_suffix(" SIP/2.0"))
        .unwrap_or(line);
    short.chars().take(36).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("INVITE sip:4004@198.18.0.1 SIP/2.0", "INVITE sip:4004@198.18.0.1")]
    #[case("SIP/2.0 180 Ringing", "180 Ringing")]
    #[case("garbage", "garbage")]
    fn first_lines_are_shortened_for_the_arrow(#[case] line: &str, #[case] label: &str) {
        assert_eq!(short_first_line(line), label);
    }

    fn message(
        seq: u64,
        direction: &str,
        role: Option<&str>,
        first_line: &str,
        status: Option<u64>,
    ) -> Event {
        let mut fields = serde_json::Map::new();
        fields.insert("direction".into(), direction.into());
        fields.insert("first_line".into(), first_line.into());
        fields.insert("peer".into(), "198.18.0.50:5060".into());
        fields.insert("raw".into(), format!("{first_line}\r\n\r\n").into());
        if let Some(role) = role {
            fields.insert("role".into(), role.into());
        }
        if let Some(status) = status {
            fields.insert("status".into(), status.into());
        }
        Event {
            seq,
            t_us: seq * 1000,
            wall: String::new(),
            source: Source::Sip,
            phone: Some("uc924-1".into()),
            kind: "sip.message".into(),
            fields,
        }
    }

    #[test]
    fn phone_is_left_and_each_rig_party_gets_a_column() {
        let events = vec![
            message(1, "in", None, "REGISTER sip:198.18.0.1 SIP/2.0", None),
            message(2, "out", None, "SIP/2.0 200 OK", Some(200)),
            message(
                3,
                "in",
                Some("4004"),
                "INVITE sip:4004@198.18.0.1 SIP/2.0",
                None,
            ),
            message(4, "out", Some("4004"), "SIP/2.0 486 Busy Here", Some(486)),
        ];
        let ladder = build_ladder(&events, |e| e.seq.to_string()).expect("ladder");
        let labels: Vec<&str> = ladder.columns.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(labels, ["uc924-1", "rig", "4004"]);
        assert_eq!(ladder.arrows.len(), 4);
        let phone_x = ladder.columns[0].x;
        assert_eq!(
            (ladder.arrows[0].x1, ladder.arrows[0].x2),
            (phone_x, ladder.columns[1].x)
        );
        assert_eq!(
            (ladder.arrows[3].x1, ladder.arrows[3].x2),
            (ladder.columns[2].x, phone_x)
        );
        assert_eq!(ladder.arrows[3].class, "failure");
        assert!(ladder.arrows.windows(2).all(|w| w[0].y < w[1].y));
    }

    #[test]
    fn no_sip_no_ladder() {
        assert!(build_ladder(&[], |_| String::new()).is_none());
    }
}
