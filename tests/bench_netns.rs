//! A namespace bench end to end: `rig` (in the root namespace) runs its
//! services inside namespace `a` on one end of a veth pair with the standard
//! ports and real broadcast DHCP; the virtual phones sit on macvlans of the
//! other end in namespace `b`. Root only: without namespaces the tests print
//! SKIPPED (and fail under CI).

use phonerig_cli::{events, netns_lab, repo_root, rig, Workspace};
use phonerig_core::netns::{program, require, VethPair};

const RIG: &str = env!("CARGO_BIN_EXE_rig");

fn namespaces_available() -> bool {
    require(VethPair::available()).is_ok() && require(program("ip")).is_ok()
}

fn failed_steps(run: &std::path::Path) -> Vec<String> {
    events(run)
        .iter()
        .filter(|e| {
            e["kind"] == "step.verdict"
                && e["fields"]["verdict"] != "pass"
                && e["fields"]["verdict"] != "skipped"
        })
        .map(|e| format!("{}: {}", e["fields"]["case"], e["fields"]["explanation"]))
        .collect()
}

#[test]
fn smoke_suite_is_green_on_a_namespace_bench() {
    if !namespaces_available() {
        return;
    }
    let net = "198.18.162";
    let pair = VethPair::create("net2", &format!("{net}.1/24"), None).expect("veth pair");
    let ws = Workspace::new(&netns_lab(net, &pair.a, &pair.a_if, &pair.b, &pair.b_if));
    let scenarios = repo_root().join("scenarios");
    let out = rig(
        RIG,
        &[
            "suite",
            scenarios.to_str().unwrap(),
            "--tag",
            "smoke",
            "--lab",
            ws.lab().to_str().unwrap(),
            "--runs",
            ws.runs().to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let run = ws.run_dir();
    assert!(
        out.status.success(),
        "suite failed:\n{}\n{stderr}",
        failed_steps(&run).join("\n")
    );
    let all = events(&run);
    let ends = all.iter().filter(|e| e["kind"] == "case.end").count();
    assert!(ends >= 3, "only {ends} smoke cases ran\n{stderr}");

    // Real broadcast DHCP on the standard ports, served from inside namespace `a`.
    let offers: Vec<_> = all
        .iter()
        .filter(|e| e["kind"] == "dhcp.offer" || e["kind"] == "dhcp.ack")
        .collect();
    assert!(!offers.is_empty(), "no DHCP offer or ack in the run");
    // check-sync-refetch registers the Htek phone over SIP in the namespace.
    assert!(
        all.iter()
            .any(|e| e["kind"] == "sip.register" && e["fields"]["result"] == "ok"),
        "no successful SIP REGISTER reached the rig in the namespace"
    );
    // Every service bound the standard ports on the namespace's address
    // (DHCP on 0.0.0.0:67 tied to the NIC: broadcasts carry no address of ours).
    let started: Vec<String> = all
        .iter()
        .filter(|e| e["kind"] == "service.started")
        .map(|e| e["fields"]["addrs"].to_string())
        .collect();
    let expected = [
        "0.0.0.0:67".to_owned(),
        format!("{net}.1:69"),
        format!("{net}.1:80"),
        format!("{net}.1:443"),
        format!("{net}.1:21"),
        format!("{net}.1:5060"),
    ];
    for address in expected {
        assert!(
            started
                .iter()
                .any(|a| a.contains(&format!("\"{address}\""))),
            "no service started on {address}: {started:?}"
        );
    }

    // The lab NIC is not loopback: the whole run was captured there.
    let pcap = run.join("capture.pcap");
    let size = std::fs::metadata(&pcap).map(|m| m.len()).unwrap_or(0);
    assert!(size > 24, "capture.pcap missing or empty ({size} bytes)");
    let stats = all
        .iter()
        .find(|e| e["kind"] == "capture.stats")
        .expect("capture.stats at the end of the run");
    assert!(
        stats["fields"]["frames"].as_u64().unwrap_or(0) > 0,
        "the capture saw no frames: {stats}"
    );
    assert!(
        std::fs::read_to_string(run.join("report.html"))
            .unwrap_or_default()
            .contains("capture.pcap"),
        "the report does not link the capture"
    );
    drop(pair);
}

#[test]
fn a_missing_lab_nic_stops_the_run_before_any_service_binds() {
    if !namespaces_available() {
        return;
    }
    let net = "198.18.163";
    let pair = VethPair::create("net3", &format!("{net}.1/24"), None).expect("veth pair");
    // The lab names an interface that is not in the namespace.
    let lab = netns_lab(net, &pair.a, "prnetmissing0", &pair.b, &pair.b_if);
    let ws = Workspace::new(&lab);
    let scenarios = repo_root().join("scenarios");
    let out = rig(
        RIG,
        &[
            "suite",
            scenarios.to_str().unwrap(),
            "--tag",
            "smoke",
            "--lab",
            ws.lab().to_str().unwrap(),
            "--runs",
            ws.runs().to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ran without its NIC:\n{stderr}");
    assert!(
        stderr.contains("the lab NIC is not ready") && stderr.contains("prnetmissing0"),
        "{stderr}"
    );
    let run = ws.run_dir();
    assert!(events(&run).iter().any(|e| e["kind"] == "bench.failed"));
    assert!(
        !events(&run).iter().any(|e| e["kind"] == "service.started"),
        "a service started without the lab NIC"
    );
    drop(pair);
}
