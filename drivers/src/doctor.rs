//! `rig doctor`: checks a bench before a run and says how to fix each problem.
//!
//! Every check gives a [`Finding`]; nothing here changes the machine. Checks
//! that read network state (interfaces, routes) see the network namespace of
//! the calling thread, so they can be run inside a test namespace.

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::backends::usb_relay::{list_boards, RusbTransport, UsbTransport};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What was checked: `nic.present`, `privileges.net_raw`, `serial.uc924-1`, `port.udp/67`, …
    pub check: String,
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// How to fix it (empty when ok).
    pub fix: String,
}

impl Finding {
    fn ok(check: impl Into<String>, detail: impl Into<String>) -> Finding {
        Finding {
            check: check.into(),
            ok: true,
            detail: detail.into(),
            fix: String::new(),
        }
    }
    fn bad(check: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            check: check.into(),
            ok: false,
            detail: detail.into(),
            fix: fix.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Udp,
    Tcp,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
        }
    }
}

/// A port a service will bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortCheck {
    pub service: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// What to check, from the lab file.
#[derive(Debug, Clone, Default)]
pub struct DoctorInput {
    /// The lab NIC.
    pub nic: String,
    /// The rig's address on it (the services bind it).
    pub bench_address: Option<IpAddr>,
    /// `(phone, device)` for every `serial` console or button.
    pub serial_devices: Vec<(String, PathBuf)>,
    /// Serial strings of every `usb-relay` board the lab file uses.
    pub relay_boards: Vec<String>,
    pub ports: Vec<PortCheck>,
}

/// Runs every check against the real machine.
pub fn doctor(input: &DoctorInput) -> Vec<Finding> {
    doctor_with_usb(input, &RusbTransport)
}

/// As [`doctor`], with the USB bus given (tests).
pub fn doctor_with_usb(input: &DoctorInput, usb: &dyn UsbTransport) -> Vec<Finding> {
    let mut findings = check_nic(&input.nic, input.bench_address);
    findings.extend(check_privileges());
    for (phone, device) in &input.serial_devices {
        findings.push(check_serial(phone, device));
    }
    findings.extend(check_relay_boards(&input.relay_boards, usb));
    for port in &input.ports {
        findings.push(check_port(port, input.bench_address));
    }
    findings
}

/// NIC present, up, with carrier, carrying the bench address, and not the
/// interface of the default route (the rig must never serve DHCP on the office LAN).
pub fn check_nic(nic: &str, bench_address: Option<IpAddr>) -> Vec<Finding> {
    let interfaces = pnet_datalink::interfaces();
    let Some(interface) = interfaces.iter().find(|i| i.name == nic) else {
        let names: Vec<&str> = interfaces
            .iter()
            .filter(|i| !i.is_loopback())
            .map(|i| i.name.as_str())
            .collect();
        return vec![Finding::bad(
            "nic.present",
            format!("no interface `{nic}`; interfaces here: {}", if names.is_empty() { "none".into() } else { names.join(", ") }),
            "plug in the bench NIC, or set `nic` in the lab file to one of the interfaces `ip link` lists",
        )];
    };
    let mut findings = vec![Finding::ok(
        "nic.present",
        format!("`{nic}` exists (index {})", interface.index),
    )];
    findings.push(if interface.is_up() {
        Finding::ok("nic.up", format!("`{nic}` is up"))
    } else {
        Finding::bad(
            "nic.up",
            format!("`{nic}` is down"),
            format!("sudo ip link set {nic} up"),
        )
    });
    findings.push(if interface.is_running() {
        Finding::ok("nic.link", format!("`{nic}` has a link"))
    } else {
        Finding::bad(
            "nic.link",
            format!("`{nic}` has no carrier"),
            "connect the bench switch (or the phone) to this NIC and check the cable",
        )
    });
    if let Some(address) = bench_address {
        let carried: Vec<String> = interface.ips.iter().map(|n| n.to_string()).collect();
        findings.push(if interface.ips.iter().any(|n| n.ip() == address) {
            Finding::ok("nic.address", format!("`{nic}` carries {address}"))
        } else {
            Finding::bad(
                "nic.address",
                format!(
                    "`{nic}` does not carry {address} (it has: {})",
                    if carried.is_empty() {
                        "no address".into()
                    } else {
                        carried.join(", ")
                    }
                ),
                format!("sudo ip addr add {address}/24 dev {nic} (use the lab's prefix length)"),
            )
        });
    }
    findings.push(match default_route_interfaces() {
        Ok(defaults) if defaults.iter().any(|d| d == nic) => Finding::bad(
            "nic.not_default_route",
            format!("`{nic}` carries the default route: it is a real network, not a bench segment"),
            "use a dedicated NIC for the bench (a USB Ethernet adapter will do) and set `nic` in the lab file to it",
        ),
        Ok(defaults) => Finding::ok(
            "nic.not_default_route",
            if defaults.is_empty() { "no default route here".to_owned() } else { format!("the default route uses {}", defaults.join(", ")) },
        ),
        Err(error) => Finding::bad("nic.not_default_route", format!("cannot read the routing table: {error}"), "check that /proc is mounted"),
    });
    findings
}

