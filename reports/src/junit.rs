//! `junit.xml`: one `<testsuite>` per run, one `<testcase>` per scenario per phone,
//! for Jenkins / GitLab.

use std::time::Duration;

use anyhow::Result;
use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};

use crate::summary::{format_duration_us, CaseSummary, RunSummary, StepSummary, Verdict};

/// Renders the run's JUnit XML.
///
/// The failure message is the explanation of the first step that did not
/// pass (what CI dashboards show in their one-line view); the step log goes to
/// `system-out` so the whole case reads without opening the HTML report.
pub fn junit_xml(summary: &RunSummary) -> Result<String> {
    let name = summary
        .suite
        .clone()
        .unwrap_or_else(|| summary.run_name.clone());
    let mut report = Report::new(if summary.run_name.is_empty() {
        "phonerig".to_owned()
    } else {
        summary.run_name.clone()
    });
    let mut suite = TestSuite::new(if name.is_empty() {
        "phonerig".to_owned()
    } else {
        name
    });
    if let Some(started) = parse_wall(&summary.started_wall) {
        report.set_timestamp(started);
        suite.set_timestamp(started);
    }
    let total = Duration::from_micros(summary.duration_us);
    report.set_time(total);
    suite.set_time(total);
    suite.add_properties([
        Property::new("lab", summary.lab.as_str()),
        Property::new("rig_version", summary.rig_version.as_str()),
        Property::new("complete", summary.complete.to_string()),
    ]);
    suite.add_test_cases(summary.cases.iter().map(test_case));
    report.add_test_suite(suite);
    Ok(report.to_string()?)
}

fn test_case(case: &CaseSummary) -> TestCase {
    let mut status = match case.verdict {
        Verdict::Pass => TestCaseStatus::success(),
        Verdict::Fail => TestCaseStatus::non_success(NonSuccessKind::Failure),
        Verdict::Error | Verdict::Aborted => TestCaseStatus::non_success(NonSuccessKind::Error),
    };
    if let Some(failure) = &case.failure {
        status.set_message(failure.explanation.as_str());
        status.set_type(if failure.step_name.is_empty() {
            case.verdict.as_str().to_owned()
        } else {
            format!("step {} {}", failure.step_index, failure.step_name)
        });
        if let Some(step) = case.steps.iter().find(|s| s.index == failure.step_index) {
            if !step.nearest.is_empty() {
                let nearest: Vec<&str> = step.nearest.iter().map(|n| n.brief.as_str()).collect();
                status.set_description(format!("nearest events:\n{}", nearest.join("\n")));
            }
        }
    }
    let mut test = TestCase::new(case.id.as_str(), status);
    // Jenkins groups by classname: the scenario, so one scenario across phones sits together.
    test.set_classname(case.scenario.replace('/', "."));
    test.set_time(Duration::from_micros(case.duration_us));
    if let Some(started) = parse_wall(&case.started_wall) {
        test.set_timestamp(started);
    }
    test.add_properties([
        Property::new("phone", case.phone.as_str()),
        Property::new("model", case.model.as_str()),
        Property::new("mac", case.mac.as_str()),
        Property::new("firmware", case.firmware.as_deref().unwrap_or("")),
        Property::new("file", case.file.as_str()),
        Property::new("source", case.source.as_str()),
        Property::new("tags", case.tags.join(",")),
    ]);
    test.set_system_out(step_log(case));
    test
}

/// One line per step: `[PASS] 1 power-cycle (2.003s)`, then the explanation of a failure.
pub fn step_log(case: &CaseSummary) -> String {
    let mut out = String::new();
    for step in &case.steps {
        out.push_str(&step_line(step));
        out.push('\n');
    }
    if let Some(reason) = &case.reason {
        out.push_str(&format!("case {}: {reason}\n", case.verdict));
    }
    out
}

fn step_line(step: &StepSummary) -> String {
    let verdict = step
        .verdict
        .map_or("NOT JUDGED".to_owned(), |v| v.as_str().to_uppercase());
    let timing = step.duration_us.map_or("-".to_owned(), format_duration_us);
    let mut line = format!("[{verdict}] {} {} ({timing})", step.index, step.name);
    if let Some(explanation) = &step.explanation {
        line.push_str(&format!(": {explanation}"));
    }
    line
}

fn parse_wall(wall: &str) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_rfc3339(wall).ok()
}
