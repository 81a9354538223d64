//! Expectations are queries over the timeline: happened, happened in this
//! order, happened within a deadline, did not happen during a period.
//! Nothing here looks into a service; only events are read.

use std::sync::Arc;

use phonerig_core::{Event, Placeholders, Source};
use regex::Regex;
use serde_json::Value;

use crate::scenario::{ActionExpect, DhcpExpect, Expectation, SipExpect};

/// How one field of an event is tested.
#[derive(Debug, Clone)]
pub enum FieldTest {
    /// Equal as text (numbers and strings compare by their text), `*` wildcards allowed.
    Text(String),
    /// The SIP user part of a From/To value (`"4004" <sip:4004@h>;tag=…`) equals this.
    SipUser(String),
    Regex(Regex),
    AtLeast(u64),
    /// Equal as JSON value (lists of addresses, numbers).
    Json(Value),
}

impl FieldTest {
    fn check(&self, value: Option<&Value>) -> bool {
        let Some(value) = value else { return false };
        match self {
            FieldTest::Text(expected) => {
                let actual = value_text(value);
                if expected.contains('*') {
                    phonerig_core::tree::glob_match(expected, &actual)
                        || wildcard(expected, &actual)
                } else {
                    &actual == expected
                }
            }
            FieldTest::SipUser(user) => sip_user(&value_text(value)).is_some_and(|u| u == user),
            FieldTest::Regex(re) => re.is_match(&value_text(value)),
            FieldTest::AtLeast(min) => value.as_u64().is_some_and(|v| v >= *min),
            FieldTest::Json(expected) => {
                value == expected || value_text(value) == value_text(expected)
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            FieldTest::Text(t) => format!("= {t}"),
            FieldTest::SipUser(u) => format!("user {u}"),
            FieldTest::Regex(r) => format!("~ /{}/", r.as_str()),
            FieldTest::AtLeast(n) => format!(">= {n}"),
            FieldTest::Json(v) => format!("= {v}"),
        }
    }
}

/// `*` matching across `/` too (for field values that are not paths).
fn wildcard(pattern: &str, text: &str) -> bool {
    let regex = format!(
        "^{}$",
        pattern
            .split('*')
            .map(regex::escape)
            .collect::<Vec<_>>()
            .join(".*")
    );
    Regex::new(&regex).is_ok_and(|re| re.is_match(text))
}

fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// User part of a SIP name-addr or URI: `"Bob" <sip:4004@h;x>;tag=1` → `4004`.
pub fn sip_user(text: &str) -> Option<&str> {
    let start = text
        .find("sip:")
        .map(|i| i + 4)
        .or_else(|| text.find("sips:").map(|i| i + 5))?;
    let rest = &text[start..];
    let end = rest.find(['@', ';', '>', ':']).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Matches single events.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    pub source: Option<Source>,
    /// Any of these kinds; an entry ending in `*` is a prefix.
    pub kinds: Vec<String>,
    /// Only events attributed to this phone (None: any phone or none).
    pub phone: Option<String>,
    pub fields: Vec<(String, FieldTest)>,
    /// For explanations: what a person would call it.
    pub label: String,
}

impl Matcher {
    pub fn matches(&self, event: &Event) -> bool {
        self.source.is_none_or(|s| s == event.source)
            && (self.kinds.is_empty() || self.kinds.iter().any(|k| kind_matches(k, &event.kind)))
            && self
                .phone
                .as_ref()
                .is_none_or(|p| event.phone.as_ref() == Some(p))
            && self
                .fields
                .iter()
                .all(|(name, test)| test.check(lookup(&event.fields, name)))
    }

    /// Events "near" this matcher: same source, or same kind family, for explanations.
    fn related(&self, event: &Event) -> bool {
        let same_source = self.source.is_some_and(|s| s == event.source);
        let same_family = self.kinds.iter().any(|k| {
            let family = k.split('.').next().unwrap_or("");
            event.kind.split('.').next() == Some(family)
        });
        (same_source || same_family)
            && self
                .phone
                .as_ref()
                .is_none_or(|p| event.phone.is_none() || event.phone.as_ref() == Some(p))
    }

