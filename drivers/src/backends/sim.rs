//! `sim`: the virtual phone's button, power, keys and console, through its
//! control socket `<sim_dir>/<phone>.sock` (docs/CONTRACTS.md): one command
//! line, one answer line (`OK[ text]` / `ERR <reason>`).
//!
//! A connection per command keeps this independent of the virtual phone's
//! lifetime: a restarted sim is simply reached on the next command.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use crate::backends::serial_console::console_settings;
use crate::capability::{Button, Capability, Console, ConsoleSink, Key, Keys, Power};
use crate::console::{DeviceLocator, SerialConsole};
use crate::error::DriverError;
use crate::params;

pub const NAME: &str = "sim";

/// Answers come at once except for timed commands; those get their duration on top.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// A client for one virtual phone's control socket.
#[derive(Debug, Clone)]
pub struct ControlSocket {
    path: PathBuf,
}

impl ControlSocket {
    pub fn new(path: impl Into<PathBuf>) -> ControlSocket {
        ControlSocket { path: path.into() }
    }

    /// `<sim_dir>/<phone>.sock`.
    pub fn for_phone(sim_dir: &Path, phone: &str) -> ControlSocket {
        ControlSocket::new(sim_dir.join(format!("{phone}.sock")))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends `command` and returns the text after `OK` (empty for a bare `OK`).
    pub fn exchange_blocking(
        &self,
        command: &str,
        extra_wait: Duration,
    ) -> Result<String, DriverError> {
        let shown = self.path.display();
        let mut stream = UnixStream::connect(&self.path).map_err(|e| {
            DriverError::Unavailable(format!(
                "virtual phone control socket {shown}: {e} (is the virtual phone running?)"
            ))
        })?;
        let timeout = ANSWER_TIMEOUT + extra_wait;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| DriverError::io(format!("{shown}"), e))?;
        stream
            .write_all(format!("{command}\n").as_bytes())
            .map_err(|e| DriverError::io(format!("{shown}: sending `{command}`"), e))?;
        let mut answer = String::new();
        let read = BufReader::new(&stream).read_line(&mut answer);
        match read {
            Ok(0) => Err(DriverError::Unavailable(format!(
                "{shown}: closed without answering `{command}`"
            ))),
            Ok(_) => parse_answer(answer.trim_end_matches(['\r', '\n'])).map_err(|reason| {
                DriverError::Refused(format!("virtual phone refused `{command}`: {reason}"))
            }),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(DriverError::TimedOut {
                    what: format!("answer to `{command}` from {shown}"),
                    after_ms: timeout.as_millis() as u64,
                })
            }
            Err(e) => Err(DriverError::io(
                format!("{shown}: reading the answer to `{command}`"),
                e,
            )),
        }
    }

    pub async fn exchange(
        &self,
        command: String,
        extra_wait: Duration,
    ) -> Result<String, DriverError> {
        let socket = self.clone();
        tokio::task::spawn_blocking(move || socket.exchange_blocking(&command, extra_wait))
            .await
            .map_err(|e| DriverError::Unavailable(format!("control socket task failed: {e}")))?
    }
}

/// `OK` → `""`, `OK text` → `"text"`, `ERR reason` → `Err(reason)`.
pub fn parse_answer(line: &str) -> Result<String, String> {
    if line == "OK" {
        Ok(String::new())
    } else if let Some(text) = line.strip_prefix("OK ") {
        Ok(text.to_owned())
    } else if let Some(reason) = line.strip_prefix("ERR") {
        let reason = reason.trim();
        Err(if reason.is_empty() {
            "ERR without a reason".to_owned()
        } else {
            reason.to_owned()
        })
    } else {
        Err(format!("unexpected answer `{line}`"))
    }
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Overrides `<sim_dir>/<phone>.sock`.
    socket: Option<PathBuf>,
}

