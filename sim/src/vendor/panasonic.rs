//! Panasonic KX-UT670 provisioning (seed 003 §2.4–2.5, §5.2.1, §5.4.5) as pure
//! functions: the plain-text "Standard Format File" rules, the XML variant,
//! file URL expansion, and the priority of setting layers.

use std::collections::BTreeMap;

use quick_xml::events::Event;

/// 44 bytes the first line must contain (§5.2.1).
pub const MAGIC: &str = "# Panasonic SIP Phone Standard Format File #";
pub const MAX_LINE: usize = 537;
pub const MAX_NAME: usize = 32;
pub const MAX_VALUE: usize = 500;
/// Plain text: one file, and all files of a round together.
pub const MAX_TOTAL: usize = 120 * 1024;
/// §2.4.4: XML files.
pub const MAX_XML: usize = 240 * 1024;
pub const PRE_PROVISIONING_FILE: &str = "KX-UT670.cfg";

/// A rule of §5.2.1 a file broke; the whole file is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("refused (§5.2.1): first line does not contain \"{MAGIC}\"")]
    NoMagicLine,
    #[error("refused (§5.2.1): file is {0} bytes, more than 120 KB")]
    TooLarge(usize),
    #[error("refused (§5.2.1): files of this round total {0} bytes, more than 120 KB")]
    TotalTooLarge(usize),
    #[error("refused (§5.2.1): line {0} does not end with CR LF")]
    NotCrlf(usize),
    #[error("refused (§5.2.1): file does not end with an empty line")]
    NoFinalEmptyLine,
    #[error("refused (§5.2.1): line {0} is not NAME=\"value\" (no spaces around =, value in double quotes, one line)")]
    Syntax(usize),
    #[error("refused (§5.2.1): line {0}: parameter name longer than 32 characters")]
    NameTooLong(usize),
    #[error("refused (§5.2.1): line {0}: value longer than 500 characters")]
    ValueTooLong(usize),
    #[error("refused (§5.2.1): not UTF-8")]
    NotUtf8,
    #[error("refused (§2.4.4): XML file is {0} bytes, more than 240 KB")]
    XmlTooLarge(usize),
    #[error("refused (§2.4.4): XML: {0}")]
    Xml(String),
}

/// A parsed file: parameters (first occurrence wins) and notes on lines ignored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedFile {
    pub values: BTreeMap<String, String>,
    pub ignored: Vec<String>,
}

/// Plain text or XML, told apart by the first non-blank character.
pub fn parse(data: &[u8]) -> Result<ParsedFile, FormatError> {
    let start = data
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(0);
    if data.get(start) == Some(&b'<') {
        parse_xml(data)
    } else {
        parse_plain(data)
    }
}

