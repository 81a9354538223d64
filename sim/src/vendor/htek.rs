//! Htek UC9xx provisioning (seed 004) as pure functions: server selection,
//! file names, the `<hl_provision>` P-code format, AES decryption, firmware
//! image check, and the P-codes that become SIP account and panic button.

use std::collections::BTreeMap;

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyIvInit};
use quick_xml::events::Event;

use crate::dhcp::Lease;
use crate::fetch::{Scheme, ServerUrl};

/// 004 §3: the IV is fixed.
pub const AES_IV: [u8; 16] = [
    0x0B, 0x1E, 0x1D, 0x00, 0x0F, 0x0B, 0x07, 0x09, 0x1D, 0x1F, 0x04, 0x07, 0x1F, 0x1E, 0x04, 0x07,
];

/// P-codes the virtual phone acts on (004 and 000; account codes follow the
/// Grandstream-derived numbering the Htek template uses).
pub mod p {
    pub const SIP_SERVER: &str = "P47";
    pub const PASSWORD: &str = "P34";
    pub const USER_ID: &str = "P35";
    pub const AUTH_ID: &str = "P36";
    pub const DISPLAY_NAME: &str = "P3";
    pub const SIP_REGISTRATION: &str = "P31";
    /// Register expiration in minutes.
    pub const REGISTER_EXPIRATION: &str = "P32";
    pub const DHCP_OPTION_OVERRIDE: &str = "P145";
    pub const FIRMWARE_SERVER: &str = "P192";
    pub const AUTO_CHECK_INTERVAL: &str = "P193";
    pub const AUTO_UPGRADE: &str = "P194";
    /// Firmware upgrade protocol for a bare firmware server: 0 TFTP, 1 HTTP, 2 HTTPS, 3 FTP.
    pub const UPGRADE_MODE: &str = "P212";
    pub const FW_PREFIX: &str = "P232";
    pub const FW_POSTFIX: &str = "P233";
    pub const CFG_PREFIX: &str = "P234";
    pub const CFG_POSTFIX: &str = "P235";
    pub const CONFIG_SERVER: &str = "P237";
    pub const AES_KEY: &str = "P8631";
    pub const PANIC_MODE: &str = "P24962";
    pub const PANIC_FUNCTION: &str = "P24944";
    pub const PANIC_VALUE: &str = "P24945";
    pub const PANIC_ACCOUNT: &str = "P24947";
}

/// Where the config server address came from (004 §7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerSource {
    DhcpOption(u8),
    Flash,
}

/// 004 §7: the DHCP options that carry the server, highest priority first.
pub const OPTION_PRIORITY: [u8; 3] = [128, 150, 66];

/// 004 §7: DHCP option 128, then 150, then 66 (when P145 "Allow DHCP Option
/// To Override Server" is not 0), else the Config Server Path P237. A bare
/// address means HTTP, the phone's default protocol.
pub fn config_server(
    lease: &Lease,
    flash: &BTreeMap<String, String>,
) -> Option<(ServerUrl, ServerSource)> {
    config_server_by(lease, flash, OPTION_PRIORITY)
}

/// [`config_server`] with the DHCP options tried in `priority` order.
pub fn config_server_by(
    lease: &Lease,
    flash: &BTreeMap<String, String>,
    priority: [u8; 3],
) -> Option<(ServerUrl, ServerSource)> {
    let override_allowed = flash
        .get(p::DHCP_OPTION_OVERRIDE)
        .is_none_or(|v| v.trim() != "0");
    if override_allowed {
        let candidates = priority.map(|code| {
            let values: Vec<String> = match code {
                150 => lease.option_150(),
                _ => lease.text(code).into_iter().collect(),
            };
            (code, values)
        });
        for (code, values) in candidates {
            for value in values {
                if let Ok(url) = ServerUrl::parse(&value, Scheme::Http) {
                    return Some((url, ServerSource::DhcpOption(code)));
                }
            }
        }
    }
    let path = flash.get(p::CONFIG_SERVER)?;
    ServerUrl::parse(path, Scheme::Http)
        .ok()
        .map(|url| (url, ServerSource::Flash))
}

