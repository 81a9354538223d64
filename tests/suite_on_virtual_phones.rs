//! The README's first command, as a test: the whole scenario library against
//! the virtual phones on a loopback address of this test's own.

use phonerig_cli::{events, loopback_lab, repo_root, rig, Workspace};

const RIG: &str = env!("CARGO_BIN_EXE_rig");

#[test]
fn scenario_suite_is_green_on_virtual_phones() {
    let ws = Workspace::new(&loopback_lab(110));
    let scenarios = repo_root().join("scenarios");
    let out = rig(
        RIG,
        &[
            "suite",
            scenarios.to_str().unwrap(),
            "--lab",
            ws.lab().to_str().unwrap(),
            "--runs",
            ws.runs().to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let run = ws.run_dir();
    let failures: Vec<String> = events(&run)
        .iter()
        .filter(|e| {
            e["kind"] == "step.verdict"
                && e["fields"]["verdict"] != "pass"
                && e["fields"]["verdict"] != "skipped"
        })
        .map(|e| format!("{}: {}", e["fields"]["case"], e["fields"]["explanation"]))
        .collect();
    assert!(
        out.status.success(),
        "suite failed:\n{}\n{stderr}",
        failures.join("\n")
    );
    let ends: Vec<_> = events(&run)
        .into_iter()
        .filter(|e| e["kind"] == "case.end")
        .collect();
    assert!(ends.len() >= 6, "only {} cases ran", ends.len());
    for file in ["events.jsonl", "summary.json", "junit.xml", "report.html"] {
        assert!(
            run.join(file).is_file(),
            "{file} missing from the run folder"
        );
    }
}
