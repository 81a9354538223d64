//! Vendor, model and firmware version from a phone's User-Agent header, for
//! the formats of the phones on the bench; other agents keep only the raw text.

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UserAgentInfo {
    pub vendor: String,
    pub model: String,
    pub version: String,
}

fn starts_with_digit(text: &str) -> bool {
    text.trim_start_matches(['v', 'V'])
        .starts_with(|c: char| c.is_ascii_digit())
}

fn strip_v(text: &str) -> String {
    text.trim_start_matches(['v', 'V']).to_owned()
}

/// Recognised formats:
/// - Htek: `Htek UC924 2.0.4.4.36` (MAC may follow)
/// - Panasonic: `Panasonic-KX-UT670/01.133 (0080f0a1b2c3)`
/// - Lvswitch: `Lvswitch SIP-H680W 2.1.0.12`, `SIP-H680W/2.1.0.12`, `Lvswitch-SIP-H680L V2.1.0`
pub fn parse(user_agent: &str) -> Option<UserAgentInfo> {
    let ua = user_agent.trim();
    let words: Vec<&str> = ua.split_whitespace().collect();
    let first = *words.first()?;

    if first.eq_ignore_ascii_case("htek") {
        let model = words.get(1)?;
        let version = words.get(2).filter(|v| starts_with_digit(v))?;
        return Some(UserAgentInfo {
            vendor: "Htek".into(),
            model: (*model).into(),
            version: strip_v(version),
        });
    }

    if let Some(rest) = first
        .strip_prefix("Panasonic-")
        .or_else(|| first.strip_prefix("Panasonic_"))
    {
        let (model, version) = rest.split_once('/')?;
        return Some(UserAgentInfo {
            vendor: "Panasonic".into(),
            model: model.into(),
            version: version.into(),
        });
    }

    if ua.to_ascii_uppercase().contains("H680") {
        // The model word is the one naming H680; the version is after a `/`
        // in that word or the next word starting with a digit.
        let index = words
            .iter()
            .position(|w| w.to_ascii_uppercase().contains("H680"))?;
        let word = words[index];
        let (model_word, inline_version) = match word.split_once('/') {
            Some((m, v)) => (m, Some(v)),
            None => (word, None),
        };
        let model = model_word
            .trim_start_matches("Lvswitch-")
            .trim_start_matches("LVSWITCH-")
            .to_owned();
        let version = inline_version.map(str::to_owned).or_else(|| {
            words
                .get(index + 1)
                .filter(|v| starts_with_digit(v))
                .map(|v| strip_v(v))
        })?;
        return Some(UserAgentInfo {
            vendor: "Lvswitch".into(),
            model,
            version,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("Htek UC924 2.0.4.4.36", "Htek", "UC924", "2.0.4.4.36")]
    #[case(
        "Htek UC912G 2.42.6.3.36 00:1f:c1:12:34:56",
        "Htek",
        "UC912G",
        "2.42.6.3.36"
    )]
    #[case(
        "Panasonic-KX-UT670/01.133 (0080f0a1b2c3)",
        "Panasonic",
        "KX-UT670",
        "01.133"
    )]
    #[case("Lvswitch SIP-H680W 2.1.0.12", "Lvswitch", "SIP-H680W", "2.1.0.12")]
    #[case("SIP-H680L/2.1.0.12", "Lvswitch", "SIP-H680L", "2.1.0.12")]
    #[case("Lvswitch-SIP-H680W V2.1.0", "Lvswitch", "SIP-H680W", "2.1.0")]
    fn known_formats(
        #[case] ua: &str,
        #[case] vendor: &str,
        #[case] model: &str,
        #[case] version: &str,
    ) {
        let info = parse(ua).unwrap();
        assert_eq!(
            (
                info.vendor.as_str(),
                info.model.as_str(),
                info.version.as_str()
            ),
            (vendor, model, version)
        );
    }

    #[rstest]
    #[case("")]
    #[case("Htek UC924")]
    #[case("sipp")]
    #[case("Panasonic-KX-UT670")]
    #[case("Linphone/5.2 (belle-sip/5.2)")]
    fn unknown_or_incomplete_formats(#[case] ua: &str) {
        assert_eq!(parse(ua), None);
    }
}