/// 004 §2.1 and §10: `cfg<devcode>.xml` → `cfg<mac>` → `cfg<mac>.xml`, with the P234/P235 prefix and postfix.
pub fn config_files(
    devcode: &str,
    mac_lower: &str,
    flash: &BTreeMap<String, String>,
) -> Vec<String> {
    let prefix = flash.get(p::CFG_PREFIX).map(String::as_str).unwrap_or("");
    let postfix = flash.get(p::CFG_POSTFIX).map(String::as_str).unwrap_or("");
    [
        format!("cfg{devcode}.xml"),
        format!("cfg{mac_lower}"),
        format!("cfg{mac_lower}.xml"),
    ]
    .into_iter()
    .map(|base| format!("{prefix}{base}{postfix}"))
    .collect()
}

/// 004 §6/§10: `fw924.rom` with the P232/P233 prefix and postfix, on the P192 server.
pub fn firmware_url(fw_digits: &str, flash: &BTreeMap<String, String>) -> Option<ServerUrl> {
    let server = flash
        .get(p::FIRMWARE_SERVER)
        .filter(|s| !s.trim().is_empty())?;
    let default = match flash.get(p::UPGRADE_MODE).map(|v| v.trim()) {
        Some("0") => Scheme::Tftp,
        Some("2") => Scheme::Https,
        Some("3") => Scheme::Ftp,
        _ => Scheme::Http,
    };
    let prefix = flash.get(p::FW_PREFIX).map(String::as_str).unwrap_or("");
    let postfix = flash.get(p::FW_POSTFIX).map(String::as_str).unwrap_or("");
    ServerUrl::parse(server, default)
        .ok()
        .map(|url| url.file(&format!("{prefix}fw{fw_digits}.rom{postfix}")))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("encrypted file but no AES key (P8631) set")]
    NoKey,
    #[error("AES key `{0}` is not 1-16 hex digits")]
    BadKey(String),
    #[error("cannot decrypt with the configured AES key (bad padding)")]
    Decrypt,
    #[error("not an <hl_provision> file: {0}")]
    Format(String),
}

/// 004 §3: "The valid key (parameter K) length is from 1-16, and may only
/// contain [0-9, A-F]" — a longer key is refused, not truncated or used.
pub const AES_KEY_MAX_DIGITS: usize = 16;

/// P8631 as openssl's `-K`: hex digits, the missing ones taken as zero.
pub fn aes_key(text: &str) -> Result<[u8; 16], ConfigError> {
    let text = text.trim();
    if text.is_empty()
        || text.len() > AES_KEY_MAX_DIGITS
        || !text.chars().all(|c| c.is_ascii_hexdigit())
    {
        return Err(ConfigError::BadKey(text.to_owned()));
    }
    let padded = format!("{text:0<32}");
    let mut key = [0u8; 16];
    hex::decode_to_slice(padded, &mut key).map_err(|_| ConfigError::BadKey(text.to_owned()))?;
    Ok(key)
}

pub fn decrypt(data: &[u8], key_text: &str) -> Result<Vec<u8>, ConfigError> {
    let key = aes_key(key_text)?;
    cbc::Decryptor::<aes::Aes128>::new(&key.into(), &AES_IV.into())
        .decrypt_padded_vec_mut::<Pkcs7>(data)
        .map_err(|_| ConfigError::Decrypt)
}

fn looks_like_xml(data: &[u8]) -> bool {
    let data = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
    data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'<')
}

/// Plain or encrypted: an encrypted file is anything that does not start with `<`.
pub fn open(
    data: &[u8],
    aes_key_text: Option<&str>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    if looks_like_xml(data) {
        return parse(data);
    }
    let key = aes_key_text
        .filter(|k| !k.trim().is_empty())
        .ok_or(ConfigError::NoKey)?;
    let plain = decrypt(data, key)?;
    parse(&plain)
}

