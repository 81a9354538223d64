//! The lab file: which NIC and addresses the bench owns, and which phones
//! are on it with which backend behind each capability.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use phonerig_core::duration::HumanDuration;
use phonerig_core::{Mac, PhoneInfo};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_spanned::Spanned;

use crate::diag::FileError;

/// The embedded default: virtual phones on loopback with unprivileged ports.
pub const DEFAULT_LAB: &str = include_str!("../../scenarios/labs/virtual.toml");

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Lab {
    /// Shown in reports.
    pub name: String,
    pub bench: Bench,
    /// Where virtual phones (`[phone.sim]`) are placed.
    #[serde(default)]
    pub sim: SimSettings,
    #[serde(default, rename = "phone")]
    #[schemars(with = "Vec<PhoneEntry>")]
    pub phones: Vec<Spanned<PhoneEntry>>,
    /// Set by the loader: where the file came from (`<built-in>` for the default lab).
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Bench {
    /// The dedicated lab interface (`lo` for a loopback virtual bench).
    pub nic: String,
    /// The rig's address on that NIC; every service binds to it.
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub pool: Pool,
    #[serde(default)]
    pub lease_time: Option<HumanDuration>,
    #[serde(default)]
    pub ports: Ports,
    /// Run the services inside this network namespace (tests, namespace benches).
    #[serde(default)]
    pub netns: Option<String>,
    /// The operator states the NIC carries nothing but phones (see the Safety section).
    #[serde(default)]
    pub dedicated: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

/// Ports of the services; standard ones unless the lab is on loopback, where
/// unprivileged ones let `rig` run without root.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ports {
    pub dhcp: Option<u16>,
    pub dhcp_client: Option<u16>,
    pub tftp: Option<u16>,
    pub http: Option<u16>,
    pub https: Option<u16>,
    pub ftp: Option<u16>,
    pub ftp_passive: Option<[u16; 2]>,
    pub sip: Option<u16>,
    pub rtp: Option<[u16; 2]>,
}

/// Concrete ports after defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedPorts {
    pub dhcp: u16,
    pub dhcp_client: u16,
    pub tftp: u16,
    pub http: u16,
    pub https: u16,
    pub ftp: u16,
    pub ftp_passive: (u16, u16),
    pub sip: u16,
    pub rtp: (u16, u16),
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SimSettings {
    /// `loopback` (default) or a namespace: `{ netns = "phones", interface = "veth1" }`.
    #[serde(default)]
    pub placement: SimPlacement,
    /// Where control sockets live (default: a fresh temporary folder).
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(untagged)]
pub enum SimPlacement {
    #[default]
    #[serde(skip)]
    Default,
    Named(PlacementName),
    Netns {
        netns: String,
        interface: String,
    },
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PlacementName {
    Loopback,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PhoneEntry {
    pub name: String,
    /// `htek-uc924`, `htek-uc926`, `htek-uc912`, `panasonic-kx-ut670`, `lvswitch-sip-h680`, …
    pub model: String,
    /// Any common notation; normalised once.
    pub mac: Mac,
    /// SIP extension the phone registers (user part).
    pub ext: String,
    #[serde(default)]
    pub password: String,
    /// Vendor device code for file names; defaults from the model (Htek 0012 = UC924).
    #[serde(default)]
    pub devcode: Option<String>,
    /// The address DHCP always gives this phone; by default one from the top
    /// of the pool, so a phone keeps its address across cases and runs.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    pub button: Option<Capability>,
    pub power: Option<Capability>,
    pub console: Option<Capability>,
    pub keys: Option<Capability>,
    /// Present for a virtual phone hosted by the rig.
    pub sim: Option<SimPhone>,
}

/// `{ backend = "usb-relay", serial = "HW348", relay = 1 }`: the backend by
/// name and its own settings, checked by the drivers registry.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct Capability {
    pub backend: String,
    #[serde(flatten)]
    #[schemars(with = "BTreeMap<String, serde_json::Value>")]
    pub params: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SimPhone {
    /// Firmware version the virtual phone runs at first power-on.
    #[serde(default)]
    pub firmware: Option<String>,
    /// Settings already in flash (vendor parameter names).
    #[serde(default)]
    pub flash: BTreeMap<String, String>,
    /// Documented behaviours broken on purpose (detection-power runs).
    #[serde(default)]
    pub faults: Vec<String>,
    #[serde(default)]
    pub boot_delay: Option<HumanDuration>,
    #[serde(default)]
    pub reboot_delay: Option<HumanDuration>,
}

impl Lab {
    pub fn load(path: &Path) -> Result<Lab, FileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| FileError::at(path, "", None, None, format!("cannot read: {e}")))?;
        Lab::parse(path, &text)
    }

    pub fn builtin() -> Lab {
        Lab::parse(Path::new("<built-in virtual lab>"), DEFAULT_LAB)
            .expect("the built-in lab is valid")
    }

    pub fn parse(path: &Path, text: &str) -> Result<Lab, FileError> {
        let mut lab: Lab =
            toml::from_str(text).map_err(|e| FileError::from_toml(path, text, &e))?;
        lab.path = path.to_owned();
        lab.validate(text)?;
        Ok(lab)
    }

    fn validate(&self, text: &str) -> Result<(), FileError> {
        let err = |span, field: String, message: String| {
            Err(FileError::at(
                &self.path,
                text,
                Some(span),
                Some(field),
                message,
            ))
        };
        if self.bench.prefix > 32 {
            return Err(FileError::at(
                &self.path,
                text,
                None,
                Some("bench.prefix".into()),
                "prefix must be 0..=32",
            ));
        }
        if u32::from(self.bench.pool.start) > u32::from(self.bench.pool.end) {
            return Err(FileError::at(
                &self.path,
                text,
                None,
                Some("bench.pool".into()),
                "pool start is after pool end",
            ));
        }
        let pool_size = u32::from(self.bench.pool.end) - u32::from(self.bench.pool.start) + 1;
        if (self.phones.len() as u32) > pool_size {
            return Err(FileError::at(
                &self.path,
                text,
                None,
                Some("bench.pool".into()),
                format!(
                    "the pool holds {pool_size} addresses for {} phones",
                    self.phones.len()
                ),
            ));
        }
        let mut names = std::collections::HashSet::new();
        let mut macs = std::collections::HashMap::new();
        for (i, entry) in self.phones.iter().enumerate() {
            let phone = entry.get_ref();
            if !names.insert(phone.name.clone()) {
                return err(
                    entry.span(),
                    format!("phone[{i}].name"),
                    format!("phone name `{}` used twice", phone.name),
                );
            }
            if let Some(previous) = macs.insert(phone.mac, phone.name.clone()) {
                return err(
                    entry.span(),
                    format!("phone[{i}].mac"),
                    format!("MAC {} is also phone `{previous}`", phone.mac),
                );
            }
            if let Some(ip) = phone.ip {
                let mask = if self.bench.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.bench.prefix)
                };
                if u32::from(ip) & mask != u32::from(self.bench.ip) & mask {
                    return err(
                        entry.span(),
                        format!("phone[{i}].ip"),
                        format!(
                            "{ip} is not in the bench subnet {}/{}",
                            self.bench.ip, self.bench.prefix
                        ),
                    );
                }
            }
            if phone.name.is_empty() || phone.name.contains(['/', ' ']) {
                return err(
                    entry.span(),
                    format!("phone[{i}].name"),
                    "names must be non-empty without `/` or spaces".into(),
                );
            }
            for (capability, spec) in phone.capabilities() {
                if let Some(spec) = spec {
                    if let Err(message) =
                        crate::registry::check_capability(capability, &spec.backend, &spec.params)
                    {
                        return err(entry.span(), format!("phone[{i}].{capability}"), message);
                    }
                }
            }
        }
        Ok(())
    }

    pub fn is_loopback(&self) -> bool {
        self.bench.ip.is_loopback()
    }

    pub fn ports(&self) -> ResolvedPorts {
        let p = &self.bench.ports;
        let lo = self.is_loopback();
        let pick = |value: Option<u16>, standard: u16, unprivileged: u16| {
            value.unwrap_or(if lo { unprivileged } else { standard })
        };
        ResolvedPorts {
            dhcp: pick(p.dhcp, 67, 6767),
            dhcp_client: pick(p.dhcp_client, 68, 6868),
            tftp: pick(p.tftp, 69, 6969),
            http: pick(p.http, 80, 8080),
            https: pick(p.https, 443, 8443),
            ftp: pick(p.ftp, 21, 2121),
            ftp_passive: p.ftp_passive.map_or((30000, 30099), |[a, b]| (a, b)),
            sip: p.sip.unwrap_or(5060),
            rtp: p.rtp.map_or((20000, 29998), |[a, b]| (a, b)),
        }
    }

    pub fn phone_infos(&self) -> Vec<PhoneInfo> {
        self.phones.iter().map(|p| p.get_ref().info()).collect()
    }

    /// The address of each lab phone: its `ip`, or counted down from the pool's end.
    pub fn fixed_addresses(&self) -> Vec<(Mac, Ipv4Addr)> {
        let top = u32::from(self.bench.pool.end);
        self.phones
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let p = p.get_ref();
                (
                    p.mac,
                    p.ip.unwrap_or_else(|| Ipv4Addr::from(top - i as u32)),
                )
            })
            .collect()
    }

    pub fn phone(&self, name: &str) -> Option<&PhoneEntry> {
        self.phones
            .iter()
            .map(Spanned::get_ref)
            .find(|p| p.name == name)
    }
}

