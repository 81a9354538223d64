//! Capture and doctor on a veth pair inside namespaces this test creates
//! (198.18.0.0/15 addresses, removed on drop). Skipped where namespaces or
//! tshark are missing, except under CI.

mod common;

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use common::wait_for;
use phonerig_core::netns::{in_netns, program, require, VethPair};
use phonerig_core::{Mac, Timeline};
use phonerig_drivers::capture::{Capture, CaptureSettings};
use phonerig_drivers::doctor::{self, DoctorInput, PortCheck, Protocol};
use pnet_datalink::Channel;

fn mac_of(netns: &str, interface: &str) -> Mac {
    let out = Command::new("ip")
        .args(["-n", netns, "-o", "link", "show", interface])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mac = text
        .split("link/ether ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a MAC");
    mac.parse().unwrap()
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tshark(pcap: &std::path::Path, filter: &str, fields: &[&str]) -> Vec<String> {
    let mut args = vec![
        "-r".to_owned(),
        pcap.display().to_string(),
        "-Y".to_owned(),
        filter.to_owned(),
        "-T".to_owned(),
        "fields".to_owned(),
    ];
    for field in fields {
        args.push("-e".into());
        args.push((*field).into());
    }
    let out = Command::new("tshark").args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "tshark {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

const STRANGER: [u8; 6] = [0x02, 0x00, 0x00, 0x5e, 0x00, 0x99];

fn lldp_frame(src: Mac) -> Vec<u8> {
    let tlv = |kind: u16, value: &[u8]| {
        let mut t = ((kind << 9) | value.len() as u16).to_be_bytes().to_vec();
        t.extend_from_slice(value);
        t
    };
    let mut frame = vec![0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e];
    frame.extend_from_slice(&src.0);
    frame.extend_from_slice(&0x88ccu16.to_be_bytes());
    let mut chassis = vec![4];
    chassis.extend_from_slice(&src.0);
    frame.extend(tlv(1, &chassis));
    frame.extend(tlv(2, b"\x05LAN"));
    frame.extend(tlv(3, &120u16.to_be_bytes()));
    frame.extend(tlv(5, b"TEST-PHONE"));
    frame.extend(tlv(0, &[]));
    frame
}

fn udp_from_stranger(dst: Mac) -> Vec<u8> {
    let mut frame = dst.0.to_vec();
    frame.extend_from_slice(&STRANGER);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    // IPv4 198.18.210.99 → 198.18.210.1, UDP 4000 → 4000, no payload (checksums zero: nobody validates them here).
    frame.extend_from_slice(&[
        0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0, 198, 18, 210, 99, 198, 18, 210, 1,
    ]);
    frame.extend_from_slice(&[0x0f, 0xa0, 0x0f, 0xa0, 0, 8, 0, 0]);
    frame
}

#[tokio::test]
async fn capture_writes_a_pcap_tshark_reads_and_reports_arp_lldp_and_strangers() {
    if require(VethPair::available()).is_err()
        || require(program("tshark")).is_err()
        || require(program("ping")).is_err()
    {
        return;
    }
    let pair = VethPair::create("dcap", "198.18.210.1/24", Some("198.18.210.2/24")).unwrap();
    let phone_mac = mac_of(&pair.b, &pair.b_if);
    let rig_mac = mac_of(&pair.a, &pair.a_if);
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("capture.pcap");
    let timeline = Timeline::in_memory();
    let settings = CaptureSettings::new(
        &pair.a_if,
        pcap.clone(),
        vec![("phone-b".into(), phone_mac)],
    );
    let publisher = timeline.clone();
    let capture = in_netns(&pair.a, move || {
        Capture::start(settings, publisher).map_err(std::io::Error::other)
    })
    .unwrap();

    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.b,
            "ping",
            "-c",
            "2",
            "-i",
            "0.2",
            "-W",
            "2",
            "198.18.210.1",
        ])
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stderr)
    );
    let b_if = pair.b_if.clone();
    let mut sender = in_netns(&pair.b, move || {
        let interface = pnet_datalink::interfaces()
            .into_iter()
            .find(|i| i.name == b_if)
            .expect("veth in b");
        match pnet_datalink::channel(&interface, Default::default())? {
            Channel::Ethernet(tx, _) => Ok(tx),
            _ => Err(std::io::Error::other("not ethernet")),
        }
    })
    .unwrap();
    sender
        .send_to(&lldp_frame(phone_mac), None)
        .unwrap()
        .unwrap();
    sender
        .send_to(&udp_from_stranger(rig_mac), None)
        .unwrap()
        .unwrap();

    let arp = wait_for(&timeline, Duration::from_secs(5), |e| {
        e.kind == "capture.arp" && e.field_str("op") == Some("request")
    })
    .await;
    assert_eq!(arp.phone.as_deref(), Some("phone-b"));
    assert_eq!(arp.field_str("sender_ip"), Some("198.18.210.2"));
    assert_eq!(arp.field_str("target_ip"), Some("198.18.210.1"));
    let lldp = wait_for(&timeline, Duration::from_secs(5), |e| {
        e.kind == "capture.lldp"
    })
    .await;
    assert_eq!(lldp.field_str("system_name"), Some("TEST-PHONE"));
    assert_eq!(lldp.phone.as_deref(), Some("phone-b"));
    let stranger = wait_for(&timeline, Duration::from_secs(5), |e| {
        e.kind == "capture.unknown_mac"
    })
    .await;
    assert_eq!(stranger.field_str("src_mac"), Some("02:00:00:5e:00:99"));
    assert_eq!(stranger.field_str("src_ip"), Some("198.18.210.99"));

    let stats = capture.stop();
    assert_eq!(
        stats.unknown_macs, 1,
        "the phone and the rig's own MAC are known"
    );
    assert!(
        stats.frames >= 7,
        "2 ARP + 4 ICMP + LLDP + UDP at least: {stats:?}"
    );
    let published = wait_for(&timeline, Duration::from_secs(1), |e| {
        e.kind == "capture.stats"
    })
    .await;
    assert_eq!(published.field_u64("frames"), Some(stats.frames));

    let arp_lines = tshark(&pcap, "arp", &["arp.src.proto_ipv4", "arp.opcode"]);
    assert!(
        arp_lines.contains(&"198.18.210.2\t1".to_owned()),
        "{arp_lines:?}"
    );
    assert!(
        arp_lines.contains(&"198.18.210.1\t2".to_owned()),
        "{arp_lines:?}"
    );
    assert!(
        tshark(&pcap, "icmp.type == 8", &["ip.src"])
            .iter()
            .filter(|l| *l == "198.18.210.2")
            .count()
            >= 2
    );
    assert_eq!(
        tshark(&pcap, "icmp.type == 0", &["ip.src"])
            .iter()
            .filter(|l| *l == "198.18.210.1")
            .count(),
        2
    );
    assert_eq!(
        tshark(&pcap, "lldp", &["lldp.tlv.system.name"]),
        ["TEST-PHONE"]
    );
    assert_eq!(
        tshark(&pcap, "eth.src == 02:00:00:5e:00:99", &["udp.dstport"]),
        ["4000"]
    );
}

