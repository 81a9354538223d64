//! The rig's SIP endpoint. It plays the PBX and the extensions a phone talks
//! to: a registrar with digest authentication, the source of NOTIFY
//! check-sync, and a user agent per rig-played extension that answers and
//! places calls, holds and resumes them, and meters RTP both ways.
//!
//! Every SIP message in or out is a `sip.message` event with its raw text;
//! the scenario's assertions read those and the `sip.register`, `sip.notify`,
//! `call.state` and `rtp.*` events (docs/CONTRACTS.md, docs/sip.md).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, Instant};

use phonerig_core::duration::HumanDuration;
use phonerig_core::flood::FloodLimits;
use phonerig_core::{PhoneInfo, RunningService, ServiceContext};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod call;
pub mod digest;
mod endpoint;
mod expiring;
pub mod message;
mod nonce_store;
mod notify;
mod registrar;
pub mod rtp;
pub mod sdp;
mod server_transactions;
mod tls;
pub mod transport;
pub mod user_agent;

pub use message::Transport;
pub use rtp::Audio;

/// TCP/TLS connections open at once by default: one per phone of a
/// 10 000-phone bench registering over TCP, with room to spare. An idle
/// connection costs two small tasks and its read buffer.
pub const DEFAULT_MAX_CONNECTIONS: usize = 12_000;

/// Lab-level facts about the SIP endpoint.
#[derive(Debug, Clone)]
pub struct SipConfig {
    /// UDP port, and the TCP port when `tcp` (default 5060).
    pub port: u16,
    pub tcp: bool,
    /// Domain in URIs and the digest realm; the bind address when absent.
    pub domain: Option<String>,
    /// RTP ports for calls (even ports are used).
    pub rtp_ports: RangeInclusive<u16>,
    /// Concurrent calls (and so RTP streams) at most; more are refused with 486.
    pub max_calls: usize,
    /// RFC 3261 transaction timers (tests shorten them).
    pub timers: Timers,
    /// SIP over TLS on a second port (usually 5061); off when absent.
    pub tls: Option<SipTls>,
    /// Budget of UDP datagrams and TCP/TLS connection attempts; the excess
    /// is dropped and reported as `sip.flood` (see `docs/sip.md`).
    pub flood: FloodLimits,
    /// TCP and TLS connections open at once; further ones are closed at
    /// accept and counted in `sip.flood`.
    pub max_connections: usize,
}

/// The TLS listener: port and the certificate it presents (PEM). The lab can
/// pass the certificate the HTTPS service generated for the run, so phones
/// trust one CA.
#[derive(Debug, Clone)]
pub struct SipTls {
    pub port: u16,
    /// Server certificate first, then any intermediate/CA certificates.
    pub chain_pem: String,
    pub key_pem: String,
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            port: 5060,
            tcp: true,
            domain: None,
            rtp_ports: 40000..=40999,
            max_calls: 16,
            timers: Timers::default(),
            tls: None,
            flood: FloodLimits::BOOT_STORM,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// T1 and T2 of RFC 3261 §17; every other timer derives from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    pub t1: Duration,
    pub t2: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
        }
    }
}

impl Timers {
    /// Timer B / F: a client transaction gives up after 64·T1.
    pub fn timeout(&self) -> Duration {
        self.t1 * 64
    }
}

/// How the registrar treats REGISTER.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RegisterPolicy {
    /// Authenticate (per `auth`) and accept.
    #[default]
    Accept,
    /// Answer every REGISTER with this code (e.g. `{ reject = { code = 403 } }`).
    Reject { code: u16 },
    /// Answer every REGISTER with a fresh 401 challenge, whatever it carries.
    ChallengeForever,
    /// Never answer REGISTER (a registrar that is down or unreachable), so the
    /// phone's retransmission schedule (timer E) and give-up (timer F) show on
    /// the timeline; each retransmission is still recorded as `sip.message`.
    Ignore,
}

/// What an extension the rig plays does with an incoming call.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AnswerPolicy {
    /// 180 then 200 at once.
    #[default]
    Immediately,
    /// Ring, then answer after this long (`{ after = "3s" }`).
    After(HumanDuration),
    /// Ring until the scenario answers, rejects, or the caller cancels.
    Ring,
    /// Ring, then answer with this final code (`{ reject = 486 }`).
    Reject(u16),
}