    pub fn describe(&self) -> String {
        let mut out = self.label.clone();
        if out.is_empty() {
            out = format!(
                "{} {}",
                self.source.map_or("any source".into(), |s| s.to_string()),
                self.kinds.join("|")
            );
        }
        let fields: Vec<String> = self
            .fields
            .iter()
            .map(|(n, t)| format!("{n} {}", t.describe()))
            .collect();
        if !fields.is_empty() {
            out.push_str(&format!(" ({})", fields.join(", ")));
        }
        if let Some(phone) = &self.phone {
            out.push_str(&format!(" from phone {phone}"));
        }
        out
    }
}

fn kind_matches(pattern: &str, kind: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => pattern == kind,
    }
}

/// A compiled expectation.
#[derive(Debug, Clone)]
pub enum Query {
    Happened(Matcher),
    /// Each matcher, in order; with `exact`, no event matching `universe`
    /// other than the ones found may occur before the last one found.
    InOrder {
        steps: Vec<Matcher>,
        universe: Option<Matcher>,
    },
    /// Media packets counted inside the window: `rtp.*` events carry running
    /// totals per stream, so the packets of one stream (call, from, to,
    /// observed) are the growth of its total since its first event in the
    /// window (an `rtp.started` in the window counts its own first packet).
    /// Packets of a stream that flowed before the window are never counted,
    /// and a stream that merely reports its old total (a quiet stream before
    /// its `rtp.stopped`) adds nothing.
    Media {
        matcher: Matcher,
        min_packets: u64,
    },
}

impl Query {
    pub fn describe(&self) -> String {
        match self {
            Query::Happened(m) => m.describe(),
            Query::Media {
                matcher,
                min_packets,
            } => format!(
                "{} with at least {min_packets} packet(s) in the window",
                matcher.describe()
            ),
            Query::InOrder { steps, universe } => {
                let list: Vec<String> = steps.iter().map(Matcher::describe).collect();
                format!(
                    "in this order{}: {}",
                    if universe.is_some() {
                        " and nothing else"
                    } else {
                        ""
                    },
                    list.join(" → ")
                )
            }
        }
    }

    fn matchers(&self) -> Vec<&Matcher> {
        match self {
            Query::Happened(m) | Query::Media { matcher: m, .. } => vec![m],
            Query::InOrder { steps, universe } => steps.iter().chain(universe).collect(),
        }
    }
}

/// Result of evaluating a query against events seen so far.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Met; the seqs of the events that met it.
    Met(Vec<u64>),
    /// Not met yet; could still be met by later events.
    Pending { found: usize },
    /// Can never be met any more (an `exact` order broken).
    Broken(String),
}

/// Incremental evaluator: feed events in timeline order.
pub struct Evaluator {
    query: Query,
    found: Vec<u64>,
    broken: Option<String>,
    /// `Query::Media`: per stream, the running total before the window's packets.
    baselines: std::collections::HashMap<String, u64>,
    /// `Query::InOrder`: the relevant events so far, in request order.
    ordered: Vec<Event>,
}

/// When a request was made: services that publish at the end of a transfer
/// (TFTP) record `requested_us`, so a short transfer published before a long
/// one that was asked for first still counts in the order it was asked for.
fn request_order(event: &Event) -> (u64, u64) {
    (
        event.field_u64("requested_us").unwrap_or(event.t_us),
        event.seq,
    )
}

/// Matches `steps` in order over `events`; with a `universe`, an event of it
/// that is not the next step breaks the order.
fn in_order(
    steps: &[Matcher],
    universe: Option<&Matcher>,
    events: &[Event],
) -> (Vec<u64>, Option<String>) {
    let mut found = Vec::new();
    for event in events {
        if found.len() == steps.len() {
            break;
        }
        if steps[found.len()].matches(event) {
            found.push(event.seq);
        } else if universe.is_some_and(|u| u.matches(event)) {
            let wanted = steps[found.len()].describe();
            return (
                found,
                Some(format!(
                    "{} came where {wanted} was expected",
                    event.brief()
                )),
            );
        }
    }
    (found, None)
}

impl Evaluator {
    pub fn new(query: Query) -> Self {
        Evaluator {
            query,
            found: Vec::new(),
            broken: None,
            baselines: Default::default(),
            ordered: Vec::new(),
        }
    }

    pub fn query(&self) -> &Query {
        &self.query
    }

