//! Start-up checks that keep the DHCP server off the office LAN.
//!
//! A DHCP server on the wrong interface hands out addresses to every PC on
//! the floor. Before the socket opens on a NIC, the host's network is read
//! (in the lab's namespace when it has one) and the server refuses an
//! interface that looks like anything but a dedicated phone segment:
//!
//! - it does not exist, or the lab address is not on it (the lab file names
//!   another interface than the one that would carry the traffic);
//! - it carries a default route (it leads to the rest of the network);
//! - it carries a management address of this host (the address the operator
//!   reached the host by over SSH, or the one its host name resolves to).
//!
//! The operator overrides the last three deliberately with `dedicated = true`
//! under `[bench]` or `--i-know-this-interface-is-dedicated`; a missing
//! interface cannot be overridden.
//!
//! The checks are a pure function of a [`HostFacts`] snapshot, so each
//! refusal is tested from a table, and [`HostFacts::read`] is tested against
//! namespaces the tests build.

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr};

/// The flag and lab-file setting that override the interface checks.
pub const OVERRIDE_FLAG: &str = "--i-know-this-interface-is-dedicated";
pub const OVERRIDE_SETTING: &str = "`dedicated = true` under [bench] in the lab file";

/// What the checks need to know about one interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceFacts {
    pub name: String,
    pub addrs: Vec<IpAddr>,
    /// An IPv4 or IPv6 default route leaves through this interface.
    pub default_route: bool,
}

/// A snapshot of the host's (or namespace's) network as the checks see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    pub interfaces: Vec<InterfaceFacts>,
    /// Addresses the operator manages this host by, with where each was learned.
    pub management: Vec<(IpAddr, String)>,
}

/// Why the server refuses an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NoSuchInterface {
        interface: String,
        known: Vec<String>,
    },
    AddressElsewhere {
        interface: String,
        address: Ipv4Addr,
        carried_by: Option<String>,
    },
    DefaultRoute {
        interface: String,
    },
    ManagementAddress {
        interface: String,
        address: IpAddr,
        learned_from: String,
    },
}

impl Refusal {
    /// Whether the operator may override this refusal by declaring the NIC dedicated.
    pub fn overridable(&self) -> bool {
        !matches!(self, Refusal::NoSuchInterface { .. })
    }