/// The scenario's `[serve.sip]` table.
#[derive(Deserialize, Serialize, JsonSchema, Default, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Extensions the rig plays (default `["4004", "4006"]`).
    #[serde(default)]
    pub extensions: Vec<String>,
    #[serde(default)]
    pub register: RegisterPolicy,
    /// Registrar digest algorithm: `md5` (default), `sha-256`, or `none` (no authentication).
    #[serde(default)]
    pub auth: Option<String>,
    /// Per-extension answer policy; extensions not named answer immediately.
    #[serde(default)]
    pub answer: BTreeMap<String, AnswerPolicy>,
    /// Auto-answer header(s) on calls placed with `auto_answer`: `alert-info`,
    /// `call-info`, or a literal `Name: value` line; both standard ones when absent.
    #[serde(default)]
    pub auto_answer_header: Option<String>,
    /// The PBX feature code of a silent intercom (FreePBX "Allow Silent
    /// Intercom", seed 000 "Monitor call"), e.g. `*55`: a call to `*554004`
    /// reaches extension 4004, which answers at once whatever its answer
    /// policy — the monitored extension does not pick up. Unset: no feature code.
    #[serde(default)]
    pub silent_intercom: Option<String>,
    /// What the rig's extensions send when they talk: `tone` (1 kHz, default) or `silence`.
    #[serde(default)]
    pub audio: Audio,
}

impl Settings {
    pub fn extensions(&self) -> Vec<String> {
        if self.extensions.is_empty() {
            vec!["4004".into(), "4006".into()]
        } else {
            self.extensions.clone()
        }
    }

    pub(crate) fn auth_algorithm(&self) -> anyhow::Result<Option<digest::Algorithm>> {
        match self.auth.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("md5") => Ok(Some(digest::Algorithm::Md5)),
            Some("sha-256") | Some("sha256") => Ok(Some(digest::Algorithm::Sha256)),
            Some("none") => Ok(None),
            Some(other) => {
                anyhow::bail!("[serve.sip] auth = `{other}`: expected md5, sha-256 or none")
            }
        }
    }
}

/// One row of the registration table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub ext: String,
    pub aor: String,
    /// The Contact URI the phone registered.
    pub contact: String,
    pub expires: u32,
    pub transport: Transport,
    /// Where the REGISTER came from (requests to the phone go here).
    pub source: SocketAddr,
    pub user_agent: Option<String>,
    pub registered_at: Instant,
}

impl Registration {
    pub fn is_current(&self) -> bool {
        self.registered_at.elapsed() < Duration::from_secs(u64::from(self.expires))
    }
}

/// How a NOTIFY ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyOutcome {
    /// The phone sent this final response (after any digest round).
    Answered { code: u16 },
    /// No final response within 64·T1.
    Timeout,
}

/// Options for a call the rig places.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Scenario label carried by the call's events (`dialog = "silent"`).
    pub dialog: Option<String>,
    /// Add the auto-answer header(s) (see `Settings::auto_answer_header`).
    pub auto_answer: bool,
    /// Send here instead of the phone's registered contact.
    pub target: Option<SocketAddr>,
    /// Transport for `target` (UDP when absent; a registration's own otherwise).
    pub transport: Option<Transport>,
}

/// The SIP Call-ID of a call the rig placed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CallId(pub String);

impl std::fmt::Display for CallId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The runner's hold on the SIP service. Cheap to clone.
#[derive(Clone)]
pub struct SipHandle {
    core: Arc<endpoint::Core>,
}

/// Binds UDP (and TCP) on `ctx.bind_ip:config.port` and serves until `ctx.shutdown`.
pub async fn start(
    ctx: ServiceContext,
    config: SipConfig,
    settings: Settings,
) -> anyhow::Result<(RunningService, SipHandle)> {
    let core = endpoint::Core::start(ctx, config, settings).await?;
    let addrs = core.addrs.clone();
    core.ctx
        .timeline
        .publish(core.lifecycle_event("service.started"));
    let task = tokio::spawn(core.clone().run());
    Ok((
        RunningService {
            name: "sip",
            addrs,
            task,
        },
        SipHandle { core },
    ))
}

impl SipHandle {
    /// Sends an out-of-dialog NOTIFY with `Event: <event>` to the phone's
    /// registered contact (or `target`), answering a digest challenge with its credentials.
    pub async fn notify(
        &self,
        phone: &PhoneInfo,
        event: &str,
        target: Option<SocketAddr>,
    ) -> anyhow::Result<NotifyOutcome> {
        notify::send(&self.core, phone, event, target).await
    }

    /// Places a call from a rig-played extension to the phone; returns once the INVITE is sent.
    pub async fn call(
        &self,
        from_ext: &str,
        to: &PhoneInfo,
        opts: CallOptions,
    ) -> anyhow::Result<CallId> {
        call::place(&self.core, from_ext, to, opts).await
    }