/// `<hl_provision><config><P47 para="…">value</P47>…</config></hl_provision>`;
/// `<P967 para="…" />` sets a blank value.
pub fn parse(data: &[u8]) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut reader = quick_xml::Reader::from_reader(data);
    let mut values = BTreeMap::new();
    let mut stack: Vec<String> = Vec::new();
    let mut text = String::new();
    let mut saw_root = false;
    let is_pcode = |name: &str| {
        name.len() > 1 && name.starts_with('P') && name[1..].chars().all(|c| c.is_ascii_digit())
    };
    loop {
        let event = reader
            .read_event()
            .map_err(|e| ConfigError::Format(e.to_string()))?;
        match event {
            Event::Start(start) => {
                let name = String::from_utf8_lossy(start.name().as_ref()).into_owned();
                if stack.is_empty() {
                    if name != "hl_provision" {
                        return Err(ConfigError::Format(format!("root element is <{name}>")));
                    }
                    saw_root = true;
                }
                stack.push(name);
                text.clear();
            }
            Event::Empty(empty) => {
                let name = String::from_utf8_lossy(empty.name().as_ref()).into_owned();
                if stack.is_empty() {
                    return Err(ConfigError::Format(format!("root element is <{name}/>")));
                }
                if stack.last().map(String::as_str) == Some("config") && is_pcode(&name) {
                    values.entry(name).or_insert_with(String::new);
                }
            }
            Event::Text(t) => {
                let decoded = t.decode().map_err(|e| ConfigError::Format(e.to_string()))?;
                text.push_str(&decoded);
            }
            Event::GeneralRef(r) => {
                let name = String::from_utf8_lossy(&r).into_owned();
                let ch = match name.as_str() {
                    "amp" => "&",
                    "lt" => "<",
                    "gt" => ">",
                    "quot" => "\"",
                    "apos" => "'",
                    other => return Err(ConfigError::Format(format!("unknown entity &{other};"))),
                };
                text.push_str(ch);
            }
            Event::CData(c) => text.push_str(&String::from_utf8_lossy(&c)),
            Event::End(_) => {
                let name = stack.pop().unwrap_or_default();
                if stack.last().map(String::as_str) == Some("config") && is_pcode(&name) {
                    values.insert(name, text.trim().to_owned());
                }
                text.clear();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !saw_root {
        return Err(ConfigError::Format("no <hl_provision> element".into()));
    }
    Ok(values)
}

/// The firmware image format the virtual phone accepts (docs/virtual-phones.md):
/// first line `HTEK-FW <version>`, any padding, last line `END`.
pub fn firmware_version(image: &[u8]) -> Result<String, String> {
    let first_line_end = image
        .iter()
        .position(|b| *b == b'\n')
        .ok_or("no header line")?;
    let header = String::from_utf8_lossy(&image[..first_line_end])
        .trim()
        .to_owned();
    let version = header
        .strip_prefix("HTEK-FW ")
        .ok_or_else(|| format!("header `{header}` is not `HTEK-FW <version>`"))?
        .trim()
        .to_owned();
    if version.is_empty()
        || !version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
    {
        return Err(format!("bad version `{version}`"));
    }
    if !image.ends_with(b"END\n") {
        return Err("image does not end with the END trailer (truncated?)".into());
    }
    Ok(version)
}

/// SIP account from P47/P35/P36/P34/P32.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HtekAccount {
    pub server_host: String,
    pub server_port: u16,
    pub user: String,
    pub auth_user: String,
    pub password: String,
    pub expires_secs: u32,
}

pub fn account(flash: &BTreeMap<String, String>) -> Option<HtekAccount> {
    if flash
        .get(p::SIP_REGISTRATION)
        .is_some_and(|v| v.trim() == "0")
    {
        return None;
    }
    let server = flash
        .get(p::SIP_SERVER)
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())?;
    let user = flash
        .get(p::USER_ID)
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())?
        .to_owned();
    let (host, port) = split_host_port(server, 5060)?;
    let auth_user = flash
        .get(p::AUTH_ID)
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .unwrap_or(&user)
        .to_owned();
    let minutes: u32 = flash
        .get(p::REGISTER_EXPIRATION)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(60);
    Some(HtekAccount {
        server_host: host,
        server_port: port,
        user,
        auth_user,
        password: flash.get(p::PASSWORD).cloned().unwrap_or_default(),
        expires_secs: minutes.max(1) * 60,
    })
}

pub fn split_host_port(text: &str, default_port: u16) -> Option<(String, u16)> {
    let text = text.trim().trim_start_matches("sip:");
    match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => port.parse().ok().map(|p| (host.to_owned(), p)),
        Some(_) => None,
        None if !text.is_empty() => Some((text.to_owned(), default_port)),
        None => None,
    }
}

