//! `hid-gadget`: the rig itself plays the USB panic button to the phone,
//! through a Linux USB gadget (configfs HID function, `/dev/hidgN`). A press
//! writes the press report, a release writes the release report; the phone
//! sees a keyboard/consumer device whose key goes down and up.
//!
//! The device is opened non-blocking: while the phone has not read the last
//! report (or is not attached) the kernel answers EAGAIN, and we retry until
//! `write_timeout` instead of hanging the run. See docs/bench-wiring.md for
//! the configfs setup.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use phonerig_core::duration::HumanDuration;
use serde::Deserialize;

use crate::capability::{Button, Capability};
use crate::error::DriverError;
use crate::params;

pub const NAME: &str = "hid-gadget";

fn default_press() -> Vec<u8> {
    vec![0x01]
}
fn default_release() -> Vec<u8> {
    vec![0x00]
}
fn default_write_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The gadget's HID device, e.g. `/dev/hidg0`.
    device: PathBuf,
    /// Report written for "pressed" (default one byte `01`).
    #[serde(default = "default_press")]
    press_report: Vec<u8>,
    /// Report written for "released" (default one byte `00`).
    #[serde(default = "default_release")]
    release_report: Vec<u8>,
    #[serde(default = "default_write_timeout")]
    write_timeout: HumanDuration,
}

pub struct HidGadgetButton {
    device: PathBuf,
    press_report: Vec<u8>,
    release_report: Vec<u8>,
    write_timeout: Duration,
}

impl HidGadgetButton {
    pub fn from_params(
        spec: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, DriverError> {
        let p: Params = params::parse(Capability::Button, NAME, spec)?;
        for (field, report) in [
            ("press_report", &p.press_report),
            ("release_report", &p.release_report),
        ] {
            if report.is_empty() {
                return Err(params::invalid(
                    Capability::Button,
                    NAME,
                    field,
                    "a report needs at least one byte",
                ));
            }
        }
        if p.press_report.len() != p.release_report.len() {
            return Err(params::invalid(
                Capability::Button,
                NAME,
                "release_report",
                format!(
                    "is {} bytes but press_report is {}; a HID report has one fixed length",
                    p.release_report.len(),
                    p.press_report.len()
                ),
            ));
        }
        Ok(HidGadgetButton {
            device: p.device,
            press_report: p.press_report,
            release_report: p.release_report,
            write_timeout: p.write_timeout.0,
        })
    }

    async fn write_report(&self, report: Vec<u8>) -> Result<(), DriverError> {
        let device = self.device.clone();
        let timeout = self.write_timeout;
        tokio::task::spawn_blocking(move || write_report_blocking(&device, &report, timeout))
            .await
            .map_err(|e| DriverError::Unavailable(format!("hid-gadget task failed: {e}")))?
    }
}

fn write_report_blocking(
    device: &PathBuf,
    report: &[u8],
    timeout: Duration,
) -> Result<(), DriverError> {
    let shown = device.display();
    // Append: harmless on the character device, and keeps every report when
    // the device is a plain file (dry runs, tests).
    let mut file = OpenOptions::new().append(true).custom_flags(libc::O_NONBLOCK).open(device).map_err(|e| {
        DriverError::Unavailable(format!("cannot open HID gadget {shown}: {e} (is the gadget configured and bound to a UDC?)"))
    })?;
    let started = Instant::now();
    loop {
        match file.write(report) {
            Ok(n) if n == report.len() => return Ok(()),
            Ok(n) => {
                return Err(DriverError::Refused(format!(
                    "HID gadget {shown} took {n} of {} report bytes",
                    report.len()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if started.elapsed() >= timeout {
                    return Err(DriverError::TimedOut {
                        what: format!("writing a report to {shown} (is the phone attached and reading the button?)"),
                        after_ms: timeout.as_millis() as u64,
                    });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                return Err(DriverError::io(
                    format!("writing a report to HID gadget {shown}"),
                    e,
                ))
            }
        }
    }
}

#[async_trait]
impl Button for HidGadgetButton {
    fn backend(&self) -> &'static str {
        NAME
    }
    async fn press(&self) -> Result<(), DriverError> {
        self.write_report(self.press_report.clone()).await
    }
    async fn release(&self) -> Result<(), DriverError> {
        self.write_report(self.release_report.clone()).await
    }
}
