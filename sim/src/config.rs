//! What the bench hands the simulation host: where phones live on the network,
//! and one spec per virtual phone.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use phonerig_core::Mac;
use serde::{Deserialize, Serialize};

/// Everything [`crate::SimHost::start`] needs.
#[derive(Debug, Clone)]
pub struct SimHostConfig {
    /// Folder for the control sockets (`<sim_dir>/<name>.sock`).
    pub sim_dir: PathBuf,
    pub placement: Placement,
    pub phones: Vec<VirtualPhoneSpec>,
}

/// The ports the rig's file services listen on, used when a server address
/// names no port (option 66 carries a bare IP for Panasonic's TFTP; a URL may
/// leave the port out). On a real segment these are the standard ports; a
/// loopback bench runs unprivileged ones, and its wire is where that mapping
/// lives, so a phone's logic stays that of the real device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServicePorts {
    pub tftp: u16,
    pub http: u16,
    pub https: u16,
    pub ftp: u16,
}

impl Default for ServicePorts {
    fn default() -> Self {
        ServicePorts {
            tftp: 69,
            http: 80,
            https: 443,
            ftp: 21,
        }
    }
}

/// Where the phones' network interfaces are.
#[derive(Debug, Clone)]
pub enum Placement {
    /// All phones on 127/8. A phone has no address before its lease, so it
    /// sends DISCOVER/REQUEST unicast from `127.0.0.1:<ephemeral>` to the rig's
    /// DHCP server, which answers to the source; after the lease it binds every
    /// socket to the leased 127.x address so the rig can tell phones apart.
    Loopback {
        dhcp_server: SocketAddr,
        /// Where the rig's file services listen on this segment.
        services: ServicePorts,
    },
    /// Phones on a veth inside network namespace `netns`: one macvlan per
    /// phone carrying the phone's MAC, real broadcast DHCP on ports 67/68.
    Netns {
        netns: String,
        parent_interface: String,
    },
}

/// One virtual phone. Deserialises from a lab file's table (`flash`,
/// `timing` and `faults` may be left out).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualPhoneSpec {
    pub name: String,
    /// `htek-uc924`, `htek-uc926`, `htek-uc912`, `panasonic-kx-ut670`, `lvswitch-sip-h680`.
    pub model: String,
    pub mac: Mac,
    /// Running firmware version, e.g. `2.0.4.4.36`.
    pub firmware: String,
    /// Settings already in flash at first power-on (see docs/virtual-phones.md).
    #[serde(default)]
    pub flash: BTreeMap<String, String>,
    #[serde(default)]
    pub timing: Timing,
    /// Documented behaviours broken on purpose, by stable name (the catalogue
    /// is `phonerig_sim_ua::fault::CATALOGUE`, see docs/mutants.md). Unknown
    /// names and faults of another model are refused at start.
    #[serde(default)]
    pub faults: Vec<String>,
}

/// How fast the phone's own clock runs (`boot_delay = "20ms"` in TOML).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timing {
    /// From power-on to the first DHCP DISCOVER.
    #[serde(with = "phonerig_core::duration::serde_human")]
    pub boot_delay: Duration,
    /// From a reboot decision to power-on again.
    #[serde(with = "phonerig_core::duration::serde_human")]
    pub reboot_delay: Duration,
    /// Factor applied to every interval the vendor states in minutes or
    /// seconds (provisioning intervals, DHCP lease/T1): 0.001 turns the
    /// Htek default of 10080 minutes into about 10 s.
    pub scale: f64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            boot_delay: Duration::from_millis(20),
            reboot_delay: Duration::from_millis(30),
            scale: 0.001,
        }
    }
}

impl Timing {
    /// Wall time for `minutes` of phone time.
    pub fn minutes(&self, minutes: f64) -> Duration {
        self.seconds(minutes * 60.0)
    }

    /// Wall time for `seconds` of phone time (never below 1 ms, so timers still tick in order).
    pub fn seconds(&self, seconds: f64) -> Duration {
        Duration::from_secs_f64((seconds * self.scale).max(0.001))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_reads_from_toml_with_defaults() {
        let spec: VirtualPhoneSpec = toml::from_str(
            "name = \"desk\"\nmodel = \"htek-uc924\"\nmac = \"001F.C110.D3A9\"\nfirmware = \"2.0.4.4.36\"\nflash = { P237 = \"http://h/cfg\" }\ntiming = { boot_delay = \"1s\" }\n",
        )
        .unwrap();
        assert_eq!(spec.mac.lower(), "001fc110d3a9");
        assert_eq!(spec.flash.get("P237").unwrap(), "http://h/cfg");
        assert_eq!(spec.timing.boot_delay, Duration::from_secs(1));
        assert_eq!(spec.timing.scale, Timing::default().scale);
        assert!(spec.faults.is_empty());
        assert!(toml::from_str::<VirtualPhoneSpec>(
            "name = \"x\"\nmodel = \"m\"\nmac = \"bad\"\nfirmware = \"1\"\n"
        )
        .is_err());
    }

    #[test]
    fn minutes_are_scaled() {
        let timing = Timing {
            scale: 0.001,
            ..Timing::default()
        };
        assert_eq!(timing.minutes(10080.0), Duration::from_secs_f64(604.8));
        assert_eq!(timing.seconds(3600.0), Duration::from_secs_f64(3.6));
        assert_eq!(timing.seconds(0.0), Duration::from_millis(1));
    }
}
