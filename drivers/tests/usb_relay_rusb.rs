//! The `usb-relay` backend on the real libusb stack. No relay board is on
//! this machine's bus (often no USB bus at all: then libusb cannot even
//! start), so the backend must say cleanly that the board is not there. The exact control transfers are
//! checked against a recorder in the unit tests of `backends::usb_relay`.

mod common;

use common::spec;
use phonerig_drivers::backends::usb_relay::{list_boards, RusbTransport};
use phonerig_drivers::doctor::check_relay_boards;
use phonerig_drivers::{button, power, DriverEnv, DriverError};

fn env() -> DriverEnv {
    DriverEnv {
        sim_dir: "/nonexistent".into(),
        run_dir: None,
        phone: "p".into(),
    }
}

/// A serial no real board carries (real ones are 5 characters; this is made up).
const ABSENT: &str = "ZQ9X7";

#[tokio::test]
async fn rusb_backend_reports_no_such_board() {
    // Either the bus is there and holds no such board, or there is no bus.
    if let Ok(present) = list_boards(&RusbTransport) {
        assert!(!present.iter().any(|s| s == ABSENT));
    }
    let b = button(
        &spec(serde_json::json!({"backend": "usb-relay", "serial": ABSENT, "relay": 1})),
        &env(),
    )
    .unwrap();
    let error = b.press().await.unwrap_err();
    assert!(matches!(error, DriverError::Unavailable(_)), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains("no such board") && text.contains(ABSENT) && text.contains("16c0:05df"),
        "{text}"
    );
    let p = power(
        &spec(serde_json::json!({"backend": "usb-relay", "serial": ABSENT, "relay": 2})),
        &env(),
    )
    .unwrap();
    assert!(p
        .cycle(std::time::Duration::from_millis(1))
        .await
        .unwrap_err()
        .to_string()
        .contains("no such board"));
}

#[test]
fn doctor_says_how_to_get_a_missing_board() {
    let findings = check_relay_boards(&[ABSENT.to_owned()], &RusbTransport);
    assert_eq!(findings.len(), 1);
    let finding = &findings[0];
    assert_eq!(finding.check, format!("usb_relay.{ABSENT}"));
    assert!(!finding.ok);
    if list_boards(&RusbTransport).is_ok() {
        assert!(
            finding.detail.contains("boards found:"),
            "{}",
            finding.detail
        );
        assert!(
            finding.fix.contains("lsusb") && finding.fix.contains("serial"),
            "{}",
            finding.fix
        );
    } else {
        assert!(
            finding.detail.contains("USB is not usable here"),
            "{}",
            finding.detail
        );
        assert!(finding.fix.contains("/dev/bus/usb"), "{}", finding.fix);
    }
}
