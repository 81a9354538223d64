//! `usb-relay`: the common HID USB relay boards (V-USB firmware, 16c0:05df,
//! product "USBRelay1/2/4/8"), wired across a button's contacts or a power lead.
//!
//! The boards speak HID feature reports on endpoint 0:
//! - SET_REPORT (feature, id 0), 8 bytes `FF <relay> 0…` closes relay `<relay>`
//!   (1-based), `FD <relay> 0…` opens it;
//! - GET_REPORT (feature, id 0), 8 bytes back: bytes 0..5 the board's serial
//!   (ASCII, NUL padded), byte 7 one bit per relay (bit 0 = relay 1).
//!
//! Several boards look identical on the bus, so a board is selected by the
//! serial it reports. Every action re-enumerates (a replugged board is found
//! again) and reads the state back, so a board that ignored us is an error.
//!
//! All USB access goes through [`UsbTransport`], implemented here by rusb and
//! in the tests by a recorder, so the exact control transfers are checked
//! without a USB bus.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rusb::UsbContext;
use serde::Deserialize;

use crate::capability::{Button, Capability, Power};
use crate::error::DriverError;
use crate::params;

pub const NAME: &str = "usb-relay";
pub const VENDOR_ID: u16 = 0x16c0;
pub const PRODUCT_ID: u16 = 0x05df;

/// bmRequestType: class request to the interface, host to device.
pub const REQUEST_TYPE_OUT: u8 = 0x21;
/// bmRequestType: class request to the interface, device to host.
pub const REQUEST_TYPE_IN: u8 = 0xA1;
pub const HID_GET_REPORT: u8 = 0x01;
pub const HID_SET_REPORT: u8 = 0x09;
/// wValue: report type "feature" (3) in the high byte, report id 0.
pub const FEATURE_REPORT_0: u16 = 0x0300;
pub const REPORT_LEN: usize = 8;
pub const CMD_ON: u8 = 0xFF;
pub const CMD_OFF: u8 = 0xFD;
const SERIAL_LEN: usize = 5;
const STATE_BYTE: usize = 7;

/// One opened USB device, as far as this backend needs it.
pub trait UsbDevice: Send {
    /// Where it is (`bus 1 address 7`), for messages.
    fn location(&self) -> String;
    fn control_in(
        &mut self,
        request_type: u8,
        request: u8,
        value: u16,
        index: u16,
        len: usize,
    ) -> Result<Vec<u8>, DriverError>;
    fn control_out(
        &mut self,
        request_type: u8,
        request: u8,
        value: u16,
        index: u16,
        data: &[u8],
    ) -> Result<usize, DriverError>;
}

/// Access to the USB bus: opens every device with a vendor/product id.
pub trait UsbTransport: Send + Sync {
    fn open_all(&self, vendor: u16, product: u16) -> Result<Vec<Box<dyn UsbDevice>>, DriverError>;
}

/// The real bus, through libusb.
#[derive(Debug, Default, Clone, Copy)]
pub struct RusbTransport;

struct RusbDevice {
    handle: rusb::DeviceHandle<rusb::Context>,
    location: String,
}

impl Drop for RusbDevice {
    fn drop(&mut self) {
        let _ = self.handle.release_interface(0);
    }
}

const USB_TIMEOUT: Duration = Duration::from_secs(1);

impl UsbDevice for RusbDevice {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn control_in(
        &mut self,
        request_type: u8,
        request: u8,
        value: u16,
        index: u16,
        len: usize,
    ) -> Result<Vec<u8>, DriverError> {
        let mut buffer = vec![0u8; len];
        let got = self
            .handle
            .read_control(
                request_type,
                request,
                value,
                index,
                &mut buffer,
                USB_TIMEOUT,
            )
            .map_err(|e| {
                DriverError::Unavailable(format!(
                    "USB relay at {}: GET_REPORT failed: {e}",
                    self.location
                ))
            })?;
        buffer.truncate(got);
        Ok(buffer)
    }

    fn control_out(
        &mut self,
        request_type: u8,
        request: u8,
        value: u16,
        index: u16,
        data: &[u8],
    ) -> Result<usize, DriverError> {
        self.handle
            .write_control(request_type, request, value, index, data, USB_TIMEOUT)
            .map_err(|e| {
                DriverError::Unavailable(format!(
                    "USB relay at {}: SET_REPORT failed: {e}",
                    self.location
                ))
            })
    }
}