    pub fn set_answer_policy(&self, ext: &str, policy: AnswerPolicy) {
        self.core.set_answer_policy(ext, policy);
    }

    /// Labels the calls that arrive at `ext` from now on (`dialog` in their
    /// events), e.g. `silent` for the call a panic button places; `None` clears it.
    pub fn set_inbound_dialog(&self, ext: &str, label: Option<&str>) {
        self.core.set_inbound_label(ext, label.map(str::to_owned));
    }

    /// Answers the call ringing at `ext`.
    pub async fn answer(&self, ext: &str) -> anyhow::Result<()> {
        call::answer(&self.core, ext).await
    }

    /// Rejects the call ringing at `ext` with `code`.
    pub async fn reject(&self, ext: &str, code: u16) -> anyhow::Result<()> {
        call::reject(&self.core, ext, code).await
    }

    /// Puts `ext`'s call on hold (re-INVITE with a=sendonly).
    pub async fn hold(&self, ext: &str) -> anyhow::Result<()> {
        call::reinvite(&self.core, ext, sdp::Direction::SendOnly).await
    }

    /// Resumes `ext`'s call (re-INVITE with a=sendrecv).
    pub async fn resume(&self, ext: &str) -> anyhow::Result<()> {
        call::reinvite(&self.core, ext, sdp::Direction::SendRecv).await
    }

    /// Ends `ext`'s call: BYE when established, CANCEL when still ringing out, 603 when ringing in.
    pub async fn hangup(&self, ext: &str) -> anyhow::Result<()> {
        call::hangup(&self.core, ext).await
    }

    /// Cancels the call `ext` placed that has not been answered yet.
    pub async fn cancel(&self, ext: &str) -> anyhow::Result<()> {
        call::cancel(&self.core, ext).await
    }

    /// The phone's current registration (none once expired or unregistered).
    pub fn registration(&self, ext: &str) -> Option<Registration> {
        self.core.registrar.get(ext)
    }

    /// Every current registration, by extension.
    pub fn registrations(&self) -> BTreeMap<String, Registration> {
        self.core.registrar.all()
    }

    /// Addresses the service listens on (UDP first).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.core.addrs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of docs/sip.md, as a scenario's `[serve.sip]` table.
    const DOC_EXAMPLE: &str = r#"
extensions = ["4004", "4006"]
auth = "md5"
register = "accept"
auto_answer_header = "alert-info"
audio = "tone"

[answer]
"4004" = "immediately"
"4006" = { after = "3s" }
"#;

    #[test]
    fn documented_settings_parse() {
        let settings: Settings = toml::from_str(DOC_EXAMPLE).unwrap();
        assert_eq!(settings.register, RegisterPolicy::Accept);
        assert_eq!(settings.answer["4004"], AnswerPolicy::Immediately);
        assert_eq!(
            settings.answer["4006"],
            AnswerPolicy::After(HumanDuration(Duration::from_secs(3)))
        );
        assert_eq!(
            settings.auth_algorithm().unwrap(),
            Some(digest::Algorithm::Md5)
        );
        assert_eq!(settings.audio, Audio::Tone);
    }

    #[test]
    fn every_policy_form_parses() {
        let settings: Settings = toml::from_str(
            r#"
register = { reject = { code = 403 } }
auth = "sha-256"
[answer]
"4006" = "ring"
"4008" = { reject = 486 }
"#,
        )
        .unwrap();
        assert_eq!(settings.register, RegisterPolicy::Reject { code: 403 });
        assert_eq!(settings.answer["4006"], AnswerPolicy::Ring);
        assert_eq!(settings.answer["4008"], AnswerPolicy::Reject(486));
        assert_eq!(
            settings.auth_algorithm().unwrap(),
            Some(digest::Algorithm::Sha256)
        );
        let forever: Settings = toml::from_str(r#"register = "challenge_forever""#).unwrap();
        assert_eq!(forever.register, RegisterPolicy::ChallengeForever);
        assert_eq!(forever.extensions(), vec!["4004", "4006"]);
        assert_eq!(
            forever.auth_algorithm().unwrap(),
            Some(digest::Algorithm::Md5)
        );
        assert!(
            toml::from_str::<Settings>(r#"extension = ["1"]"#).is_err(),
            "unknown keys are refused"
        );
        let none: Settings = toml::from_str(r#"auth = "none""#).unwrap();
        assert_eq!(none.auth_algorithm().unwrap(), None);
        let bad: Settings = toml::from_str(r#"auth = "sha-1""#).unwrap();
        assert!(bad.auth_algorithm().is_err());
    }
}
