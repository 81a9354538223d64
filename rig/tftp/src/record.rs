//! What a transfer leaves on the timeline: one `tftp.fetch` per read request
//! and one `tftp.upload` per write request, published when it ends.

use std::net::SocketAddr;
use std::time::Instant;

use phonerig_core::event::NewEvent;
use phonerig_core::tree::normalise_request_path;
use phonerig_core::{Source, Timeline};
use serde::Serialize;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Complete,
    NotFound,
    Refused,
    Forced,
    TimedOut,
    Aborted,
    Truncated,
    Error,
}

/// The fields of `tftp.fetch` / `tftp.upload` (docs/CONTRACTS.md).
#[derive(Debug, Clone, Serialize)]
pub struct TransferRecord {
    pub file: String,
    pub protocol: &'static str,
    pub peer: String,
    pub mode: &'static str,
    pub outcome: Outcome,
    /// TFTP error code sent (or received, for `aborted`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// The error message that went with `code`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// File bytes sent (fetch) or received (upload), each block counted once.
    pub bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    pub duration_us: u64,
    /// When the request arrived, on the timeline's clock. The event itself is
    /// published when the transfer ends, so a short transfer that follows a
    /// long one can be published first; this field keeps the request order.
    pub requested_us: u64,
    /// Options as the client asked for them.
    pub options: Map<String, Value>,
    /// Options as acknowledged in the OACK (empty: plain RFC 1350 transfer).
    pub agreed: Map<String, Value>,
    #[serde(skip)]
    pub phone: Option<String>,
    #[serde(skip)]
    started: Option<Instant>,
}

/// The path as events show it: normalised when possible, else as sent (minus the leading `/`).
pub fn display_path(raw: &str) -> String {
    normalise_request_path(raw).unwrap_or_else(|_| raw.trim_start_matches('/').to_owned())
}

/// Publishes `tftp.refused`, the event for requests turned down on principle
/// (path escapes, uploads when none are allowed, too many transfers).
pub fn publish_refused(
    timeline: &Timeline,
    peer: SocketAddr,
    path: &str,
    reason: &str,
    phone: Option<String>,
) {
    timeline.publish(
        NewEvent::new(Source::Tftp, "tftp.refused")
            .phone(phone)
            .field("peer", peer.to_string())
            .field("path", path)
            .field("reason", reason),
    );
}

pub fn option_map(options: &[(String, String)]) -> Map<String, Value> {
    options
        .iter()
        .map(|(name, value)| (name.clone(), Value::String(value.clone())))
        .collect()
}

impl TransferRecord {
    pub fn begin(
        file: String,
        peer: SocketAddr,
        mode: &'static str,
        requested: &[(String, String)],
    ) -> TransferRecord {
        TransferRecord {
            file,
            protocol: "tftp",
            peer: peer.to_string(),
            mode,
            outcome: Outcome::Error,
            code: None,
            message: None,
            bytes: 0,
            size: None,
            duration_us: 0,
            requested_us: 0,
            options: option_map(requested),
            agreed: Map::new(),
            phone: None,
            started: Some(Instant::now()),
        }
    }

    pub fn end(&mut self, outcome: Outcome) -> &mut Self {
        self.outcome = outcome;
        self
    }

    pub fn with_error(&mut self, code: u16, message: impl Into<String>) -> &mut Self {
        self.code = Some(code);
        self.message = Some(message.into());
        self
    }

    pub fn publish(mut self, timeline: &Timeline, kind: &str) {
        if let Some(started) = self.started {
            self.duration_us = started.elapsed().as_micros() as u64;
        }
        self.requested_us = timeline.now_us().saturating_sub(self.duration_us);
        timeline.emit(Source::Tftp, kind, self.phone.as_deref(), &self);
    }
}