    pub fn feed(&mut self, event: &Event) -> Progress {
        if self.broken.is_none() {
            match &self.query {
                Query::Happened(m) => {
                    if self.found.is_empty() && m.matches(event) {
                        self.found.push(event.seq);
                    }
                }
                Query::Media {
                    matcher,
                    min_packets,
                } => {
                    if self.found.is_empty() && matcher.matches(event) {
                        let total = event.fields.get("packets").and_then(Value::as_u64);
                        let total = total.unwrap_or(0);
                        let stream = ["call_id", "from", "to", "observed"]
                            .map(|f| event.fields.get(f).map(value_text).unwrap_or_default())
                            .join("\u{1f}");
                        let baseline = *self.baselines.entry(stream).or_insert(
                            if event.kind == "rtp.started" {
                                total.saturating_sub(1)
                            } else {
                                total
                            },
                        );
                        if total.saturating_sub(baseline) >= *min_packets {
                            self.found.push(event.seq);
                        }
                    }
                }
                Query::InOrder { steps, universe } => {
                    let relevant = steps.iter().chain(universe).any(|m| m.matches(event));
                    if relevant && self.found.len() < steps.len() {
                        let key = request_order(event);
                        let at = self.ordered.partition_point(|e| request_order(e) <= key);
                        self.ordered.insert(at, event.clone());
                        let (found, broken) = in_order(steps, universe.as_ref(), &self.ordered);
                        self.found = found;
                        self.broken = broken;
                    }
                }
            }
        }
        self.progress()
    }

    pub fn progress(&self) -> Progress {
        if let Some(reason) = &self.broken {
            return Progress::Broken(reason.clone());
        }
        let needed = match &self.query {
            Query::Happened(_) | Query::Media { .. } => 1,
            Query::InOrder { steps, .. } => steps.len(),
        };
        if self.found.len() >= needed {
            Progress::Met(self.found.clone())
        } else {
            Progress::Pending {
                found: self.found.len(),
            }
        }
    }

    /// Events that would help a reader see why the query was not met: the
    /// related ones closest to `around_us`, at most `limit`, in timeline order.
    pub fn nearest(&self, events: &[Arc<Event>], around_us: u64, limit: usize) -> Vec<Arc<Event>> {
        let matchers = self.query.matchers();
        let mut related: Vec<&Arc<Event>> = events
            .iter()
            .filter(|e| matchers.iter().any(|m| m.related(e)))
            .collect();
        if related.is_empty() {
            related = events
                .iter()
                .filter(|e| e.source != Source::Runner)
                .collect();
        }
        related.sort_by_key(|e| e.t_us.abs_diff(around_us));
        let mut chosen: Vec<Arc<Event>> = related.into_iter().take(limit).cloned().collect();
        chosen.sort_by_key(|e| e.seq);
        chosen
    }
}

/// What a query needs to know about the case.
pub struct CompileContext<'a> {
    pub phone: &'a str,
    pub phone_ext: &'a str,
    pub placeholders: &'a Placeholders,
}

impl CompileContext<'_> {
    fn expand(&self, text: &str) -> Result<String, String> {
        self.placeholders.expand(text).map_err(|e| e.to_string())
    }

    fn party(&self, who: &str) -> Result<String, String> {
        if who == "phone" {
            Ok(self.phone_ext.to_owned())
        } else {
            self.expand(who)
        }
    }

    fn matcher(&self, source: Source, kinds: &[&str], label: String) -> Matcher {
        Matcher {
            source: Some(source),
            kinds: kinds.iter().map(|k| (*k).to_owned()).collect(),
            phone: Some(self.phone.to_owned()),
            fields: Vec::new(),
            label,
        }
    }
}

/// The source and extra field tests that pick one file protocol.
type ProtocolFilter = (Option<Source>, Vec<(String, FieldTest)>);

fn fetch_kinds(protocol: Option<&str>) -> Result<ProtocolFilter, String> {
    match protocol {
        None => Ok((None, vec![])),
        Some("tftp") => Ok((Some(Source::Tftp), vec![])),
        Some("ftp") => Ok((Some(Source::Ftp), vec![])),
        Some(p @ ("http" | "https")) => Ok((
            Some(Source::Http),
            vec![("protocol".into(), FieldTest::Text(p.into()))],
        )),
        Some(other) => Err(format!(
            "unknown protocol `{other}` (tftp, http, https, ftp)"
        )),
    }
}