pub fn parse_plain(data: &[u8]) -> Result<ParsedFile, FormatError> {
    if data.len() > MAX_TOTAL {
        return Err(FormatError::TooLarge(data.len()));
    }
    let text = std::str::from_utf8(data).map_err(|_| FormatError::NotUtf8)?;
    let mut parsed = ParsedFile::default();
    let pieces: Vec<&str> = text.split("\r\n").collect();
    // `split` leaves the text after the last CRLF; it must be empty (the file
    // ends with a line terminator) and the line before it must be empty too
    // (the final empty line).
    let (last, lines) = pieces
        .split_last()
        .expect("split yields at least one piece");
    if let Some(n) = lines
        .iter()
        .position(|l| l.contains('\n') || l.contains('\r'))
    {
        return Err(FormatError::NotCrlf(n + 1));
    }
    if !last.is_empty() {
        return Err(if last.contains('\n') {
            FormatError::NotCrlf(lines.len() + 1)
        } else {
            FormatError::NoFinalEmptyLine
        });
    }
    if lines.last().is_none_or(|l| !l.is_empty()) {
        return Err(FormatError::NoFinalEmptyLine);
    }
    if !lines.first().is_some_and(|l| l.contains(MAGIC)) {
        return Err(FormatError::NoMagicLine);
    }
    for (index, line) in lines.iter().enumerate() {
        let number = index + 1;
        if line.len() + 2 > MAX_LINE {
            parsed.ignored.push(format!(
                "line {number} ignored: {} bytes with CR LF, more than {MAX_LINE}",
                line.len() + 2
            ));
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = line.split_once('=').ok_or(FormatError::Syntax(number))?;
        let valid_name =
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name || !rest.starts_with('"') || !rest.ends_with('"') || rest.len() < 2 {
            return Err(FormatError::Syntax(number));
        }
        if name.chars().count() > MAX_NAME {
            return Err(FormatError::NameTooLong(number));
        }
        let value = &rest[1..rest.len() - 1];
        if value.chars().count() > MAX_VALUE {
            return Err(FormatError::ValueTooLong(number));
        }
        if parsed.values.contains_key(name) {
            parsed.ignored.push(format!(
                "line {number} ignored: {name} repeated, the first value wins"
            ));
        } else {
            parsed.values.insert(name.to_owned(), value.to_owned());
        }
    }
    Ok(parsed)
}

/// §2.4.4: XML, UTF-8, ≤ 240 KB, the magic comment before the first element;
/// every attribute except `ID` is a parameter (`<ProvisionEnable PROVISION_ENABLE="Y"/>`).
pub fn parse_xml(data: &[u8]) -> Result<ParsedFile, FormatError> {
    if data.len() > MAX_XML {
        return Err(FormatError::XmlTooLarge(data.len()));
    }
    std::str::from_utf8(data).map_err(|_| FormatError::NotUtf8)?;
    let mut reader = quick_xml::Reader::from_reader(data);
    let mut parsed = ParsedFile::default();
    let mut seen_magic = false;
    let mut seen_element = false;
    loop {
        match reader
            .read_event()
            .map_err(|e| FormatError::Xml(e.to_string()))?
        {
            Event::Comment(c) if !seen_element && String::from_utf8_lossy(&c).contains(MAGIC) => {
                seen_magic = true;
            }
            Event::Start(e) | Event::Empty(e) => {
                if !seen_magic {
                    return Err(FormatError::NoMagicLine);
                }
                seen_element = true;
                for attribute in e.attributes() {
                    let attribute = attribute.map_err(|e| FormatError::Xml(e.to_string()))?;
                    let name = String::from_utf8_lossy(attribute.key.as_ref()).into_owned();
                    if name == "ID" {
                        continue;
                    }
                    let value = attribute
                        .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .map_err(|e| FormatError::Xml(e.to_string()))?
                        .into_owned();
                    parsed.values.entry(name).or_insert(value);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !seen_magic {
        return Err(FormatError::NoMagicLine);
    }
    Ok(parsed)
}

/// The three provisioning files (§2.4.3.3), fetched master → product → standard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FileKind {
    Master,
    Product,
    Standard,
}

impl FileKind {
    pub const ROUND: [FileKind; 3] = [FileKind::Master, FileKind::Product, FileKind::Standard];

    pub fn parameter(self) -> &'static str {
        match self {
            FileKind::Master => "CFG_MASTER_FILE_PATH",
            FileKind::Product => "CFG_PRODUCT_FILE_PATH",
            FileKind::Standard => "CFG_STANDARD_FILE_PATH",
        }
    }

    /// Added to a URL ending in `/` (INDEX.md, §5.4.5).
    pub fn default_name(self) -> &'static str {
        match self {
            FileKind::Master => "sip.cfg",
            FileKind::Product => "{MODEL}.cfg",
            FileKind::Standard => "Config{mac}.cfg",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FileKind::Master => "master",
            FileKind::Product => "product",
            FileKind::Standard => "standard",
        }
    }
}

/// `{mac}` lower case, `{MAC}` upper case, `{MODEL}`, `{fwver}`; a trailing `/` gets the file kind's default name.
pub fn expand_path(
    path: &str,
    kind: FileKind,
    mac_lower: &str,
    model: &str,
    firmware: &str,
) -> String {
    let mut path = path.trim().to_owned();
    if path.ends_with('/') {
        path.push_str(kind.default_name());
    }
    path.replace("{mac}", mac_lower)
        .replace("{MAC}", &mac_lower.to_ascii_uppercase())
        .replace("{MODEL}", model)
        .replace("{fwver}", firmware)
}

/// Factory defaults the virtual phone acts on (§5.4.5; the real default
/// standard URL points at Panasonic's redirect server, left empty here so a
/// virtual phone never reaches outside the bench).
pub fn factory_default(name: &str) -> Option<&'static str> {
    Some(match name {
        "OPTION66_ENABLE" => "Y",
        "PROVISION_ENABLE" => "Y",
        "CFG_CYCLIC" => "N",
        "CFG_CYCLIC_INTVL" => "10080",
        "CFG_RTRY_INTVL" => "30",
        "CFG_RESYNC_FROM_SIP" => "check-sync",
        "SIP_RGSTR_PORT_1" => "5060",
        "SIP_PRXY_PORT_1" => "5060",
        "REG_EXPIRE_TIME_1" => "3600",
        _ => return None,
    })
}

/// Setting layers, highest priority first (§2.5): standard > product > master
/// > pre-provisioning (and what the spec put in flash) > factory default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layers {
    pub standard: BTreeMap<String, String>,
    pub product: BTreeMap<String, String>,
    pub master: BTreeMap<String, String>,
    pub pre_provisioning: BTreeMap<String, String>,
}