impl UsbTransport for RusbTransport {
    fn open_all(&self, vendor: u16, product: u16) -> Result<Vec<Box<dyn UsbDevice>>, DriverError> {
        // An explicit context, not rusb's global one: that one panics when
        // libusb cannot start (no /dev/bus/usb, as in containers).
        let context = rusb::Context::new().map_err(|e| {
            DriverError::Unavailable(format!(
                "USB is not usable here (libusb: {e}); is /dev/bus/usb present?"
            ))
        })?;
        let devices = context
            .devices()
            .map_err(|e| DriverError::Unavailable(format!("cannot list USB devices: {e}")))?;
        let mut opened: Vec<Box<dyn UsbDevice>> = Vec::new();
        for device in devices.iter() {
            let Ok(descriptor) = device.device_descriptor() else {
                continue;
            };
            if descriptor.vendor_id() != vendor || descriptor.product_id() != product {
                continue;
            }
            let location = format!("bus {} address {}", device.bus_number(), device.address());
            let handle = device.open().map_err(|e| {
                DriverError::Unavailable(format!(
                    "USB relay at {location}: cannot open ({e}); run as root or add a udev rule giving the bench user access to {vendor:04x}:{product:04x}"
                ))
            })?;
            // The kernel's usbhid driver owns the interface; interface-directed
            // class requests need it claimed, so usbhid is detached meanwhile.
            let _ = handle.set_auto_detach_kernel_driver(true);
            handle.claim_interface(0).map_err(|e| {
                DriverError::Unavailable(format!(
                    "USB relay at {location}: cannot claim interface 0: {e}"
                ))
            })?;
            opened.push(Box::new(RusbDevice { handle, location }));
        }
        Ok(opened)
    }
}

/// What a board reports about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardReport {
    pub serial: String,
    /// Bit n set: relay n+1 closed.
    pub state: u8,
}

impl BoardReport {
    pub fn parse(report: &[u8]) -> Result<BoardReport, String> {
        if report.len() < REPORT_LEN {
            return Err(format!(
                "feature report is {} bytes, expected {REPORT_LEN}",
                report.len()
            ));
        }
        let serial: String = report[..SERIAL_LEN]
            .iter()
            .take_while(|&&b| b != 0)
            .map(|&b| char::from(b))
            .collect::<String>()
            .trim()
            .to_owned();
        Ok(BoardReport {
            serial,
            state: report[STATE_BYTE],
        })
    }

    pub fn relay_closed(&self, relay: u8) -> bool {
        self.state & (1 << (relay - 1)) != 0
    }
}

fn read_report(device: &mut dyn UsbDevice) -> Result<BoardReport, DriverError> {
    let bytes = device.control_in(
        REQUEST_TYPE_IN,
        HID_GET_REPORT,
        FEATURE_REPORT_0,
        0,
        REPORT_LEN,
    )?;
    BoardReport::parse(&bytes)
        .map_err(|e| DriverError::Refused(format!("USB relay at {}: {e}", device.location())))
}

/// Serial strings of every relay board on the bus (for `doctor` and messages).
pub fn list_boards(transport: &dyn UsbTransport) -> Result<Vec<String>, DriverError> {
    let mut serials = Vec::new();
    for mut device in transport.open_all(VENDOR_ID, PRODUCT_ID)? {
        serials.push(read_report(device.as_mut())?.serial);
    }
    Ok(serials)
}

/// One relay on one board, selected by the board's serial.
#[derive(Clone)]
pub struct Relay {
    transport: Arc<dyn UsbTransport>,
    serial: String,
    relay: u8,
}

impl Relay {
    pub fn new(transport: Arc<dyn UsbTransport>, serial: &str, relay: u8) -> Relay {
        Relay {
            transport,
            serial: serial.to_owned(),
            relay,
        }
    }

    fn open_board(&self) -> Result<Box<dyn UsbDevice>, DriverError> {
        let devices = self.transport.open_all(VENDOR_ID, PRODUCT_ID).map_err(|e| {
            DriverError::Unavailable(format!(
                "no such board: USB relay board `{}` ({VENDOR_ID:04x}:{PRODUCT_ID:04x}) cannot be reached: {e}",
                self.serial
            ))
        })?;
        let mut seen = Vec::new();
        for mut device in devices {
            // A board that cannot be read (pulled out while we looked) is
            // not ours as far as we can tell; it is listed with the reason.
            match read_report(device.as_mut()) {
                Ok(report) if report.serial == self.serial => return Ok(device),
                Ok(report) => seen.push(report.serial),
                Err(error) => seen.push(format!("unreadable ({error})")),
            }
        }
        let found = if seen.is_empty() {
            "none".to_owned()
        } else {
            seen.join(", ")
        };
        Err(DriverError::Unavailable(format!(
            "no such board: no USB relay board with serial `{}` ({VENDOR_ID:04x}:{PRODUCT_ID:04x}); boards found: {found}",
            self.serial
        )))
    }

