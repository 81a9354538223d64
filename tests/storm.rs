//! `rig storm` end to end with a small storm: every virtual phone leases,
//! fetches its Htek files, registers, takes a NOTIFY check-sync and fetches
//! again; the summary counts every phase and nothing is lost. The figures
//! (times, CPU) are the benchmark's business (bench/storm.sh), not asserted
//! here. Loopback 127.180.0.0/16 is this file's own.

use phonerig_cli::{rig, Workspace};

const RIG: &str = env!("CARGO_BIN_EXE_rig");
const PHONES: u64 = 40;

#[test]
fn a_small_storm_registers_and_resyncs_every_phone() {
    let ws = Workspace::new("");
    let summary = ws.path().join("storm.json");
    let out = rig(
        RIG,
        &[
            "storm",
            "--phones",
            &PHONES.to_string(),
            "--octet",
            "180",
            "--timeout",
            "60s",
            "--runs",
            ws.runs().to_str().unwrap(),
            "--json",
            summary.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "storm failed:\n{stdout}\n{stderr}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).expect("storm.json")).unwrap();
    assert_eq!(report["phones"], PHONES);
    assert_eq!(report["lost_or_failed"], 0, "{stdout}");
    assert!(report["all_registered_s"].is_number(), "{stdout}");
    assert!(report["all_refetched_s"].is_number(), "{stdout}");
    // Every phase saw every phone: lease, three fetches, registration,
    // NOTIFY answered, fetch again.
    let phases = report["phases"].as_array().expect("phases");
    assert!(!phases.is_empty());
    for phase in phases {
        assert_eq!(phase["count"], PHONES, "phase {phase}");
    }
    assert!(report["stopped_in"]
        .as_object()
        .is_some_and(|m| m.is_empty()));
    // The run folder is a complete record like any other run's.
    let events = std::fs::read_to_string(ws.run_dir().join("events.jsonl")).unwrap();
    assert!(events.matches("\"kind\":\"sip.register\"").count() as u64 >= PHONES);
    assert!(ws.run_dir().join("storm.json").is_file());
}