/// What the rig requires of the lab NIC before it starts services: present,
/// up, carrying the bench address, not the default-route interface. Carrier
/// is not required: a phone cabled straight to the NIC has none while it is
/// powered off, and powering it on may be the scenario's first step.
pub fn require_lab_nic(
    nic: &str,
    bench_address: Option<IpAddr>,
) -> Result<(), crate::error::DriverError> {
    let problems: Vec<String> = check_nic(nic, bench_address)
        .into_iter()
        .filter(|f| !f.ok && f.check != "nic.link")
        .map(|f| format!("{}: {} (fix: {})", f.check, f.detail, f.fix))
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(crate::error::DriverError::Unavailable(format!(
            "the lab NIC is not ready: {}",
            problems.join("; ")
        )))
    }
}

/// Interfaces of IPv4 and IPv6 default routes, from the calling thread's namespace.
pub fn default_route_interfaces() -> std::io::Result<Vec<String>> {
    let mut found = Vec::new();
    let v4 = std::fs::read_to_string("/proc/thread-self/net/route")?;
    for line in v4.lines().skip(1) {
        let columns: Vec<&str> = line.split_whitespace().collect();
        if columns.len() >= 8 && columns[1] == "00000000" && columns[7] == "00000000" {
            found.push(columns[0].to_owned());
        }
    }
    // Absent when IPv6 is disabled; that is not an error.
    if let Ok(v6) = std::fs::read_to_string("/proc/thread-self/net/ipv6_route") {
        for line in v6.lines() {
            let columns: Vec<&str> = line.split_whitespace().collect();
            if columns.len() >= 10
                && columns[0].chars().all(|c| c == '0')
                && columns[1] == "00"
                && columns[9] != "lo"
            {
                found.push(columns[9].to_owned());
            }
        }
    }
    found.sort();
    found.dedup();
    Ok(found)
}

const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_RAW: u32 = 13;

/// Effective capabilities of this thread (root in a container may lack some).
pub fn effective_capabilities() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/thread-self/status")?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .ok_or_else(|| std::io::Error::other("no CapEff line in /proc/thread-self/status"))?;
    u64::from_str_radix(line.trim(), 16).map_err(std::io::Error::other)
}

pub fn check_privileges() -> Vec<Finding> {
    let root = unsafe { libc::geteuid() } == 0;
    let caps = effective_capabilities();
    [(CAP_NET_BIND_SERVICE, "net_bind_service", "serve DHCP/TFTP/HTTP/SIP on ports below 1024"), (CAP_NET_RAW, "net_raw", "capture frames")]
        .into_iter()
        .map(|(bit, name, needed_for)| {
            let check = format!("privileges.{name}");
            match &caps {
                Ok(mask) if mask & (1 << bit) != 0 => {
                    Finding::ok(check, format!("CAP_{} is effective{}", name.to_uppercase(), if root { " (root)" } else { "" }))
                }
                Ok(_) => Finding::bad(
                    check,
                    format!("CAP_{} is missing: the rig cannot {needed_for}", name.to_uppercase()),
                    "run as root, or once: sudo setcap cap_net_bind_service,cap_net_raw+ep \"$(command -v rig)\"",
                ),
                Err(error) => Finding::bad(check, format!("cannot read capabilities: {error}"), "check that /proc is mounted"),
            }
        })
        .collect()
}

