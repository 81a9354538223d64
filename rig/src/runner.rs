//! Runs scenarios: one case per scenario per matching phone, each with fresh
//! services; every step and verdict is an event; a failed expectation
//! explains itself from the timeline.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use phonerig_core::event::NewEvent;
use phonerig_core::{Event, PhoneInfo, Source, Timeline};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::bench::{Bench, CaseServices};
use crate::expect::{self, CompileContext, Evaluator, Progress};
use crate::lab::Lab;
use crate::scenario::{
    ButtonAction, ButtonVerb, KeyAction, PhoneSelector, PowerAction, Scenario, Step,
};

/// What a case or step came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    Error,
    Skipped,
    Aborted,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Error => "error",
            Verdict::Skipped => "skipped",
            Verdict::Aborted => "aborted",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub case: String,
    pub scenario: String,
    pub phone: String,
    pub verdict: Verdict,
    pub reason: Option<String>,
    pub duration: Duration,
}

/// The phones of the lab a scenario runs on, narrowed by `--phone`.
pub fn select_phones(lab: &Lab, scenario: &Scenario, only: &[String]) -> Vec<PhoneInfo> {
    let wanted = |p: &PhoneInfo| -> bool {
        let by_scenario = match &scenario.phones {
            PhoneSelector::One(text) if text == "all" => true,
            PhoneSelector::One(text) => {
                p.name == *text || phonerig_core::tree::glob_match(text, &p.model)
            }
            PhoneSelector::Select(sel) => {
                (sel.names.is_empty() || sel.names.contains(&p.name))
                    && sel
                        .model
                        .as_ref()
                        .is_none_or(|m| phonerig_core::tree::glob_match(m, &p.model))
            }
        };
        by_scenario && (only.is_empty() || only.contains(&p.name))
    };
    lab.phone_infos().into_iter().filter(wanted).collect()
}

/// `htek/fetch-order@uc924`: the scenario file's path under the suite folder, and the phone.
pub fn case_id(scenario: &Scenario, base: &Path, phone: &PhoneInfo) -> String {
    let rel = scenario.path.strip_prefix(base).unwrap_or(&scenario.path);
    let stem = rel.with_extension("");
    format!("{}@{}", stem.to_string_lossy(), phone.name)
}

/// Options of one `rig run` / `rig suite`.
pub struct RunPlan {
    pub name: String,
    pub scenarios: Vec<Scenario>,
    pub base: PathBuf,
    pub tags: Vec<String>,
    pub phones: Vec<String>,
}

/// A run: one bench, one timeline, cases one after another.
pub struct Runner<'a> {
    pub bench: &'a Bench,
    pub cancel: CancellationToken,
    pub progress: &'a dyn ProgressSink,
}

/// Where the runner reports progress (the live display, or nothing).
pub trait ProgressSink: Send + Sync {
    fn case_started(&self, _case: &str, _index: usize, _total: usize) {}
    fn step(&self, _case: &str, _index: usize, _what: &str) {}
    fn case_finished(&self, _result: &CaseResult) {}
}

pub struct NoProgress;
impl ProgressSink for NoProgress {}