    /// Closes (`true`) or opens the relay and checks the board agrees.
    pub fn set_blocking(&self, closed: bool) -> Result<(), DriverError> {
        let mut device = self.open_board()?;
        self.switch(device.as_mut(), closed)
            .map_err(|error| self.named(error))
    }

    /// A board pulled out after it was found: libusb's "no device" names
    /// only the bus address, so say which board and relay.
    fn named(&self, error: DriverError) -> DriverError {
        match error {
            DriverError::Unavailable(reason) => DriverError::Unavailable(format!(
                "USB relay board `{}` relay {}: {reason}",
                self.serial, self.relay
            )),
            other => other,
        }
    }

    fn switch(&self, device: &mut dyn UsbDevice, closed: bool) -> Result<(), DriverError> {
        let mut report = [0u8; REPORT_LEN];
        report[0] = if closed { CMD_ON } else { CMD_OFF };
        report[1] = self.relay;
        device.control_out(
            REQUEST_TYPE_OUT,
            HID_SET_REPORT,
            FEATURE_REPORT_0,
            0,
            &report,
        )?;
        let after = read_report(device)?;
        if after.relay_closed(self.relay) != closed {
            return Err(DriverError::Refused(format!(
                "USB relay board `{}` did not {} relay {} (state bits {:08b}); does the board have that many relays?",
                self.serial,
                if closed { "close" } else { "open" },
                self.relay,
                after.state
            )));
        }
        Ok(())
    }

    pub async fn set(&self, closed: bool) -> Result<(), DriverError> {
        let relay = self.clone();
        tokio::task::spawn_blocking(move || relay.set_blocking(closed))
            .await
            .map_err(|e| DriverError::Unavailable(format!("USB relay task failed: {e}")))?
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The serial string the board reports (5 characters, e.g. `HW348`).
    serial: String,
    /// Relay number on the board, from 1.
    relay: u8,
    /// The load is wired to the normally-closed contact: energising the relay
    /// means "released" / "power off".
    #[serde(default)]
    inverted: bool,
}

fn parse_params(
    capability: Capability,
    spec: &serde_json::Map<String, serde_json::Value>,
) -> Result<Params, DriverError> {
    let params: Params = params::parse(capability, NAME, spec)?;
    if !(1..=8).contains(&params.relay) {
        return Err(params::invalid(
            capability,
            NAME,
            "relay",
            format!("{} is not a relay number (1 to 8)", params.relay),
        ));
    }
    if params.serial.is_empty() || params.serial.len() > SERIAL_LEN {
        return Err(params::invalid(
            capability,
            NAME,
            "serial",
            format!(
                "`{}` is not a board serial (1 to 5 characters)",
                params.serial
            ),
        ));
    }
    Ok(params)
}

/// One relay channel and its wiring: `inverted` when the contacts are wired
/// normally-closed, so "active" means the relay is released.
struct Switched {
    relay: Relay,
    inverted: bool,
}

impl Switched {
    fn from_params(
        capability: Capability,
        spec: &serde_json::Map<String, serde_json::Value>,
        transport: Arc<dyn UsbTransport>,
    ) -> Result<Self, DriverError> {
        let p = parse_params(capability, spec)?;
        Ok(Switched {
            relay: Relay::new(transport, &p.serial, p.relay),
            inverted: p.inverted,
        })
    }

    async fn set_active(&self, active: bool) -> Result<(), DriverError> {
        self.relay.set(active != self.inverted).await
    }
}

/// A button whose contacts are bridged by a relay.
pub struct UsbRelayButton(Switched);

impl UsbRelayButton {
    pub fn from_params(
        spec: &serde_json::Map<String, serde_json::Value>,
        transport: Arc<dyn UsbTransport>,
    ) -> Result<Self, DriverError> {
        Switched::from_params(Capability::Button, spec, transport).map(UsbRelayButton)
    }
}

#[async_trait]
impl Button for UsbRelayButton {
    fn backend(&self) -> &'static str {
        NAME
    }
    async fn press(&self) -> Result<(), DriverError> {
        self.0.set_active(true).await
    }
    async fn release(&self) -> Result<(), DriverError> {
        self.0.set_active(false).await
    }
}

/// A power lead switched by a relay.
pub struct UsbRelayPower(Switched);

impl UsbRelayPower {
    pub fn from_params(
        spec: &serde_json::Map<String, serde_json::Value>,
        transport: Arc<dyn UsbTransport>,
    ) -> Result<Self, DriverError> {
        Switched::from_params(Capability::Power, spec, transport).map(UsbRelayPower)
    }
}

