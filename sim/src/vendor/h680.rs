//! Lvswitch SIP-H680 auto update and Action URL (seed 001, 自动更新 and
//! Action URL) as pure functions: the `common.boot` boot file, `key = value`
//! config files, and Action URL variable expansion.
//!
//! 001 says the phone first fetches `common.boot`, which names the `.cfg`
//! files to load, but does not print its syntax. The virtual phone reads the
//! format used by the phones this firmware family derives from:
//!
//! ```text
//! #!version:1.0.0.1
//! include:config "common.cfg"
//! include:config "$mac.cfg"       ($mac / {mac}: the phone's MAC, lower case)
//! include:config account.cfg
//! ```

use std::collections::BTreeMap;

/// The `.cfg` files a boot file names, in order, with `$mac`/`{mac}` expanded.
pub fn parse_boot(text: &str, mac_lower: &str) -> Result<Vec<String>, String> {
    let mut files = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("include:config") {
            let name = rest.trim().trim_matches('"').trim();
            if name.is_empty() || name.contains("..") {
                return Err(format!("line {}: bad include `{line}`", index + 1));
            }
            files.push(name.replace("$mac", mac_lower).replace("{mac}", mac_lower));
        } else if line.split_once('=').is_some() {
            // `overwrite_mode = 1` and similar boot options: accepted, no effect on a virtual phone.
        } else {
            return Err(format!("line {}: not understood: `{line}`", index + 1));
        }
    }
    if files.is_empty() {
        return Err("boot file names no config file".into());
    }
    Ok(files)
}

/// `key = value` lines (`#` comments, `#!version` header); a later file or line overrides an earlier one.
pub fn parse_cfg(text: &str) -> (BTreeMap<String, String>, Vec<String>) {
    let mut values = BTreeMap::new();
    let mut ignored = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() && !key.trim().contains(' ') => {
                values.insert(
                    key.trim().to_owned(),
                    value.trim().trim_matches('"').to_owned(),
                );
            }
            _ => ignored.push(format!("line {} ignored: `{line}`", index + 1)),
        }
    }
    (values, ignored)
}

/// Action URL events (001, Action URL table) and the config key of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionEvent {
    BootCompleted,
    Registered,
    Unregistered,
    RegisterFailed,
    OffHook,
    OnHook,
    IncomingCall,
    OutgoingCall,
    CallEstablished,
    CallEnded,
    DndOn,
    DndOff,
    ForwardOn,
    ForwardOff,
    Hold,
    Unhold,
    MissedCall,
    IpChanged,
    IdleToBusy,
    BusyToIdle,
    RejectIncomingCall,
    AutoUpdateCompleted,
}

impl ActionEvent {
    pub fn key(self) -> &'static str {
        use ActionEvent::*;
        match self {
            BootCompleted => "boot_completed",
            Registered => "registered",
            Unregistered => "unregistered",
            RegisterFailed => "register_failed",
            OffHook => "off_hook",
            OnHook => "on_hook",
            IncomingCall => "incoming_call",
            OutgoingCall => "outgoing_call",
            CallEstablished => "call_established",
            CallEnded => "call_ended",
            DndOn => "dnd_on",
            DndOff => "dnd_off",
            ForwardOn => "forward_on",
            ForwardOff => "forward_off",
            Hold => "hold",
            Unhold => "unhold",
            MissedCall => "missed_call",
            IpChanged => "ip_changed",
            IdleToBusy => "idle_to_busy",
            BusyToIdle => "busy_to_idle",
            RejectIncomingCall => "reject_incoming_call",
            AutoUpdateCompleted => "auto_update_completed",
        }
    }

    /// `action_url.registered`.
    pub fn config_key(self) -> String {
        format!("action_url.{}", self.key())
    }
}

/// Values for `$mac $ip $model $firmware $active_url $active_user $active_host
/// $local $remote $display_local $display_remote $call_id $callerID $calledNumber`.
pub type Variables = BTreeMap<&'static str, String>;