#[test]
fn doctor_on_a_namespace_veth_is_ok_and_explains_what_is_wrong() {
    if require(VethPair::available()).is_err() {
        return;
    }
    let pair = VethPair::create("ddoc", "198.18.211.1/24", Some("198.18.211.2/24")).unwrap();
    let (master, slave) = serialport::TTYPort::pair().unwrap();
    let pty = serialport::SerialPort::name(&slave).unwrap();
    drop(slave);
    let bench: IpAddr = "198.18.211.1".parse().unwrap();
    let input = DoctorInput {
        nic: pair.a_if.clone(),
        bench_address: Some(bench),
        serial_devices: vec![
            ("phone-1".into(), pty.into()),
            ("phone-2".into(), "/nonexistent/ttyUSB7".into()),
        ],
        relay_boards: vec![],
        ports: vec![
            PortCheck {
                service: "dhcp".into(),
                protocol: Protocol::Udp,
                port: 67,
            },
            PortCheck {
                service: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
            },
        ],
    };
    let run = input.clone();
    let findings = in_netns(&pair.a, move || Ok(doctor::doctor(&run))).unwrap();
    let a_if = pair.a_if.clone();
    in_netns(&pair.a, move || {
        Ok(doctor::require_lab_nic(&a_if, Some(bench)))
    })
    .unwrap()
    .expect("a ready NIC is accepted");
    drop(master);
    let by = |check: &str| {
        findings
            .iter()
            .find(|f| f.check == check)
            .unwrap_or_else(|| panic!("no {check} in {findings:#?}"))
    };
    for check in [
        "nic.present",
        "nic.up",
        "nic.link",
        "nic.address",
        "nic.not_default_route",
        "serial.phone-1",
        "port.udp/67",
        "port.tcp/80",
    ] {
        let finding = by(check);
        assert!(finding.ok, "{finding:?}");
        assert!(finding.fix.is_empty());
    }
    let serial = by("serial.phone-2");
    assert!(
        !serial.ok
            && serial.detail.contains("/nonexistent/ttyUSB7")
            && serial.fix.contains("/dev/serial/by-id"),
        "{serial:?}"
    );
    // Privileges depend on how the test runs; either way the finding says so.
    let raw = by("privileges.net_raw");
    assert!(raw.ok || raw.fix.contains("setcap"), "{raw:?}");

    // A port already taken, the wrong address, and the NIC as the default route.
    let holder = in_netns(&pair.a, move || {
        std::net::UdpSocket::bind("198.18.211.1:6767")
    })
    .unwrap();
    ip(&[
        "-n",
        &pair.a,
        "route",
        "add",
        "default",
        "via",
        "198.18.211.2",
        "dev",
        &pair.a_if,
    ]);
    let a_if = pair.a_if.clone();
    let findings = in_netns(&pair.a, move || {
        let mut f = doctor::check_nic(&a_if, Some("198.18.211.77".parse().unwrap()));
        f.push(doctor::check_port(
            &PortCheck {
                service: "tftp-test".into(),
                protocol: Protocol::Udp,
                port: 6767,
            },
            Some(bench),
        ));
        Ok(f)
    })
    .unwrap();
    drop(holder);
    let by = |check: &str| findings.iter().find(|f| f.check == check).unwrap().clone();
    let a_if = pair.a_if.clone();
    let refused = in_netns(&pair.a, move || {
        Ok(doctor::require_lab_nic(&a_if, Some(bench)))
    })
    .unwrap()
    .unwrap_err()
    .to_string();
    assert!(
        refused.contains("nic.not_default_route") && refused.contains("fix: use a dedicated NIC"),
        "{refused}"
    );
    let address = by("nic.address");
    assert!(
        !address.ok
            && address.detail.contains("198.18.211.1/24")
            && address.fix.contains("ip addr add 198.18.211.77"),
        "{address:?}"
    );
    let route = by("nic.not_default_route");
    assert!(
        !route.ok && route.fix.contains("dedicated NIC"),
        "{route:?}"
    );
    let port = by("port.udp/6767");
    assert!(!port.ok && port.fix.contains("ss -lpn"), "{port:?}");

    // Carrier goes when the other end goes down.
    ip(&["-n", &pair.b, "link", "set", &pair.b_if, "down"]);
    // The kernel reports carrier changes asynchronously (link watch), so look a few times.
    let mut link = None;
    for _ in 0..30 {
        let a_if = pair.a_if.clone();
        let findings = in_netns(&pair.a, move || Ok(doctor::check_nic(&a_if, None))).unwrap();
        link = findings.into_iter().find(|f| f.check == "nic.link");
        if link.as_ref().is_some_and(|f| !f.ok) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let link = link.unwrap();
    assert!(!link.ok && link.fix.contains("cable"), "{link:?}");
}

#[test]
fn doctor_on_a_missing_nic_says_how_to_fix_it() {
    let refused = doctor::require_lab_nic("prnonexist0", None)
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("nic.present") && refused.contains("ip link"),
        "{refused}"
    );
    let findings = doctor::check_nic("prnonexist0", None);
    assert_eq!(
        findings.len(),
        1,
        "nothing else can be checked without the NIC: {findings:?}"
    );
    let finding = &findings[0];
    assert_eq!(finding.check, "nic.present");
    assert!(!finding.ok);
    assert!(
        finding.detail.contains("no interface `prnonexist0`"),
        "{}",
        finding.detail
    );
    assert!(finding.fix.contains("ip link"), "{}", finding.fix);
}