#[async_trait]
impl Power for UsbRelayPower {
    fn backend(&self) -> &'static str {
        NAME
    }
    async fn on(&self) -> Result<(), DriverError> {
        self.0.set_active(true).await
    }
    async fn off(&self) -> Result<(), DriverError> {
        self.0.set_active(false).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// One control transfer as the device saw it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Transfer {
        board: String,
        request_type: u8,
        request: u8,
        value: u16,
        index: u16,
        /// Bytes sent (OUT) or the requested length as zeros (IN).
        data: Vec<u8>,
    }

    /// Emulates relay boards the way their firmware answers, and records
    /// every transfer, so the tests check both the bytes and the effect.
    #[derive(Default)]
    struct Recorder {
        boards: Mutex<Vec<(String, u8)>>,
        log: Arc<Mutex<Vec<Transfer>>>,
        /// Relays beyond this count are silently ignored (a 2-relay board).
        relays_per_board: u8,
    }

    struct RecordedBoard {
        index: usize,
        recorder: Arc<Recorder>,
    }

    impl UsbDevice for RecordedBoard {
        fn location(&self) -> String {
            format!("fake {}", self.index)
        }
        fn control_in(
            &mut self,
            request_type: u8,
            request: u8,
            value: u16,
            index: u16,
            len: usize,
        ) -> Result<Vec<u8>, DriverError> {
            let boards = self.recorder.boards.lock().unwrap();
            let (serial, state) = &boards[self.index];
            self.recorder.log.lock().unwrap().push(Transfer {
                board: serial.clone(),
                request_type,
                request,
                value,
                index,
                data: vec![0; len],
            });
            let mut report = vec![0u8; len];
            report[..serial.len()].copy_from_slice(serial.as_bytes());
            report[STATE_BYTE] = *state;
            Ok(report)
        }
        fn control_out(
            &mut self,
            request_type: u8,
            request: u8,
            value: u16,
            index: u16,
            data: &[u8],
        ) -> Result<usize, DriverError> {
            let mut boards = self.recorder.boards.lock().unwrap();
            let (serial, state) = &mut boards[self.index];
            self.recorder.log.lock().unwrap().push(Transfer {
                board: serial.clone(),
                request_type,
                request,
                value,
                index,
                data: data.to_vec(),
            });
            let relay = data[1];
            if relay >= 1 && relay <= self.recorder.relays_per_board {
                match data[0] {
                    CMD_ON => *state |= 1 << (relay - 1),
                    CMD_OFF => *state &= !(1 << (relay - 1)),
                    _ => {}
                }
            }
            Ok(data.len())
        }
    }

    struct SharedRecorder(Arc<Recorder>);

    impl UsbTransport for SharedRecorder {
        fn open_all(
            &self,
            vendor: u16,
            product: u16,
        ) -> Result<Vec<Box<dyn UsbDevice>>, DriverError> {
            assert_eq!((vendor, product), (0x16c0, 0x05df));
            let count = self.0.boards.lock().unwrap().len();
            Ok((0..count)
                .map(|index| {
                    Box::new(RecordedBoard {
                        index,
                        recorder: self.0.clone(),
                    }) as Box<dyn UsbDevice>
                })
                .collect())
        }
    }

    fn bench(serials: &[&str]) -> (Arc<Recorder>, Arc<dyn UsbTransport>) {
        let recorder = Arc::new(Recorder {
            boards: Mutex::new(serials.iter().map(|s| (s.to_string(), 0)).collect()),
            log: Arc::default(),
            relays_per_board: 2,
        });
        (recorder.clone(), Arc::new(SharedRecorder(recorder)))
    }

    fn spec(json: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        json.as_object().unwrap().clone()
    }

    fn get_report(board: &str) -> Transfer {
        Transfer {
            board: board.into(),
            request_type: 0xA1,
            request: 0x01,
            value: 0x0300,
            index: 0,
            data: vec![0; 8],
        }
    }

    fn set_report(board: &str, bytes: [u8; 8]) -> Transfer {
        Transfer {
            board: board.into(),
            request_type: 0x21,
            request: 0x09,
            value: 0x0300,
            index: 0,
            data: bytes.to_vec(),
        }
    }

    #[tokio::test]
    async fn press_and_release_send_exact_feature_reports_to_the_board_with_that_serial() {
        let (recorder, transport) = bench(&["AAAAA", "HW348"]);
        let button = UsbRelayButton::from_params(
            &spec(serde_json::json!({"backend": "usb-relay", "serial": "HW348", "relay": 2})),
            transport,
        )
        .unwrap();
        button.press().await.unwrap();
        assert_eq!(recorder.boards.lock().unwrap()[1].1, 0b10);
        assert_eq!(
            *recorder.log.lock().unwrap(),
            vec![
                // Select by serial: read each board's report until the serial matches.
                get_report("AAAAA"),
                get_report("HW348"),
                set_report("HW348", [0xFF, 2, 0, 0, 0, 0, 0, 0]),
                // Read back to confirm the relay closed.
                get_report("HW348"),
            ]
        );
        recorder.log.lock().unwrap().clear();
        button.release().await.unwrap();
        assert_eq!(
            *recorder.log.lock().unwrap(),
            vec![
                get_report("AAAAA"),
                get_report("HW348"),
                set_report("HW348", [0xFD, 2, 0, 0, 0, 0, 0, 0]),
                get_report("HW348")
            ]
        );
        assert_eq!(recorder.boards.lock().unwrap()[1].1, 0);
        assert_eq!(
            recorder.boards.lock().unwrap()[0].1,
            0,
            "the other board is never switched"
        );
    }

    #[tokio::test]
    async fn inverted_power_energises_the_relay_for_off() {
        let (recorder, transport) = bench(&["PWR01"]);
        let power = UsbRelayPower::from_params(
            &spec(serde_json::json!({"serial": "PWR01", "relay": 1, "inverted": true})),
            transport,
        )
        .unwrap();
        power.off().await.unwrap();
        assert!(recorder
            .log
            .lock()
            .unwrap()
            .contains(&set_report("PWR01", [0xFF, 1, 0, 0, 0, 0, 0, 0])));
        power.on().await.unwrap();
        assert!(recorder
            .log
            .lock()
            .unwrap()
            .contains(&set_report("PWR01", [0xFD, 1, 0, 0, 0, 0, 0, 0])));
        assert_eq!(recorder.boards.lock().unwrap()[0].1, 0);
    }

    #[tokio::test]
    async fn missing_board_is_named_with_the_boards_that_are_there() {
        let (_, transport) = bench(&["AAAAA"]);
        let power = UsbRelayPower::from_params(
            &spec(serde_json::json!({"serial": "HW348", "relay": 1})),
            transport,
        )
        .unwrap();
        let error = power.on().await.unwrap_err().to_string();
        assert!(
            error.contains("no such board")
                && error.contains("HW348")
                && error.contains("boards found: AAAAA"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_relay_the_board_does_not_have_is_an_error() {
        let (_, transport) = bench(&["HW348"]);
        let button = UsbRelayButton::from_params(
            &spec(serde_json::json!({"serial": "HW348", "relay": 4})),
            transport,
        )
        .unwrap();
        let error = button.press().await.unwrap_err().to_string();
        assert!(error.contains("did not close relay 4"), "{error}");
    }

    #[rstest::rstest]
    #[case(serde_json::json!({"relay": 1}), "missing field `serial`")]
    #[case(serde_json::json!({"serial": "HW348"}), "missing field `relay`")]
    #[case(serde_json::json!({"serial": "HW348", "relay": 9}), "field `relay`: 9 is not a relay number")]
    #[case(serde_json::json!({"serial": "TOOLONG", "relay": 1}), "field `serial`")]
    #[case(serde_json::json!({"serial": "HW348", "relay": 1, "relais": 2}), "unknown field `relais`")]
    #[case(serde_json::json!({"serial": "HW348", "relay": "one"}), "invalid type")]
    fn invalid_params_name_the_field(#[case] params: serde_json::Value, #[case] want: &str) {
        let (_, transport) = bench(&[]);
        let error = UsbRelayButton::from_params(&spec(params), transport)
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.starts_with("button backend `usb-relay`: ") && error.contains(want),
            "{error}"
        );
    }

    #[rstest::rstest]
    #[case(&[b'H', b'W', b'3', b'4', b'8', 0, 0, 0b101], "HW348", 0b101)]
    #[case(&[b'A', b'B', 0, 0, 0, 0, 0, 1], "AB", 1)]
    fn parses_board_reports(#[case] bytes: &[u8], #[case] serial: &str, #[case] state: u8) {
        assert_eq!(
            BoardReport::parse(bytes).unwrap(),
            BoardReport {
                serial: serial.into(),
                state
            }
        );
    }

    #[test]
    fn short_report_is_rejected() {
        assert!(BoardReport::parse(&[1, 2, 3])
            .unwrap_err()
            .contains("3 bytes"));
    }
}
