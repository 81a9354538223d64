//! Option values → wire bytes, and which option set applies to a client.
//!
//! Every configured option is sent whether or not the client listed it in
//! option 55: phones ignore options they do not know, and a lab wants to see
//! the phone's reaction to exactly what the scenario configured. What the
//! client asked for is recorded in the request events.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use globset::{GlobBuilder, GlobMatcher};
use phonerig_core::placeholder::Placeholders;
use serde_json::Value;

use crate::settings::{OptionSet, OptionValue, Settings};

/// Options the server owns: the message type, the server identifier and the
/// lease time come from the protocol state, not from a scenario.
pub const RESERVED: [(u8, &str); 5] = [
    (0, "pad"),
    (51, "lease time: set `lease_time` instead"),
    (53, "message type: chosen by the server"),
    (54, "server identifier: always the rig's address"),
    (255, "end"),
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionError {
    #[error("option `{0}` is not a number from 1 to 254")]
    BadNumber(String),
    #[error("option {code} cannot be set ({why})")]
    Reserved { code: u8, why: &'static str },
    #[error("{0}")]
    Placeholder(String),
    #[error("`{0}` is not an IPv4 address")]
    NotIpv4(String),
    #[error("`{0}` is not hex bytes (want pairs of hex digits, e.g. 0104c0a80001)")]
    BadHex(String),
    #[error(
        "`{0}` is not a domain name (labels of 1-63 letters, digits or `-`, 255 bytes at most)"
    )]
    BadDomain(String),
    #[error(
        "option 120 mixes domain names and IPv4 addresses; RFC 3361 allows one kind per option"
    )]
    MixedSipServers,
    #[error("an empty list cannot be sent")]
    EmptyList,
}

/// An option ready to send: its bytes, and how the events show it.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    /// Text, a list of IPv4 strings, a number, or `hex:…` (the `options` field of offer/ack events).
    pub shown: Value,
}

/// Parses an option key (`"66"`) and refuses numbers the server must own.
pub fn option_number(key: &str) -> Result<u8, OptionError> {
    let code: u8 = key
        .trim()
        .parse()
        .map_err(|_| OptionError::BadNumber(key.to_owned()))?;
    if let Some((_, why)) = RESERVED.iter().find(|(reserved, _)| *reserved == code) {
        return Err(OptionError::Reserved { code, why });
    }
    Ok(code)
}

fn expand(text: &str, placeholders: &Placeholders) -> Result<String, OptionError> {
    placeholders
        .expand(text)
        .map_err(|e| OptionError::Placeholder(e.to_string()))
}

fn ipv4(text: &str) -> Result<Ipv4Addr, OptionError> {
    text.trim()
        .parse()
        .map_err(|_| OptionError::NotIpv4(text.to_owned()))
}

/// RFC 1035 §3.1 wire form, uncompressed (RFC 3361 forbids compression across names).
fn domain_wire(name: &str) -> Result<Vec<u8>, OptionError> {
    let bad = || OptionError::BadDomain(name.to_owned());
    let trimmed = name.trim().strip_suffix('.').unwrap_or(name.trim());
    if trimmed.is_empty() {
        return Err(bad());
    }
    let mut out = Vec::with_capacity(trimmed.len() + 2);
    for label in trimmed.split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(bad());
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    if out.len() > 255 {
        return Err(bad());
    }
    Ok(out)
}

fn hex_bytes(text: &str) -> Result<Vec<u8>, OptionError> {
    let digits: String = text.chars().filter(|c| !matches!(c, ':' | ' ')).collect();
    hex::decode(&digits).map_err(|_| OptionError::BadHex(text.to_owned()))
}

fn ip_list(values: &[String], placeholders: &Placeholders) -> Result<Vec<Ipv4Addr>, OptionError> {
    if values.is_empty() {
        return Err(OptionError::EmptyList);
    }
    values
        .iter()
        .map(|v| ipv4(&expand(v, placeholders)?))
        .collect()
}

fn shown_ips(ips: &[Ipv4Addr]) -> Value {
    Value::Array(ips.iter().map(|ip| Value::String(ip.to_string())).collect())
}

