//! `serial` console: the phone's UART through a USB-serial adapter (or any
//! tty), opened with serialport; plus the line settings shared with the
//! `serial` button MCU and the `sim` console (which opens a pseudo-terminal
//! through this same code).

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use phonerig_core::duration::HumanDuration;
use serde::Deserialize;
use serialport::{DataBits, FlowControl, Parity, SerialPort, StopBits};

use crate::capability::{Capability, Console, ConsoleSink};
use crate::console::{ConsoleSettings, DeviceLocator, SerialConsole};
use crate::error::DriverError;
use crate::params;

pub const NAME: &str = "serial";

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParityName {
    None,
    Odd,
    Even,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FlowName {
    None,
    Software,
    Hardware,
}

fn default_baud() -> u32 {
    115_200
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
fn default_parity() -> ParityName {
    ParityName::None
}
fn default_flow() -> FlowName {
    FlowName::None
}

/// Every setting a serial backend may take. Which extras apply depends on
/// the backend; [`SerialParams::parse`] rejects the others by name.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SerialParams {
    /// The tty. Prefer `/dev/serial/by-id/…`: it survives replugging into another port.
    #[serde(default)]
    pub device: PathBuf,
    #[serde(default = "default_baud")]
    pub baud: u32,
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    #[serde(default = "default_parity")]
    pub parity: ParityName,
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    #[serde(default = "default_flow")]
    pub flow_control: FlowName,
    /// Console: publish a partial line after this much silence (default 500ms).
    pub flush_after: Option<HumanDuration>,
    /// Console: how often to look for a lost device again (default 1s).
    pub reconnect_every: Option<HumanDuration>,
    /// Button MCU: how long to wait for `OK` (default 2s, plus the hold time).
    pub answer_timeout: Option<HumanDuration>,
    /// Sim console only: the control socket instead of `<sim_dir>/<phone>.sock`.
    pub socket: Option<PathBuf>,
}

impl SerialParams {
    /// Parses and validates; `extras` names the optional fields this backend takes.
    pub fn parse(
        capability: Capability,
        backend: &str,
        spec: &serde_json::Map<String, serde_json::Value>,
        extras: &[&str],
    ) -> Result<SerialParams, DriverError> {
        let p: SerialParams = params::parse(capability, backend, spec)?;
        let given = [
            ("flush_after", p.flush_after.is_some()),
            ("reconnect_every", p.reconnect_every.is_some()),
            ("answer_timeout", p.answer_timeout.is_some()),
            ("socket", p.socket.is_some()),
        ];
        for (field, present) in given {
            if present && !extras.contains(&field) {
                return Err(params::invalid(
                    capability,
                    backend,
                    field,
                    format!("does not apply to the {capability} backend `{backend}`"),
                ));
            }
        }
        // The sim console finds its device through the control socket.
        let needs_device = backend != crate::backends::sim::NAME;
        if needs_device && p.device.as_os_str().is_empty() {
            return Err(DriverError::InvalidParams {
                capability,
                backend: backend.to_owned(),
                message:
                    "missing field `device` (the serial port, e.g. /dev/serial/by-id/usb-FTDI_…)"
                        .into(),
            });
        }
        if !needs_device && !p.device.as_os_str().is_empty() {
            return Err(params::invalid(
                capability,
                backend,
                "device",
                "the sim console asks the virtual phone for its device",
            ));
        }
        if p.baud == 0 {
            return Err(params::invalid(
                capability,
                backend,
                "baud",
                "must be above 0",
            ));
        }
        if !(5..=8).contains(&p.data_bits) {
            return Err(params::invalid(
                capability,
                backend,
                "data_bits",
                format!("{} is not 5, 6, 7 or 8", p.data_bits),
            ));
        }
        if !(1..=2).contains(&p.stop_bits) {
            return Err(params::invalid(
                capability,
                backend,
                "stop_bits",
                format!("{} is not 1 or 2", p.stop_bits),
            ));
        }
        Ok(p)
    }

    /// Opens `path` with these line settings.
    pub fn open(&self, path: &Path) -> Result<Box<dyn SerialPort>, DriverError> {
        let data_bits = match self.data_bits {
            5 => DataBits::Five,
            6 => DataBits::Six,
            7 => DataBits::Seven,
            _ => DataBits::Eight,
        };
        let parity = match self.parity {
            ParityName::None => Parity::None,
            ParityName::Odd => Parity::Odd,
            ParityName::Even => Parity::Even,
        };
        let stop_bits = if self.stop_bits == 2 {
            StopBits::Two
        } else {
            StopBits::One
        };
        let flow_control = match self.flow_control {
            FlowName::None => FlowControl::None,
            FlowName::Software => FlowControl::Software,
            FlowName::Hardware => FlowControl::Hardware,
        };
        serialport::new(path.to_string_lossy(), self.baud)
            .data_bits(data_bits)
            .parity(parity)
            .stop_bits(stop_bits)
            .flow_control(flow_control)
            .timeout(Duration::from_millis(100))
            .open()
            .map_err(|e| {
                DriverError::Unavailable(format!("cannot open serial port {}: {e}", path.display()))
            })
    }
}

pub(crate) fn console_settings(
    capability: Capability,
    backend: &'static str,
    spec: &serde_json::Map<String, serde_json::Value>,
    locator: impl FnOnce(&SerialParams) -> DeviceLocator,
    raw_log: Option<PathBuf>,
) -> Result<ConsoleSettings, DriverError> {
    let extras: &[&str] = if backend == crate::backends::sim::NAME {
        &["flush_after", "reconnect_every", "socket"]
    } else {
        &["flush_after", "reconnect_every"]
    };
    let line = SerialParams::parse(capability, backend, spec, extras)?;
    Ok(ConsoleSettings {
        locator: locator(&line),
        flush_after: line
            .flush_after
            .map(|d| d.0)
            .unwrap_or(Duration::from_millis(500)),
        reconnect_every: line
            .reconnect_every
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(1)),
        line,
        raw_log,
    })
}

