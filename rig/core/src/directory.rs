//! Who is who on the bench: phones from the lab file, looked up by MAC (DHCP),
//! by address (every other service, once DHCP has leased one) or by name.

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

#[derive(Default)]
struct Tables {
    phones: Vec<Arc<PhoneInfo>>,
    by_ip: HashMap<IpAddr, usize>,
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
        let phones = phones.into_iter().map(Arc::new).collect();
        PhoneDirectory {
            tables: Arc::new(RwLock::new(Tables {
                phones,
                by_ip: HashMap::new(),
            })),
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
        self.tables
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .phones
            .iter()
            .find(|p| &p.mac == mac)
            .cloned()
    }

    pub fn by_name(&self, name: &str) -> Option<Arc<PhoneInfo>> {
        self.tables
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .phones
            .iter()
            .find(|p| p.name == name)
            .cloned()
    }

    pub fn by_ext(&self, ext: &str) -> Option<Arc<PhoneInfo>> {
        self.tables
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .phones
            .iter()
            .find(|p| p.ext == ext)
            .cloned()
    }

    pub fn by_ip(&self, ip: IpAddr) -> Option<Arc<PhoneInfo>> {
        let tables = self.tables.read().unwrap_or_else(|p| p.into_inner());
        tables.by_ip.get(&ip).map(|&i| tables.phones[i].clone())
    }

    /// Finds a phone whose MAC appears in `text` (a request path or User-Agent), in any notation.
    pub fn by_mac_in(&self, text: &str) -> Option<Arc<PhoneInfo>> {
        let lowered = text.to_ascii_lowercase();
        let tables = self.tables.read().unwrap_or_else(|p| p.into_inner());
        tables
            .phones
            .iter()
            .find(|p| {
                lowered.contains(&p.mac.lower())
                    || lowered.contains(&p.mac.colon())
                    || lowered.contains(&p.mac.colon().replace(':', "-"))
            })
            .cloned()
    }

    /// Records that `ip` now belongs to the phone with `mac` (called by DHCP on ACK).
    pub fn bind_ip(&self, mac: &Mac, ip: IpAddr) -> Option<Arc<PhoneInfo>> {
        let mut tables = self.tables.write().unwrap_or_else(|p| p.into_inner());
        let index = tables.phones.iter().position(|p| &p.mac == mac)?;
        tables.by_ip.retain(|_, i| *i != index);
        tables.by_ip.insert(ip, index);
        Some(tables.phones[index].clone())
    }

    pub fn unbind_ip(&self, ip: IpAddr) {
        self.tables
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .by_ip
            .remove(&ip);
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
}