/// Query-safe: characters that would end or split a query value are escaped.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~:@!$'()*+,;/".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Replaces every known `$variable`; longer names first so `$display_local` is not read as `$display` + … .
/// Unknown `$words` stay as they are; a known variable without a value becomes empty.
pub fn expand(template: &str, vars: &Variables) -> String {
    const NAMES: [&str; 14] = [
        "display_remote",
        "display_local",
        "calledNumber",
        "active_user",
        "active_host",
        "active_url",
        "callerID",
        "firmware",
        "call_id",
        "remote",
        "model",
        "local",
        "mac",
        "ip",
    ];
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        match NAMES.iter().find(|name| after.starts_with(**name)) {
            Some(name) => {
                out.push_str(&escape(vars.get(name).map(String::as_str).unwrap_or("")));
                rest = &after[name.len()..];
            }
            None => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// SIP account 1 from the config keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H680Account {
    pub server_host: String,
    pub server_port: u16,
    pub user: String,
    pub auth_user: String,
    pub password: String,
    pub expires_secs: u32,
    pub auto_answer_delay_secs: Option<u32>,
}

pub fn account(values: &BTreeMap<String, String>) -> Option<H680Account> {
    let get = |k: &str| values.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    if get("account.1.enable") == Some("0") {
        return None;
    }
    let server = get("account.1.sip_server.1.address")?;
    let user = get("account.1.user_name")?.to_owned();
    let port = get("account.1.sip_server.1.port")
        .and_then(|p| p.parse().ok())
        .unwrap_or(5060);
    let auto_answer = get("account.1.auto_answer") == Some("1");
    Some(H680Account {
        server_host: server.to_owned(),
        server_port: port,
        auth_user: get("account.1.auth_name").unwrap_or(&user).to_owned(),
        user,
        password: get("account.1.password").unwrap_or("").to_owned(),
        expires_secs: get("account.1.sip_server.1.expires")
            .and_then(|v| v.parse().ok())
            .unwrap_or(3600),
        auto_answer_delay_secs: auto_answer.then(|| {
            get("account.1.auto_answer_delay")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn boot_file_lists_configs_in_order() {
        let text = "#!version:1.0.0.1\r\n## boot\r\ninclude:config \"common.cfg\"\r\ninclude:config \"$mac.cfg\"\r\ninclude:config account.cfg\r\noverwrite_mode = 1\r\n";
        assert_eq!(
            parse_boot(text, "001a4d5c258d").unwrap(),
            ["common.cfg", "001a4d5c258d.cfg", "account.cfg"]
        );
    }

    #[rstest]
    #[case("#!version:1.0.0.1\n")]
    #[case("include:config \"\"\n")]
    #[case("include:config ../etc/passwd\n")]
    #[case("garbage line\n")]
    fn bad_boot_files(#[case] text: &str) {
        assert!(parse_boot(text, "m").is_err());
    }

    #[test]
    fn cfg_lines() {
        let (values, ignored) = parse_cfg("#!version:1.0.0.1\n### 语言 ###\nlanguage_setting.languages = 0\nstatic.firmware.url = ftp://192.168.17.1/V2.0.0.3_T790_rootfs.sqhfs\naccount.1.user_name=4002\nnonsense\n");
        assert_eq!(values.get("language_setting.languages").unwrap(), "0");
        assert_eq!(
            values.get("static.firmware.url").unwrap(),
            "ftp://192.168.17.1/V2.0.0.3_T790_rootfs.sqhfs"
        );
        assert_eq!(values.get("account.1.user_name").unwrap(), "4002");
        assert_eq!(ignored.len(), 1);
    }

    #[test]
    fn action_url_variables_expand() {
        let vars: Variables = [
            ("mac", "001a4d5c258d"),
            ("ip", "127.1.0.3"),
            ("model", "SIP-H680"),
            ("display_local", "Front desk"),
            ("local", "4002"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_owned()))
        .collect();
        assert_eq!(
            expand("http://127.0.0.1:8080/action/registered?mac=$mac&ip=$ip&m=$model&d=$display_local&l=$local&r=$remote&x=$unknown", &vars),
            "http://127.0.0.1:8080/action/registered?mac=001a4d5c258d&ip=127.1.0.3&m=SIP-H680&d=Front%20desk&l=4002&r=&x=$unknown"
        );
    }

    #[test]
    fn account_keys() {
        let (values, _) = parse_cfg("account.1.sip_server.1.address = 127.0.0.1\naccount.1.sip_server.1.port = 5070\naccount.1.user_name = 4006\naccount.1.password = pw\naccount.1.auto_answer = 1\naccount.1.auto_answer_delay = 3\n");
        let account = account(&values).unwrap();
        assert_eq!(
            (
                account.server_port,
                account.auth_user.as_str(),
                account.auto_answer_delay_secs
            ),
            (5070, "4006", Some(3))
        );
    }
}