/// A console on a local serial device.
pub struct SerialPortConsole(pub SerialConsole);

impl SerialPortConsole {
    pub fn from_params(
        spec: &serde_json::Map<String, serde_json::Value>,
        raw_log: Option<PathBuf>,
    ) -> Result<Self, DriverError> {
        let settings = console_settings(
            Capability::Console,
            NAME,
            spec,
            |line| DeviceLocator::Path(line.device.clone()),
            raw_log,
        )?;
        Ok(SerialPortConsole(SerialConsole::new(NAME, settings)))
    }
}

#[async_trait]
impl Console for SerialPortConsole {
    fn backend(&self) -> &'static str {
        self.0.backend()
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
    #[case(serde_json::json!({}), "missing field `device`")]
    #[case(serde_json::json!({"device": "/dev/ttyUSB0", "parity": "mark"}), "unknown variant `mark`")]
    #[case(serde_json::json!({"device": "/dev/ttyUSB0", "data_bits": 9}), "field `data_bits`: 9 is not")]
    #[case(serde_json::json!({"device": "/dev/ttyUSB0", "stop_bits": 3}), "field `stop_bits`")]
    #[case(serde_json::json!({"device": "/dev/ttyUSB0", "baud": "fast"}), "invalid type")]
    #[case(serde_json::json!({"device": "/dev/ttyUSB0", "flush_after": "soon"}), "not a duration")]
    #[case(serde_json::json!({"device": "/dev/ttyUSB0", "answer_timeout": "1s"}), "field `answer_timeout`: does not apply")]
    #[case(serde_json::json!({"device": "/dev/ttyUSB0", "speed": 9600}), "unknown field `speed`")]
    fn console_params_errors_name_the_field(#[case] params: serde_json::Value, #[case] want: &str) {
        let error = SerialPortConsole::from_params(params.as_object().unwrap(), None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.starts_with("console backend `serial`: ") && error.contains(want),
            "{error}"
        );
    }

    #[test]
    fn defaults_are_115200_8n1() {
        let p = SerialParams::parse(
            Capability::Console,
            NAME,
            serde_json::json!({"device": "/dev/ttyS0"})
                .as_object()
                .unwrap(),
            &[],
        )
        .unwrap();
        assert_eq!(
            (p.baud, p.data_bits, p.parity, p.stop_bits, p.flow_control),
            (115_200, 8, ParityName::None, 1, FlowName::None)
        );
    }
}
