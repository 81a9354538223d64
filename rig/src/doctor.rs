//! `rig doctor`: what a lab file needs of this machine (its NIC and address,
//! every phone's serial device, every USB relay board, the service ports),
//! checked by `phonerig_drivers::doctor` and printed with a fix for each problem.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::anyhow;
use phonerig_drivers::doctor::{DoctorInput, Finding, PortCheck, Protocol};

use crate::lab::Lab;

/// Backends whose `device` parameter is a serial port (consoles, MCU buttons).
const SERIAL_BACKEND: &str = "serial";
const RELAY_BACKEND: &str = "usb-relay";

/// What to check for `lab`.
pub fn doctor_input(lab: &Lab) -> DoctorInput {
    let mut serial_devices = Vec::new();
    let mut relay_boards: Vec<String> = Vec::new();
    for phone in lab.phones.iter().map(|p| p.get_ref()) {
        // The explicit capabilities only: a virtual phone's `sim` backends need nothing of the machine.
        for spec in [&phone.button, &phone.power, &phone.console, &phone.keys]
            .into_iter()
            .flatten()
        {
            let param = |name: &str| spec.params.get(name).and_then(|v| v.as_str());
            match spec.backend.as_str() {
                SERIAL_BACKEND => {
                    if let Some(device) = param("device") {
                        let entry = (phone.name.clone(), PathBuf::from(device));
                        if !serial_devices.contains(&entry) {
                            serial_devices.push(entry);
                        }
                    }
                }
                RELAY_BACKEND => {
                    if let Some(serial) = param("serial") {
                        if !relay_boards.iter().any(|s| s == serial) {
                            relay_boards.push(serial.to_owned());
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let ports = lab.ports();
    let port = |service: &str, protocol, port| PortCheck {
        service: service.to_owned(),
        protocol,
        port,
    };
    DoctorInput {
        nic: lab.bench.nic.clone(),
        bench_address: Some(IpAddr::V4(lab.bench.ip)),
        serial_devices,
        relay_boards,
        ports: vec![
            port("DHCP", Protocol::Udp, ports.dhcp),
            port("TFTP", Protocol::Udp, ports.tftp),
            port("HTTP", Protocol::Tcp, ports.http),
            port("HTTPS", Protocol::Tcp, ports.https),
            port("FTP", Protocol::Tcp, ports.ftp),
            port("SIP", Protocol::Udp, ports.sip),
            port("SIP", Protocol::Tcp, ports.sip),
        ],
    }
}

/// Runs every check; inside `[bench] netns` when the lab has one, since the
/// NIC, its address and the ports are those of that namespace.
pub fn run(lab: &Lab) -> anyhow::Result<Vec<Finding>> {
    let input = doctor_input(lab);
    match &lab.bench.netns {
        Some(netns) => phonerig_core::netns::in_netns(netns, move || {
            Ok(phonerig_drivers::doctor::doctor(&input))
        })
        .map_err(|e| anyhow!("entering network namespace `{netns}` ([bench] netns): {e}")),
        None => Ok(phonerig_drivers::doctor::doctor(&input)),
    }
}

/// One line per finding, `ok` or `FAIL`, the fix indented under a failure.
pub fn render(findings: &[Finding]) -> String {
    let mut out = String::new();
    for finding in findings {
        let mark = if finding.ok { "ok  " } else { "FAIL" };
        out.push_str(&format!(
            "{mark} {:<28} {}\n",
            finding.check, finding.detail
        ));
        if !finding.ok && !finding.fix.is_empty() {
            out.push_str(&format!("     fix: {}\n", finding.fix));
        }
    }
    let failed = findings.iter().filter(|f| !f.ok).count();
    out.push_str(&match failed {
        0 => format!("{} checks, all ok\n", findings.len()),
        n => format!("{} checks, {n} failed\n", findings.len()),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab(phones: &str) -> Lab {
        let text = format!(
            "name = \"t\"\n[bench]\nnic = \"eth9\"\nip = \"198.18.161.1\"\nprefix = 24\npool = {{ start = \"198.18.161.10\", end = \"198.18.161.20\" }}\n{phones}"
        );
        Lab::parse(std::path::Path::new("t.toml"), &text).unwrap()
    }

    #[test]
    fn serial_devices_and_relay_boards_come_from_the_phones() {
        let lab = lab(r#"
[[phone]]
name = "desk1"
model = "htek-uc924"
mac = "00:1f:c1:00:00:01"
ext = "4002"
console = { backend = "serial", device = "/dev/ttyUSB7" }
power = { backend = "usb-relay", serial = "HW348", relay = 1 }
button = { backend = "usb-relay", serial = "HW348", relay = 2 }

[[phone]]
name = "desk2"
model = "htek-uc924"
mac = "00:1f:c1:00:00:02"
ext = "4003"
power = { backend = "usb-relay", serial = "QW001", relay = 1 }
"#);
        let input = doctor_input(&lab);
        assert_eq!(input.nic, "eth9");
        assert_eq!(input.bench_address, Some("198.18.161.1".parse().unwrap()));
        assert_eq!(
            input.serial_devices,
            vec![("desk1".to_owned(), PathBuf::from("/dev/ttyUSB7"))]
        );
        assert_eq!(
            input.relay_boards,
            vec!["HW348".to_owned(), "QW001".to_owned()]
        );
        let ports: Vec<(Protocol, u16)> =
            input.ports.iter().map(|p| (p.protocol, p.port)).collect();
        assert!(ports.contains(&(Protocol::Udp, 67)));
        assert!(ports.contains(&(Protocol::Tcp, 80)));
        assert!(ports.contains(&(Protocol::Udp, 5060)));
    }

    #[test]
    fn failures_print_their_fix_and_the_count() {
        let findings = vec![
            Finding {
                check: "nic.present".into(),
                ok: false,
                detail: "no interface `eth9`".into(),
                fix: "plug in the bench NIC".into(),
            },
            Finding {
                check: "privileges.net_raw".into(),
                ok: true,
                detail: "root".into(),
                fix: String::new(),
            },
        ];
        let text = render(&findings);
        assert!(text.contains("FAIL nic.present"), "{text}");
        assert!(text.contains("     fix: plug in the bench NIC"), "{text}");
        assert!(text.contains("ok   privileges.net_raw"), "{text}");
        assert!(text.ends_with("2 checks, 1 failed\n"), "{text}");
    }
}