    /// A short machine-readable reason for the `dhcp.refused` event.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::NoSuchInterface { .. } => "no_such_interface",
            Refusal::AddressElsewhere { .. } => "address_not_on_interface",
            Refusal::DefaultRoute { .. } => "default_route",
            Refusal::ManagementAddress { .. } => "management_address",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoSuchInterface { interface, known } => write!(
                f,
                "refusing to serve DHCP: the lab file names interface `{interface}`, which does not exist here (interfaces: {}); fix `nic` under [bench]",
                known.join(", ")
            )?,
            Refusal::AddressElsewhere {
                interface,
                address,
                carried_by,
            } => {
                write!(
                    f,
                    "refusing to serve DHCP on `{interface}`: the lab address {address} is not on it"
                )?;
                match carried_by {
                    Some(other) => write!(f, " but on `{other}`, an interface the lab file does not name; the services would answer there")?,
                    None => write!(f, " (no interface carries it); add it with `ip addr add {address}/<prefix> dev {interface}`")?,
                }
            }
            Refusal::DefaultRoute { interface } => write!(
                f,
                "refusing to serve DHCP on `{interface}`: it carries the default route, so it leads to the rest of the network and the server would hand out addresses there"
            )?,
            Refusal::ManagementAddress {
                interface,
                address,
                learned_from,
            } => write!(
                f,
                "refusing to serve DHCP on `{interface}`: it carries {address}, this host's management address ({learned_from}); a phone segment is a NIC of its own"
            )?,
        }
        if self.overridable() {
            write!(
                f,
                ". If this interface really carries nothing but the phones, override deliberately with {OVERRIDE_FLAG} or {OVERRIDE_SETTING}"
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for Refusal {}

/// Every refusal for serving on `interface` with `server_ip`, in the order
/// above; `dedicated` drops the overridable ones.
pub fn check_interface(
    facts: &HostFacts,
    interface: &str,
    server_ip: Ipv4Addr,
    dedicated: bool,
) -> Vec<Refusal> {
    let Some(nic) = facts.interfaces.iter().find(|i| i.name == interface) else {
        return vec![Refusal::NoSuchInterface {
            interface: interface.to_owned(),
            known: facts.interfaces.iter().map(|i| i.name.clone()).collect(),
        }];
    };
    let mut refusals = Vec::new();
    if !nic.addrs.contains(&IpAddr::V4(server_ip)) {
        refusals.push(Refusal::AddressElsewhere {
            interface: interface.to_owned(),
            address: server_ip,
            carried_by: facts
                .interfaces
                .iter()
                .find(|i| i.addrs.contains(&IpAddr::V4(server_ip)))
                .map(|i| i.name.clone()),
        });
    }
    if nic.default_route {
        refusals.push(Refusal::DefaultRoute {
            interface: interface.to_owned(),
        });
    }
    for (address, learned_from) in &facts.management {
        if nic.addrs.contains(address) {
            refusals.push(Refusal::ManagementAddress {
                interface: interface.to_owned(),
                address: *address,
                learned_from: learned_from.clone(),
            });
        }
    }
    if dedicated {
        refusals.retain(|r| !r.overridable());
    }
    refusals
}

impl HostFacts {
    /// Reads interfaces, addresses and default routes of the calling thread's
    /// network namespace, and this host's management addresses.
    pub fn read_here() -> io::Result<HostFacts> {
        let mut interfaces: Vec<InterfaceFacts> = Vec::new();
        let ifaddrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
        for ifaddr in ifaddrs {
            let position = match interfaces
                .iter()
                .position(|i| i.name == ifaddr.interface_name)
            {
                Some(position) => position,
                None => {
                    interfaces.push(InterfaceFacts {
                        name: ifaddr.interface_name.clone(),
                        ..InterfaceFacts::default()
                    });
                    interfaces.len() - 1
                }
            };
            let address = ifaddr.address.as_ref().and_then(|a| {
                a.as_sockaddr_in()
                    .map(|v4| IpAddr::V4(v4.ip()))
                    .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
            });
            if let Some(address) = address {
                interfaces[position].addrs.push(address);
            }
        }
        // /proc/thread-self: the routes of this thread's namespace, which is
        // the lab's when called from `netns::in_netns`.
        let v4 = std::fs::read_to_string("/proc/thread-self/net/route").unwrap_or_default();
        let v6 = std::fs::read_to_string("/proc/thread-self/net/ipv6_route").unwrap_or_default();
        let routed: BTreeSet<String> = default_route_interfaces_v4(&v4)
            .into_iter()
            .chain(default_route_interfaces_v6(&v6))
            .collect();
        for nic in &mut interfaces {
            nic.default_route = routed.contains(&nic.name);
        }
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        let management = management_addresses(
            std::env::var("SSH_CONNECTION").ok().as_deref(),
            hostname.trim(),
            &hosts,
        );
        Ok(HostFacts {
            interfaces,
            management,
        })
    }

    /// [`HostFacts::read_here`] inside network namespace `netns` when given.
    pub fn read(netns: Option<&str>) -> io::Result<HostFacts> {
        match netns {
            Some(ns) => phonerig_core::netns::in_netns(ns, HostFacts::read_here),
            None => HostFacts::read_here(),
        }
    }
}

/// Interfaces with a 0.0.0.0/0 route in `/proc/net/route` (columns: Iface,
/// Destination, Gateway, Flags, …, Mask; addresses in little-endian hex).
pub fn default_route_interfaces_v4(table: &str) -> Vec<String> {
    const RTF_UP: u32 = 0x1;
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(cols.get(3)?, 16).ok()?;
            let is_default = cols.get(1)? == &"00000000" && cols.get(7)? == &"00000000";
            (is_default && flags & RTF_UP != 0 && cols[0] != "lo").then(|| cols[0].to_owned())
        })
        .collect()
}

/// Interfaces with a ::/0 route in `/proc/net/ipv6_route` (columns:
/// destination, prefix length, …, flags, device). The kernel's
/// unreachable default on `lo` is not a route anywhere.
pub fn default_route_interfaces_v6(table: &str) -> Vec<String> {
    const RTF_REJECT: u32 = 0x0200;
    table
        .lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(cols.get(8)?, 16).ok()?;
            let device = *cols.get(9)?;
            let is_default = cols[0].chars().all(|c| c == '0') && cols.get(1)? == &"00";
            (is_default && flags & RTF_REJECT == 0 && device != "lo").then(|| device.to_owned())
        })
        .collect()
}