pub fn check_serial(phone: &str, device: &Path) -> Finding {
    let check = format!("serial.{phone}");
    match serialport::new(device.to_string_lossy(), 115_200).open() {
        Ok(_) => Finding::ok(check, format!("{} opens", device.display())),
        Err(error) => {
            let fix = match error.kind() {
                serialport::ErrorKind::NoDevice => "plug in the USB-serial adapter; name it by /dev/serial/by-id/… in the lab file so it survives replugging".to_owned(),
                serialport::ErrorKind::Io(std::io::ErrorKind::PermissionDenied) => {
                    "add the bench user to the `dialout` group (sudo usermod -aG dialout $USER) and log in again".to_owned()
                }
                serialport::ErrorKind::Io(std::io::ErrorKind::NotFound) => {
                    "check the path: ls -l /dev/serial/by-id/ lists the adapters that are plugged in".to_owned()
                }
                _ => "close whatever holds the port (minicom, screen, another rig: see `fuser` on the device)".to_owned(),
            };
            Finding::bad(
                check,
                format!("{} does not open: {error}", device.display()),
                fix,
            )
        }
    }
}

pub fn check_relay_boards(serials: &[String], usb: &dyn UsbTransport) -> Vec<Finding> {
    if serials.is_empty() {
        return Vec::new();
    }
    let present = list_boards(usb);
    serials
        .iter()
        .map(|serial| {
            let check = format!("usb_relay.{serial}");
            match &present {
                Ok(found) if found.contains(serial) => Finding::ok(check, format!("relay board `{serial}` is on the bus")),
                Ok(found) => Finding::bad(
                    check,
                    format!(
                        "no USB relay board with serial `{serial}` (16c0:05df); boards found: {}",
                        if found.is_empty() { "none".into() } else { found.join(", ") }
                    ),
                    "plug the board in (lsusb shows 16c0:05df), or correct `serial` in the lab file to one of the boards found",
                ),
                Err(error) => Finding::bad(
                    check,
                    format!("cannot look for relay board `{serial}`: {error}"),
                    "the rig needs the USB bus: /dev/bus/usb must exist (in a container pass it in, e.g. --device /dev/bus/usb); \
                     without root add a udev rule: SUBSYSTEM==\"usb\", ATTR{idVendor}==\"16c0\", ATTR{idProduct}==\"05df\", MODE=\"0660\", GROUP=\"plugdev\"",
                ),
            }
        })
        .collect()
}

pub fn check_port(port: &PortCheck, bench_address: Option<IpAddr>) -> Finding {
    let check = format!("port.{}/{}", port.protocol.as_str(), port.port);
    let ip = bench_address.unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let address = SocketAddr::new(ip, port.port);
    let result = match port.protocol {
        Protocol::Udp => UdpSocket::bind(address).map(drop),
        Protocol::Tcp => TcpListener::bind(address).map(drop),
    };
    match result {
        Ok(()) => Finding::ok(
            check,
            format!("{} ({}) is free on {ip}", port.port, port.service),
        ),
        Err(error) => {
            let fix = match error.kind() {
                std::io::ErrorKind::AddrInUse => format!(
                    "stop what holds it: sudo ss -lpn '( sport = :{} )' shows the program (often dnsmasq, tftpd-hpa or apache2)",
                    port.port
                ),
                std::io::ErrorKind::PermissionDenied => {
                    "ports below 1024 need root or CAP_NET_BIND_SERVICE (see privileges.net_bind_service)".to_owned()
                }
                std::io::ErrorKind::AddrNotAvailable => format!("{ip} is not on this machine (see nic.address)"),
                _ => "see the error".to_owned(),
            };
            Finding::bad(
                check,
                format!(
                    "{} ({}) cannot be bound on {ip}: {error}",
                    port.port, port.service
                ),
                fix,
            )
        }
    }
}
