//! The control socket protocol (docs/CONTRACTS.md, "Virtual phone control
//! socket"): one command per line, one answer line each.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Press,
    Release,
    Hold(Duration),
    Attach,
    Detach,
    PowerOn,
    PowerOff,
    PowerCycle(Duration),
    PowerQuery,
    Key { name: String, arg: Option<String> },
    ConsoleQuery,
    StateQuery,
}

/// Key names the contract lists.
pub const KEYS: &[&str] = &[
    "answer",
    "reject",
    "hangup",
    "speaker",
    "headset",
    "handset",
    "onhook",
    "hold",
    "resume",
    "dial",
    "factory-reset",
];

fn millis(text: Option<&str>, what: &str) -> Result<Duration, String> {
    let text = text.ok_or_else(|| format!("{what} needs a duration in ms"))?;
    text.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| format!("`{text}` is not a number of ms"))
}

pub fn parse(line: &str) -> Result<Command, String> {
    let mut words = line.split_whitespace();
    let verb = words.next().ok_or("empty command")?.to_ascii_uppercase();
    let command = match verb.as_str() {
        "PRESS" => Command::Press,
        "RELEASE" => Command::Release,
        "HOLD" => Command::Hold(millis(words.next(), "HOLD")?),
        "ATTACH" => Command::Attach,
        "DETACH" => Command::Detach,
        "POWER?" => Command::PowerQuery,
        "POWER" => match words.next().map(str::to_ascii_uppercase).as_deref() {
            Some("ON") => Command::PowerOn,
            Some("OFF") => Command::PowerOff,
            Some("CYCLE") => Command::PowerCycle(millis(words.next(), "POWER CYCLE")?),
            Some("?") => Command::PowerQuery,
            other => {
                return Err(format!(
                    "POWER wants ON, OFF, CYCLE <ms> or ?, got {}",
                    other.unwrap_or("nothing")
                ))
            }
        },
        "KEY" => {
            let name = words
                .next()
                .ok_or("KEY needs a key name")?
                .to_ascii_lowercase();
            if !KEYS.contains(&name.as_str()) {
                return Err(format!("unknown key `{name}` (known: {})", KEYS.join(", ")));
            }
            let arg = words.next().map(str::to_owned);
            if name == "dial" && arg.is_none() {
                return Err("KEY dial needs digits".into());
            }
            Command::Key { name, arg }
        }
        "CONSOLE?" => Command::ConsoleQuery,
        "STATE?" => Command::StateQuery,
        other => return Err(format!("unknown command `{other}`")),
    };
    if let Some(extra) = words.next() {
        return Err(format!("unexpected `{extra}`"));
    }
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("PRESS", Command::Press)]
    #[case("release", Command::Release)]
    #[case("HOLD 1500", Command::Hold(Duration::from_millis(1500)))]
    #[case("ATTACH", Command::Attach)]
    #[case("DETACH", Command::Detach)]
    #[case("POWER ON", Command::PowerOn)]
    #[case("POWER OFF", Command::PowerOff)]
    #[case("POWER CYCLE 200", Command::PowerCycle(Duration::from_millis(200)))]
    #[case("POWER?", Command::PowerQuery)]
    #[case("KEY answer", Command::Key { name: "answer".into(), arg: None })]
    #[case("KEY dial 4004", Command::Key { name: "dial".into(), arg: Some("4004".into()) })]
    #[case("KEY factory-reset", Command::Key { name: "factory-reset".into(), arg: None })]
    #[case("CONSOLE?", Command::ConsoleQuery)]
    #[case("STATE?", Command::StateQuery)]
    fn commands_parse(#[case] line: &str, #[case] expected: Command) {
        assert_eq!(parse(line), Ok(expected));
    }

    #[rstest]
    #[case("")]
    #[case("HOLD")]
    #[case("HOLD soon")]
    #[case("POWER")]
    #[case("POWER UP")]
    #[case("POWER CYCLE")]
    #[case("KEY")]
    #[case("KEY launch")]
    #[case("KEY dial")]
    #[case("PRESS twice")]
    #[case("REBOOT")]
    fn malformed_commands_are_refused(#[case] line: &str) {
        assert!(parse(line).is_err());
    }
}
