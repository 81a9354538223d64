//! One observation on the timeline.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Which part of the rig saw the event. Reports group and filter by this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The scenario runner: case and step boundaries, verdicts.
    Runner,
    /// Rig lifecycle: services started/stopped, warnings.
    Rig,
    Dhcp,
    Tftp,
    Http,
    Ftp,
    Sip,
    Rtp,
    /// Phone-state reports sent by the phone itself (Action URL).
    Action,
    Button,
    Power,
    Console,
    Keys,
    Capture,
}

impl Source {
    pub const ALL: [Source; 14] = [
        Source::Runner,
        Source::Rig,
        Source::Dhcp,
        Source::Tftp,
        Source::Http,
        Source::Ftp,
        Source::Sip,
        Source::Rtp,
        Source::Action,
        Source::Button,
        Source::Power,
        Source::Console,
        Source::Keys,
        Source::Capture,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Runner => "runner",
            Source::Rig => "rig",
            Source::Dhcp => "dhcp",
            Source::Tftp => "tftp",
            Source::Http => "http",
            Source::Ftp => "ftp",
            Source::Sip => "sip",
            Source::Rtp => "rtp",
            Source::Action => "action",
            Source::Button => "button",
            Source::Power => "power",
            Source::Console => "console",
            Source::Keys => "keys",
            Source::Capture => "capture",
        }
    }

    pub fn parse(text: &str) -> Option<Source> {
        Source::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event as stored on the timeline and in `events.jsonl`.
///
/// `seq`, `t_us` and `wall` are assigned by the timeline when the event is
/// published, so that the order of the file is the order of the timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    /// Monotonic microseconds since the run started.
    pub t_us: u64,
    /// Wall-clock time, RFC 3339 UTC.
    pub wall: String,
    pub source: Source,
    /// Name of the phone (from the lab file) the event concerns, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// What happened, dotted lower case: `dhcp.ack`, `http.request`, `sip.message`, `step.verdict`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub fields: Map<String, Value>,
}

impl Event {
    pub fn field(&self, name: &str) -> Option<&Value> {
        self.fields.get(name)
    }

    pub fn field_str(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(Value::as_str)
    }

    pub fn field_u64(&self, name: &str) -> Option<u64> {
        self.fields.get(name).and_then(Value::as_u64)
    }

    /// One line for humans: `+1.234567s dhcp dhcp.ack [uc924-1] address=…`.
    pub fn brief(&self) -> String {
        let mut out = format!(
            "+{}.{:06}s {} {}",
            self.t_us / 1_000_000,
            self.t_us % 1_000_000,
            self.source,
            self.kind
        );
        if let Some(phone) = &self.phone {
            out.push_str(&format!(" [{phone}]"));
        }
        for (key, value) in self
            .fields
            .iter()
            // `raw` is a whole message and null says nothing: neither helps a one-line summary.
            .filter(|(k, v)| k.as_str() != "raw" && !v.is_null())
            .take(6)
        {
            let shown = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let shown: String = shown.chars().take(80).collect();
            out.push_str(&format!(" {key}={shown}"));
        }
        out
    }
}

/// An event before the timeline has stamped it.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub source: Source,
    pub phone: Option<String>,
    pub kind: String,
    pub fields: Map<String, Value>,
}

impl NewEvent {
    pub fn new(source: Source, kind: impl Into<String>) -> Self {
        NewEvent {
            source,
            phone: None,
            kind: kind.into(),
            fields: Map::new(),
        }
    }

    pub fn phone(mut self, phone: Option<impl Into<String>>) -> Self {
        self.phone = phone.map(Into::into);
        self
    }

    pub fn field(mut self, name: &str, value: impl Serialize) -> Self {
        self.fields.insert(
            name.to_owned(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
        self
    }

    /// Merges the fields of a serialisable struct (each service's typed payload).
    pub fn fields_from(mut self, payload: &impl Serialize) -> Self {
        if let Ok(Value::Object(map)) = serde_json::to_value(payload) {
            self.fields.extend(map);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event_with(fields: Value) -> Event {
        Event {
            seq: 1,
            t_us: 1_440_753,
            wall: String::new(),
            source: Source::Sip,
            phone: Some("uc924".into()),
            kind: "sip.message".into(),
            fields: fields.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn brief_leaves_out_raw_text_and_null_fields() {
        let event =
            event_with(json!({"call_id": "c1", "dialog": null, "raw": "INVITE …", "cseq": 1}));
        assert_eq!(
            event.brief(),
            "+1.440753s sip sip.message [uc924] call_id=c1 cseq=1"
        );
    }
}
