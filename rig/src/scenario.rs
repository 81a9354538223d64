//! Scenario files: which phones, which services to offer, and the steps —
//! actions and expectations with deadlines.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use phonerig_core::duration::HumanDuration;
use phonerig_core::{FileRule, Placeholders};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_spanned::Spanned;

use crate::diag::FileError;

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// The vendor document and section the behaviour comes from, e.g. `004 §2.1`.
    pub source: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Which phones of the lab run it.
    pub phones: PhoneSelector,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Limit for the whole case (default 5m).
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// Default deadline of expectations without `within` (default 30s).
    #[serde(default)]
    pub within: Option<HumanDuration>,
    #[serde(default)]
    pub serve: Serve,
    #[serde(rename = "step")]
    #[schemars(with = "Vec<Step>")]
    pub steps: Vec<Spanned<Step>>,
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum PhoneSelector {
    /// `"all"`, a phone name, or a model glob such as `htek-uc9*`.
    One(String),
    Select(PhoneSelect),
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct PhoneSelect {
    /// Model glob: `htek-uc9*`.
    #[serde(default)]
    pub model: Option<String>,
    /// Phone names from the lab file.
    #[serde(default)]
    pub names: Vec<String>,
}

/// The services offered while the scenario runs. Every service runs by
/// default (a phone may talk to any of them); a table configures it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Serve {
    #[serde(default)]
    pub dhcp: Option<phonerig_dhcp::Settings>,
    #[serde(default)]
    pub tftp: Option<phonerig_tftp::Settings>,
    #[serde(default)]
    pub http: Option<phonerig_http::Settings>,
    #[serde(default)]
    pub ftp: Option<phonerig_ftp::Settings>,
    #[serde(default)]
    pub sip: Option<phonerig_sip::Settings>,
    /// The provisioning tree on disk (relative to the scenario file).
    #[serde(default)]
    pub files: Option<FilesRoot>,
    /// Files and rules: inline content, absent, forced status, delay, truncation.
    #[serde(default, rename = "file")]
    pub file_rules: Vec<FileSpec>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilesRoot {
    pub root: PathBuf,
    /// Shorthand for `[[serve.file]] absent = true` entries.
    #[serde(default)]
    pub absent: Vec<String>,
    /// Globs of files whose content is a template (placeholders expanded per phone).
    #[serde(default)]
    pub templates: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Path in the tree; placeholders and `*`/`?` allowed: `cfg{phone.mac}.xml`.
    pub path: String,
    /// Inline content (a template: placeholders expanded for the requesting phone).
    #[serde(default)]
    pub content: Option<String>,
    /// Content repeated to a size, for firmware images: `{ text = "HTEK-FW 2.0.5\n", size = 1048576 }`.
    #[serde(default)]
    pub generate: Option<Generate>,
    #[serde(default)]
    pub absent: bool,
    /// Answer with this HTTP status (TFTP/FTP map it to their errors).
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub delay: Option<HumanDuration>,
    /// Send only the first N bytes (a broken download).
    #[serde(default)]
    pub truncate: Option<u64>,
    #[serde(default)]
    pub template: bool,
    /// Turn the inline content's line ends into CRLF (Panasonic's format demands them).
    #[serde(default)]
    pub crlf: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Generate {
    /// Leading text (placeholders expanded).
    pub head: String,
    /// Total size in bytes; padded with `.` and ended by `tail`.
    pub size: u64,
    #[serde(default)]
    pub tail: String,
}

/// One step: exactly one action or one expectation.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Shown in reports; `since = "step:<name>"` refers to it.
    #[serde(default)]
    pub name: Option<String>,

    // Actions.
    /// Power capability: `on`, `off`, `cycle`.
    #[serde(default)]
    pub power: Option<PowerAction>,
    /// Button capability: `press`, `release`, or `{ hold = "3s" }`.
    #[serde(default)]
    pub button: Option<ButtonAction>,
    /// Keys capability: `answer`, `reject`, `hangup`, `speaker`, `headset`, `handset`, `onhook`, `hold`, `resume`, `factory-reset`, or `{ dial = "4006" }`.
    #[serde(default)]
    pub key: Option<KeyAction>,
    /// Console capability: `{ send = "reboot\n" }`.
    #[serde(default)]
    pub console: Option<ConsoleAction>,
    /// SIP NOTIFY to the phone: `{ event = "check-sync", reboot = true }`.
    #[serde(default)]
    pub notify: Option<NotifyAction>,
    /// The rig places a call: `{ from = "4006", to = "{phone.ext}" }`.
    #[serde(default)]
    pub call: Option<CallAction>,
    /// The extension the rig plays answers its ringing call: `{ as = "4004" }`.
    #[serde(default)]
    pub answer: Option<AsExtension>,
    #[serde(default)]
    pub reject: Option<RejectAction>,
    #[serde(default)]
    pub hold: Option<AsExtension>,
    #[serde(default)]
    pub resume: Option<AsExtension>,
    #[serde(default)]
    pub hangup: Option<AsExtension>,
    #[serde(default)]
    pub cancel: Option<AsExtension>,
    /// How an extension the rig plays answers calls from now on.
    #[serde(default)]
    pub answer_policy: Option<AnswerPolicyAction>,
    /// Just wait.
    #[serde(default)]
    pub wait: Option<HumanDuration>,

    // Expectations.
    /// Something must happen (by `within`).
    #[serde(default)]
    pub expect: Option<Expectation>,
    /// Something must not happen (during `during`, or in the window so far).
    #[serde(default)]
    pub expect_not: Option<Expectation>,
    /// Deadline for `expect`, counted from the window start.
    #[serde(default)]
    pub within: Option<HumanDuration>,
    /// How long `expect_not` watches, from the step's start.
    #[serde(default)]
    pub during: Option<HumanDuration>,
    /// Where the window starts: `action` (the latest action step, default),
    /// `now` (this step's start), `case`, or `step:<name>`.
    #[serde(default)]
    pub since: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PowerAction {
    On,
    Off,
    Cycle,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum ButtonAction {
    Simple(ButtonVerb),
    Hold { hold: HumanDuration },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ButtonVerb {
    Press,
    Release,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum KeyAction {
    Simple(KeyName),
    Dial { dial: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum KeyName {
    Answer,
    Reject,
    Hangup,
    Speaker,
    Headset,
    Handset,
    Onhook,
    Hold,
    Resume,
    FactoryReset,
}

impl KeyName {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyName::Answer => "answer",
            KeyName::Reject => "reject",
            KeyName::Hangup => "hangup",
            KeyName::Speaker => "speaker",
            KeyName::Headset => "headset",
            KeyName::Handset => "handset",
            KeyName::Onhook => "onhook",
            KeyName::Hold => "hold",
            KeyName::Resume => "resume",
            KeyName::FactoryReset => "factory-reset",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleAction {
    pub send: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifyAction {
    /// Event header text; `check-sync` by default.
    #[serde(default = "default_notify_event")]
    pub event: String,
    /// Appends `;reboot=true` to the Event header.
    #[serde(default)]
    pub reboot: bool,
}

fn default_notify_event() -> String {
    "check-sync".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallAction {
    /// The extension the rig plays that calls.
    pub from: String,
    /// Whom to call; `{phone.ext}` (the default) is the phone under test.
    #[serde(default = "default_callee")]
    pub to: String,
    /// Label the call so later expectations can say `dialog = "…"`.
    #[serde(default)]
    pub dialog: Option<String>,
    /// Ask the phone to answer by itself (intercom style headers).
    #[serde(default)]
    pub auto_answer: bool,
}

fn default_callee() -> String {
    "{phone.ext}".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AsExtension {
    /// The extension the rig plays, e.g. `4004`.
    #[serde(rename = "as")]
    pub extension: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectAction {
    #[serde(rename = "as")]
    pub extension: String,
    #[serde(default = "default_reject_code")]
    pub code: u16,
}

fn default_reject_code() -> u16 {
    486
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswerPolicyAction {
    #[serde(rename = "as")]
    pub extension: String,
    /// `"immediately"`, `"ring"` (until an `answer` step), `{ after = "3s" }`, `{ reject = 486 }`.
    pub policy: phonerig_sip::AnswerPolicy,
}

/// What to look for on the timeline. Exactly one field is set.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// A DHCP message to or from the phone: `"ack"`, or `{ msg = "ack", options = { "66" = "…" } }`.
    #[serde(default)]
    pub dhcp: Option<DhcpExpect>,
    /// A file request over any protocol: `{ file = "cfg{phone.mac}.xml", protocol = "http" }`.
    #[serde(default)]
    pub fetch: Option<FetchExpect>,
    /// File requests in this order: `{ files = [...], protocol = "http", exact = true }`.
    #[serde(default)]
    pub fetch_order: Option<FetchOrderExpect>,
    /// A SIP message or registration: `"register"`, or `{ method = "INVITE", to = "4004" }`.
    #[serde(default)]
    pub sip: Option<SipExpect>,
    /// The phone's answer to the rig's NOTIFY: `{ code = 200 }`.
    #[serde(default)]
    pub notify: Option<NotifyExpect>,
    /// A call state at an extension the rig plays: `{ as = "4004", state = "answered" }`.
    #[serde(default)]
    pub call: Option<CallExpect>,
    /// Media between two parties: `{ from = "phone", to = "4004", min_packets = 25 }`.
    #[serde(default)]
    pub rtp: Option<RtpExpect>,
    /// A console line matching a regular expression: `{ line = "USB Button is connected!" }`.
    #[serde(default)]
    pub console: Option<ConsoleExpect>,
    /// An Action URL report from the phone: `"registered"` or `{ event = "registered", fields = { … } }`.
    #[serde(default)]
    pub action: Option<ActionExpect>,
    /// Any event: `{ source = "tftp", kind = "tftp.fetch", fields = { outcome = "complete" } }`.
    #[serde(default)]
    pub event: Option<EventExpect>,
    /// These, in this order.
    #[serde(default)]
    pub order: Option<Vec<Expectation>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum DhcpExpect {
    Msg(String),
    Detailed {
        msg: String,
        /// Option number → expected value as recorded (text, list of addresses, or `hex:…`).
        #[serde(default)]
        options: BTreeMap<String, serde_json::Value>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FetchExpect {
    /// File path (placeholders, `*` wildcards), without leading `/`.
    pub file: String,
    /// `tftp`, `http`, `https`, `ftp`; any when left out.
    #[serde(default)]
    pub protocol: Option<String>,
    /// `complete` (default), `not_found`, `refused`, `forced`, `truncated`, `aborted`, `timed_out`, or `any`.
    #[serde(default)]
    pub outcome: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FetchOrderExpect {
    pub files: Vec<String>,
    #[serde(default)]
    pub protocol: Option<String>,
    /// No other file requested in between (and before the first, within the window).
    #[serde(default)]
    pub exact: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum SipExpect {
    /// `register` (a successful registration), or a method name such as `INVITE`.
    Word(String),
    Message(SipMessageExpect),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SipMessageExpect {
    #[serde(default)]
    pub method: Option<String>,
    /// A response code; with `method`, a response to that method (by CSeq).
    #[serde(default)]
    pub status: Option<u16>,
    /// User part of From (`{phone.ext}`, `4004`).
    #[serde(default)]
    pub from: Option<String>,
    /// User part of To.
    #[serde(default)]
    pub to: Option<String>,
    /// `in` (sent by the phone) or `out` (sent by the rig).
    #[serde(default)]
    pub direction: Option<String>,
    #[serde(default)]
    pub dialog: Option<String>,
    /// Regular expression the raw message must match (e.g. `a=sendonly`).
    #[serde(default)]
    pub raw: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifyExpect {
    #[serde(default)]
    pub code: Option<u16>,
    /// `answered`, `timeout`, `error`.
    #[serde(default)]
    pub outcome: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallExpect {
    #[serde(rename = "as", default)]
    pub extension: Option<String>,
    /// `ringing`, `answered`, `rejected`, `cancelled`, `held`, `resumed`, `ended`.
    pub state: String,
    #[serde(default)]
    pub dialog: Option<String>,
    /// The other side (`phone` or an extension).
    #[serde(default)]
    pub remote: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RtpExpect {
    /// `phone` or an extension the rig plays.
    pub from: String,
    pub to: String,
    #[serde(default = "default_min_packets")]
    pub min_packets: u64,
}

fn default_min_packets() -> u64 {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleExpect {
    /// Regular expression.
    pub line: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum ActionExpect {
    Event(String),
    Detailed {
        event: String,
        #[serde(default)]
        fields: BTreeMap<String, serde_json::Value>,
    },
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventExpect {
    #[serde(default)]
    pub source: Option<String>,
    /// Exact kind, or a prefix ending in `*` (`sip.*`).
    #[serde(default)]
    pub kind: Option<String>,
    /// Field name → value (string compare; `*` wildcards; numbers compare as numbers).
    #[serde(default)]
    pub fields: BTreeMap<String, serde_json::Value>,
    /// Match events of any phone (or none), not only the phone under test.
    #[serde(default)]
    pub any_phone: bool,
}

impl Step {
    /// Names of the action or expectation fields set, for the "exactly one" rule.
    pub fn set_parts(&self) -> Vec<&'static str> {
        let parts: [(&'static str, bool); 16] = [
            ("power", self.power.is_some()),
            ("button", self.button.is_some()),
            ("key", self.key.is_some()),
            ("console", self.console.is_some()),
            ("notify", self.notify.is_some()),
            ("call", self.call.is_some()),
            ("answer", self.answer.is_some()),
            ("reject", self.reject.is_some()),
            ("hold", self.hold.is_some()),
            ("resume", self.resume.is_some()),
            ("hangup", self.hangup.is_some()),
            ("cancel", self.cancel.is_some()),
            ("answer_policy", self.answer_policy.is_some()),
            ("wait", self.wait.is_some()),
            ("expect", self.expect.is_some()),
            ("expect_not", self.expect_not.is_some()),
        ];
        parts
            .into_iter()
            .filter(|(_, set)| *set)
            .map(|(name, _)| name)
            .collect()
    }

    pub fn is_expectation(&self) -> bool {
        self.expect.is_some() || self.expect_not.is_some()
    }

    pub fn is_action(&self) -> bool {
        !self.is_expectation() && self.wait.is_none()
    }
}

impl Expectation {
    pub fn set_parts(&self) -> Vec<&'static str> {
        let parts: [(&'static str, bool); 11] = [
            ("dhcp", self.dhcp.is_some()),
            ("fetch", self.fetch.is_some()),
            ("fetch_order", self.fetch_order.is_some()),
            ("sip", self.sip.is_some()),
            ("notify", self.notify.is_some()),
            ("call", self.call.is_some()),
            ("rtp", self.rtp.is_some()),
            ("console", self.console.is_some()),
            ("action", self.action.is_some()),
            ("event", self.event.is_some()),
            ("order", self.order.is_some()),
        ];
        parts
            .into_iter()
            .filter(|(_, set)| *set)
            .map(|(name, _)| name)
            .collect()
    }
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, FileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| FileError::at(path, "", None, None, format!("cannot read: {e}")))?;
        Scenario::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Scenario, FileError> {
        let mut scenario: Scenario =
            toml::from_str(text).map_err(|e| FileError::from_toml(path, text, &e))?;
        scenario.path = path.to_owned();
        scenario.validate(text)?;
        Ok(scenario)
    }

    /// Checks what serde cannot: one part per step, known placeholders,
    /// valid regular expressions, step names that `since` refers to.
    fn validate(&self, text: &str) -> Result<(), FileError> {
        if self.steps.is_empty() {
            return Err(FileError::at(
                &self.path,
                text,
                None,
                Some("step".into()),
                "a scenario needs at least one [[step]]",
            ));
        }
        let probe = probe_placeholders();
        let mut names: Vec<&str> = Vec::new();
        for (i, spanned) in self.steps.iter().enumerate() {
            let step = spanned.get_ref();
            let fail = |field: String, message: String| {
                Err(FileError::at(
                    &self.path,
                    text,
                    Some(spanned.span()),
                    Some(field),
                    message,
                ))
            };
            let parts = step.set_parts();
            if parts.len() != 1 {
                return fail(
                    format!("step[{i}]"),
                    if parts.is_empty() {
                        "a step needs one action (power, button, key, console, notify, call, answer, …) or one expectation (expect, expect_not)".into()
                    } else {
                        format!(
                            "a step holds exactly one action or expectation, this one has {}",
                            parts.join(" and ")
                        )
                    },
                );
            }
            if step.within.is_some() && step.expect.is_none() {
                return fail(
                    format!("step[{i}].within"),
                    "`within` belongs to an `expect` step".into(),
                );
            }
            if step.during.is_some() && step.expect_not.is_none() {
                return fail(
                    format!("step[{i}].during"),
                    "`during` belongs to an `expect_not` step".into(),
                );
            }
            if let Some(since) = &step.since {
                let ok = matches!(since.as_str(), "case" | "action" | "now")
                    || since
                        .strip_prefix("step:")
                        .is_some_and(|n| names.contains(&n));
                if !ok {
                    return fail(format!("step[{i}].since"), format!("`{since}`: use `action`, `now`, `case` or `step:<name of an earlier step>`"));
                }
            }
            let serialised = toml::to_string(step).unwrap_or_default();
            if let Err(error) = probe.expand(&serialised) {
                return fail(format!("step[{i}]"), error.to_string());
            }
            for expectation in [&step.expect, &step.expect_not].into_iter().flatten() {
                validate_expectation(expectation).map_err(|message| {
                    let field = if step.expect.is_some() {
                        "expect"
                    } else {
                        "expect_not"
                    };
                    FileError::at(
                        &self.path,
                        text,
                        Some(spanned.span()),
                        Some(format!("step[{i}].{field}")),
                        message,
                    )
                })?;
            }
            if let Some(name) = &step.name {
                names.push(name);
            }
        }
        for (i, rule) in self.serve.file_rules.iter().enumerate() {
            for value in [Some(&rule.path), rule.content.as_ref()]
                .into_iter()
                .flatten()
            {
                if let Err(error) = probe.expand(value) {
                    return Err(FileError::at(
                        &self.path,
                        text,
                        None,
                        Some(format!("serve.file[{i}]")),
                        error.to_string(),
                    ));
                }
            }
        }
        if let Some(files) = &self.serve.files {
            let root = self.resolve_path(&files.root);
            if !root.is_dir() {
                return Err(FileError::at(
                    &self.path,
                    text,
                    None,
                    Some("serve.files.root".into()),
                    format!("{} is not a folder", root.display()),
                ));
            }
        }
        Ok(())
    }

    /// A path in the scenario, relative to the scenario file's folder.
    pub fn resolve_path(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(path)
        }
    }

    pub fn timeout(&self) -> std::time::Duration {
        self.timeout
            .map_or(std::time::Duration::from_secs(300), Into::into)
    }

    pub fn default_within(&self) -> std::time::Duration {
        self.within
            .map_or(std::time::Duration::from_secs(30), Into::into)
    }

    /// The tree's rules: `[serve.files] absent/templates` shorthands plus `[[serve.file]]` entries.
    pub fn file_rules(&self) -> Vec<FileRule> {
        let mut rules = Vec::new();
        for spec in &self.serve.file_rules {
            let content = match (&spec.content, &spec.generate) {
                (Some(c), _) if spec.crlf => Some(c.replace("\r\n", "\n").replace('\n', "\r\n")),
                (Some(c), _) => Some(c.clone()),
                (None, Some(g)) => Some(generate_content(g)),
                (None, None) => None,
            };
            rules.push(FileRule {
                path: spec.path.clone(),
                content,
                absent: spec.absent,
                status: spec.status,
                delay: spec.delay.map(Into::into),
                truncate: spec.truncate,
                template: spec.template,
            });
        }
        if let Some(files) = &self.serve.files {
            rules.extend(files.absent.iter().map(|path| FileRule {
                path: path.clone(),
                absent: true,
                ..FileRule::default()
            }));
            rules.extend(files.templates.iter().map(|path| FileRule {
                path: path.clone(),
                template: true,
                ..FileRule::default()
            }));
        }
        rules
    }

    pub fn matches_tag(&self, tags: &[String]) -> bool {
        tags.is_empty() || tags.iter().any(|t| self.tags.contains(t))
    }
}

fn generate_content(generate: &Generate) -> String {
    let mut out = generate.head.clone();
    let fill = (generate.size as usize).saturating_sub(generate.head.len() + generate.tail.len());
    out.extend(std::iter::repeat_n('.', fill));
    out.push_str(&generate.tail);
    out
}

/// Placeholders with every known name, for checking a scenario before it runs.
pub fn probe_placeholders() -> Placeholders {
    let phone = phonerig_core::PhoneInfo {
        name: "p".into(),
        model: "m".into(),
        mac: phonerig_core::Mac([0; 6]),
        ext: "1".into(),
        password: "x".into(),
        devcode: Some("0".into()),
    };
    let rig = phonerig_core::RigEndpoints {
        ip: "127.0.0.1".into(),
        http_port: 1,
        https_port: 1,
        tftp_port: 1,
        ftp_port: 1,
        sip_port: 1,
    };
    Placeholders::new().with_rig(&rig).with_phone(&phone)
}

fn validate_expectation(expectation: &Expectation) -> Result<(), String> {
    let parts = expectation.set_parts();
    if parts.len() != 1 {
        return Err(format!("an expectation names exactly one of dhcp, fetch, fetch_order, sip, notify, call, rtp, console, action, event, order; this one has {}", if parts.is_empty() { "none".into() } else { parts.join(", ") }));
    }
    if let Some(console) = &expectation.console {
        regex::Regex::new(&console.line)
            .map_err(|e| format!("console.line is not a regular expression: {e}"))?;
    }
    if let Some(SipExpect::Message(m)) = &expectation.sip {
        if let Some(raw) = &m.raw {
            regex::Regex::new(raw)
                .map_err(|e| format!("sip.raw is not a regular expression: {e}"))?;
        }
    }
    if let Some(event) = &expectation.event {
        if let Some(source) = &event.source {
            if phonerig_core::Source::parse(source).is_none() {
                return Err(format!("unknown event source `{source}`"));
            }
        }
    }
    if let Some(order) = &expectation.order {
        if order.len() < 2 {
            return Err("`order` needs at least two expectations".into());
        }
        order.iter().try_for_each(validate_expectation)?;
    }
    Ok(())
}

/// The JSON Schema of scenario files, generated from these types.
pub fn schema() -> schemars::Schema {
    schemars::schema_for!(Scenario)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const GOOD: &str = r#"
name = "UC924 fetch order"
source = "004 §2.1"
phones = { model = "htek-uc9*" }
tags = ["provisioning", "htek"]
timeout = "3m"

[[serve.file]]
path = "cfg{phone.mac}.xml"
content = "<hl_provision/>"

[[step]]
power = "cycle"

[[step]]
expect.dhcp = "ack"
within = "60s"

[[step]]
expect.fetch_order = { protocol = "http", files = ["cfg{phone.devcode}.xml", "cfg{phone.mac}", "cfg{phone.mac}.xml"] }
within = "90s"

[[step]]
notify = { event = "check-sync" }
"#;

    #[test]
    fn a_good_scenario_parses() {
        let s = Scenario::parse(Path::new("s.toml"), GOOD).unwrap();
        assert_eq!(s.steps.len(), 4);
        assert_eq!(s.steps[0].get_ref().power, Some(PowerAction::Cycle));
        assert_eq!(s.file_rules().len(), 1);
    }

    #[rstest]
    #[case::two_parts(
        "power = \"cycle\"",
        "power = \"cycle\"\nwait = \"1s\"",
        12,
        "step[0]",
        "power and wait"
    )]
    #[case::typo_field("power = \"cycle\"", "powr = \"cycle\"", 13, "powr", "unknown field")]
    #[case::bad_duration(
        "within = \"60s\"",
        "within = \"sixty\"",
        17,
        "within",
        "not a duration"
    )]
    #[case::bad_placeholder(
        "cfg{phone.devcode}.xml",
        "cfg{phone.devcod}.xml",
        19,
        "step[2]",
        "phone.devcod"
    )]
    #[case::bad_power("power = \"cycle\"", "power = \"toggle\"", 13, "power", "toggle")]
    #[case::within_on_action(
        "notify = { event = \"check-sync\" }",
        "notify = { event = \"check-sync\" }\nwithin = \"1s\"",
        23,
        "step[3].within",
        "within"
    )]
    fn errors_name_line_and_field(
        #[case] from: &str,
        #[case] to: &str,
        #[case] line: usize,
        #[case] field: &str,
        #[case] words: &str,
    ) {
        let text = GOOD.replacen(from, to, 1);
        let error = Scenario::parse(Path::new("s.toml"), &text).unwrap_err();
        assert_eq!(error.line, line, "{error}");
        assert_eq!(error.field.as_deref(), Some(field), "{error}");
        assert!(error.to_string().contains(words), "{error}");
    }

    #[test]
    fn schema_describes_steps_and_expectations() {
        let schema = serde_json::to_value(schema()).unwrap();
        let text = schema.to_string();
        for needle in [
            "fetch_order",
            "expect_not",
            "min_packets",
            "\"step\"",
            "source",
            "Duration",
        ] {
            assert!(text.contains(needle), "schema lacks {needle}");
        }
        assert_eq!(
            schema["required"],
            serde_json::json!(["name", "source", "phones", "step"])
        );
    }

    #[test]
    fn generated_firmware_has_the_size_asked_for() {
        let g = Generate {
            head: "HTEK-FW 2.0.5\n".into(),
            size: 1000,
            tail: "END\n".into(),
        };
        let content = generate_content(&g);
        assert_eq!(content.len(), 1000);
        assert!(content.starts_with("HTEK-FW") && content.ends_with("END\n"));
    }
}