/// Encodes one option value for one client.
pub fn encode(value: &OptionValue, placeholders: &Placeholders) -> Result<Encoded, OptionError> {
    match value {
        OptionValue::Text(text) => {
            let text = expand(text, placeholders)?;
            Ok(Encoded {
                bytes: text.clone().into_bytes(),
                shown: Value::String(text),
            })
        }
        OptionValue::Ipv4(values) => {
            let ips = ip_list(values, placeholders)?;
            Ok(Encoded {
                bytes: ips.iter().flat_map(|ip| ip.octets()).collect(),
                shown: shown_ips(&ips),
            })
        }
        OptionValue::Hex(text) => {
            let bytes = hex_bytes(text)?;
            let shown = Value::String(format!("hex:{}", hex::encode(&bytes)));
            Ok(Encoded { bytes, shown })
        }
        OptionValue::Integer(value) => Ok(Encoded {
            bytes: value.to_be_bytes().to_vec(),
            shown: Value::from(*value),
        }),
        OptionValue::SipServers(values) => {
            if values.is_empty() {
                return Err(OptionError::EmptyList);
            }
            let expanded = values
                .iter()
                .map(|v| expand(v, placeholders))
                .collect::<Result<Vec<_>, _>>()?;
            let ips: Vec<Option<Ipv4Addr>> =
                expanded.iter().map(|v| v.trim().parse().ok()).collect();
            let shown = Value::Array(
                expanded
                    .iter()
                    .map(|v| Value::String(v.trim().to_owned()))
                    .collect(),
            );
            let bytes = if ips.iter().all(Option::is_some) {
                let mut bytes = vec![1u8];
                bytes.extend(ips.iter().flatten().flat_map(|ip| ip.octets()));
                bytes
            } else if ips.iter().all(Option::is_none) {
                let mut bytes = vec![0u8];
                for name in &expanded {
                    bytes.extend(domain_wire(name)?);
                }
                bytes
            } else {
                return Err(OptionError::MixedSipServers);
            };
            Ok(Encoded { bytes, shown })
        }
    }
}

/// Where an option's value came from, most specific last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Global,
    Vendor(String),
    Phone(String),
}

struct VendorRule {
    pattern: String,
    matcher: GlobMatcher,
    set: ParsedSet,
}

#[derive(Default, Clone)]
struct ParsedSet {
    lease_time: Option<Duration>,
    options: BTreeMap<u8, OptionValue>,
}

fn parse_set(
    lease_time: Option<Duration>,
    options: &BTreeMap<String, OptionValue>,
    context: &str,
) -> anyhow::Result<ParsedSet> {
    if let Some(lease) = lease_time {
        // Option 51 counts whole seconds; a phone given 0 would renew forever.
        anyhow::ensure!(
            lease >= Duration::from_secs(1),
            "{context}: lease_time must be at least 1s"
        );
    }
    let mut parsed = BTreeMap::new();
    for (key, value) in options {
        let code = option_number(key).map_err(|e| anyhow::anyhow!("{context}: {e}"))?;
        if parsed.insert(code, value.clone()).is_some() {
            anyhow::bail!("{context}: option {code} is given twice");
        }
    }
    Ok(ParsedSet {
        lease_time,
        options: parsed,
    })
}

fn parse_option_set(set: &OptionSet, context: &str) -> anyhow::Result<ParsedSet> {
    parse_set(set.lease_time.map(Duration::from), &set.options, context)
}

/// How much of a vendor glob is literal text: an exact name outranks any
/// pattern, and `Htek UC924*` outranks `Htek*`.
fn specificity(pattern: &str) -> (bool, usize) {
    let wild = ['*', '?', '[', ']', '{', '}'];
    (
        !pattern.contains(wild),
        pattern.chars().filter(|c| !wild.contains(c)).count(),
    )
}

/// The option sets of a scenario, parsed once at start.
pub struct OptionPlan {
    global: ParsedSet,
    /// Least specific first, so applying them in order lets the specific win.
    vendors: Vec<VendorRule>,
    phones: BTreeMap<String, ParsedSet>,
}

/// The options and lease time for one client.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub options: BTreeMap<u8, (OptionValue, Origin)>,
    pub lease_time: Option<Duration>,
}

