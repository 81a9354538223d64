//! Who is who on the bench: phones from the lab file, looked up by MAC (DHCP),
//! by address (every other service, once DHCP has leased one) or by name.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::mac::Mac;

/// What services and placeholders need to know about one phone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhoneInfo {
    pub name: String,
    /// Model identifier as in the lab file, e.g. `htek-uc924`, `panasonic-kx-ut670`.
    pub model: String,
    pub mac: Mac,
    /// SIP extension (user part), e.g. `4002`.
    pub ext: String,
    pub password: String,
    /// Vendor device code used in file names (Htek `0012` for UC924).
    pub devcode: Option<String>,
}

/// Indexes instead of scans: in a 10,000-phone storm every DHCP packet, SIP
/// request and fetch looks a phone up, and a scan each time is quadratic.
#[derive(Default)]
struct Tables {
    phones: Vec<Arc<PhoneInfo>>,
    /// The lower-case spellings of each phone's MAC that may appear in a
    /// request, in the order of `phones`. Built with the directory (the phones
    /// of a bench never change after that): `by_mac_in` runs for every request
    /// of every file service and used to format them per phone per hint.
    mac_spellings: Vec<MacSpellings>,
    by_ip: HashMap<IpAddr, usize>,
    /// The address bound to each phone (same index as `phones`).
    ip_of: Vec<Option<IpAddr>>,
    by_mac: HashMap<Mac, usize>,
    /// The first phone listed wins where a lab shares a name or extension,
    /// as the scans this replaces did.
    by_name: HashMap<String, usize>,
    by_ext: HashMap<String, usize>,
}

impl Tables {
    fn new(phones: Vec<Arc<PhoneInfo>>) -> Tables {
        let mut tables = Tables {
            ip_of: vec![None; phones.len()],
            mac_spellings: phones.iter().map(|p| MacSpellings::of(&p.mac)).collect(),
            ..Tables::default()
        };
        for (index, phone) in phones.iter().enumerate() {
            tables.by_mac.entry(phone.mac).or_insert(index);
            tables.by_name.entry(phone.name.clone()).or_insert(index);
            tables.by_ext.entry(phone.ext.clone()).or_insert(index);
        }
        tables.phones = phones;
        tables
    }

    fn get(&self, index: Option<&usize>) -> Option<Arc<PhoneInfo>> {
        index.map(|&i| self.phones[i].clone())
    }
}

/// `001a4d5c258d`, `00:1a:4d:5c:25:8d`, `00-1a-4d-5c-25-8d`.
struct MacSpellings([String; 3]);

impl MacSpellings {
    fn of(mac: &Mac) -> Self {
        let colon = mac.colon();
        let dash = colon.replace(':', "-");
        MacSpellings([mac.lower(), colon, dash])
    }

    /// Whether `lowered` (already lower-case) contains any of them.
    fn found_in(&self, lowered: &str) -> bool {
        self.0
            .iter()
            .any(|spelling| lowered.contains(spelling.as_str()))
    }
}

/// Shared by the services of a bench; cheap to clone.
#[derive(Clone, Default)]
pub struct PhoneDirectory {
    tables: Arc<RwLock<Tables>>,
}

impl std::fmt::Debug for PhoneDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tables = self.tables.read().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("PhoneDirectory")
            .field("phones", &tables.phones.len())
            .finish()
    }
}

impl PhoneDirectory {
    pub fn new(phones: impl IntoIterator<Item = PhoneInfo>) -> Self {
        let phones: Vec<Arc<PhoneInfo>> = phones.into_iter().map(Arc::new).collect();
        PhoneDirectory {
            tables: Arc::new(RwLock::new(Tables::new(phones))),
        }
    }

    pub fn phones(&self) -> Vec<Arc<PhoneInfo>> {
        self.tables
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .phones
            .clone()
    }

    pub fn by_mac(&self, mac: &Mac) -> Option<Arc<PhoneInfo>> {
        let tables = self.tables.read().unwrap_or_else(|p| p.into_inner());
        tables.get(tables.by_mac.get(mac))
    }

    pub fn by_name(&self, name: &str) -> Option<Arc<PhoneInfo>> {
        let tables = self.tables.read().unwrap_or_else(|p| p.into_inner());
        tables.get(tables.by_name.get(name))
    }

