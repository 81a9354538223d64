//! `rig mutants` end to end: the real scenario library against virtual phones
//! with the fault switch set, one fault at a time. The clean run must be green
//! and every fault of the subset must turn at least one scenario red.
//!
//! The whole catalogue over the whole library takes too long for a debug
//! build in CI, so this runs the `smoke` scenarios with the faults they are
//! meant to catch, stopping each fault at its first red case. The full table
//! is `cargo run --release --bin rig -- mutants scenarios` (docs/mutants.md).

use phonerig_cli::{loopback_lab, repo_root, rig, Workspace};

const RIG: &str = env!("CARGO_BIN_EXE_rig");

/// Faults whose rules the `smoke` scenarios check, one per place the fault
/// switch acts on (file order, stop rule, server priority, NOTIFY, Panasonic
/// URL expansion, H680 boot file). The whole catalogue: docs/mutants.md.
const SMOKE_FAULTS: &[&str] = &[
    "htek-wrong-fetch-order",
    "htek-no-stop-at-first-success",
    "htek-option-66-first",
    "htek-ignores-check-sync",
    "panasonic-upper-case-mac",
    "h680-boot-files-reversed",
];

#[test]
fn smoke_scenarios_catch_every_fault_they_cover() {
    let ws = Workspace::new(&loopback_lab(135));
    let scenarios = repo_root().join("scenarios");
    let lab = ws.lab();
    let runs = ws.runs();
    let mut args = vec![
        "mutants",
        scenarios.to_str().unwrap(),
        "--lab",
        lab.to_str().unwrap(),
        "--runs",
        runs.to_str().unwrap(),
        "--tag",
        "smoke",
        "--first-red",
    ];
    for fault in SMOKE_FAULTS {
        args.extend(["--fault", fault]);
    }
    let out = rig(RIG, &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let summary = format!("{n} of {n} faults caught", n = SMOKE_FAULTS.len());
    assert!(stdout.contains(&summary), "{stdout}");
    assert!(
        stdout.lines().next().unwrap_or("").starts_with("fault"),
        "{stdout}"
    );

    // The machine-readable report agrees, and each fault has its own run folder.
    let root = ws.run_dir();
    assert!(root
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("mutants-"));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("mutants.json")).unwrap()).unwrap();
    assert_eq!(report["clean_green"], true, "{report:#}");
    assert!(root.join("clean").join("events.jsonl").is_file());
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), SMOKE_FAULTS.len());
    for row in rows {
        let fault = row["fault"].as_str().unwrap();
        let red = row["red"].as_array().unwrap();
        assert!(!red.is_empty(), "{fault} was not caught: {row:#}");
        // The red case ran with the fault on its phone: the run folder says so.
        let events = std::fs::read_to_string(root.join(fault).join("events.jsonl")).unwrap();
        assert!(events.contains("\"case.end\""), "{fault}: no case ran");
    }
}

#[test]
fn unknown_fault_names_are_refused_with_the_catalogue() {
    let ws = Workspace::new(&loopback_lab(136));
    let out = rig(
        RIG,
        &[
            "mutants",
            repo_root().join("scenarios").to_str().unwrap(),
            "--lab",
            ws.lab().to_str().unwrap(),
            "--runs",
            ws.runs().to_str().unwrap(),
            "--fault",
            "phone-catches-fire",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("unknown fault `phone-catches-fire`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("panasonic-master-over-standard"),
        "{stderr}"
    );
    assert!(!ws.runs().exists(), "nothing may run on bad input");
}

#[test]
fn a_lab_file_fault_reaches_the_virtual_phone_and_unknown_ones_stop_the_bench() {
    // Set in the lab file, the fault is live: the phone asks for upper-case names.
    let lab = loopback_lab(137).replacen(
        "firmware = \"2.0.4.4.36\"",
        "firmware = \"2.0.4.4.36\"\nfaults = [\"htek-upper-case-mac\"]",
        1,
    );
    let ws = Workspace::new(&lab);
    let scenario = repo_root().join("scenarios/htek/provisioning/fetch-order-http-option66.toml");
    let out = rig(
        RIG,
        &[
            "run",
            scenario.to_str().unwrap(),
            "--lab",
            ws.lab().to_str().unwrap(),
            "--runs",
            ws.runs().to_str().unwrap(),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = std::fs::read_to_string(ws.run_dir().join("events.jsonl")).unwrap();
    assert!(
        events.contains("cfg001FC110D3A9"),
        "upper-case MAC requested"
    );

    // An unknown name is refused when the bench opens, naming the known ones.
    let lab = loopback_lab(138).replacen(
        "firmware = \"2.0.4.4.36\"",
        "firmware = \"2.0.4.4.36\"\nfaults = [\"htek-forgets-everything\"]",
        1,
    );
    let ws = Workspace::new(&lab);
    let out = rig(
        RIG,
        &[
            "run",
            scenario.to_str().unwrap(),
            "--lab",
            ws.lab().to_str().unwrap(),
            "--runs",
            ws.runs().to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    let events = std::fs::read_to_string(ws.run_dir().join("events.jsonl")).unwrap();
    assert!(
        events.contains("unknown fault `htek-forgets-everything`")
            && events.contains("htek-wrong-fetch-order"),
        "{stderr}\n{events}"
    );
}
