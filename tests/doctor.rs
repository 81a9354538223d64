//! `rig doctor` against a namespace bench that is ready (all ok, exit 0) and
//! against a lab whose NIC and serial device do not exist (FAIL with fixes, exit 1).

use phonerig_cli::{netns_lab, rig, Workspace};
use phonerig_core::netns::{program, require, VethPair};

const RIG: &str = env!("CARGO_BIN_EXE_rig");

#[test]
fn a_ready_namespace_bench_passes_every_check() {
    if require(VethPair::available()).is_err() || require(program("ip")).is_err() {
        return;
    }
    let net = "198.18.164";
    let pair = VethPair::create("net4", &format!("{net}.1/24"), None).expect("veth pair");
    let ws = Workspace::new(&netns_lab(net, &pair.a, &pair.a_if, &pair.b, &pair.b_if));
    let out = rig(RIG, &["doctor", "--lab", ws.lab().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for check in [
        "nic.present",
        "nic.up",
        "nic.address",
        "nic.not_default_route",
        "port.udp/67",
        "port.udp/69",
        "port.tcp/80",
        "port.tcp/443",
        "port.tcp/21",
        "port.udp/5060",
        "port.tcp/5060",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("ok  ") && l.contains(check)),
            "no ok line for {check}:\n{stdout}"
        );
    }
    assert!(stdout.contains(&format!("carries {net}.1")), "{stdout}");
    assert!(stdout.contains("all ok"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    drop(pair);
}

#[test]
fn a_missing_nic_and_serial_device_fail_with_their_fixes() {
    // Reads this machine's interfaces only; the NIC and device do not exist anywhere.
    let lab = r#"
name = "missing-hardware"
[bench]
nic = "prnetmissing1"
ip = "198.18.165.1"
prefix = 24
pool = { start = "198.18.165.10", end = "198.18.165.250" }

[[phone]]
name = "desk1"
model = "htek-uc924"
mac = "00:1f:c1:00:01:65"
ext = "4002"
console = { backend = "serial", device = "/dev/prnet-no-such-tty" }
"#;
    let ws = Workspace::new(lab);
    let out = rig(RIG, &["doctor", "--lab", ws.lab().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    let failed_with_fix = |check: &str, fix: &str| {
        let at = lines
            .iter()
            .position(|l| l.starts_with("FAIL") && l.contains(check))
            .unwrap_or_else(|| panic!("no FAIL line for {check}:\n{stdout}"));
        assert!(
            lines
                .get(at + 1)
                .is_some_and(|l| l.trim_start().starts_with("fix:") && l.contains(fix)),
            "no fix under {check}:\n{stdout}"
        );
    };
    failed_with_fix("nic.present", "`ip link`");
    failed_with_fix("serial.desk1", "/dev/serial/by-id");
    assert!(stdout.contains("no interface `prnetmissing1`"), "{stdout}");
    assert!(
        stdout.lines().last().unwrap_or("").contains("failed"),
        "{stdout}"
    );
}
