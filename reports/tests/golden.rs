//! Golden-file tests of `junit.xml` and `summary.json` for a recorded run,
//! plus structural checks of the JUnit XML parsed back.
//!
//! Regenerate the golden files after an intended change with
//! `UPDATE_GOLDEN=1 cargo test -p phonerig-reports --test golden`, then review the diff.

use std::path::{Path, PathBuf};

use phonerig_reports::{load_events, render_run_folder, summarize, Verdict};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/nightly")
}

/// A fresh run folder holding a copy of the recorded events.
fn rendered_copy() -> (tempfile::TempDir, phonerig_reports::RenderedReport) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::copy(
        data_dir().join("events.jsonl"),
        dir.path().join("events.jsonl"),
    )
    .expect("copy events");
    let report = render_run_folder(dir.path()).expect("render");
    (dir, report)
}

fn check_golden(name: &str, actual: &str) {
    let golden = data_dir().join("golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
        std::fs::write(&golden, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            golden.display()
        )
    });
    if expected != actual {
        let first_difference = expected
            .lines()
            .zip(actual.lines())
            .enumerate()
            .find(|(_, (e, a))| e != a)
            .map(|(i, (e, a))| format!("line {}:\n  expected: {e}\n  actual:   {a}", i + 1))
            .unwrap_or_else(|| "one output is a prefix of the other".to_owned());
        panic!(
            "{name} differs from {} — {first_difference}\n(UPDATE_GOLDEN=1 regenerates)",
            golden.display()
        );
    }
}

#[test]
fn junit_matches_golden() {
    let (_dir, report) = rendered_copy();
    check_golden(
        "junit.xml",
        &std::fs::read_to_string(&report.junit).unwrap(),
    );
}

#[test]
fn summary_matches_golden() {
    let (_dir, report) = rendered_copy();
    check_golden(
        "summary.json",
        &std::fs::read_to_string(&report.summary_json).unwrap(),
    );
}

#[test]
fn certificate_matches_golden() {
    let (_dir, report) = rendered_copy();
    check_golden(
        "certificate.json",
        &std::fs::read_to_string(&report.certificate_json).unwrap(),
    );
}

#[test]
fn junit_structure() {
    let (_dir, report) = rendered_copy();
    let xml = std::fs::read_to_string(&report.junit).unwrap();
    let doc = roxmltree::Document::parse(&xml).expect("junit.xml is well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    assert_eq!(root.attribute("tests"), Some("3"));
    assert_eq!(root.attribute("failures"), Some("1"));
    assert_eq!(root.attribute("errors"), Some("0"));

    let suites: Vec<_> = root
        .children()
        .filter(|n| n.has_tag_name("testsuite"))
        .collect();
    assert_eq!(suites.len(), 1, "one suite per run");
    let suite = suites[0];
    let property = |node: roxmltree::Node, name: &str| {
        node.descendants()
            .filter(|p| p.has_tag_name("property"))
            .find(|p| p.attribute("name") == Some(name))
            .and_then(|p| p.attribute("value"))
            .map(str::to_owned)
    };
    assert_eq!(
        property(suite, "lab").as_deref(),
        Some("bench-3 (lab/bench3.toml)")
    );
    assert_eq!(property(suite, "rig_version").as_deref(), Some("0.1.0"));

    let cases: Vec<_> = suite
        .children()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    let names: Vec<&str> = cases.iter().filter_map(|c| c.attribute("name")).collect();
    assert_eq!(
        names,
        [
            "htek/fetch-order@uc924-1",
            "htek/panic-silent-call@uc924-1",
            "panasonic/check-sync@ut670-1"
        ]
    );
    assert_eq!(
        property(cases[0], "firmware").as_deref(),
        Some("2.42.6.5.64")
    );
    assert_eq!(property(cases[2], "firmware").as_deref(), Some("01.133"));
    assert_eq!(property(cases[2], "model").as_deref(), Some("KX-UT670"));

    let failures: Vec<_> = cases
        .iter()
        .map(|c| {
            c.children()
                .find(|n| n.has_tag_name("failure") || n.has_tag_name("error"))
        })
        .collect();
    assert!(failures[0].is_none() && failures[2].is_none());
    let failure = failures[1].expect("the silent-call case failed");
    assert!(failure.has_tag_name("failure"));
    let message = failure.attribute("message").unwrap();
    assert!(
        message.starts_with("expected never console.line matching /screen -> Call/"),
        "{message}"
    );
    assert_eq!(failure.attribute("type"), Some("step 4 lcd-stays-idle"));

    let out = cases[1]
        .children()
        .find(|n| n.has_tag_name("system-out"))
        .and_then(|n| n.text())
        .expect("step log in system-out");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "five steps and the case reason: {out}");
    assert_eq!(lines[0], "[PASS] 1 press-button (0.301s)");
    assert!(
        lines[3].starts_with("[FAIL] 4 lcd-stays-idle (1.000s): expected never"),
        "{}",
        lines[3]
    );
    for case in &cases {
        let seconds: f64 = case.attribute("time").unwrap().parse().unwrap();
        assert!(seconds > 0.0);
    }
}

#[test]
fn summary_counts_and_phones() {
    let events = load_events(data_dir().join("events.jsonl")).unwrap();
    let summary = summarize(&events);
    assert!(summary.complete);
    assert_eq!(summary.verdict, Verdict::Fail);
    assert!(!summary.succeeded());
    assert_eq!(
        (
            summary.counts.total,
            summary.counts.passed,
            summary.counts.failed
        ),
        (3, 2, 1)
    );
    let case = &summary.cases[1];
    assert_eq!(case.mac, "00:1f:c1:1c:92:4a");
    assert_eq!(case.failure.as_ref().map(|f| f.step_index), Some(4));
    // Every event between case.start and case.end belongs to the case.
    let kinds: Vec<&str> = events[case.events.clone()]
        .iter()
        .map(|e| e.kind.as_str())
        .collect();
    assert_eq!(kinds.first(), Some(&"case.start"));
    assert_eq!(kinds.last(), Some(&"case.end"));
    assert!(kinds.contains(&"rtp.stats"));
    let table = summary.table();
    assert!(
        table.contains("htek/panic-silent-call@uc924-1  uc924-1  FAIL"),
        "{table}"
    );
}

/// A run killed in the middle of the second case, mid-way through writing a line:
/// the report still renders, the open case is an error in JUnit, and the page says so.
#[test]
fn killed_run_still_renders() {
    let text = std::fs::read_to_string(data_dir().join("events.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let cut = lines
        .iter()
        .position(|l| l.contains("\"lcd-stays-idle\""))
        .unwrap()
        + 2;
    let mut killed = lines[..cut].join("\n");
    killed.push('\n');
    killed.push_str(&lines[cut][..lines[cut].len() / 2]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("events.jsonl"), killed).unwrap();

    let report = render_run_folder(dir.path()).expect("a killed run renders");
    assert!(!report.summary.complete);
    assert_eq!(report.summary.verdict, Verdict::Aborted);
    assert_eq!(report.summary.cases.len(), 2);
    assert_eq!(report.summary.cases[1].verdict, Verdict::Aborted);

    let xml = std::fs::read_to_string(&report.junit).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let errors: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("error"))
        .collect();
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].attribute("message"),
        Some("the run stopped before this case ended")
    );
    let html = std::fs::read_to_string(&report.html).unwrap();
    assert!(html.contains("The run did not end normally"));
    let certificate = std::fs::read_to_string(&report.certificate_json).unwrap();
    assert!(certificate.contains("\"passed\": false"));
}