fn fetch_matcher(
    ctx: &CompileContext,
    file: &str,
    protocol: Option<&str>,
    outcome: Option<&str>,
) -> Result<Matcher, String> {
    let (source, mut fields) = fetch_kinds(protocol)?;
    let file = ctx.expand(file)?;
    fields.push((
        "file".into(),
        FieldTest::Text(file.trim_start_matches('/').to_owned()),
    ));
    match outcome.unwrap_or("complete") {
        "any" => {}
        other => fields.push(("outcome".into(), FieldTest::Text(other.to_owned()))),
    }
    Ok(Matcher {
        source,
        kinds: vec!["tftp.fetch".into(), "http.fetch".into(), "ftp.fetch".into()],
        phone: Some(ctx.phone.to_owned()),
        label: format!(
            "fetch of {file}{}",
            protocol.map(|p| format!(" over {p}")).unwrap_or_default()
        ),
        fields,
    })
}

/// Turns a scenario expectation into a query for one phone.
pub fn compile(expectation: &Expectation, ctx: &CompileContext) -> Result<Query, String> {
    if let Some(dhcp) = &expectation.dhcp {
        let (msg, options) = match dhcp {
            DhcpExpect::Msg(m) => (m.clone(), Default::default()),
            DhcpExpect::Detailed { msg, options } => (msg.clone(), options.clone()),
        };
        let msg = msg.to_ascii_lowercase();
        let known = [
            "discover", "offer", "request", "ack", "nak", "release", "decline", "inform",
        ];
        if !known.contains(&msg.as_str()) {
            return Err(format!(
                "unknown DHCP message `{msg}` ({})",
                known.join(", ")
            ));
        }
        let kind = format!("dhcp.{msg}");
        let mut matcher = ctx.matcher(
            Source::Dhcp,
            &[&kind],
            format!("DHCP {}", msg.to_uppercase()),
        );
        for (option, value) in options {
            let expected = match value {
                Value::String(s) => Value::String(ctx.expand(&s)?),
                Value::Array(items) => Value::Array(
                    items
                        .into_iter()
                        .map(|v| {
                            v.as_str()
                                .map_or(Ok(v.clone()), |s| ctx.expand(s).map(Value::String))
                        })
                        .collect::<Result<_, _>>()?,
                ),
                other => other,
            };
            matcher
                .fields
                .push((format!("options.{option}"), FieldTest::Json(expected)));
        }
        return Ok(Query::Happened(matcher));
    }
    if let Some(fetch) = &expectation.fetch {
        return Ok(Query::Happened(fetch_matcher(
            ctx,
            &fetch.file,
            fetch.protocol.as_deref(),
            fetch.outcome.as_deref(),
        )?));
    }
    if let Some(order) = &expectation.fetch_order {
        if order.files.is_empty() {
            return Err("fetch_order.files is empty".into());
        }
        let steps = order
            .files
            .iter()
            .map(|f| fetch_matcher(ctx, f, order.protocol.as_deref(), Some("any")))
            .collect::<Result<Vec<_>, _>>()?;
        let universe = order.exact.then(|| {
            let (source, fields) = fetch_kinds(order.protocol.as_deref()).unwrap_or_default();
            Matcher {
                source,
                kinds: vec!["tftp.fetch".into(), "http.fetch".into(), "ftp.fetch".into()],
                phone: Some(ctx.phone.to_owned()),
                fields,
                label: "any other file request".into(),
            }
        });
        return Ok(Query::InOrder { steps, universe });
    }
    if let Some(sip) = &expectation.sip {
        return Ok(Query::Happened(sip_matcher(sip, ctx)?));
    }
    if let Some(notify) = &expectation.notify {
        let mut matcher = ctx.matcher(
            Source::Sip,
            &["sip.notify"],
            "the phone's answer to NOTIFY".into(),
        );
        if let Some(code) = notify.code {
            matcher
                .fields
                .push(("code".into(), FieldTest::Text(code.to_string())));
        }
        if let Some(outcome) = &notify.outcome {
            matcher
                .fields
                .push(("outcome".into(), FieldTest::Text(outcome.clone())));
        }
        return Ok(Query::Happened(matcher));
    }
    if let Some(call) = &expectation.call {
        let mut matcher = ctx.matcher(Source::Sip, &["call.state"], format!("call {}", call.state));
        matcher.phone = None;
        matcher
            .fields
            .push(("state".into(), FieldTest::Text(call.state.clone())));
        if let Some(ext) = &call.extension {
            matcher
                .fields
                .push(("role".into(), FieldTest::Text(ctx.expand(ext)?)));
        }
        if let Some(dialog) = &call.dialog {
            matcher
                .fields
                .push(("dialog".into(), FieldTest::Text(dialog.clone())));
        }
        if let Some(remote) = &call.remote {
            matcher
                .fields
                .push(("remote".into(), FieldTest::Text(ctx.party(remote)?)));
        }
        return Ok(Query::Happened(matcher));
    }
    if let Some(rtp) = &expectation.rtp {
        let from = ctx.party(&rtp.from)?;
        let to = ctx.party(&rtp.to)?;
        let mut matcher = ctx.matcher(
            Source::Rtp,
            &["rtp.started", "rtp.stats", "rtp.stopped"],
            format!("RTP {from} → {to}"),
        );
        matcher.phone = None;
        matcher.fields.push(("from".into(), FieldTest::Text(from)));
        matcher.fields.push(("to".into(), FieldTest::Text(to)));
        return Ok(Query::Media {
            matcher,
            min_packets: rtp.min_packets.max(1),
        });
    }
    if let Some(console) = &expectation.console {
        let regex = Regex::new(&ctx.expand(&console.line)?).map_err(|e| e.to_string())?;
        let mut matcher = ctx.matcher(Source::Console, &["console.line"], "console line".into());
        matcher
            .fields
            .push(("line".into(), FieldTest::Regex(regex)));
        return Ok(Query::Happened(matcher));
    }
    if let Some(action) = &expectation.action {
        let (event, fields) = match action {
            ActionExpect::Event(e) => (e.clone(), Default::default()),
            ActionExpect::Detailed { event, fields } => (event.clone(), fields.clone()),
        };
        let kind = format!("action.{event}");
        let mut matcher = ctx.matcher(Source::Action, &[&kind], format!("Action URL `{event}`"));
        for (name, value) in fields {
            let value = value
                .as_str()
                .map_or(Ok(value_text(&value)), |s| ctx.expand(s))?;
            matcher.fields.push((name, FieldTest::Text(value)));
        }
        return Ok(Query::Happened(matcher));
    }
    if let Some(event) = &expectation.event {
        let mut matcher = Matcher {
            source: event.source.as_deref().and_then(Source::parse),
            kinds: event.kind.iter().cloned().collect(),
            phone: (!event.any_phone).then(|| ctx.phone.to_owned()),
            fields: Vec::new(),
            label: String::new(),
        };
        for (name, value) in &event.fields {
            let test = match value {
                Value::String(s) => FieldTest::Text(ctx.expand(s)?),
                other => FieldTest::Json(other.clone()),
            };
            matcher.fields.push((name.clone(), test));
        }
        return Ok(Query::Happened(matcher));
    }
    if let Some(order) = &expectation.order {
        let mut steps = Vec::new();
        for inner in order {
            match compile(inner, ctx)? {
                Query::Happened(m) => steps.push(m),
                Query::InOrder { steps: more, .. } => steps.extend(more),
                Query::Media { .. } => {
                    return Err("`rtp` counts packets over a window and cannot be a member of `order`; give it a step of its own".into())
                }
            }
        }
        return Ok(Query::InOrder {
            steps,
            universe: None,
        });
    }
    Err("empty expectation".into())
}