impl Runner<'_> {
    fn timeline(&self) -> &Timeline {
        self.bench.timeline()
    }

    pub async fn run(&self, plan: &RunPlan) -> Vec<CaseResult> {
        // A panic in any task during the run is a `task.panicked` event, which
        // ends the case it happens in (see `run_case`).
        let _panics = phonerig_core::service::PanicWatch::start(self.timeline());
        let mut cases = Vec::new();
        for scenario in plan.scenarios.iter().filter(|s| s.matches_tag(&plan.tags)) {
            for phone in select_phones(self.bench.lab(), scenario, &plan.phones) {
                cases.push((scenario, phone));
            }
        }
        let total = cases.len();
        let mut results = Vec::new();
        for (index, (scenario, phone)) in cases.into_iter().enumerate() {
            let case = case_id(scenario, &plan.base, &phone);
            self.progress.case_started(&case, index + 1, total);
            let result = if self.cancel.is_cancelled() {
                self.skip_case(&case, scenario, &phone, "the run was interrupted")
            } else {
                self.run_case(&case, scenario, &phone).await
            };
            self.progress.case_finished(&result);
            results.push(result);
        }
        results
    }

    /// A case not started because the run was interrupted: no events, only a line in the table.
    fn skip_case(
        &self,
        case: &str,
        scenario: &Scenario,
        phone: &PhoneInfo,
        reason: &str,
    ) -> CaseResult {
        CaseResult {
            case: case.into(),
            scenario: scenario.name.clone(),
            phone: phone.name.clone(),
            verdict: Verdict::Skipped,
            reason: Some(reason.into()),
            duration: Duration::ZERO,
        }
    }

    fn publish_case_start(&self, case: &str, scenario: &Scenario, phone: &PhoneInfo) -> Arc<Event> {
        let firmware = self
            .bench
            .lab()
            .phone(&phone.name)
            .and_then(|p| p.sim.as_ref())
            .and_then(|s| s.firmware.clone());
        self.timeline().publish(
            NewEvent::new(Source::Runner, "case.start")
                .phone(Some(&phone.name))
                .field("case", case)
                .field("scenario", &scenario.name)
                .field("file", scenario.path.display().to_string())
                .field("source", &scenario.source)
                .field("model", &phone.model)
                .field("mac", phone.mac.colon())
                .field("ext", &phone.ext)
                .field("firmware", firmware)
                .field("tags", &scenario.tags),
        )
    }

    pub async fn run_case(&self, case: &str, scenario: &Scenario, phone: &PhoneInfo) -> CaseResult {
        let start = self.publish_case_start(case, scenario, phone);
        let begun = std::time::Instant::now();
        let (verdict, reason) = match self.bench.start_services(scenario, phone).await {
            Err(error) => (
                Verdict::Error,
                Some(format!("services did not start: {error:#}")),
            ),
            Ok(services) => {
                let outcome = tokio::select! {
                    outcome = tokio::time::timeout(scenario.timeout(), self.run_steps(case, scenario, phone, &services, &start)) => match outcome {
                        Ok(outcome) => outcome,
                        Err(_) => (Verdict::Fail, Some(format!("the case ran out of its {} timeout", phonerig_core::duration::format(scenario.timeout())))),
                    },
                    _ = self.cancel.cancelled() => (Verdict::Aborted, Some("interrupted (Ctrl-C or SIGTERM)".to_owned())),
                    panicked = panic_during(self.timeline(), start.seq) => (Verdict::Error, Some(describe_panic(&panicked))),
                };
                services.stop(self.timeline()).await;
                outcome
            }
        };
        let duration = begun.elapsed();
        self.timeline().publish(
            NewEvent::new(Source::Runner, "case.end")
                .phone(Some(&phone.name))
                .field("case", case)
                .field("verdict", verdict.as_str())
                .field("reason", &reason)
                .field("duration_us", duration.as_micros() as u64),
        );
        CaseResult {
            case: case.into(),
            scenario: scenario.name.clone(),
            phone: phone.name.clone(),
            verdict,
            reason,
            duration,
        }
    }

    async fn run_steps(
        &self,
        case: &str,
        scenario: &Scenario,
        phone: &PhoneInfo,
        services: &CaseServices,
        case_start: &Arc<Event>,
    ) -> (Verdict, Option<String>) {
        let placeholders = self.bench.placeholders().with_phone(phone);
        let mut anchor = case_start.clone();
        let mut named: Vec<(String, Arc<Event>)> = Vec::new();
        let mut outcome = (Verdict::Pass, None);
        for (index, spanned) in scenario.steps.iter().enumerate() {
            let step = spanned.get_ref();
            let name = step
                .name
                .clone()
                .unwrap_or_else(|| format!("step {}", index + 1));
            if outcome.0 != Verdict::Pass {
                self.publish_verdict(
                    case,
                    phone,
                    index,
                    &name,
                    Verdict::Skipped,
                    Duration::ZERO,
                    None,
                    &[],
                );
                continue;
            }
            let description = describe_step(step, scenario);
            self.progress.step(case, index + 1, &description);
            let started = self.timeline().publish(
                NewEvent::new(Source::Runner, "step.start")
                    .phone(Some(&phone.name))
                    .field("case", case)
                    .field("index", index)
                    .field("name", &name)
                    .field("description", &description),
            );
            let window_start = match step.since.as_deref() {
                Some("case") => case_start.clone(),
                Some("now") => started.clone(),
                Some(s) if s.starts_with("step:") => named
                    .iter()
                    .find(|(n, _)| Some(n.as_str()) == s.strip_prefix("step:"))
                    .map_or(anchor.clone(), |(_, e)| e.clone()),
                _ => anchor.clone(),
            };
            let begun = std::time::Instant::now();
            let (verdict, explanation, nearest) = if step.is_expectation() {
                let ctx = CompileContext {
                    phone: &phone.name,
                    phone_ext: &phone.ext,
                    placeholders: &placeholders,
                };
                self.check(step, scenario, &ctx, &window_start, &started)
                    .await
            } else {
                match self.act(step, phone, services, &placeholders).await {
                    Ok(()) => (Verdict::Pass, None, vec![]),
                    Err(error) => (
                        Verdict::Error,
                        Some(format!("{description}: {error:#}")),
                        vec![],
                    ),
                }
            };
            if step.is_action() {
                anchor = started.clone();
            }
            if let Some(step_name) = &step.name {
                named.push((step_name.clone(), started.clone()));
            }
            self.publish_verdict(
                case,
                phone,
                index,
                &name,
                verdict,
                begun.elapsed(),
                explanation.as_deref(),
                &nearest,
            );
            if verdict != Verdict::Pass {
                outcome = (verdict, explanation.map(|e| format!("{name}: {e}")));
            }
        }
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    fn publish_verdict(
        &self,
        case: &str,
        phone: &PhoneInfo,
        index: usize,
        name: &str,
        verdict: Verdict,
        took: Duration,
        explanation: Option<&str>,
        nearest: &[Arc<Event>],
    ) {
        let nearest: Vec<serde_json::Value> = nearest
            .iter()
            .map(|e| serde_json::json!({ "seq": e.seq, "t_us": e.t_us, "source": e.source, "kind": e.kind, "brief": e.brief() }))
            .collect();
        self.timeline().publish(
            NewEvent::new(Source::Runner, "step.verdict")
                .phone(Some(&phone.name))
                .field("case", case)
                .field("index", index)
                .field("name", name)
                .field("verdict", verdict.as_str())
                .field("duration_us", took.as_micros() as u64)
                .field("explanation", explanation)
                .field("nearest", nearest),
        );
    }

    /// Evaluates an expectation step against the timeline.
    async fn check(
        &self,
        step: &Step,
        scenario: &Scenario,
        ctx: &CompileContext<'_>,
        window: &Arc<Event>,
        started: &Arc<Event>,
    ) -> (Verdict, Option<String>, Vec<Arc<Event>>) {
        let negative = step.expect_not.is_some();
        let expectation = step
            .expect
            .as_ref()
            .or(step.expect_not.as_ref())
            .expect("validated: an expectation step");
        let query = match expect::compile(expectation, ctx) {
            Ok(q) => q,
            Err(error) => return (Verdict::Error, Some(error), vec![]),
        };
        let timeline = self.timeline();
        let mut evaluator = Evaluator::new(query);
        let mut reader = timeline.reader_from(window.seq + 1);
        let (deadline_us, what) = if negative {
            let during = step.during.map_or(Duration::ZERO, Into::into);
            (
                started.t_us + during.as_micros() as u64,
                format!("during {}", phonerig_core::duration::format(during)),
            )
        } else {
            let within: Duration = step.within.map_or(scenario.default_within(), Into::into);
            (
                window.t_us + within.as_micros() as u64,
                format!("within {}", phonerig_core::duration::format(within)),
            )
        };
        let window_text = format!(
            "{what} of {} (+{:.3}s)",
            describe_anchor(window),
            window.t_us as f64 / 1e6
        );
        loop {
            let next = match deadline_us.checked_sub(timeline.now_us()) {
                Some(left) if left > 0 => {
                    tokio::time::timeout(Duration::from_micros(left), reader.next())
                        .await
                        .ok()
                        .flatten()
                }
                _ => reader.try_next(),
            };
            let Some(event) = next else {
                if timeline.now_us() < deadline_us {
                    continue;
                }
                break;
            };
            match evaluator.feed(&event) {
                Progress::Met(seqs) if negative => {
                    let events: Vec<Arc<Event>> = seqs
                        .iter()
                        .filter_map(|s| timeline.since(*s).into_iter().next())
                        .collect();
                    let what = events
                        .iter()
                        .map(|e| e.brief())
                        .collect::<Vec<_>>()
                        .join("; ");
                    return (
                        Verdict::Fail,
                        Some(format!(
                            "expected NO {} {window_text}, but it happened: {what}",
                            evaluator.query().describe()
                        )),
                        events,
                    );
                }
                Progress::Met(_) => return (Verdict::Pass, None, vec![]),
                Progress::Broken(reason) if !negative => {
                    let seen = timeline.since(window.seq);
                    let nearest = evaluator.nearest(&seen, timeline.now_us(), 8);
                    return (
                        Verdict::Fail,
                        Some(format!(
                            "expected {} {window_text}; {reason}{}",
                            evaluator.query().describe(),
                            list_nearest(&nearest)
                        )),
                        nearest,
                    );
                }
                _ => {}
            }
        }
        if negative {
            return (Verdict::Pass, None, vec![]);
        }
        let seen = timeline.since(window.seq);
        let nearest = evaluator.nearest(&seen, deadline_us, 8);
        let found = match evaluator.progress() {
            Progress::Pending { found } if found > 0 => format!(" (the first {found} happened)"),
            _ => String::new(),
        };
        (
            Verdict::Fail,
            Some(format!(
                "expected {} {window_text}; it did not happen{found}.{}",
                evaluator.query().describe(),
                list_nearest(&nearest)
            )),
            nearest,
        )
    }

    async fn act(
        &self,
        step: &Step,
        phone: &PhoneInfo,
        services: &CaseServices,
        placeholders: &phonerig_core::Placeholders,
    ) -> anyhow::Result<()> {
        let drivers = self.bench.drivers(&phone.name)?;
        if let Some(power) = step.power {
            let power_driver = drivers.power()?;
            return match power {
                PowerAction::On => power_driver.on().await,
                PowerAction::Off => power_driver.off().await,
                PowerAction::Cycle => {
                    power_driver
                        .cycle(self.bench.power_off_time(&phone.name))
                        .await
                }
            }
            .map_err(Into::into);
        }
        if let Some(button) = &step.button {
            let button_driver = drivers.button()?;
            return match button {
                ButtonAction::Simple(ButtonVerb::Press) => button_driver.press().await,
                ButtonAction::Simple(ButtonVerb::Release) => button_driver.release().await,
                ButtonAction::Hold { hold } => button_driver.hold(hold.0).await,
            }
            .map_err(Into::into);
        }
        if let Some(key) = &step.key {
            let key = match key {
                KeyAction::Simple(name) => crate::bench::key_from_name(name.as_str(), None)?,
                KeyAction::Dial { dial } => {
                    crate::bench::key_from_name("dial", Some(placeholders.expand(dial)?))?
                }
            };
            return drivers.keys()?.key(&key).await.map_err(Into::into);
        }
        if let Some(console) = &step.console {
            return drivers
                .console()?
                .send(&placeholders.expand(&console.send)?)
                .await
                .map_err(Into::into);
        }
        if let Some(wait) = step.wait {
            tokio::time::sleep(wait.0).await;
            return Ok(());
        }
        services.sip_action(step, phone, placeholders).await
    }
}

