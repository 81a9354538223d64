//! `{phone.mac}`-style placeholders in scenario values, file names and templates.
//!
//! An unknown placeholder is an error naming it, never silently left in: a
//! scenario that asks for `cfg{phone.mca}.xml` must fail `rig check`, not
//! look for a file nobody will ever request.

use std::collections::BTreeMap;

use crate::directory::PhoneInfo;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlaceholderError {
    #[error("unknown placeholder `{{{name}}}` (known: {known})")]
    Unknown { name: String, known: String },
    #[error("unclosed `{{` at byte {at}")]
    Unclosed { at: usize },
}

/// The values placeholders expand to, for one phone on one bench.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placeholders {
    values: BTreeMap<String, String>,
}

/// Service endpoints of the bench, for `{rig.*}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RigEndpoints {
    pub ip: String,
    pub http_port: u16,
    pub https_port: u16,
    pub tftp_port: u16,
    pub ftp_port: u16,
    pub sip_port: u16,
}

fn host_port(ip: &str, port: u16, standard: u16) -> String {
    if port == standard {
        ip.to_owned()
    } else {
        format!("{ip}:{port}")
    }
}

impl Placeholders {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(&mut self, name: &str, value: impl Into<String>) -> &mut Self {
        self.values.insert(name.to_owned(), value.into());
        self
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// `{rig.ip}` plus `{rig.http}`, `{rig.tftp}` … as `host[:port]`, with the
    /// port left out when it is the protocol's standard one, so a scenario reads
    /// the same on a physical bench (standard ports) and on loopback.
    pub fn with_rig(mut self, rig: &RigEndpoints) -> Self {
        self.set("rig.ip", rig.ip.clone());
        self.set("rig.http", host_port(&rig.ip, rig.http_port, 80));
        self.set("rig.https", host_port(&rig.ip, rig.https_port, 443));
        self.set("rig.tftp", host_port(&rig.ip, rig.tftp_port, 69));
        self.set("rig.ftp", host_port(&rig.ip, rig.ftp_port, 21));
        self.set("rig.sip", host_port(&rig.ip, rig.sip_port, 5060));
        self.set("rig.http_port", rig.http_port.to_string());
        self.set("rig.https_port", rig.https_port.to_string());
        self.set("rig.tftp_port", rig.tftp_port.to_string());
        self.set("rig.ftp_port", rig.ftp_port.to_string());
        self.set("rig.sip_port", rig.sip_port.to_string());
        self
    }

    pub fn with_phone(mut self, phone: &PhoneInfo) -> Self {
        self.set("phone.name", phone.name.clone());
        self.set("phone.model", phone.model.clone());
        self.set("phone.mac", phone.mac.lower());
        self.set("phone.MAC", phone.mac.upper());
        self.set("phone.mac_colon", phone.mac.colon());
        self.set("phone.ext", phone.ext.clone());
        self.set("phone.password", phone.password.clone());
        self.set("phone.devcode", phone.devcode.clone().unwrap_or_default());
        self
    }

    pub fn names(&self) -> Vec<&str> {
        self.values.keys().map(String::as_str).collect()
    }

    /// Expands every `{name}`; `{{` and `}}` stand for literal braces.
    pub fn expand(&self, text: &str) -> Result<String, PlaceholderError> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        let mut offset = 0;
        while let Some(pos) = rest.find(['{', '}']) {
            out.push_str(&rest[..pos]);
            let tail = &rest[pos..];
            if tail.starts_with("{{") || tail.starts_with("}}") {
                out.push(tail.as_bytes()[0] as char);
                rest = &tail[2..];
                offset += pos + 2;
                continue;
            }
            if let Some(after) = tail.strip_prefix('}') {
                out.push('}');
                rest = after;
                offset += pos + 1;
                continue;
            }
            let close = tail
                .find('}')
                .ok_or(PlaceholderError::Unclosed { at: offset + pos })?;
            let name = &tail[1..close];
            let value = self
                .values
                .get(name)
                .ok_or_else(|| PlaceholderError::Unknown {
                    name: name.to_owned(),
                    known: self
                        .values
                        .keys()
                        .map(|k| format!("{{{k}}}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            out.push_str(value);
            rest = &tail[close + 1..];
            offset += pos + close + 1;
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Whether `text` uses any `{phone.*}` placeholder (a per-phone value).
    pub fn mentions_phone(text: &str) -> bool {
        text.contains("{phone.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn sample() -> Placeholders {
        let phone = PhoneInfo {
            name: "uc924-1".into(),
            model: "htek-uc924".into(),
            mac: "00:1F:C1:10:D3:A9".parse().unwrap(),
            ext: "4002".into(),
            password: "secret".into(),
            devcode: Some("0012".into()),
        };
        let rig = RigEndpoints {
            ip: "198.18.0.1".into(),
            http_port: 80,
            https_port: 8443,
            tftp_port: 69,
            ftp_port: 2121,
            sip_port: 5060,
        };
        Placeholders::new().with_rig(&rig).with_phone(&phone)
    }

    #[rstest]
    #[case("cfg{phone.devcode}.xml", "cfg0012.xml")]
    #[case("cfg{phone.mac}", "cfg001fc110d3a9")]
    #[case("Config{phone.MAC}.cfg", "Config001FC110D3A9.cfg")]
    #[case("{phone.model}", "htek-uc924")]
    #[case("sip:{phone.ext}@{rig.ip}", "sip:4002@198.18.0.1")]
    #[case("http://{rig.http}/cfg", "http://198.18.0.1/cfg")]
    #[case("https://{rig.https}/cfg", "https://198.18.0.1:8443/cfg")]
    #[case("ftp://{rig.ftp}/", "ftp://198.18.0.1:2121/")]
    #[case("{phone.mac_colon}", "00:1f:c1:10:d3:a9")]
    #[case("no placeholders", "no placeholders")]
    #[case("literal {{braces}}", "literal {braces}")]
    #[case("", "")]
    fn expands(#[case] input: &str, #[case] expected: &str) {
        assert_eq!(sample().expand(input).unwrap(), expected);
    }

    #[rstest]
    #[case("cfg{phone.mca}.xml", "phone.mca")]
    #[case("{rig.address}", "rig.address")]
    #[case("{}", "")]
    fn unknown_placeholders_are_named(#[case] input: &str, #[case] name: &str) {
        match sample().expand(input).unwrap_err() {
            PlaceholderError::Unknown { name: got, known } => {
                assert_eq!(got, name);
                assert!(known.contains("{phone.mac}"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unclosed_brace_is_an_error() {
        assert_eq!(
            sample().expand("cfg{phone.mac").unwrap_err(),
            PlaceholderError::Unclosed { at: 3 }
        );
    }
}
