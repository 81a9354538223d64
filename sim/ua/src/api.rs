//! Public types of the telephony part: configuration, keys, events, state snapshot.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

pub use crate::panic_rules::{PanicButton, PanicMode, PhoneState};
pub use crate::sdp::Direction;

/// What the phone body knows from its provisioning and hands to the telephony part.
/// Also readable from TOML (durations as text: `"500ms"`, `"4s"`); missing keys
/// take the defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UaConfig {
    pub local_ip: IpAddr,
    /// 5060 on a real phone; 0 picks a free port (tests).
    pub sip_port: u16,
    pub user_agent: String,
    /// Registrar, also used as outbound proxy for calls.
    pub registrar: SocketAddr,
    pub domain: String,
    pub user: String,
    pub auth_user: String,
    pub password: String,
    /// Requested registration lifetime in seconds.
    pub expires: u32,
    /// RFC 3261 T1 (round-trip estimate), 500 ms by default.
    #[serde(deserialize_with = "duration_text")]
    pub t1: Duration,
    /// RFC 3261 T2 (cap of non-INVITE retransmission interval), 4 s by default.
    #[serde(deserialize_with = "duration_text")]
    pub t2: Duration,
    /// First RTP port; each call takes the next free even port. 0 = any port.
    pub rtp_port_base: u16,
    /// Lvswitch H680 "自动应答": answer incoming calls after this delay, never while
    /// already in a call.
    #[serde(deserialize_with = "optional_duration_text")]
    pub auto_answer: Option<Duration>,
    /// Honour intercom requests (`Alert-Info: …info=alert-autoanswer`,
    /// `Call-Info: …;answer-after=N`) by answering without a key press.
    pub intercom_auto_answer: bool,
    /// Wait before a failed registration is tried again.
    #[serde(deserialize_with = "duration_text")]
    pub register_retry: Duration,
    /// Documented behaviours broken on purpose (see [`crate::fault`]); empty by default.
    #[serde(skip)]
    pub faults: crate::fault::FaultSet,
}

impl Default for UaConfig {
    fn default() -> Self {
        UaConfig {
            local_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            sip_port: 5060,
            user_agent: "phonerig-sim".into(),
            registrar: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5060),
            domain: String::new(),
            user: String::new(),
            auth_user: String::new(),
            password: String::new(),
            expires: 3600,
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            rtp_port_base: 11780,
            auto_answer: None,
            intercom_auto_answer: true,
            register_retry: Duration::from_secs(30),
            faults: crate::fault::FaultSet::default(),
        }
    }
}

fn duration_text<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(serde::de::Error::custom)
}

fn optional_duration_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration_text(d).map(Some)
}

/// The phone body's answer to an out-of-dialog NOTIFY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyDecision {
    /// 200 OK.
    Accept,
    /// Any final error code, e.g. 489 Bad Event.
    Reject(u16),
}

/// Keypad and hook keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Answer,
    Reject,
    Hangup,
    Speaker,
    Headset,
    Handset,
    OnHook,
    Hold,
    Resume,
    /// Digits to call; an empty string only opens the dial screen (off-hook).
    Dial(String),
}

impl Key {
    /// Speaker, headset and handset take the phone off hook.
    pub fn is_off_hook(&self) -> bool {
        matches!(self, Key::Speaker | Key::Headset | Key::Handset)
    }
}

/// Why a registration attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisterFailure {
    /// Final response other than 2xx (after answering one challenge).
    Status(u16),
    /// No final response within 64 × T1.
    Timeout,
    /// The request could not be sent.
    Network(String),
}

/// What kind of call, which decides what it sends and plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallKind {
    Normal,
    /// Panic function 57: sends audio, plays nothing, the LCD stays idle.
    Silent,
    /// Speed dial with a feature code: receives audio, sends nothing.
    Monitor,
    /// Panic function 9: asks the far end to auto-answer.
    Intercom,
}

