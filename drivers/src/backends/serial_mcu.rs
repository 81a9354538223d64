//! `serial` button: a small microcontroller plays the USB panic button to the
//! phone and takes line commands from the rig over a serial port:
//!
//! ```text
//! rig → MCU   PRESS | RELEASE | HOLD <ms>        (one per line, `\n`)
//! MCU → rig   OK | ERR <reason>                  (one answer per command)
//!             # anything                          (log lines, ignored)
//! ```
//!
//! `HOLD` is timed by the MCU, so the hold length does not depend on the
//! rig's scheduling; the answer comes when the button is up again. The
//! protocol (and a sketch to flash) is in docs/bench-wiring.md.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serialport::SerialPort;

use crate::backends::serial_console::SerialParams;
use crate::capability::{Button, Capability};
use crate::error::DriverError;

pub const NAME: &str = "serial";
const DEFAULT_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

pub struct SerialMcuButton {
    params: SerialParams,
    answer_timeout: Duration,
    /// Kept open between commands (opening resets some boards); dropped on
    /// any error so the next command reopens a replugged adapter.
    port: Arc<Mutex<Option<Box<dyn SerialPort>>>>,
}

impl SerialMcuButton {
    pub fn from_params(
        spec: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, DriverError> {
        let params = SerialParams::parse(Capability::Button, NAME, spec, &["answer_timeout"])?;
        let answer_timeout = params
            .answer_timeout
            .map(|d| d.0)
            .unwrap_or(DEFAULT_ANSWER_TIMEOUT);
        Ok(SerialMcuButton {
            params,
            answer_timeout,
            port: Arc::default(),
        })
    }

    pub fn device(&self) -> &PathBuf {
        &self.params.device
    }

    async fn command(&self, command: String, extra_wait: Duration) -> Result<(), DriverError> {
        let params = self.params.clone();
        let port = self.port.clone();
        let timeout = self.answer_timeout + extra_wait;
        tokio::task::spawn_blocking(move || {
            let mut guard = port.lock().unwrap_or_else(|p| p.into_inner());
            if guard.is_none() {
                *guard = Some(params.open(&params.device)?);
            }
            let result = exchange(
                guard.as_mut().expect("opened above").as_mut(),
                &command,
                timeout,
                &params.device,
            );
            if matches!(
                result,
                Err(DriverError::Io { .. } | DriverError::TimedOut { .. })
            ) {
                *guard = None;
            }
            result
        })
        .await
        .map_err(|e| DriverError::Unavailable(format!("serial button task failed: {e}")))?
    }
}

/// Sends one command and waits for its `OK` / `ERR`, skipping `#` log lines.
pub fn exchange(
    port: &mut dyn SerialPort,
    command: &str,
    timeout: Duration,
    device: &Path,
) -> Result<(), DriverError> {
    let shown = device.display();
    // A stale answer or boot banner must not be taken for this command's answer.
    let _ = port.clear(serialport::ClearBuffer::Input);
    port.write_all(format!("{command}\n").as_bytes())
        .map_err(|e| DriverError::io(format!("{shown}: sending `{command}`"), e))?;
    let _ = port.flush();
    let started = Instant::now();
    let mut pending = Vec::new();
    let mut buffer = [0u8; 256];
    loop {
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line).trim().to_owned();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            return match line.as_str() {
                "OK" => Ok(()),
                _ => match line.strip_prefix("ERR") {
                    Some(reason) => Err(DriverError::Refused(format!("button MCU on {shown} refused `{command}`: {}", reason.trim()))),
                    None => Err(DriverError::Refused(format!("button MCU on {shown} answered `{line}` to `{command}` (expected OK or ERR)"))),
                },
            };
        }
        if started.elapsed() >= timeout {
            return Err(DriverError::TimedOut {
                what: format!("answer to `{command}` from the button MCU on {shown}"),
                after_ms: timeout.as_millis() as u64,
            });
        }
        match port.read(&mut buffer) {
            Ok(0) => {
                return Err(DriverError::io(
                    format!("{shown}"),
                    std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                ))
            }
            Ok(n) => pending.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => {
                return Err(DriverError::io(
                    format!("{shown}: reading the answer to `{command}`"),
                    e,
                ))
            }
        }
    }
}

#[async_trait]
impl Button for SerialMcuButton {
    fn backend(&self) -> &'static str {
        NAME
    }
    async fn press(&self) -> Result<(), DriverError> {
        self.command("PRESS".into(), Duration::ZERO).await
    }
    async fn release(&self) -> Result<(), DriverError> {
        self.command("RELEASE".into(), Duration::ZERO).await
    }
    async fn hold(&self, duration: Duration) -> Result<(), DriverError> {
        self.command(format!("HOLD {}", duration.as_millis()), duration)
            .await
    }
}
