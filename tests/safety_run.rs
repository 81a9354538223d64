//! Run integrity and network safety through the real `rig` binary:
//! SIGTERM and Ctrl-C (SIGINT) mid-run leave a complete run folder with the
//! verdict `aborted` and the ports released; every service binds the lab
//! address, never the wildcard; and on a namespace bench whose NIC carries
//! the default route the run refuses to serve DHCP until the operator passes
//! `--i-know-this-interface-is-dedicated`. Loopback labs 127.151–152.x and
//! namespaces `prsafe…` (198.18.154.0/24) are this file's own.

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use phonerig_cli::{events, loopback_lab, netns_lab, rig, Workspace};
use phonerig_core::netns::{program, require, VethPair};

const RIG: &str = env!("CARGO_BIN_EXE_rig");

const LONG_RUN: &str = "name = \"long\"\nsource = \"test\"\nphones = \"uc924\"\n[[step]]\npower = \"cycle\"\n[[step]]\nwait = \"60s\"\n";

fn wait_until_events_contain(ws: &Workspace, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let written = std::fs::read_dir(ws.runs())
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| e.path().join("events.jsonl"));
        if let Some(path) = written {
            if std::fs::read_to_string(&path)
                .map(|t| t.contains(needle))
                .unwrap_or(false)
            {
                return;
            }
        }
        assert!(Instant::now() < deadline, "no `{needle}` event within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal_mid_run_completes_the_run_folder(signal: &str, octet: u8) {
    let ws = Workspace::new(&loopback_lab(octet));
    let scenario = ws.write("long.toml", LONG_RUN);
    let mut child = Command::new(RIG)
        .args([
            "run",
            scenario.to_str().unwrap(),
            "--lab",
            ws.lab().to_str().unwrap(),
            "--runs",
            ws.runs().to_str().unwrap(),
        ])
        .env("RIG_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The phone is provisioning: services are up and events are being written.
    wait_until_events_contain(&ws, "dhcp.");
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("rig did not stop within 30 s of SIG{signal}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1), "an aborted run is not a pass");

    let run = ws.run_dir();
    // `events` panics on any line that is not a whole JSON event.
    let all = events(&run);
    let last = all.last().expect("events");
    assert_eq!(last["kind"], "run.end", "the run end is the last event");
    assert_eq!(last["fields"]["verdict"], "aborted", "{last}");
    let case_end = all
        .iter()
        .find(|e| e["kind"] == "case.end")
        .expect("the interrupted case is closed");
    assert_eq!(case_end["fields"]["verdict"], "aborted", "{case_end}");
    for kind in ["service.started", "service.stopped"] {
        assert_eq!(
            all.iter().filter(|e| e["kind"] == kind).count(),
            5,
            "every service {kind}"
        );
    }
    // Services bound the lab address only, never the wildcard.
    let lab_ip = format!("127.{octet}.0.1:");
    for started in all.iter().filter(|e| e["kind"] == "service.started") {
        for addr in started["fields"]["addrs"].as_array().unwrap() {
            let addr = addr.as_str().unwrap();
            assert!(
                addr.starts_with(&lab_ip),
                "{} bound {addr}",
                started["fields"]["service"]
            );
        }
    }
    for report in ["report.html", "summary.json", "junit.xml"] {
        assert!(run.join(report).is_file(), "{report} not rendered");
    }
    // The ports are free again.
    let ip = Ipv4Addr::new(127, octet, 0, 1);
    for port in [8080, 2121, 5060] {
        TcpListener::bind((ip, port)).unwrap_or_else(|e| panic!("TCP {port} still held: {e}"));
    }
    for port in [6767, 6969, 5060] {
        UdpSocket::bind((ip, port)).unwrap_or_else(|e| panic!("UDP {port} still held: {e}"));
    }
}

#[test]
fn sigterm_mid_run_aborts_cleanly_with_a_complete_run_folder() {
    signal_mid_run_completes_the_run_folder("TERM", 151);
}

#[test]
fn ctrl_c_mid_run_aborts_cleanly_with_a_complete_run_folder() {
    signal_mid_run_completes_the_run_folder("INT", 152);
}

const SHORT_RUN: &str =
    "name = \"short\"\nsource = \"test\"\nphones = \"uc924\"\n[[step]]\nwait = \"100ms\"\n";

#[test]
fn a_nic_with_the_default_route_is_refused_until_declared_dedicated() {
    if require(VethPair::available()).is_err() || require(program("ip")).is_err() {
        return;
    }
    let net = "198.18.154";
    let pair = VethPair::create("safe4", &format!("{net}.1/24"), None).expect("veth pair");
    let out = Command::new("ip")
        .args(["-n", &pair.a, "route", "add", "default", "dev", &pair.a_if])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ws = Workspace::new(&netns_lab(net, &pair.a, &pair.a_if, &pair.b, &pair.b_if));
    let scenario = ws.write("short.toml", SHORT_RUN);
    let args = |extra: &[&'static str], runs: &str| -> Vec<String> {
        let mut args: Vec<String> = vec![
            "run".into(),
            scenario.to_str().unwrap().into(),
            "--lab".into(),
            ws.lab().to_str().unwrap().into(),
            "--runs".into(),
            runs.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };

    let refused_runs = ws.path().join("refused");
    let argv = args(&[], refused_runs.to_str().unwrap());
    let out = rig(RIG, &argv.iter().map(String::as_str).collect::<Vec<_>>());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "served on the default-route NIC:\n{stderr}"
    );
    let run = std::fs::read_dir(&refused_runs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    // Refused before any service binds, saying why and how to override.
    assert!(stderr.contains("default route"), "{stderr}");
    assert!(
        stderr.contains("--i-know-this-interface-is-dedicated"),
        "{stderr}"
    );
    let all = events(&run);
    assert!(
        !all.iter().any(|e| e["kind"] == "service.started"),
        "a service started on the refused NIC"
    );

    let allowed_runs = ws.path().join("allowed");
    let argv = args(
        &["--i-know-this-interface-is-dedicated"],
        allowed_runs.to_str().unwrap(),
    );
    let out = rig(RIG, &argv.iter().map(String::as_str).collect::<Vec<_>>());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let run = std::fs::read_dir(&allowed_runs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let all = events(&run);
    assert!(
        all.iter().any(|e| e["kind"] == "dhcp.probe"),
        "DHCP did not get as far as the probe with the override\n{stderr}"
    );
    assert!(
        all.iter()
            .any(|e| e["kind"] == "service.started" && e["fields"]["service"] == "dhcp"),
        "DHCP did not start with the override\n{stderr}"
    );
    assert!(
        all.iter().any(|e| e["kind"] == "warning"
            && e["fields"]["error"]
                .as_str()
                .is_some_and(|w| w.contains("overridden") && w.contains("default route"))),
        "the override is not recorded as a warning"
    );
    assert!(out.status.success(), "the overridden run failed:\n{stderr}");
    drop(pair);
}