/// The first panic published after `since`: a service task or any other task
/// of the rig died, so what the case observes from then on cannot be trusted.
async fn panic_during(timeline: &Timeline, since: u64) -> Arc<Event> {
    let mut reader = timeline.reader_from(since + 1);
    while let Some(event) = reader.next().await {
        if event.source == Source::Rig
            && matches!(event.kind.as_str(), "task.panicked" | "service.panicked")
        {
            return event;
        }
    }
    std::future::pending().await
}

fn describe_panic(event: &Event) -> String {
    let what = event
        .field_str("message")
        .or_else(|| event.field_str("error"))
        .unwrap_or("no message");
    let place = match (event.field_str("service"), event.field_str("location")) {
        (Some(service), _) => format!("the {service} service"),
        (None, Some(location)) => format!("a rig task at {location}"),
        (None, None) => "a rig task".to_owned(),
    };
    format!("{place} panicked: {what}; the case was stopped and its services shut down")
}

fn list_nearest(events: &[Arc<Event>]) -> String {
    if events.is_empty() {
        return " Nothing related was on the timeline.".into();
    }
    let mut out = String::from(" Nearest events:");
    for event in events {
        out.push_str("\n    ");
        out.push_str(&event.brief());
    }
    out
}

fn describe_anchor(event: &Event) -> String {
    match event.kind.as_str() {
        "case.start" => "the case start".into(),
        _ => event
            .field_str("description")
            .map_or_else(|| event.kind.clone(), |d| format!("`{d}`")),
    }
}