fn sip_matcher(sip: &SipExpect, ctx: &CompileContext) -> Result<Matcher, String> {
    match sip {
        SipExpect::Word(word) if word.eq_ignore_ascii_case("register") => {
            let mut m = ctx.matcher(Source::Sip, &["sip.register"], "successful REGISTER".into());
            m.fields
                .push(("result".into(), FieldTest::Text("ok".into())));
            Ok(m)
        }
        SipExpect::Word(word) if word.eq_ignore_ascii_case("unregister") => {
            let mut m = ctx.matcher(Source::Sip, &["sip.register"], "un-REGISTER".into());
            m.fields
                .push(("result".into(), FieldTest::Text("unregistered".into())));
            Ok(m)
        }
        SipExpect::Word(method) => {
            let mut m = ctx.matcher(Source::Sip, &["sip.message"], format!("SIP {method}"));
            m.phone = None;
            m.fields.push((
                "method".into(),
                FieldTest::Text(method.to_ascii_uppercase()),
            ));
            m.fields.push((
                "first_line".into(),
                FieldTest::Regex(
                    Regex::new(&format!(
                        "^{} ",
                        regex::escape(&method.to_ascii_uppercase())
                    ))
                    .map_err(|e| e.to_string())?,
                ),
            ));
            Ok(with_phone_party(m, ctx))
        }
        SipExpect::Message(spec) => {
            let mut m = ctx.matcher(Source::Sip, &["sip.message"], "SIP message".into());
            m.phone = None;
            if let Some(method) = &spec.method {
                let method = method.to_ascii_uppercase();
                m.label = format!("SIP {method}");
                if spec.status.is_some() {
                    m.fields
                        .push(("cseq".into(), FieldTest::Text(format!("* {method}"))));
                } else {
                    m.fields
                        .push(("method".into(), FieldTest::Text(method.clone())));
                    m.fields.push((
                        "first_line".into(),
                        FieldTest::Regex(
                            Regex::new(&format!("^{} ", regex::escape(&method)))
                                .map_err(|e| e.to_string())?,
                        ),
                    ));
                }
            }
            if let Some(status) = spec.status {
                m.label = format!("{} {status}", m.label);
                m.fields
                    .push(("status".into(), FieldTest::Text(status.to_string())));
            }
            if let Some(from) = &spec.from {
                m.fields
                    .push(("from".into(), FieldTest::SipUser(ctx.party(from)?)));
            }
            if let Some(to) = &spec.to {
                m.fields
                    .push(("to".into(), FieldTest::SipUser(ctx.party(to)?)));
            }
            if let Some(direction) = &spec.direction {
                m.fields
                    .push(("direction".into(), FieldTest::Text(direction.clone())));
            }
            if let Some(dialog) = &spec.dialog {
                m.fields
                    .push(("dialog".into(), FieldTest::Text(dialog.clone())));
            }
            if let Some(raw) = &spec.raw {
                m.fields.push((
                    "raw".into(),
                    FieldTest::Regex(Regex::new(raw).map_err(|e| e.to_string())?),
                ));
            }
            if spec.from.is_none() && spec.to.is_none() {
                return Ok(with_phone_party(m, ctx));
            }
            Ok(m)
        }
    }
}