/// Panic button (000): P24962 mode, P24944 function, P24945 value, P24947 account (hex digit 0-F).
/// `(mode, function, value, account)`; `None` when no function is assigned.
pub fn panic_button(flash: &BTreeMap<String, String>) -> Option<(u16, u16, String, u8)> {
    let function: u16 = flash.get(p::PANIC_FUNCTION)?.trim().parse().ok()?;
    if function == 0 {
        return None;
    }
    let mode: u16 = flash
        .get(p::PANIC_MODE)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let value = flash.get(p::PANIC_VALUE).cloned().unwrap_or_default();
    let account = flash
        .get(p::PANIC_ACCOUNT)
        .and_then(|v| u8::from_str_radix(v.trim(), 16).ok())
        .filter(|a| *a < 16)
        .unwrap_or(0);
    Some((mode, function, value, account))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn flash(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn lease(options: &[(u8, &[u8])]) -> Lease {
        Lease {
            address: "127.1.0.2".parse().unwrap(),
            server: "127.0.0.1".parse().unwrap(),
            subnet_mask: "255.0.0.0".parse().unwrap(),
            lease_secs: 3600,
            t1_secs: 1800,
            options: options.iter().map(|(c, d)| (*c, d.to_vec())).collect(),
        }
    }

    #[test]
    fn parses_the_document_example() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8" ?> <hl_provision version="1"> <config version="1"> <!--Profile1/Basic--> <P47 para="Profile1_Sipserver">192.168.0.68:5060</P47> <P967 para="Profile1_FailoverSipserver" /> <P4567 para="Profile1_PreferPrimaryServer">1</P4567> <P32 para="Profile1_RegisterExpiration">15</P32> </config> </hl_provision>"#;
        let values = parse(xml).unwrap();
        assert_eq!(values.get("P47").unwrap(), "192.168.0.68:5060");
        assert_eq!(values.get("P967").unwrap(), "");
        assert_eq!(values.get("P4567").unwrap(), "1");
        assert_eq!(values.len(), 4);
    }

    #[rstest]
    #[case(b"<config><P47>x</P47></config>".as_slice())]
    #[case(b"<hl_provision><config><P47>x</P48></config></hl_provision>".as_slice())]
    #[case(b"just text".as_slice())]
    fn malformed_xml_is_refused(#[case] data: &[u8]) {
        assert!(matches!(parse(data), Err(ConfigError::Format(_))));
    }

    /// Vector made with: `openssl enc -aes-128-cbc -K 001FC1BC -iv 0B1E1D000F0B07091D1F04071F1E0407 -in htek_vector.xml -out htek_vector.enc`
    #[test]
    fn decrypts_an_openssl_encrypted_file() {
        let encrypted = include_bytes!("htek_vector.enc");
        let plain = include_bytes!("htek_vector.xml");
        assert_eq!(decrypt(encrypted, "001FC1BC").unwrap(), plain.to_vec());
        let values = open(encrypted, Some("001FC1BC")).unwrap();
        assert_eq!(values.get("P47").unwrap(), "127.0.0.1:5060");
        assert_eq!(values.get("P35").unwrap(), "4002");
        assert_eq!(open(encrypted, None), Err(ConfigError::NoKey));
        assert_eq!(
            open(encrypted, Some("001FC1BD")).unwrap_err(),
            ConfigError::Decrypt
        );
        assert!(matches!(
            open(encrypted, Some("XYZ")),
            Err(ConfigError::BadKey(_))
        ));
    }

    #[rstest]
    #[case("001FC1BC", "001fc1bc000000000000000000000000")]
    #[case("1", "10000000000000000000000000000000")]
    #[case("0123456789ABCDEF", "0123456789abcdef0000000000000000")]
    fn aes_key_is_zero_padded(#[case] text: &str, #[case] hex_key: &str) {
        assert_eq!(hex::encode(aes_key(text).unwrap()), hex_key);
    }

    /// 004 §3: keys of 1-16 characters [0-9, A-F] only.
    #[rstest]
    #[case::seventeen_digits("0123456789ABCDEF0")]
    #[case::full_openssl_length("0123456789ABCDEF0123456789ABCDEF")]
    #[case::not_hex("001FC1BG")]
    #[case::empty("")]
    fn aes_keys_outside_the_documented_form_are_refused(#[case] text: &str) {
        assert!(matches!(aes_key(text), Err(ConfigError::BadKey(_))));
    }

    #[rstest]
    #[case(&[(66, b"http://127.0.0.1/c66".as_slice()), (150, b"tftp://127.0.0.1/c150"), (128, b"ftp://127.0.0.1/c128")], &[], "ftp://127.0.0.1/c128", ServerSource::DhcpOption(128))]
    #[case(&[(66, b"http://127.0.0.1/c66".as_slice()), (150, b"tftp://127.0.0.1/c150")], &[], "tftp://127.0.0.1/c150", ServerSource::DhcpOption(150))]
    #[case(&[(150, [198u8, 18, 0, 1].as_slice())], &[], "http://198.18.0.1/", ServerSource::DhcpOption(150))]
    #[case(&[(66, b"192.168.1.240/cfg".as_slice())], &[("P237", "http://flash/cfg")], "http://192.168.1.240/cfg", ServerSource::DhcpOption(66))]
    #[case(&[(66, b"http://127.0.0.1/c66".as_slice())], &[("P145", "0"), ("P237", "tftp://flash/cfg")], "tftp://flash/cfg", ServerSource::Flash)]
    #[case(&[], &[("P237", "192.168.0.254/cfg")], "http://192.168.0.254/cfg", ServerSource::Flash)]
    fn server_precedence(
        #[case] options: &[(u8, &[u8])],
        #[case] flash_pairs: &[(&str, &str)],
        #[case] url: &str,
        #[case] source: ServerSource,
    ) {
        let (got, got_source) = config_server(&lease(options), &flash(flash_pairs)).unwrap();
        assert_eq!(got.as_str(), url);
        assert_eq!(got_source, source);
    }

    #[test]
    fn no_server_anywhere() {
        assert!(config_server(&lease(&[]), &flash(&[])).is_none());
    }

    #[test]
    fn file_names_in_order_with_prefix_and_postfix() {
        assert_eq!(
            config_files("0012", "001fc110d3a9", &flash(&[])),
            ["cfg0012.xml", "cfg001fc110d3a9", "cfg001fc110d3a9.xml"]
        );
        assert_eq!(
            config_files(
                "0019",
                "001fc110d3a9",
                &flash(&[("P234", "hl_"), ("P235", "_cfg001")])
            )[1],
            "hl_cfg001fc110d3a9_cfg001"
        );
    }

    #[rstest]
    #[case(&[("P192", "http://127.0.0.1:8080/fm")], Some("http://127.0.0.1:8080/fm/fw924.rom"))]
    #[case(&[("P192", "198.18.0.1/fm"), ("P212", "0")], Some("tftp://198.18.0.1/fm/fw924.rom"))]
    #[case(&[("P192", "h"), ("P232", "hl_"), ("P233", "_1.0.3.73")], Some("http://h/hl_fw924.rom_1.0.3.73"))]
    #[case(&[], None)]
    fn firmware_urls(#[case] pairs: &[(&str, &str)], #[case] expected: Option<&str>) {
        assert_eq!(
            firmware_url("924", &flash(pairs))
                .map(|u| u.as_str().to_owned())
                .as_deref(),
            expected
        );
    }

    #[rstest]
    #[case(b"HTEK-FW 2.0.4.5.1\npadding\nEND\n".as_slice(), Ok("2.0.4.5.1"))]
    #[case(b"HTEK-FW 2.0.4.5.1\npadding\nEN".as_slice(), Err(()))]
    #[case(b"JUNK 2.0\nEND\n".as_slice(), Err(()))]
    #[case(b"".as_slice(), Err(()))]
    fn firmware_images(#[case] image: &[u8], #[case] expected: Result<&str, ()>) {
        assert_eq!(
            firmware_version(image).map_err(|_| ()),
            expected.map(str::to_owned)
        );
    }

    #[test]
    fn account_from_pcodes() {
        let account = account(&flash(&[
            ("P47", "127.0.0.1:5062"),
            ("P35", "4002"),
            ("P34", "pw"),
            ("P32", "15"),
        ]))
        .unwrap();
        assert_eq!(account.server_host, "127.0.0.1");
        assert_eq!(account.server_port, 5062);
        assert_eq!(account.auth_user, "4002");
        assert_eq!(account.expires_secs, 900);
        assert!(super::account(&flash(&[("P47", "h"), ("P35", "1"), ("P31", "0")])).is_none());
    }

    #[test]
    fn panic_button_codes() {
        assert_eq!(
            panic_button(&flash(&[
                ("P24962", "1"),
                ("P24944", "57"),
                ("P24945", "4004"),
                ("P24947", "A")
            ])),
            Some((1, 57, "4004".into(), 10))
        );
        assert_eq!(panic_button(&flash(&[("P24944", "0")])), None);
    }
}