impl OptionPlan {
    pub fn new(settings: &Settings) -> anyhow::Result<OptionPlan> {
        let global = parse_set(
            settings.lease_time.map(Duration::from),
            &settings.options,
            "[serve.dhcp.options]",
        )?;
        let mut vendors = Vec::new();
        for (pattern, set) in &settings.vendor {
            let glob = GlobBuilder::new(pattern)
                .case_insensitive(true)
                .literal_separator(false)
                .build()
                .map_err(|e| {
                    anyhow::anyhow!("[serve.dhcp.vendor.\"{pattern}\"]: not a glob: {e}")
                })?;
            vendors.push(VendorRule {
                pattern: pattern.clone(),
                matcher: glob.compile_matcher(),
                set: parse_option_set(set, &format!("[serve.dhcp.vendor.\"{pattern}\"]"))?,
            });
        }
        vendors.sort_by(|a, b| {
            specificity(&a.pattern)
                .cmp(&specificity(&b.pattern))
                .then_with(|| b.pattern.cmp(&a.pattern))
        });
        let mut phones = BTreeMap::new();
        for (name, set) in &settings.phone {
            phones.insert(
                name.clone(),
                parse_option_set(set, &format!("[serve.dhcp.phone.{name}]"))?,
            );
        }
        Ok(OptionPlan {
            global,
            vendors,
            phones,
        })
    }

    pub fn phone_names(&self) -> impl Iterator<Item = &str> {
        self.phones.keys().map(String::as_str)
    }

    pub fn vendor_patterns(&self) -> impl Iterator<Item = &str> {
        self.vendors.iter().map(|v| v.pattern.as_str())
    }

    /// Global, then every matching vendor set (least specific first), then the
    /// phone's own set; a later set replaces an earlier one per option number.
    pub fn resolve(&self, vendor_class: Option<&str>, phone: Option<&str>) -> Resolved {
        let mut resolved = Resolved {
            options: BTreeMap::new(),
            lease_time: None,
        };
        let mut apply = |set: &ParsedSet, origin: Origin| {
            for (code, value) in &set.options {
                resolved
                    .options
                    .insert(*code, (value.clone(), origin.clone()));
            }
            if set.lease_time.is_some() {
                resolved.lease_time = set.lease_time;
            }
        };
        apply(&self.global, Origin::Global);
        if let Some(class) = vendor_class {
            for rule in self.vendors.iter().filter(|r| r.matcher.is_match(class)) {
                apply(&rule.set, Origin::Vendor(rule.pattern.clone()));
            }
        }
        if let Some(set) = phone.and_then(|name| self.phones.get(name)) {
            apply(set, Origin::Phone(phone.unwrap_or_default().to_owned()));
        }
        resolved
    }

    /// Every value of every set, with the set's name: for checking them at start.
    pub fn all_values(&self) -> Vec<(String, u8, &OptionValue)> {
        let mut out: Vec<(String, u8, &OptionValue)> = self
            .global
            .options
            .iter()
            .map(|(c, v)| ("[serve.dhcp.options]".to_owned(), *c, v))
            .collect();
        for rule in &self.vendors {
            out.extend(
                rule.set
                    .options
                    .iter()
                    .map(|(c, v)| (format!("[serve.dhcp.vendor.\"{}\"]", rule.pattern), *c, v)),
            );
        }
        for (name, set) in &self.phones {
            out.extend(
                set.options
                    .iter()
                    .map(|(c, v)| (format!("[serve.dhcp.phone.{name}]"), *c, v)),
            );
        }
        out
    }
}

