//! The scenario's `[serve.dhcp]` table: lease time, option values and the
//! option sets per vendor class and per phone.

use std::collections::BTreeMap;
use std::fmt;

use phonerig_core::duration::HumanDuration;
use schemars::JsonSchema;
use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The scenario's `[serve.dhcp]` table.
#[derive(Deserialize, Serialize, JsonSchema, Default, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Lease time offered (option 51); the lab's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_time: Option<HumanDuration>,
    /// Options sent to every client, keyed by option number (`"66"`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, OptionValue>,
    /// Option sets for clients whose vendor class (option 60) matches the glob
    /// (case-insensitive, e.g. `Htek*`). When several match, the pattern with
    /// more literal characters wins per option number.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vendor: BTreeMap<String, OptionSet>,
    /// Option sets per phone, by the phone's name in the lab file.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub phone: BTreeMap<String, OptionSet>,
    /// Never answer (a "no DHCP answer" scenario); requests are still recorded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub silent: bool,
    /// Answer every REQUEST with a NAK.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nak: bool,
}

/// Options (and optionally a lease time) for one vendor class or one phone.
#[derive(Deserialize, Serialize, JsonSchema, Default, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OptionSet {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_time: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, OptionValue>,
}

/// One option's value as the scenario writes it. The variant picks the wire
/// encoding, so the same option number can be sent the way each vendor reads
/// it (option 150: Cisco's IPv4 list or Htek's URL string).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptionValue {
    /// `"http://{rig.ip}/cfg"` or `{ text = "…" }`: the UTF-8 bytes, no terminator.
    Text(String),
    /// `{ ipv4 = ["198.18.0.1", "{rig.ip}"] }`: 4 bytes per address.
    Ipv4(Vec<String>),
    /// `{ hex = "0104c0a80001" }`: raw bytes (`:` and spaces between bytes allowed).
    Hex(String),
    /// `{ sip_servers = [...] }` (option 120, RFC 3361): domain names (encoding 0)
    /// or IPv4 addresses (encoding 1), decided by the values.
    SipServers(Vec<String>),
    /// An integer: a 32-bit big-endian value.
    Integer(u32),
}

const TAGS: &[&str] = &["text", "ipv4", "hex", "sip_servers"];

impl Serialize for OptionValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            OptionValue::Text(text) => serializer.serialize_str(text),
            OptionValue::Integer(value) => serializer.serialize_u32(*value),
            OptionValue::Ipv4(list) => single_entry(serializer, "ipv4", list),
            OptionValue::Hex(text) => single_entry(serializer, "hex", text),
            OptionValue::SipServers(list) => single_entry(serializer, "sip_servers", list),
        }
    }
}

fn single_entry<S: Serializer, V: Serialize + ?Sized>(
    serializer: S,
    key: &str,
    value: &V,
) -> Result<S::Ok, S::Error> {
    let mut map = serializer.serialize_map(Some(1))?;
    map.serialize_entry(key, value)?;
    map.end()
}

// Written by hand rather than `#[serde(untagged)]` so a mistake gets a message
// that names the accepted forms instead of "did not match any variant".
impl<'de> Deserialize<'de> for OptionValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;

        impl<'de> Visitor<'de> for ValueVisitor {
            type Value = OptionValue;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a DHCP option value: a string, a 32-bit integer, or one of { text = \"…\" }, { ipv4 = [\"…\"] }, { hex = \"…\" }, { sip_servers = [\"…\"] }")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<OptionValue, E> {
                Ok(OptionValue::Text(text.to_owned()))
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<OptionValue, E> {
                u32::try_from(value).map(OptionValue::Integer).map_err(|_| {
                    E::custom(format!(
                        "{value} does not fit in 32 bits; use {{ hex = \"…\" }} for longer values"
                    ))
                })
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<OptionValue, E> {
                u64::try_from(value)
                    .map_err(|_| {
                        E::custom(format!(
                            "{value} is negative; integer options are unsigned 32-bit"
                        ))
                    })
                    .and_then(|v| self.visit_u64(v))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OptionValue, A::Error> {
                let key: String = map.next_key()?.ok_or_else(|| {
                    de::Error::custom("empty table; write one of text, ipv4, hex, sip_servers")
                })?;
                let value = match key.as_str() {
                    "text" => OptionValue::Text(map.next_value()?),
                    "ipv4" => OptionValue::Ipv4(map.next_value()?),
                    "hex" => OptionValue::Hex(map.next_value()?),
                    "sip_servers" => OptionValue::SipServers(map.next_value()?),
                    other => return Err(de::Error::unknown_field(other, TAGS)),
                };
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(de::Error::custom(format!(
                        "`{extra}` next to `{key}`: an option value has exactly one form"
                    )));
                }
                Ok(value)
            }
        }

        deserializer.deserialize_any(ValueVisitor)
    }
}