impl Layers {
    pub fn get(&self, name: &str) -> Option<String> {
        [
            &self.standard,
            &self.product,
            &self.master,
            &self.pre_provisioning,
        ]
        .iter()
        .find_map(|layer| layer.get(name).cloned())
        .or_else(|| factory_default(name).map(str::to_owned))
    }

    pub fn set(&mut self, kind: FileKind, values: BTreeMap<String, String>) {
        match kind {
            FileKind::Master => self.master = values,
            FileKind::Product => self.product = values,
            FileKind::Standard => self.standard = values,
        }
    }

    pub fn enabled(&self, name: &str) -> bool {
        self.get(name)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("Y"))
    }
}

/// `Event: check-sync;reboot=false` → `check-sync`, compared with CFG_RESYNC_FROM_SIP.
pub fn is_resync_event(event_header: &str, configured: &str) -> bool {
    let token = event_header.split(';').next().unwrap_or_default().trim();
    !configured.trim().is_empty() && token.eq_ignore_ascii_case(configured.trim())
}

/// Option 66 for pre-provisioning: an IP or an FQDN of at most 64 bytes (§2.4.2.2).
pub fn option66_host(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() {
        return Err("option 66 is empty".into());
    }
    if value.len() > 64 {
        return Err(format!(
            "option 66 FQDN is {} bytes, more than 64",
            value.len()
        ));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const HEAD: &str = "# Panasonic SIP Phone Standard Format File # DO NOT CHANGE THIS LINE!\r\n";

    fn file(body: &str) -> Vec<u8> {
        format!("{HEAD}{body}").into_bytes()
    }

    #[test]
    fn a_valid_file_parses_and_the_first_occurrence_wins() {
        let parsed = parse_plain(&file("# comment\r\nSIP_RGSTR_ADDR_1=\"127.0.0.1\"\r\nDISPLAY_NAME_1=\"John Smith\"\r\nSYSLOG_ADDR=\"\"\r\nSIP_RGSTR_ADDR_1=\"10.0.0.1\"\r\n\r\n")).unwrap();
        assert_eq!(parsed.values.get("SIP_RGSTR_ADDR_1").unwrap(), "127.0.0.1");
        assert_eq!(parsed.values.get("DISPLAY_NAME_1").unwrap(), "John Smith");
        assert_eq!(parsed.values.get("SYSLOG_ADDR").unwrap(), "");
        assert_eq!(parsed.ignored.len(), 1);
    }

    #[test]
    fn long_lines_are_ignored_not_refused() {
        let long_value = "x".repeat(MAX_LINE); // line longer than 537 bytes
        let parsed = parse_plain(&file(&format!("A=\"{long_value}\"\r\nB=\"1\"\r\n\r\n"))).unwrap();
        assert!(!parsed.values.contains_key("A"));
        assert_eq!(parsed.values.get("B").unwrap(), "1");
        assert!(parsed.ignored[0].contains("more than 537"));
        // exactly 537 bytes including CR LF is accepted
        let name = "N";
        let value = "v".repeat(MAX_LINE - 2 - name.len() - 3);
        let value = &value[..value.len().min(MAX_VALUE)];
        assert!(parse_plain(&file(&format!("{name}=\"{value}\"\r\n\r\n")))
            .unwrap()
            .values
            .contains_key(name));
    }

    /// One row per §5.2.1 rule that refuses a file.
    #[rstest]
    #[case::no_magic_line(b"SIP_URI_1=\"x\"\r\n\r\n".to_vec(), FormatError::NoMagicLine)]
    #[case::magic_not_on_first_line(b"# hello\r\n# Panasonic SIP Phone Standard Format File #\r\n\r\n".to_vec(), FormatError::NoMagicLine)]
    #[case::lf_line_ends(file("A=\"1\"\nB=\"2\"\r\n\r\n"), FormatError::NotCrlf(2))]
    #[case::no_final_empty_line(file("A=\"1\"\r\n"), FormatError::NoFinalEmptyLine)]
    #[case::unterminated_last_line(file("A=\"1\""), FormatError::NoFinalEmptyLine)]
    #[case::spaces_around_equals(file("DISPLAY_NAME_1 = \"John\"\r\n\r\n"), FormatError::Syntax(2))]
    #[case::spaces_in_name(file("DISPLAY NAME 1=\"John\"\r\n\r\n"), FormatError::Syntax(2))]
    #[case::unquoted_value(file("A=1\r\n\r\n"), FormatError::Syntax(2))]
    #[case::value_over_two_lines(file("A=\"one\r\ntwo\"\r\n\r\n"), FormatError::Syntax(2))]
    #[case::name_too_long(file(&format!("{}=\"1\"\r\n\r\n", "N".repeat(33))), FormatError::NameTooLong(2))]
    #[case::value_too_long(file(&format!("A=\"{}\"\r\n\r\n", "v".repeat(501))), FormatError::ValueTooLong(2))]
    #[case::too_large(file(&"# padding comment line ........................................\r\n".repeat(2000)), FormatError::TooLarge(130_071))]
    #[case::not_utf8({ let mut f = file("A=\"\u{e9}\"\r\n\r\n"); let at = f.len() - 6; f[at] = 0xff; f }, FormatError::NotUtf8)]
    fn format_rules_refuse(#[case] data: Vec<u8>, #[case] expected: FormatError) {
        assert_eq!(parse_plain(&data), Err(expected));
    }

    #[test]
    fn xml_variant_is_accepted() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?>
<!-- # Panasonic SIP Phone Standard Format File # -->
<PANASipPhoneConfig><X_P_IPTEL_Provisioning><ProvisionEnable PROVISION_ENABLE="Y"/><StandardFileURL CFG_STANDARD_FILE_PATH="http://h/Config{MAC}.cfg"/></X_P_IPTEL_Provisioning>
<Line ID="1"><DirectoryNumber PHONE_NUMBER_1="4002"/></Line></PANASipPhoneConfig>"#;
        let parsed = parse(xml.as_bytes()).unwrap();
        assert_eq!(
            parsed.values.get("CFG_STANDARD_FILE_PATH").unwrap(),
            "http://h/Config{MAC}.cfg"
        );
        assert_eq!(parsed.values.get("PHONE_NUMBER_1").unwrap(), "4002");
        assert!(!parsed.values.contains_key("ID"));
        assert_eq!(
            parse(b"<?xml version=\"1.0\"?><PANASipPhoneConfig/>"),
            Err(FormatError::NoMagicLine)
        );
    }

    #[rstest]
    #[case(
        "http://prov/Config{MAC}.cfg",
        FileKind::Standard,
        "http://prov/Config0080F0123456.cfg"
    )]
    #[case(
        "http://prov/Config{mac}.cfg",
        FileKind::Standard,
        "http://prov/Config0080f0123456.cfg"
    )]
    #[case(
        "http://prov/dir/",
        FileKind::Standard,
        "http://prov/dir/Config0080f0123456.cfg"
    )]
    #[case("http://prov/dir/", FileKind::Product, "http://prov/dir/KX-UT670.cfg")]
    #[case("http://prov/dir/", FileKind::Master, "http://prov/dir/sip.cfg")]
    #[case(
        "tftp://prov/{MODEL}/{fwver}.cfg",
        FileKind::Product,
        "tftp://prov/KX-UT670/01.133.cfg"
    )]
    fn url_expansion(#[case] path: &str, #[case] kind: FileKind, #[case] expected: &str) {
        assert_eq!(
            expand_path(path, kind, "0080f0123456", "KX-UT670", "01.133"),
            expected
        );
    }

    #[test]
    fn priority_standard_over_product_over_master_over_pre_provisioning_over_default() {
        let map = |v: &str| BTreeMap::from([("X".to_owned(), v.to_owned())]);
        let mut layers = Layers {
            pre_provisioning: map("pre"),
            ..Layers::default()
        };
        assert_eq!(layers.get("X").unwrap(), "pre");
        layers.set(FileKind::Master, map("master"));
        assert_eq!(layers.get("X").unwrap(), "master");
        layers.set(FileKind::Product, map("product"));
        assert_eq!(layers.get("X").unwrap(), "product");
        layers.set(FileKind::Standard, map("standard"));
        assert_eq!(layers.get("X").unwrap(), "standard");
        assert_eq!(layers.get("CFG_RESYNC_FROM_SIP").unwrap(), "check-sync");
        assert!(layers.enabled("OPTION66_ENABLE"));
    }

    #[rstest]
    #[case("check-sync", "check-sync", true)]
    #[case("check-sync;reboot=false", "check-sync", true)]
    #[case("resync", "check-sync", false)]
    #[case("resync", "resync", true)]
    fn resync_event_matching(
        #[case] header: &str,
        #[case] configured: &str,
        #[case] expected: bool,
    ) {
        assert_eq!(is_resync_event(header, configured), expected);
    }

    #[test]
    fn option66_fqdn_limit() {
        assert!(option66_host(&"a".repeat(64)).is_ok());
        assert!(option66_host(&"a".repeat(65)).is_err());
    }
}