/// Whether a value can only be expanded for a known phone.
pub fn mentions_phone(value: &OptionValue) -> bool {
    match value {
        OptionValue::Text(text) | OptionValue::Hex(text) => Placeholders::mentions_phone(text),
        OptionValue::Ipv4(list) | OptionValue::SipServers(list) => {
            list.iter().any(|t| Placeholders::mentions_phone(t))
        }
        OptionValue::Integer(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phonerig_core::directory::PhoneInfo;
    use phonerig_core::placeholder::RigEndpoints;
    use rstest::rstest;
    use serde_json::json;

    fn placeholders() -> Placeholders {
        let rig = RigEndpoints {
            ip: "198.18.0.1".into(),
            http_port: 8080,
            https_port: 443,
            tftp_port: 69,
            ftp_port: 21,
            sip_port: 5060,
        };
        let phone = PhoneInfo {
            name: "uc924-1".into(),
            model: "htek-uc924".into(),
            mac: "00:1f:c1:10:d3:a9".parse().unwrap(),
            ext: "4002".into(),
            password: "pw".into(),
            devcode: Some("0012".into()),
        };
        Placeholders::new().with_rig(&rig).with_phone(&phone)
    }

    fn text(t: &str) -> OptionValue {
        OptionValue::Text(t.into())
    }

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[rstest]
    // 66 as an IP, an FQDN and a URL: all plain text on the wire
    #[case::opt66_ip(text("198.18.0.1"), b"198.18.0.1".to_vec(), json!("198.18.0.1"))]
    #[case::opt66_fqdn(text("tftp.example.com"), b"tftp.example.com".to_vec(), json!("tftp.example.com"))]
    #[case::opt66_url(text("http://{rig.http}/cfg"), b"http://198.18.0.1:8080/cfg".to_vec(), json!("http://198.18.0.1:8080/cfg"))]
    // 150 as Cisco's IPv4 list and as Htek's URL string
    #[case::opt150_cisco(OptionValue::Ipv4(list(&["{rig.ip}", "198.18.0.2"])), vec![198, 18, 0, 1, 198, 18, 0, 2], json!(["198.18.0.1", "198.18.0.2"]))]
    #[case::opt150_htek(text("tftp://{rig.ip}/"), b"tftp://198.18.0.1/".to_vec(), json!("tftp://198.18.0.1/"))]
    // 120 (RFC 3361) in both encodings
    #[case::opt120_names(OptionValue::SipServers(list(&["sip.example.com", "b.org."])), [&[0u8][..], b"\x03sip\x07example\x03com\x00\x01b\x03org\x00"].concat(), json!(["sip.example.com", "b.org."]))]
    #[case::opt120_ipv4(OptionValue::SipServers(list(&["{rig.ip}", "198.18.0.9"])), vec![1, 198, 18, 0, 1, 198, 18, 0, 9], json!(["198.18.0.1", "198.18.0.9"]))]
    // raw values
    #[case::hex(OptionValue::Hex("0104c0a80001".into()), vec![1, 4, 0xc0, 0xa8, 0, 1], json!("hex:0104c0a80001"))]
    #[case::hex_separated(OptionValue::Hex("01:04 C0".into()), vec![1, 4, 0xc0], json!("hex:0104c0"))]
    #[case::text_tagged(text("{phone.mac}"), b"001fc110d3a9".to_vec(), json!("001fc110d3a9"))]
    #[case::integer(OptionValue::Integer(3600), vec![0, 0, 0x0e, 0x10], json!(3600))]
    #[case::placeholders(text("cfg{phone.devcode}.xml@{rig.tftp}"), b"cfg0012.xml@198.18.0.1".to_vec(), json!("cfg0012.xml@198.18.0.1"))]
    fn encodes(#[case] value: OptionValue, #[case] bytes: Vec<u8>, #[case] shown: Value) {
        let encoded = encode(&value, &placeholders()).unwrap();
        assert_eq!(encoded.bytes, bytes);
        assert_eq!(encoded.shown, shown);
    }

    #[rstest]
    #[case(OptionValue::Ipv4(list(&["tftp.example.com"])), OptionError::NotIpv4("tftp.example.com".into()))]
    #[case(OptionValue::Ipv4(vec![]), OptionError::EmptyList)]
    #[case(OptionValue::Hex("0g".into()), OptionError::BadHex("0g".into()))]
    #[case(OptionValue::Hex("123".into()), OptionError::BadHex("123".into()))]
    #[case(OptionValue::SipServers(list(&["198.18.0.1", "sip.example.com"])), OptionError::MixedSipServers)]
    #[case(OptionValue::SipServers(list(&["bad..name"])), OptionError::BadDomain("bad..name".into()))]
    fn refuses(#[case] value: OptionValue, #[case] error: OptionError) {
        assert_eq!(encode(&value, &placeholders()).unwrap_err(), error);
    }

    #[test]
    fn unknown_placeholder_is_named() {
        let error = encode(&text("{phone.mca}"), &placeholders()).unwrap_err();
        assert!(
            matches!(&error, OptionError::Placeholder(m) if m.contains("phone.mca")),
            "{error}"
        );
    }

    #[rstest]
    #[case("66", Ok(66))]
    #[case(" 150 ", Ok(150))]
    #[case("0", Err(OptionError::Reserved { code: 0, why: RESERVED[0].1 }))]
    #[case("53", Err(OptionError::Reserved { code: 53, why: RESERVED[2].1 }))]
    #[case("256", Err(OptionError::BadNumber("256".into())))]
    #[case("tftp", Err(OptionError::BadNumber("tftp".into())))]
    fn option_numbers(#[case] key: &str, #[case] expected: Result<u8, OptionError>) {
        assert_eq!(option_number(key), expected);
    }

    fn settings() -> Settings {
        let set = |pairs: &[(&str, &str)]| OptionSet {
            lease_time: None,
            options: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), text(v)))
                .collect(),
        };
        Settings {
            options: [
                ("66".to_string(), text("global66")),
                ("150".to_string(), text("global150")),
            ]
            .into(),
            vendor: [
                (
                    "Htek*".to_string(),
                    set(&[("66", "htek66"), ("150", "htek150"), ("128", "htek128")]),
                ),
                ("htek uc924*".to_string(), set(&[("150", "uc924-150")])),
                ("Htek UC924 2.0".to_string(), set(&[("128", "exact128")])),
                ("Panasonic*".to_string(), set(&[("66", "pana66")])),
            ]
            .into(),
            phone: [("desk-1".to_string(), set(&[("66", "phone66")]))].into(),
            ..Settings::default()
        }
    }

    #[rstest]
    #[case::no_vendor_class(None, None, &[(66, "global66"), (150, "global150")])]
    #[case::other_vendor(Some("Yealink"), None, &[(66, "global66"), (150, "global150")])]
    #[case::htek_generic(Some("Htek UC912"), None, &[(66, "htek66"), (128, "htek128"), (150, "htek150")])]
    #[case::longer_glob_wins_case_insensitive(Some("Htek UC924 1.9"), None, &[(66, "htek66"), (128, "htek128"), (150, "uc924-150")])]
    #[case::exact_name_wins(Some("Htek UC924 2.0"), None, &[(66, "htek66"), (128, "exact128"), (150, "uc924-150")])]
    #[case::phone_wins_over_vendor(Some("Htek UC924 2.0"), Some("desk-1"), &[(66, "phone66"), (128, "exact128"), (150, "uc924-150")])]
    #[case::phone_without_vendor(None, Some("desk-1"), &[(66, "phone66"), (150, "global150")])]
    #[case::unconfigured_phone(Some("Panasonic KX-UT670"), Some("other"), &[(66, "pana66"), (150, "global150")])]
    fn precedence(
        #[case] class: Option<&str>,
        #[case] phone: Option<&str>,
        #[case] expected: &[(u8, &str)],
    ) {
        let plan = OptionPlan::new(&settings()).unwrap();
        let resolved = plan.resolve(class, phone);
        let got: Vec<(u8, String)> = resolved
            .options
            .iter()
            .map(|(code, (value, _))| match value {
                OptionValue::Text(t) => (*code, t.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        let expected: Vec<(u8, String)> =
            expected.iter().map(|(c, t)| (*c, t.to_string())).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn origin_and_lease_time_follow_the_winning_set() {
        let mut s = settings();
        s.lease_time = Some(phonerig_core::duration::HumanDuration(Duration::from_secs(
            600,
        )));
        s.phone.get_mut("desk-1").unwrap().lease_time = Some(
            phonerig_core::duration::HumanDuration(Duration::from_secs(60)),
        );
        let plan = OptionPlan::new(&s).unwrap();
        let resolved = plan.resolve(Some("Htek UC912"), Some("desk-1"));
        assert_eq!(resolved.options[&66].1, Origin::Phone("desk-1".into()));
        assert_eq!(resolved.options[&128].1, Origin::Vendor("Htek*".into()));
        assert_eq!(resolved.options[&150].1, Origin::Vendor("Htek*".into()));
        assert_eq!(resolved.lease_time, Some(Duration::from_secs(60)));
        assert_eq!(
            plan.resolve(None, None).lease_time,
            Some(Duration::from_secs(600))
        );
    }

    #[test]
    fn a_zero_lease_time_is_refused() {
        let mut s = settings();
        s.phone.get_mut("desk-1").unwrap().lease_time =
            Some(phonerig_core::duration::HumanDuration(Duration::ZERO));
        assert!(OptionPlan::new(&s)
            .err()
            .unwrap()
            .to_string()
            .contains("at least 1s"));
    }

    #[test]
    fn bad_keys_and_globs_fail_the_plan() {
        let mut s = settings();
        s.options.insert("54".into(), text("x"));
        assert!(OptionPlan::new(&s)
            .err()
            .unwrap()
            .to_string()
            .contains("server identifier"));
        let mut s = settings();
        s.vendor.insert("Htek[".into(), OptionSet::default());
        assert!(OptionPlan::new(&s)
            .err()
            .unwrap()
            .to_string()
            .contains("not a glob"));
        let mut s = settings();
        s.options.insert("066".into(), text("dup"));
        assert!(OptionPlan::new(&s)
            .err()
            .unwrap()
            .to_string()
            .contains("twice"));
    }
}
