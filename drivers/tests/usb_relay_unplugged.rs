//! A USB relay board that disappears mid-run (docs/safety.md "Run
//! integrity"), behind the backend's `UsbTransport` seam: a board that is no
//! longer on the bus, and one that vanishes between opening it and switching
//! the relay (libusb's "no device"). Each call that needed the board fails
//! with a reason naming the board and is an event with `ok = false`; once the
//! board is back, the next call reaches it again (the backend opens the board
//! per command and keeps no stale handle).

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use phonerig_core::Timeline;
use phonerig_drivers::backends::usb_relay::{
    UsbDevice, UsbRelayButton, UsbRelayPower, UsbTransport, CMD_ON, REPORT_LEN,
};
use phonerig_drivers::{Driven, DriverError};

const SERIAL: &str = "HW348";

/// One relay board on a bus it can be pulled from.
#[derive(Default)]
struct Board {
    /// On the bus: enumerated and reachable.
    plugged: AtomicBool,
    /// Bit n set: relay n+1 closed.
    state: AtomicU8,
    /// Transfers the board still answers before it drops off the bus
    /// (`usize::MAX`: no limit).
    transfers_left: AtomicUsize,
}

impl Board {
    fn new() -> Arc<Board> {
        let board = Board::default();
        board.plugged.store(true, Ordering::SeqCst);
        board.transfers_left.store(usize::MAX, Ordering::SeqCst);
        Arc::new(board)
    }

    /// Counts one transfer; past the limit the board is gone.
    fn transfer(&self, what: &str) -> Result<(), DriverError> {
        let left = self.transfers_left.load(Ordering::SeqCst);
        if left == 0 {
            self.plugged.store(false, Ordering::SeqCst);
        } else if left != usize::MAX {
            self.transfers_left.store(left - 1, Ordering::SeqCst);
        }
        if self.plugged.load(Ordering::SeqCst) {
            Ok(())
        } else {
            // What rusb says for LIBUSB_ERROR_NO_DEVICE, as RusbDevice wraps it.
            Err(DriverError::Unavailable(format!(
                "USB relay at bus 1 address 7: {what} failed: No such device (it may have been disconnected)"
            )))
        }
    }
}

struct OpenedBoard(Arc<Board>);

impl UsbDevice for OpenedBoard {
    fn location(&self) -> String {
        "bus 1 address 7".into()
    }

    fn control_in(
        &mut self,
        _request_type: u8,
        _request: u8,
        _value: u16,
        _index: u16,
        len: usize,
    ) -> Result<Vec<u8>, DriverError> {
        self.0.transfer("GET_REPORT")?;
        let mut report = vec![0u8; len.max(REPORT_LEN)];
        report[..SERIAL.len()].copy_from_slice(SERIAL.as_bytes());
        report[7] = self.0.state.load(Ordering::SeqCst);
        Ok(report)
    }

    fn control_out(
        &mut self,
        _request_type: u8,
        _request: u8,
        _value: u16,
        _index: u16,
        data: &[u8],
    ) -> Result<usize, DriverError> {
        self.0.transfer("SET_REPORT")?;
        let bit = 1u8 << (data[1] - 1);
        if data[0] == CMD_ON {
            self.0.state.fetch_or(bit, Ordering::SeqCst);
        } else {
            self.0.state.fetch_and(!bit, Ordering::SeqCst);
        }
        Ok(data.len())
    }
}

struct Bus(Arc<Board>);

impl UsbTransport for Bus {
    fn open_all(
        &self,
        _vendor: u16,
        _product: u16,
    ) -> Result<Vec<Box<dyn UsbDevice>>, DriverError> {
        // A board that left the bus is simply not enumerated.
        Ok(if self.0.plugged.load(Ordering::SeqCst) {
            vec![Box::new(OpenedBoard(self.0.clone()))]
        } else {
            vec![]
        })
    }
}