/// Device codes the Htek guide names (§2.1); other models take theirs from the lab file.
pub fn default_devcode(model: &str) -> Option<&'static str> {
    match model {
        "htek-uc924" | "htek-uc924e" | "htek-uc924w" | "htek-uc924u" => Some("0012"),
        "htek-uc912" | "htek-uc912g" => Some("0019"),
        _ => None,
    }
}

impl PhoneEntry {
    pub fn info(&self) -> PhoneInfo {
        PhoneInfo {
            name: self.name.clone(),
            model: self.model.clone(),
            mac: self.mac,
            ext: self.ext.clone(),
            password: self.password.clone(),
            devcode: self
                .devcode
                .clone()
                .or_else(|| default_devcode(&self.model).map(str::to_owned)),
        }
    }

    /// Each capability's backend; a virtual phone defaults every one to `sim`.
    pub fn capabilities(&self) -> [(&'static str, Option<Capability>); 4] {
        let or_sim = |c: &Option<Capability>| {
            c.clone().or_else(|| {
                self.sim.as_ref().map(|_| Capability {
                    backend: "sim".into(),
                    params: Default::default(),
                })
            })
        };
        [
            ("button", or_sim(&self.button)),
            ("power", or_sim(&self.power)),
            ("console", or_sim(&self.console)),
            ("keys", or_sim(&self.keys)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn builtin_lab_loads_with_virtual_phones_on_loopback() {
        let lab = Lab::builtin();
        assert!(lab.is_loopback());
        assert!(lab.phones.len() >= 3);
        assert!(lab.phones.iter().all(|p| p.get_ref().sim.is_some()));
        assert_eq!(lab.ports().http, 8080);
    }

    const GOOD: &str = r#"
name = "bench-1"
[bench]
nic = "enp3s0"
ip = "198.18.0.1"
prefix = 24
pool = { start = "198.18.0.100", end = "198.18.0.200" }

[[phone]]
name = "uc924-1"
model = "htek-uc924"
mac = "00-1F-C1-10-D3-A9"
ext = "4002"
password = "x"
"#;

    #[test]
    fn real_nic_gets_standard_ports_and_normalised_mac() {
        let lab = Lab::parse(Path::new("lab.toml"), GOOD).unwrap();
        assert_eq!(lab.ports().dhcp, 67);
        assert_eq!(lab.ports().http, 80);
        let info = &lab.phone_infos()[0];
        assert_eq!(info.mac.lower(), "001fc110d3a9");
        assert_eq!(info.devcode.as_deref(), Some("0012"));
    }

    #[rstest]
    #[case("mac = \"00-1F-C1-10-D3-A9\"", "mac = \"00-1F-C1-10-D3\"", 12, "mac")]
    #[case("ext = \"4002\"", "ext = \"4002\"\ncolour = \"red\"", 14, "colour")]
    #[case("prefix = 24", "prefix = \"24\"", 6, "prefix")]
    fn errors_name_file_line_and_field(
        #[case] from: &str,
        #[case] to: &str,
        #[case] line: usize,
        #[case] field: &str,
    ) {
        let text = GOOD.replace(from, to);
        let error = Lab::parse(Path::new("lab.toml"), &text).unwrap_err();
        assert_eq!(error.line, line, "{error}");
        assert_eq!(error.field.as_deref(), Some(field), "{error}");
        assert!(
            error.to_string().starts_with(&format!("lab.toml:{line}:")),
            "{error}"
        );
    }

    #[test]
    fn duplicate_mac_is_refused_naming_both_phones() {
        let text = format!("{GOOD}\n[[phone]]\nname = \"b\"\nmodel = \"htek-uc924\"\nmac = \"001fc110d3a9\"\next = \"4003\"\n");
        let error = Lab::parse(Path::new("lab.toml"), &text).unwrap_err();
        assert!(error.message.contains("uc924-1"), "{error}");
        assert_eq!(error.field.as_deref(), Some("phone[1].mac"));
    }

    #[test]
    fn unknown_backend_is_refused() {
        let text = format!("{GOOD}button = {{ backend = \"teleport\" }}\n");
        let error = Lab::parse(Path::new("lab.toml"), &text).unwrap_err();
        assert_eq!(error.field.as_deref(), Some("phone[0].button"), "{error}");
        assert!(error.message.contains("teleport"), "{error}");
    }
}