/// The control socket a sim backend of `phone` talks to.
pub fn socket_from_params(
    capability: Capability,
    spec: &serde_json::Map<String, serde_json::Value>,
    sim_dir: &Path,
    phone: &str,
) -> Result<ControlSocket, DriverError> {
    let p: Params = params::parse(capability, NAME, spec)?;
    Ok(p.socket
        .map(ControlSocket::new)
        .unwrap_or_else(|| ControlSocket::for_phone(sim_dir, phone)))
}

pub struct SimButton(pub ControlSocket);

#[async_trait]
impl Button for SimButton {
    fn backend(&self) -> &'static str {
        NAME
    }
    async fn press(&self) -> Result<(), DriverError> {
        self.0
            .exchange("PRESS".into(), Duration::ZERO)
            .await
            .map(drop)
    }
    async fn release(&self) -> Result<(), DriverError> {
        self.0
            .exchange("RELEASE".into(), Duration::ZERO)
            .await
            .map(drop)
    }
    async fn hold(&self, duration: Duration) -> Result<(), DriverError> {
        self.0
            .exchange(format!("HOLD {}", duration.as_millis()), duration)
            .await
            .map(drop)
    }
}

pub struct SimPower(pub ControlSocket);

#[async_trait]
impl Power for SimPower {
    fn backend(&self) -> &'static str {
        NAME
    }
    async fn on(&self) -> Result<(), DriverError> {
        self.0
            .exchange("POWER ON".into(), Duration::ZERO)
            .await
            .map(drop)
    }
    async fn off(&self) -> Result<(), DriverError> {
        self.0
            .exchange("POWER OFF".into(), Duration::ZERO)
            .await
            .map(drop)
    }
    async fn cycle(&self, off_for: Duration) -> Result<(), DriverError> {
        self.0
            .exchange(format!("POWER CYCLE {}", off_for.as_millis()), off_for)
            .await
            .map(drop)
    }
}

pub struct SimKeys(pub ControlSocket);

#[async_trait]
impl Keys for SimKeys {
    fn backend(&self) -> &'static str {
        NAME
    }
    async fn key(&self, key: &Key) -> Result<(), DriverError> {
        self.0
            .exchange(format!("KEY {key}"), Duration::ZERO)
            .await
            .map(drop)
    }
}

/// The virtual phone's console: `CONSOLE?` names a pseudo-terminal, opened
/// through the same serialport code as a real adapter (asked again after
/// each loss, since a restarted virtual phone gets a new one).
pub struct SimConsole(pub SerialConsole);

impl SimConsole {
    pub fn from_params(
        spec: &serde_json::Map<String, serde_json::Value>,
        sim_dir: &Path,
        phone: &str,
        raw_log: Option<PathBuf>,
    ) -> Result<Self, DriverError> {
        let settings = console_settings(
            Capability::Console,
            NAME,
            spec,
            |line| {
                DeviceLocator::Sim(
                    line.socket
                        .clone()
                        .map(ControlSocket::new)
                        .unwrap_or_else(|| ControlSocket::for_phone(sim_dir, phone)),
                )
            },
            raw_log,
        )?;
        Ok(SimConsole(SerialConsole::new(NAME, settings)))
    }
}

#[async_trait]
impl Console for SimConsole {
    fn backend(&self) -> &'static str {
        NAME
    }
    fn device(&self) -> String {
        self.0.describe()
    }
    async fn start(&self, sink: ConsoleSink) -> Result<(), DriverError> {
        self.0.start(sink).await
    }
    async fn send(&self, text: &str) -> Result<(), DriverError> {
        self.0.send(text).await
    }
    async fn stop(&self) {
        self.0.stop().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("OK", Ok(""))]
    #[case("OK on", Ok("on"))]
    #[case("OK /dev/pts/7", Ok("/dev/pts/7"))]
    #[case("ERR not attached", Err("not attached"))]
    #[case("ERR", Err("ERR without a reason"))]
    #[case("HELLO", Err("unexpected answer `HELLO`"))]
    fn parses_answers(#[case] line: &str, #[case] want: Result<&str, &str>) {
        assert_eq!(
            parse_answer(line),
            want.map(str::to_owned).map_err(str::to_owned)
        );
    }
}