/// A SIP message "of this phone": sent by it or to it. Expressed as the
/// phone attribution the SIP service adds, so calls between rig extensions
/// are not mistaken for the phone's.
fn with_phone_party(mut m: Matcher, ctx: &CompileContext) -> Matcher {
    m.phone = Some(ctx.phone.to_owned());
    m
}

/// Reads `a.b` paths inside event fields (`options.66` is option 66 of a DHCP reply).
pub fn lookup<'a>(fields: &'a serde_json::Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = fields.get(path) {
        return Some(v);
    }
    let (head, rest) = path.split_once('.')?;
    let mut value = fields.get(head)?;
    for part in rest.split('.') {
        value = value.get(part)?;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{FetchOrderExpect, RtpExpect};
    use phonerig_core::event::NewEvent;
    use phonerig_core::Timeline;
    use rstest::rstest;

    fn placeholders() -> Placeholders {
        let phone = phonerig_core::PhoneInfo {
            name: "uc924".into(),
            model: "htek-uc924".into(),
            mac: "001fc110d3a9".parse().unwrap(),
            ext: "4002".into(),
            password: "x".into(),
            devcode: Some("0012".into()),
        };
        crate::scenario::probe_placeholders().with_phone(&phone)
    }

    fn fetch(timeline: &Timeline, file: &str, outcome: &str) -> Arc<Event> {
        timeline.publish(
            NewEvent::new(Source::Http, "http.fetch")
                .phone(Some("uc924"))
                .field("file", file)
                .field("protocol", "http")
                .field("outcome", outcome),
        )
    }

    fn run(query: Query, events: &[Arc<Event>]) -> Progress {
        let mut evaluator = Evaluator::new(query);
        let mut last = evaluator.progress();
        for e in events {
            last = evaluator.feed(e);
        }
        last
    }

    fn order(files: &[&str], exact: bool) -> Query {
        let p = placeholders();
        let ctx = CompileContext {
            phone: "uc924",
            phone_ext: "4002",
            placeholders: &p,
        };
        let expectation = Expectation {
            fetch_order: Some(FetchOrderExpect {
                files: files.iter().map(|f| f.to_string()).collect(),
                protocol: Some("http".into()),
                exact,
            }),
            ..Default::default()
        };
        compile(&expectation, &ctx).unwrap()
    }

    #[rstest]
    #[case::in_order(&["cfg0012.xml", "cfg001fc110d3a9", "cfg001fc110d3a9.xml"], false, "met")]
    #[case::wrong_order(&["cfg001fc110d3a9", "cfg0012.xml", "cfg001fc110d3a9.xml"], false, "pending")]
    #[case::extra_between_loose(&["cfg0012.xml", "other.xml", "cfg001fc110d3a9", "cfg001fc110d3a9.xml"], false, "met")]
    #[case::extra_between_exact(&["cfg0012.xml", "other.xml", "cfg001fc110d3a9", "cfg001fc110d3a9.xml"], true, "broken")]
    #[case::missing_last(&["cfg0012.xml", "cfg001fc110d3a9"], false, "pending")]
    #[case::repeated_first(&["cfg0012.xml", "cfg0012.xml", "cfg001fc110d3a9", "cfg001fc110d3a9.xml"], true, "broken")]
    fn fetch_order_semantics(
        #[case] fetched: &[&str],
        #[case] exact: bool,
        #[case] expected: &str,
    ) {
        let timeline = Timeline::in_memory();
        let events: Vec<_> = fetched
            .iter()
            .map(|f| fetch(&timeline, f, "not_found"))
            .collect();
        let got = run(
            order(
                &[
                    "cfg{phone.devcode}.xml",
                    "cfg{phone.mac}",
                    "cfg{phone.mac}.xml",
                ],
                exact,
            ),
            &events,
        );
        let word = match got {
            Progress::Met(_) => "met",
            Progress::Pending { .. } => "pending",
            Progress::Broken(_) => "broken",
        };
        assert_eq!(word, expected, "{got:?}");
    }

    #[rstest]
    #[case::other_phone(Some("kx-ut670"), "cfg0012.xml", "complete", false)]
    #[case::not_found_is_not_complete(Some("uc924"), "cfg0012.xml", "not_found", false)]
    #[case::match_(Some("uc924"), "cfg0012.xml", "complete", true)]
    #[case::unattributed(None, "cfg0012.xml", "complete", false)]
    fn fetch_is_per_phone_and_outcome(
        #[case] phone: Option<&str>,
        #[case] file: &str,
        #[case] outcome: &str,
        #[case] met: bool,
    ) {
        let timeline = Timeline::in_memory();
        let event = timeline.publish(
            NewEvent::new(Source::Http, "http.fetch")
                .phone(phone)
                .field("file", file)
                .field("protocol", "http")
                .field("outcome", outcome),
        );
        let p = placeholders();
        let ctx = CompileContext {
            phone: "uc924",
            phone_ext: "4002",
            placeholders: &p,
        };
        let q = compile(
            &Expectation {
                fetch: Some(crate::scenario::FetchExpect {
                    file: "cfg{phone.devcode}.xml".into(),
                    protocol: None,
                    outcome: None,
                }),
                ..Default::default()
            },
            &ctx,
        )
        .unwrap();
        assert_eq!(matches!(run(q, &[event]), Progress::Met(_)), met);
    }

    /// `(kind, packets)` of one stream's events inside the window → met?
    /// Totals run over the whole call, so only growth inside the window counts.
    #[rstest]
    #[case::fresh_stream_reaches_min(&[("rtp.started", 1), ("rtp.stats", 26)], 25, true)]
    #[case::fresh_stream_short(&[("rtp.started", 1), ("rtp.stats", 10)], 25, false)]
    #[case::old_total_alone_is_not_flow(&[("rtp.stats", 300)], 25, false)]
    #[case::old_stream_keeps_flowing(&[("rtp.stats", 300), ("rtp.stats", 350)], 25, true)]
    #[case::resumed_stream_counts_from_restart(&[("rtp.started", 301), ("rtp.stats", 326)], 25, true)]
    #[case::quiet_stream_reports_old_total(&[("rtp.stats", 300), ("rtp.stats", 300), ("rtp.stopped", 300)], 1, false)]
    #[case::one_packet_after_start(&[("rtp.started", 301)], 1, true)]
    fn rtp_counts_packets_inside_the_window(
        #[case] events: &[(&str, u64)],
        #[case] min: u64,
        #[case] met: bool,
    ) {
        let timeline = Timeline::in_memory();
        let events: Vec<Arc<Event>> = events
            .iter()
            .map(|(kind, packets)| {
                timeline.publish(
                    NewEvent::new(Source::Rtp, *kind)
                        .field("call_id", "c1")
                        .field("from", "4002")
                        .field("to", "4004")
                        .field("observed", "received")
                        .field("packets", *packets),
                )
            })
            .collect();
        assert_eq!(
            matches!(
                run(rtp_query("phone", "4004", min), &events),
                Progress::Met(_)
            ),
            met
        );
    }

    #[test]
    fn rtp_streams_are_counted_apart() {
        let timeline = Timeline::in_memory();
        let stats = |call: &str, packets: u64| {
            timeline.publish(
                NewEvent::new(Source::Rtp, "rtp.stats")
                    .field("call_id", call)
                    .field("from", "4002")
                    .field("to", "4004")
                    .field("observed", "received")
                    .field("packets", packets),
            )
        };
        // Two calls' totals interleaved: neither grows, so nothing flowed in the window.
        let events = [
            stats("a", 100),
            stats("b", 500),
            stats("a", 100),
            stats("b", 500),
        ];
        assert!(!matches!(
            run(rtp_query("phone", "4004", 1), &events),
            Progress::Met(_)
        ));
        // Another direction never counts.
        let other = timeline.publish(
            NewEvent::new(Source::Rtp, "rtp.started")
                .field("call_id", "a")
                .field("from", "4004")
                .field("to", "4002")
                .field("observed", "sent")
                .field("packets", 1u64),
        );
        assert!(!matches!(
            run(rtp_query("phone", "4004", 1), &[other]),
            Progress::Met(_)
        ));
    }

    fn rtp_query(from: &str, to: &str, min: u64) -> Query {
        let p = placeholders();
        let ctx = CompileContext {
            phone: "uc924",
            phone_ext: "4002",
            placeholders: &p,
        };
        compile(
            &Expectation {
                rtp: Some(RtpExpect {
                    from: from.into(),
                    to: to.into(),
                    min_packets: min,
                }),
                ..Default::default()
            },
            &ctx,
        )
        .unwrap()
    }

    #[rstest]
    #[case("\"4004\" <sip:4004@127.0.0.1>;tag=abc", Some("4004"))]
    #[case("<sip:4002@198.18.0.1:5060;transport=udp>", Some("4002"))]
    #[case("sip:4006@h", Some("4006"))]
    #[case("<tel:4004>", None)]
    fn sip_users(#[case] text: &str, #[case] user: Option<&str>) {
        assert_eq!(sip_user(text), user);
    }

    #[test]
    fn sip_invite_from_phone_to_4004() {
        let timeline = Timeline::in_memory();
        let invite = timeline.publish(
            NewEvent::new(Source::Sip, "sip.message")
                .field("direction", "in")
                .field("method", "INVITE")
                .field("first_line", "INVITE sip:4004@127.0.0.1 SIP/2.0")
                .field("from", "<sip:4002@127.77.0.10>;tag=1")
                .field("to", "<sip:4004@127.0.0.1>"),
        );
        let p = placeholders();
        let ctx = CompileContext {
            phone: "uc924",
            phone_ext: "4002",
            placeholders: &p,
        };
        let good = SipExpect::Message(crate::scenario::SipMessageExpect {
            method: Some("invite".into()),
            from: Some("{phone.ext}".into()),
            to: Some("4004".into()),
            ..Default::default()
        });
        let wrong = SipExpect::Message(crate::scenario::SipMessageExpect {
            method: Some("INVITE".into()),
            to: Some("4006".into()),
            ..Default::default()
        });
        assert!(matches!(
            run(
                Query::Happened(sip_matcher(&good, &ctx).unwrap()),
                std::slice::from_ref(&invite)
            ),
            Progress::Met(_)
        ));
        assert!(matches!(
            run(
                Query::Happened(sip_matcher(&wrong, &ctx).unwrap()),
                &[invite]
            ),
            Progress::Pending { .. }
        ));
    }

    #[test]
    fn nearest_prefers_related_events_close_in_time() {
        let timeline = Timeline::in_memory();
        let mut events = vec![];
        for i in 0..20 {
            events.push(timeline.publish(NewEvent::new(Source::Sip, "sip.message").field("i", i)));
            events.push(fetch(&timeline, &format!("f{i}"), "not_found"));
        }
        let evaluator = Evaluator::new(order(&["cfg{phone.mac}.xml"], false));
        let near = evaluator.nearest(&events, events.last().unwrap().t_us, 3);
        assert_eq!(near.len(), 3);
        assert!(near.iter().all(|e| e.kind == "http.fetch"));
        assert!(near.windows(2).all(|w| w[0].seq < w[1].seq));
    }
}