/// The addresses this host is managed by: the local end of the SSH session
/// the rig runs in (`SSH_CONNECTION` = client ip, client port, server ip,
/// server port), and the non-loopback addresses its host name has in `/etc/hosts`.
pub fn management_addresses(
    ssh_connection: Option<&str>,
    hostname: &str,
    hosts: &str,
) -> Vec<(IpAddr, String)> {
    let mut found = Vec::new();
    if let Some(ip) = ssh_connection
        .and_then(|s| s.split_whitespace().nth(2))
        .and_then(|s| s.parse::<IpAddr>().ok())
    {
        found.push((ip, "the SSH session's address".to_owned()));
    }
    if !hostname.is_empty() {
        for line in hosts.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut words = line.split_whitespace();
            let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) else {
                continue;
            };
            if !ip.is_loopback() && words.any(|name| name.eq_ignore_ascii_case(hostname)) {
                found.push((ip, format!("host name `{hostname}` in /etc/hosts")));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn facts() -> HostFacts {
        let nic = |name: &str, addrs: &[&str], default_route: bool| InterfaceFacts {
            name: name.into(),
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            default_route,
        };
        HostFacts {
            interfaces: vec![
                nic("lo", &["127.0.0.1"], false),
                nic("eno1", &["10.1.2.3"], true),
                nic("enx-lab", &["192.168.77.1"], false),
                nic("enx-mgmt", &["172.16.0.5"], false),
                nic("enx-both", &["192.168.88.1", "172.16.9.9"], false),
            ],
            management: vec![
                (
                    "172.16.0.5".parse().unwrap(),
                    "the SSH session's address".into(),
                ),
                (
                    "172.16.9.9".parse().unwrap(),
                    "host name `rig` in /etc/hosts".into(),
                ),
            ],
        }
    }

    #[rstest]
    #[case::dedicated_lab_nic("enx-lab", "192.168.77.1", false, &[])]
    #[case::default_route("eno1", "10.1.2.3", false, &["default_route"])]
    #[case::default_route_overridden("eno1", "10.1.2.3", true, &[])]
    #[case::management("enx-mgmt", "172.16.0.5", false, &["management_address"])]
    #[case::management_as_second_address("enx-both", "192.168.88.1", false, &["management_address"])]
    #[case::management_overridden("enx-mgmt", "172.16.0.5", true, &[])]
    #[case::address_on_another_nic("enx-lab", "10.1.2.3", false, &["address_not_on_interface"])]
    #[case::address_nowhere("enx-lab", "192.168.77.9", false, &["address_not_on_interface"])]
    #[case::missing("eth9", "192.168.77.1", false, &["no_such_interface"])]
    #[case::missing_is_not_overridable("eth9", "192.168.77.1", true, &["no_such_interface"])]
    fn interface_checks(
        #[case] interface: &str,
        #[case] ip: &str,
        #[case] dedicated: bool,
        #[case] want: &[&str],
    ) {
        let got: Vec<&str> = check_interface(&facts(), interface, ip.parse().unwrap(), dedicated)
            .iter()
            .map(Refusal::code)
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn messages_say_why_and_how_to_override() {
        let refusals = check_interface(&facts(), "eno1", "192.168.77.1".parse().unwrap(), false);
        let text: Vec<String> = refusals.iter().map(ToString::to_string).collect();
        assert!(
            text[0].contains("not on it but on `enx-lab`"),
            "{}",
            text[0]
        );
        assert!(text[1].contains("default route"), "{}", text[1]);
        for t in &text {
            assert!(
                t.contains(OVERRIDE_FLAG) && t.contains("dedicated = true"),
                "{t}"
            );
        }
        let missing = check_interface(&facts(), "eth9", "192.168.77.1".parse().unwrap(), false);
        let missing = missing[0].to_string();
        assert!(missing.contains("does not exist") && missing.contains("enx-lab"));
        assert!(!missing.contains(OVERRIDE_FLAG), "{missing}");
    }

    const ROUTE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eno1\t00000000\t0102000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
eno1\t0002000A\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n\
enx1\t004DA8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";

    const ROUTE6: &str = "\
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eno1\n\
fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 enx1\n\
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo\n";

    #[test]
    fn default_routes_from_proc_tables() {
        assert_eq!(default_route_interfaces_v4(ROUTE), vec!["eno1"]);
        assert_eq!(default_route_interfaces_v6(ROUTE6), vec!["eno1"]);
        assert!(default_route_interfaces_v4("Iface\tDestination\n").is_empty());
    }

    #[test]
    fn management_from_ssh_and_hosts() {
        let hosts = "127.0.0.1 localhost\n127.0.1.1 rig\n10.9.8.7 rig.example rig # office\n10.9.8.8 other\n";
        let found = management_addresses(Some("10.0.0.9 52144 10.9.8.6 22"), "rig", hosts);
        let ips: Vec<String> = found.iter().map(|(ip, _)| ip.to_string()).collect();
        assert_eq!(ips, ["10.9.8.6", "10.9.8.7"]);
        assert!(management_addresses(None, "", hosts).is_empty());
    }
}