impl JsonSchema for OptionValue {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "DhcpOptionValue".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let list = schemars::json_schema!({ "type": "array", "items": { "type": "string" }, "minItems": 1 });
        schemars::json_schema!({
            "description": "A DHCP option value. A string is sent as text; an integer as 32 bits; the tables pick another encoding. Placeholders such as {rig.ip} and {phone.mac} are expanded per phone.",
            "oneOf": [
                { "type": "string" },
                { "type": "integer", "minimum": 0, "maximum": 4294967295u64 },
                { "type": "object", "additionalProperties": false, "required": ["text"], "properties": { "text": { "type": "string" } } },
                { "type": "object", "additionalProperties": false, "required": ["ipv4"], "properties": { "ipv4": list } },
                { "type": "object", "additionalProperties": false, "required": ["hex"], "properties": { "hex": { "type": "string", "pattern": "^([0-9A-Fa-f]{2}[: ]?)*$" } } },
                { "type": "object", "additionalProperties": false, "required": ["sip_servers"], "properties": { "sip_servers": list } }
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[derive(Deserialize, Serialize, Debug)]
    struct Wrap {
        v: OptionValue,
    }

    #[rstest]
    #[case(r#"v = "http://{rig.ip}/cfg""#, OptionValue::Text("http://{rig.ip}/cfg".into()))]
    #[case(r#"v = { text = "abc" }"#, OptionValue::Text("abc".into()))]
    #[case(r#"v = { ipv4 = ["198.18.0.1", "{rig.ip}"] }"#, OptionValue::Ipv4(vec!["198.18.0.1".into(), "{rig.ip}".into()]))]
    #[case(r#"v = { hex = "0104c0a80001" }"#, OptionValue::Hex("0104c0a80001".into()))]
    #[case(r#"v = { sip_servers = ["sip.example.com"] }"#, OptionValue::SipServers(vec!["sip.example.com".into()]))]
    #[case("v = 3600", OptionValue::Integer(3600))]
    fn toml_forms(#[case] text: &str, #[case] expected: OptionValue) {
        let parsed: Wrap = toml::from_str(text).unwrap();
        assert_eq!(parsed.v, expected);
        // and back: serialising gives a form that reads back the same
        let again: Wrap = toml::from_str(&toml::to_string(&parsed).unwrap()).unwrap();
        assert_eq!(again.v, expected);
    }

    #[rstest]
    #[case("v = -1", "negative")]
    #[case("v = 4294967296", "32 bits")]
    #[case(r#"v = { ip = ["1.2.3.4"] }"#, "unknown field `ip`")]
    #[case(r#"v = { text = "a", hex = "01" }"#, "exactly one form")]
    #[case("v = {}", "empty table")]
    #[case("v = true", "a DHCP option value")]
    fn toml_mistakes_are_explained(#[case] text: &str, #[case] message: &str) {
        let error = toml::from_str::<Wrap>(text).unwrap_err().to_string();
        assert!(error.contains(message), "{error}");
    }

    #[test]
    fn the_schema_describes_the_table() {
        let schema = serde_json::to_value(schemars::schema_for!(Settings)).unwrap();
        for key in ["lease_time", "options", "vendor", "phone", "silent", "nak"] {
            assert!(
                schema["properties"].get(key).is_some(),
                "{key} missing from {schema}"
            );
        }
        assert_eq!(schema["additionalProperties"], serde_json::json!(false));
        let value = &schema["$defs"]["DhcpOptionValue"]["oneOf"];
        assert_eq!(value.as_array().map(Vec::len), Some(6), "{schema}");
    }

    #[test]
    fn a_full_table_parses_and_unknown_keys_are_refused() {
        let settings: Settings = toml::from_str(
            r#"
            lease_time = "10m"
            nak = false
            [options]
            66 = "http://{rig.http}/cfg"
            150 = { ipv4 = ["{rig.ip}"] }
            [vendor."Htek*".options]
            150 = "tftp://{rig.ip}/"
            [phone.uc924-1]
            lease_time = "1m"
            options = { 128 = "http://{rig.ip}/{phone.mac}" }
            "#,
        )
        .unwrap();
        assert_eq!(
            settings.lease_time,
            Some(HumanDuration(std::time::Duration::from_secs(600)))
        );
        assert_eq!(
            settings.vendor["Htek*"].options["150"],
            OptionValue::Text("tftp://{rig.ip}/".into())
        );
        assert_eq!(
            settings.phone["uc924-1"].lease_time,
            Some(HumanDuration(std::time::Duration::from_secs(60)))
        );
        assert!(toml::from_str::<Settings>("silence = true").is_err());
    }
}
