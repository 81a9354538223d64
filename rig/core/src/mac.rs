//! MAC addresses, accepted in every notation found on labels and in PBX
//! panels and normalised once, at load time.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{text}` is not a MAC address (want 12 hex digits, optionally grouped by `:`, `-` or `.`, e.g. 00:1a:4d:5c:25:8d)")]
pub struct MacError {
    pub text: String,
}

impl Mac {
    /// `001a4d5c258d` — the form Htek and Panasonic `{mac}` use.
    pub fn lower(&self) -> String {
        hex::encode(self.0)
    }

    /// `001A4D5C258D` — Panasonic `{MAC}`.
    pub fn upper(&self) -> String {
        hex::encode_upper(self.0)
    }

    /// `00:1a:4d:5c:25:8d` — the form on labels and in VoIPstudio's panel.
    pub fn colon(&self) -> String {
        self.0
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl FromStr for Mac {
    type Err = MacError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        let digits: String = trimmed
            .chars()
            .filter(|c| !matches!(c, ':' | '-' | '.' | ' '))
            .collect();
        let error = || MacError {
            text: text.to_owned(),
        };
        if digits.len() != 12 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(error());
        }
        // Separators, when present, must group the digits evenly (2 for `:`/`-`, 4 for Cisco's `.`).
        let groups: Vec<&str> = trimmed.split([':', '-', '.']).collect();
        if groups.len() > 1 {
            let sizes_ok = groups.iter().all(|g| g.len() == 2) && groups.len() == 6
                || groups.iter().all(|g| g.len() == 4) && groups.len() == 3;
            if !sizes_ok {
                return Err(error());
            }
        }
        let mut octets = [0u8; 6];
        hex::decode_to_slice(&digits, &mut octets).map_err(|_| error())?;
        Ok(Mac(octets))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.colon())
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mac({})", self.colon())
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.colon())
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for Mac {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Mac".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "MAC address in any common notation: 00:1a:4d:5c:25:8d, 001A4D5C258D, 00-1a-4d-5c-25-8d, 001a.4d5c.258d",
            "pattern": "^([0-9A-Fa-f]{2}([:-]?)){5}[0-9A-Fa-f]{2}$|^[0-9A-Fa-f]{4}\\.[0-9A-Fa-f]{4}\\.[0-9A-Fa-f]{4}$"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("00:1a:4d:5c:25:8d")]
    #[case("001A4D5C258D")]
    #[case("001a4d5c258d")]
    #[case("00-1a-4d-5c-25-8d")]
    #[case("00-1A-4D-5C-25-8D")]
    #[case("001a.4d5c.258d")]
    #[case("  00:1A:4d:5C:25:8d ")]
    fn every_notation_normalises_to_the_same_address(#[case] text: &str) {
        let mac: Mac = text.parse().unwrap();
        assert_eq!(mac.lower(), "001a4d5c258d");
        assert_eq!(mac.upper(), "001A4D5C258D");
        assert_eq!(mac.colon(), "00:1a:4d:5c:25:8d");
    }

    #[rstest]
    #[case("")]
    #[case("00:1a:4d:5c:25")]
    #[case("00:1a:4d:5c:25:8d:00")]
    #[case("00:1a:4d:5c:25:8g")]
    #[case("001a4d:5c258d")]
    #[case("0:01a:4d:5c:25:8d")]
    #[case("not a mac")]
    fn malformed_addresses_are_refused_with_the_text(#[case] text: &str) {
        let error = text.parse::<Mac>().unwrap_err();
        assert_eq!(error.text, text);
    }

    #[test]
    fn serde_round_trip_uses_colon_form() {
        let mac: Mac = serde_json::from_str("\"001A4D5C258D\"").unwrap();
        assert_eq!(
            serde_json::to_string(&mac).unwrap(),
            "\"00:1a:4d:5c:25:8d\""
        );
    }
}