impl CallKind {
    /// What this kind of call wants in its SDP when not on hold.
    pub fn base_direction(self) -> Direction {
        match self {
            CallKind::Normal | CallKind::Intercom => Direction::SENDRECV,
            CallKind::Silent => Direction::SENDONLY,
            CallKind::Monitor => Direction::RECVONLY,
        }
    }

    pub fn plays_audio(self) -> bool {
        self != CallKind::Silent
    }

    pub fn sends_audio(self) -> bool {
        self != CallKind::Monitor
    }

    /// A silent call leaves the LCD idle.
    pub fn visible(self) -> bool {
        self != CallKind::Silent
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallDirection {
    Inbound,
    Outbound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    /// Outbound INVITE sent, no final answer yet.
    Calling,
    /// Inbound INVITE alerting.
    Ringing,
    Established,
}

/// Events for the phone body (which turns them into console lines, Action URLs …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum UaEvent {
    Registered {
        expires: u32,
    },
    RegisterFailed {
        reason: RegisterFailure,
    },
    Unregistered,
    Notify {
        event: String,
        decision: NotifyDecision,
    },
    IncomingCall {
        call_id: String,
        from: String,
    },
    OutgoingCall {
        call_id: String,
        to: String,
        kind: CallKind,
    },
    CallEstablished {
        call_id: String,
        remote: String,
    },
    CallHeld {
        call_id: String,
        by_remote: bool,
    },
    CallResumed {
        call_id: String,
        by_remote: bool,
    },
    CallEnded {
        call_id: String,
        reason: String,
    },
    /// A call that never connected: `by_remote` = the far end refused our INVITE.
    Rejected {
        call_id: String,
        code: u16,
        by_remote: bool,
    },
    DndChanged {
        on: bool,
    },
    ForwardChanged {
        target: Option<String>,
    },
    PanicPressed {
        performed: bool,
        reason: String,
    },
}

/// One call in [`CallStateSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallSnapshot {
    pub call_id: String,
    pub remote: String,
    pub direction: CallDirection,
    pub kind: CallKind,
    pub status: CallStatus,
    pub held_locally: bool,
    pub held_by_remote: bool,
    /// Direction attribute of our last SDP.
    pub local_sdp: &'static str,
    /// Direction attribute of the far end's last SDP.
    pub remote_sdp: Option<&'static str>,
    pub rtp_sent: u64,
    pub rtp_received: u64,
    pub rtp_played: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallStateSnapshot {
    pub state: PhoneState,
    pub registered: bool,
    pub dnd: bool,
    pub forward: Option<String>,
    pub calls: Vec<CallSnapshot>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The TOML example of docs/sim-telephony.md, so the page cannot drift.
    fn documented_example() -> &'static str {
        let page = include_str!("../../../docs/sim-telephony.md");
        let start = page.find("```toml\n").expect("toml block in the docs") + 8;
        let len = page[start..].find("```").expect("end of the toml block");
        &page[start..start + len]
    }

    #[test]
    fn reads_the_documented_toml() {
        let cfg: UaConfig = toml::from_str(documented_example()).unwrap();
        assert_eq!(cfg.registrar, "127.0.0.1:5060".parse().unwrap());
        assert_eq!(cfg.t1, Duration::from_millis(500));
        assert_eq!(cfg.t2, Duration::from_secs(4));
        assert_eq!(cfg.auto_answer, Some(Duration::from_secs(3)));
        assert_eq!(cfg.user, "4002");
    }

    #[test]
    fn missing_keys_take_defaults_and_unknown_keys_fail() {
        let cfg: UaConfig = toml::from_str("user = \"4004\"").unwrap();
        assert_eq!(cfg.sip_port, 5060);
        assert_eq!(cfg.t1, Duration::from_millis(500));
        assert_eq!(cfg.auto_answer, None);
        assert!(toml::from_str::<UaConfig>("t3 = \"1s\"").is_err());
        assert!(toml::from_str::<UaConfig>("t1 = \"soon\"").is_err());
    }
}