/// A short sentence for progress lines and reports.
pub fn describe_step(step: &Step, scenario: &Scenario) -> String {
    let within = |s: &Step| step_deadline(s, scenario);
    if let Some(p) = step.power {
        return format!("power {}", format!("{p:?}").to_lowercase());
    }
    if let Some(b) = &step.button {
        return match b {
            ButtonAction::Simple(v) => format!("button {}", format!("{v:?}").to_lowercase()),
            ButtonAction::Hold { hold } => {
                format!("button hold {}", phonerig_core::duration::format(hold.0))
            }
        };
    }
    if let Some(k) = &step.key {
        return match k {
            KeyAction::Simple(name) => format!("key {}", name.as_str()),
            KeyAction::Dial { dial } => format!("key dial {dial}"),
        };
    }
    if let Some(c) = &step.console {
        return format!("console send {:?}", c.send);
    }
    if let Some(n) = &step.notify {
        return format!(
            "NOTIFY Event: {}{}",
            n.event,
            if n.reboot { ";reboot=true" } else { "" }
        );
    }
    if let Some(c) = &step.call {
        return format!("{} calls {}", c.from, c.to);
    }
    for (verb, ext) in [
        ("answers", &step.answer),
        ("holds", &step.hold),
        ("resumes", &step.resume),
        ("hangs up", &step.hangup),
        ("cancels", &step.cancel),
    ] {
        if let Some(ext) = ext {
            return format!("{} {verb}", ext.extension);
        }
    }
    if let Some(r) = &step.reject {
        return format!("{} rejects with {}", r.extension, r.code);
    }
    if let Some(p) = &step.answer_policy {
        return format!(
            "{} answers {}",
            p.extension,
            serde_json::to_string(&p.policy).unwrap_or_default()
        );
    }
    if let Some(w) = step.wait {
        return format!("wait {}", phonerig_core::duration::format(w.0));
    }
    if let Some(e) = &step.expect {
        return format!("expect {} {}", inline_toml(e), within(step));
    }
    if let Some(e) = &step.expect_not {
        let during = step.during.map_or("so far".into(), |d| {
            format!("during {}", phonerig_core::duration::format(d.0))
        });
        return format!("expect no {} {during}", inline_toml(e));
    }
    "step".into()
}