    pub fn by_ext(&self, ext: &str) -> Option<Arc<PhoneInfo>> {
        let tables = self.tables.read().unwrap_or_else(|p| p.into_inner());
        tables.get(tables.by_ext.get(ext))
    }

    pub fn by_ip(&self, ip: IpAddr) -> Option<Arc<PhoneInfo>> {
        let tables = self.tables.read().unwrap_or_else(|p| p.into_inner());
        tables.get(tables.by_ip.get(&ip))
    }

    /// Finds a phone whose MAC appears in `text` (a request path or User-Agent), in any notation.
    pub fn by_mac_in(&self, text: &str) -> Option<Arc<PhoneInfo>> {
        let lowered = if text.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(text.to_ascii_lowercase())
        } else {
            Cow::Borrowed(text)
        };
        let tables = self.tables.read().unwrap_or_else(|p| p.into_inner());
        let index = tables
            .mac_spellings
            .iter()
            .position(|spellings| spellings.found_in(&lowered))?;
        Some(tables.phones[index].clone())
    }

    /// Records that `ip` now belongs to the phone with `mac` (called by DHCP on ACK).
    pub fn bind_ip(&self, mac: &Mac, ip: IpAddr) -> Option<Arc<PhoneInfo>> {
        let mut tables = self.tables.write().unwrap_or_else(|p| p.into_inner());
        let index = *tables.by_mac.get(mac)?;
        if let Some(old) = tables.ip_of[index].replace(ip) {
            tables.by_ip.remove(&old);
        }
        // The address may have belonged to another phone before.
        if let Some(previous) = tables.by_ip.insert(ip, index) {
            if previous != index {
                tables.ip_of[previous] = None;
            }
        }
        Some(tables.phones[index].clone())
    }

    pub fn unbind_ip(&self, ip: IpAddr) {
        let mut tables = self.tables.write().unwrap_or_else(|p| p.into_inner());
        if let Some(index) = tables.by_ip.remove(&ip) {
            tables.ip_of[index] = None;
        }
    }

    /// Best guess at who sent a request: address first, then a MAC in the path or User-Agent.
    pub fn identify(&self, ip: IpAddr, hints: &[&str]) -> Option<Arc<PhoneInfo>> {
        self.by_ip(ip)
            .or_else(|| hints.iter().find_map(|h| self.by_mac_in(h)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn phone(name: &str, mac: &str) -> PhoneInfo {
        PhoneInfo {
            name: name.into(),
            model: "htek-uc924".into(),
            mac: mac.parse().unwrap(),
            ext: "4002".into(),
            password: "pw".into(),
            devcode: Some("0012".into()),
        }
    }

    #[test]
    fn ip_binding_moves_with_new_lease() {
        let dir = PhoneDirectory::new([phone("a", "001a4d5c258d")]);
        let mac: Mac = "001a4d5c258d".parse().unwrap();
        dir.bind_ip(&mac, "127.77.0.10".parse().unwrap());
        dir.bind_ip(&mac, "127.77.0.11".parse().unwrap());
        assert!(dir.by_ip("127.77.0.10".parse().unwrap()).is_none());
        assert_eq!(dir.by_ip("127.77.0.11".parse().unwrap()).unwrap().name, "a");
    }

    /// Two phones, a sequence of leases (phone index, address) and releases,
    /// then who each address belongs to.
    #[rstest]
    #[case::moves(&[(0, 10), (0, 11)], &[], &[(10, None), (11, Some("a"))])]
    #[case::taken_over(&[(0, 10), (1, 10)], &[], &[(10, Some("b"))])]
    #[case::taken_over_then_own_moves(&[(0, 10), (1, 10), (0, 12)], &[], &[(10, Some("b")), (12, Some("a"))])]
    #[case::released(&[(0, 10), (1, 11)], &[10], &[(10, None), (11, Some("b"))])]
    fn addresses_follow_leases_and_releases(
        #[case] leases: &[(usize, u8)],
        #[case] releases: &[u8],
        #[case] owners: &[(u8, Option<&str>)],
    ) {
        let macs = ["001a4d5c258d", "001a4d5c258e"];
        let dir = PhoneDirectory::new([phone("a", macs[0]), phone("b", macs[1])]);
        let ip = |last: u8| IpAddr::from([127, 77, 0, last]);
        for &(who, last) in leases {
            let mac: Mac = macs[who].parse().unwrap();
            dir.bind_ip(&mac, ip(last));
        }
        for &last in releases {
            dir.unbind_ip(ip(last));
        }
        for &(last, owner) in owners {
            assert_eq!(
                dir.by_ip(ip(last)).map(|p| p.name.clone()).as_deref(),
                owner,
                "owner of .{last}"
            );
        }
    }

    #[test]
    fn lookups_by_name_ext_and_mac_take_the_first_listed() {
        let mut twin = phone("twin", "001a4d5c2590");
        twin.ext = "4002".into();
        let dir = PhoneDirectory::new([phone("a", "001a4d5c258d"), twin]);
        assert_eq!(dir.by_ext("4002").unwrap().name, "a");
        assert_eq!(
            dir.by_name("twin").unwrap().mac,
            "001a4d5c2590".parse().unwrap()
        );
        assert_eq!(
            dir.by_mac(&"001a4d5c2590".parse().unwrap()).unwrap().name,
            "twin"
        );
        assert!(dir.by_name("nobody").is_none());
        assert!(dir.by_ext("9999").is_none());
    }

    #[test]
    fn mac_found_in_paths_and_user_agents() {
        let dir = PhoneDirectory::new([phone("a", "001a4d5c258d")]);
        assert_eq!(dir.by_mac_in("/cfg001a4d5c258d.xml").unwrap().name, "a");
        assert_eq!(dir.by_mac_in("/Config001A4D5C258D.cfg").unwrap().name, "a");
        assert_eq!(
            dir.by_mac_in("Htek UC924 2.0.4.2 00:1a:4d:5c:25:8d")
                .unwrap()
                .name,
            "a"
        );
        assert!(dir.by_mac_in("/cfg0012.xml").is_none());
    }

    /// Two phones, so a hit must also name the right one; every notation,
    /// in either case, anywhere in the text.
    #[rstest]
    #[case::bare_lower("/cfg001a4d5c258d.xml", Some("a"))]
    #[case::bare_upper("/Config001A4D5C258D.cfg", Some("a"))]
    #[case::colon("Htek UC924 2.0.4.2 00:1a:4d:5c:25:8d", Some("a"))]
    #[case::colon_upper("UA 00:1F:C1:10:D3:A9", Some("b"))]
    #[case::dash("mac=00-1f-c1-10-d3-a9", Some("b"))]
    #[case::dash_upper("mac=00-1A-4D-5C-25-8D", Some("a"))]
    #[case::second_phone_bare("cfg001fc110d3a9", Some("b"))]
    #[case::one_digit_off("/cfg001a4d5c258e.xml", None)]
    #[case::devcode_only("/cfg0012.xml", None)]
    #[case::mixed_separators("00:1a-4d:5c-25:8d", None)]
    #[case::empty("", None)]
    fn by_mac_in_finds_every_notation(#[case] text: &str, #[case] expected: Option<&str>) {
        let dir = PhoneDirectory::new([phone("a", "001a4d5c258d"), phone("b", "001fc110d3a9")]);
        assert_eq!(
            dir.by_mac_in(text).map(|p| p.name.clone()).as_deref(),
            expected
        );
    }

    /// The spellings made once must be those of the phone at the same index.
    #[test]
    fn precomputed_spellings_follow_the_phones() {
        let macs = ["001a4d5c258d", "001fc110d3a9", "0080f0aabbcc"];
        let dir = PhoneDirectory::new(macs.iter().map(|m| phone(&format!("p{m}"), m)));
        for mac in macs {
            let parsed: Mac = mac.parse().unwrap();
            for text in [
                parsed.upper(),
                parsed.colon(),
                parsed.colon().replace(':', "-"),
            ] {
                assert_eq!(dir.by_mac_in(&text).unwrap().mac, parsed, "{text}");
            }
        }
        assert!(PhoneDirectory::default()
            .by_mac_in("001a4d5c258d")
            .is_none());
    }
}
