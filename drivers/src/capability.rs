//! The capabilities a bench offers for each phone. Each is deliberately small:
//! a new relay board or adapter is one new file implementing one of these.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use phonerig_core::Timeline;

use crate::error::DriverError;

/// Which capability a backend provides (for registry look-ups and messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capability {
    Button,
    Power,
    Console,
    Keys,
}

impl Capability {
    pub const ALL: [Capability; 4] = [
        Capability::Button,
        Capability::Power,
        Capability::Console,
        Capability::Keys,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Button => "button",
            Capability::Power => "power",
            Capability::Console => "console",
            Capability::Keys => "keys",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The USB panic button (or any momentary contact) of a phone.
#[async_trait]
pub trait Button: Send + Sync {
    /// The lab-file name of the backend (`usb-relay`, `sim`, …), for events.
    fn backend(&self) -> &'static str;
    async fn press(&self) -> Result<(), DriverError>;
    async fn release(&self) -> Result<(), DriverError>;
    /// Keeps the button down for `duration`. Backends whose device can time
    /// the hold itself (the MCU, the virtual phone) override this so the
    /// duration does not depend on the rig's scheduling.
    async fn hold(&self, duration: Duration) -> Result<(), DriverError> {
        self.press().await?;
        tokio::time::sleep(duration).await;
        self.release().await
    }
}

/// The phone's power (outlet relay, PoE port script, virtual phone).
#[async_trait]
pub trait Power: Send + Sync {
    fn backend(&self) -> &'static str;
    async fn on(&self) -> Result<(), DriverError>;
    async fn off(&self) -> Result<(), DriverError>;
    /// Off, wait `off_for`, on.
    async fn cycle(&self, off_for: Duration) -> Result<(), DriverError> {
        self.off().await?;
        tokio::time::sleep(off_for).await;
        self.on().await
    }
}

/// Where a console publishes what it reads.
#[derive(Clone, Debug)]
pub struct ConsoleSink {
    pub timeline: Timeline,
    pub phone: String,
}

/// The phone's serial console: lines in (published by the console itself as
/// `console.line`, because they arrive on their own), text out.
#[async_trait]
pub trait Console: Send + Sync {
    fn backend(&self) -> &'static str;
    /// What is being read, for events and messages (device path, socket).
    fn device(&self) -> String;
    /// Opens the device and starts publishing to `sink`. Fails if the device
    /// cannot be opened now; once started, a lost device is reopened by itself.
    async fn start(&self, sink: ConsoleSink) -> Result<(), DriverError>;
    /// Writes `text` exactly as given (add the line ending the phone expects).
    async fn send(&self, text: &str) -> Result<(), DriverError>;
    /// Stops reading, flushes a held partial line and closes the raw log.
    async fn stop(&self);
}

/// A key or hook action on the phone itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Answer,
    Reject,
    Hangup,
    Speaker,
    Headset,
    Handset,
    Onhook,
    Hold,
    Resume,
    Dial(String),
    FactoryReset,
}

impl Key {
    pub const NAMES: [&'static str; 11] = [
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

    /// The name used in lab files, events (`keys.<name>`) and the sim protocol.
    pub fn name(&self) -> &'static str {
        match self {
            Key::Answer => "answer",
            Key::Reject => "reject",
            Key::Hangup => "hangup",
            Key::Speaker => "speaker",
            Key::Headset => "headset",
            Key::Handset => "handset",
            Key::Onhook => "onhook",
            Key::Hold => "hold",
            Key::Resume => "resume",
            Key::Dial(_) => "dial",
            Key::FactoryReset => "factory-reset",
        }
    }

    pub fn arg(&self) -> Option<&str> {
        match self {
            Key::Dial(digits) => Some(digits),
            _ => None,
        }
    }

    /// `"answer"`, or `"dial"` with its digits. Digits are what a keypad has.
    pub fn parse(name: &str, arg: Option<&str>) -> Result<Key, String> {
        let key = match name {
            "answer" => Key::Answer,
            "reject" => Key::Reject,
            "hangup" => Key::Hangup,
            "speaker" => Key::Speaker,
            "headset" => Key::Headset,
            "handset" => Key::Handset,
            "onhook" => Key::Onhook,
            "hold" => Key::Hold,
            "resume" => Key::Resume,
            "factory-reset" => Key::FactoryReset,
            "dial" => {
                let digits = arg.ok_or("key `dial` needs the digits to dial")?;
                if digits.is_empty()
                    || !digits
                        .chars()
                        .all(|c| c.is_ascii_digit() || c == '*' || c == '#')
                {
                    return Err(format!(
                        "`{digits}` is not something a keypad can dial (0-9, *, #)"
                    ));
                }
                return Ok(Key::Dial(digits.to_owned()));
            }
            other => {
                return Err(format!(
                    "unknown key `{other}`; known: {}",
                    Key::NAMES.join(", ")
                ))
            }
        };
        if let Some(arg) = arg {
            return Err(format!("key `{name}` takes no argument (got `{arg}`)"));
        }
        Ok(key)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.arg() {
            Some(arg) => write!(f, "{} {arg}", self.name()),
            None => f.write_str(self.name()),
        }
    }
}

/// The phone's keypad and hook, driven remotely (action URI, virtual phone).
#[async_trait]
pub trait Keys: Send + Sync {
    fn backend(&self) -> &'static str;
    async fn key(&self, key: &Key) -> Result<(), DriverError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("answer", None, Ok(Key::Answer))]
    #[case("factory-reset", None, Ok(Key::FactoryReset))]
    #[case("dial", Some("4004#"), Ok(Key::Dial("4004#".into())))]
    #[case("dial", None, Err("needs the digits"))]
    #[case("dial", Some("40a4"), Err("not something a keypad can dial"))]
    #[case("hangup", Some("1"), Err("takes no argument"))]
    #[case("volume", None, Err("unknown key `volume`; known: answer"))]
    fn parses_key_names(
        #[case] name: &str,
        #[case] arg: Option<&str>,
        #[case] expected: Result<Key, &str>,
    ) {
        match (Key::parse(name, arg), expected) {
            (Ok(key), Ok(want)) => {
                assert_eq!(key, want);
                assert_eq!(key.name(), name);
            }
            (Err(message), Err(want)) => assert!(message.contains(want), "{message}"),
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }
}