fn relay(number: u8) -> serde_json::Map<String, serde_json::Value> {
    serde_json::json!({ "serial": SERIAL, "relay": number })
        .as_object()
        .unwrap()
        .clone()
}

fn bench(board: &Arc<Board>) -> (Timeline, Driven) {
    let timeline = Timeline::in_memory();
    let transport: Arc<dyn UsbTransport> = Arc::new(Bus(board.clone()));
    let button = UsbRelayButton::from_params(&relay(1), transport.clone()).unwrap();
    let power = UsbRelayPower::from_params(&relay(2), transport).unwrap();
    let driven = Driven::new(
        timeline.clone(),
        "uc924",
        Some(Box::new(button)),
        Some(Box::new(power)),
        None,
        None,
    );
    (timeline, driven)
}

fn last(timeline: &Timeline, kind: &str) -> Arc<phonerig_core::Event> {
    timeline
        .snapshot()
        .into_iter()
        .rev()
        .find(|e| e.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} event"))
}

#[tokio::test]
async fn a_relay_board_pulled_from_the_bus_fails_each_call_with_an_event_until_it_is_back() {
    let board = Board::new();
    let (timeline, driven) = bench(&board);
    driven.power.on().await.unwrap();
    assert_eq!(last(&timeline, "power.on").fields["ok"], true);

    board.plugged.store(false, Ordering::SeqCst);
    let error = driven.power.off().await.unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("no such board")
            && text.contains(SERIAL)
            && text.contains("boards found: none"),
        "{text}"
    );
    let event = last(&timeline, "power.off");
    assert_eq!(event.fields["ok"], false);
    assert_eq!(event.field_str("error"), Some(text.as_str()));
    assert_eq!(event.phone.as_deref(), Some("uc924"));
    // The button on the same board is just as gone.
    assert!(driven.button.press().await.is_err());
    assert_eq!(last(&timeline, "button.press").fields["ok"], false);

    // Plugged back in: the next call reaches the board, no restart needed.
    board.plugged.store(true, Ordering::SeqCst);
    driven.power.off().await.unwrap();
    assert_eq!(last(&timeline, "power.off").fields["ok"], true);
    assert_eq!(board.state.load(Ordering::SeqCst) & 0b10, 0, "relay 2 open");
}

#[tokio::test]
async fn a_relay_board_vanishing_mid_command_is_a_no_device_failure() {
    let board = Board::new();
    let (timeline, driven) = bench(&board);
    // Found and opened (one GET_REPORT), then gone before SET_REPORT.
    board.transfers_left.store(1, Ordering::SeqCst);
    let error = driven.button.press().await.unwrap_err();
    let text = error.to_string();
    // Which board, which relay, and libusb's reason.
    assert!(
        text.contains(SERIAL) && text.contains("relay 1") && text.contains("No such device"),
        "{text}"
    );
    let event = last(&timeline, "button.press");
    assert_eq!(event.fields["ok"], false);
    assert!(event.field_str("error").unwrap().contains("No such device"));

    // Gone between the two halves of a power cycle: the off went through,
    // the on did not, and the event says so rather than claiming a cycle.
    board.plugged.store(true, Ordering::SeqCst);
    board.state.store(0b10, Ordering::SeqCst);
    board.transfers_left.store(3, Ordering::SeqCst); // open, switch off, read back
    let error = driven
        .power
        .cycle(Duration::from_millis(1))
        .await
        .unwrap_err();
    let text = error.to_string();
    // It dropped off while being looked for: not found, and why.
    assert!(
        text.contains("no such board") && text.contains(SERIAL) && text.contains("No such device"),
        "{text}"
    );
    assert_eq!(board.state.load(Ordering::SeqCst) & 0b10, 0, "left off");
    let event = last(&timeline, "power.cycle");
    assert_eq!(event.fields["ok"], false);
    assert_eq!(event.field_str("error"), Some(text.as_str()));
}