/// `fetch_order = { files = ["a", "b"], protocol = "http" }`: an expectation
/// as a reader would write it, on one line, without the unset fields.
fn inline_toml(value: &impl Serialize) -> String {
    fn render(value: &serde_json::Value) -> String {
        match value {
            serde_json::Value::Object(map) => {
                let parts: Vec<String> = map
                    .iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| format!("{k} = {}", render(v)))
                    .collect();
                format!("{{ {} }}", parts.join(", "))
            }
            serde_json::Value::Array(items) => format!(
                "[{}]",
                items.iter().map(render).collect::<Vec<_>>().join(", ")
            ),
            other => other.to_string(),
        }
    }
    match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(map)) => map
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| format!("{k} = {}", render(v)))
            .collect::<Vec<_>>()
            .join(", "),
        Ok(other) => render(&other),
        Err(_) => String::new(),
    }
}

fn step_deadline(step: &Step, scenario: &Scenario) -> String {
    format!(
        "within {}",
        phonerig_core::duration::format(step.within.map_or(scenario.default_within(), Into::into))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn scenario(phones: &str, steps: &str) -> Scenario {
        let text = format!("name = \"t\"\nsource = \"test\"\nphones = {phones}\n{steps}");
        Scenario::parse(Path::new("t.toml"), &text).unwrap()
    }

    #[rstest]
    #[case("\"all\"", &[], &["uc924", "kx-ut670", "h680"])]
    #[case("\"h680\"", &[], &["h680"])]
    #[case("\"htek-*\"", &[], &["uc924"])]
    #[case("{ model = \"panasonic-*\" }", &[], &["kx-ut670"])]
    #[case("{ names = [\"uc924\", \"h680\"] }", &["h680"], &["h680"])]
    #[case("{ model = \"cisco-*\" }", &[], &[])]
    fn phones_are_selected_by_name_model_glob_and_cli(
        #[case] phones: &str,
        #[case] only: &[&str],
        #[case] expected: &[&str],
    ) {
        let lab = Lab::builtin();
        let s = scenario(phones, "[[step]]\nwait = \"1s\"\n");
        let only: Vec<String> = only.iter().map(|s| s.to_string()).collect();
        let names: Vec<String> = select_phones(&lab, &s, &only)
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, expected);
    }

    #[rstest]
    #[case("power = \"cycle\"", "power cycle")]
    #[case("button = { hold = \"3s\" }", "button hold 3s")]
    #[case("key = { dial = \"4006\" }", "key dial 4006")]
    #[case(
        "notify = { event = \"check-sync\", reboot = true }",
        "NOTIFY Event: check-sync;reboot=true"
    )]
    #[case(
        "expect.fetch = { file = \"a.xml\" }\nwithin = \"5s\"",
        "expect fetch = { file = \"a.xml\" } within 5s"
    )]
    #[case(
        "expect_not.sip = \"register\"\nduring = \"2s\"",
        "expect no sip = \"register\" during 2s"
    )]
    fn steps_read_as_sentences(#[case] step: &str, #[case] expected: &str) {
        let s = scenario("\"all\"", &format!("[[step]]\n{step}\n"));
        assert_eq!(describe_step(s.steps[0].get_ref(), &s), expected);
    }

    #[test]
    fn case_ids_are_paths_under_the_suite_with_the_phone() {
        let mut s = scenario("\"all\"", "[[step]]\nwait = \"1s\"\n");
        s.path = PathBuf::from("scenarios/htek/provisioning/order.toml");
        let phone = Lab::builtin().phone_infos().remove(0);
        assert_eq!(
            case_id(&s, Path::new("scenarios"), &phone),
            "htek/provisioning/order@uc924"
        );
    }
}
