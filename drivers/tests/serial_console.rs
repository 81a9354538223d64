//! The serial console over real pseudo-terminals (serialport's TTYPort::pair):
//! the master end plays the phone's UART, the console opens the slave.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use common::{kinds, lines, spec, wait_for};
use phonerig_core::Timeline;
use phonerig_drivers::{console, Driven, DriverEnv};
use serialport::{SerialPort, TTYPort};

fn pty() -> (TTYPort, TTYPort, String) {
    let (master, slave) = TTYPort::pair().expect("pseudo-terminal pair");
    let path = slave.name().expect("slave has a name");
    (master, slave, path)
}

fn env(run_dir: &Path) -> DriverEnv {
    DriverEnv {
        sim_dir: run_dir.join("sims"),
        run_dir: Some(run_dir.to_owned()),
        phone: "uc924-1".into(),
    }
}

#[tokio::test]
async fn lines_arrive_in_order_with_timestamps_and_raw_bytes_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (mut master, _slave, path) = pty();
    let timeline = Timeline::in_memory();
    let console = console(
        &spec(serde_json::json!({"backend": "serial", "device": path, "baud": 115200})),
        &env(dir.path()),
    )
    .unwrap();
    let driven = Driven::new(timeline.clone(), "uc924-1", None, None, None, Some(console));
    driven.console.start().await.unwrap();
    let opened = wait_for(&timeline, Duration::from_secs(5), |e| {
        e.kind == "console.opened"
    })
    .await;
    assert_eq!(opened.field_str("device"), Some(path.as_str()));
    assert_eq!(opened.field_u64("baud"), Some(115200));

    let sent: Vec<String> = (0..50).map(|i| format!("boot step {i}")).collect();
    for (i, line) in sent.iter().enumerate() {
        // CRLF and LF both end a line; chunking must not matter.
        let ending = if i % 2 == 0 { "\r\n" } else { "\n" };
        master
            .write_all(format!("{line}{ending}").as_bytes())
            .unwrap();
    }
    wait_for(&timeline, Duration::from_secs(10), |e| {
        e.field_str("line") == Some("boot step 49")
    })
    .await;
    assert_eq!(lines(&timeline), sent);
    let events: Vec<_> = timeline
        .snapshot()
        .into_iter()
        .filter(|e| e.kind == "console.line")
        .collect();
    assert!(events
        .windows(2)
        .all(|w| w[0].t_us <= w[1].t_us && w[0].seq < w[1].seq));
    assert!(events
        .iter()
        .all(|e| e.phone.as_deref() == Some("uc924-1")
            && e.field_str("device") == Some(path.as_str())));
    assert!(events.iter().all(|e| e.field("partial").is_none()));

    // Text out reaches the phone's side exactly, and is on the timeline.
    driven.console.send_line("reboot").await.unwrap();
    let mut got = Vec::new();
    let mut buffer = [0u8; 64];
    while !got.ends_with(b"\r\n") {
        let n = master.read(&mut buffer).unwrap();
        got.extend_from_slice(&buffer[..n]);
    }
    assert_eq!(got, b"reboot\r\n");
    let sent_event = wait_for(&timeline, Duration::from_secs(1), |e| {
        e.kind == "console.sent"
    })
    .await;
    assert_eq!(sent_event.field_str("text"), Some("reboot\r\n"));
    assert_eq!(sent_event.field("ok"), Some(&serde_json::json!(true)));

    driven.console.stop().await;
    let raw = std::fs::read_to_string(dir.path().join("console-uc924-1.log")).unwrap();
    assert!(
        raw.starts_with("boot step 0\r\nboot step 1\nboot step 2\r\n"),
        "{raw:?}"
    );
    assert!(raw.ends_with("boot step 49\n"));
}

#[tokio::test]
async fn a_partial_line_is_held_until_newline_or_a_quiet_period() {
    let dir = tempfile::tempdir().unwrap();
    let (mut master, _slave, path) = pty();
    let timeline = Timeline::in_memory();
    let console = console(
        &spec(serde_json::json!({"backend": "serial", "device": path, "flush_after": "1s"})),
        &env(dir.path()),
    )
    .unwrap();
    let driven = Driven::new(timeline.clone(), "uc924-1", None, None, None, Some(console));
    driven.console.start().await.unwrap();

    // Pieces of one line, each well inside the quiet period (1s): one line.
    for piece in ["Kernel ", "command ", "line: console=ttyS0\n"] {
        master.write_all(piece.as_bytes()).unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    wait_for(&timeline, Duration::from_secs(5), |e| {
        e.kind == "console.line"
    })
    .await;
    // A prompt without newline comes out after the quiet period, marked partial.
    master.write_all(b"login: ").unwrap();
    let prompt = wait_for(&timeline, Duration::from_secs(5), |e| {
        e.field_str("line") == Some("login: ")
    })
    .await;
    assert_eq!(prompt.field("partial"), Some(&serde_json::json!(true)));
    assert_eq!(
        lines(&timeline),
        ["Kernel command line: console=ttyS0", "login: "]
    );
    driven.console.stop().await;
}

#[tokio::test]
async fn reconnects_when_the_adapter_disappears_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    // The lab names the adapter by a stable link, as /dev/serial/by-id does.
    let link = dir.path().join("usb-FTDI_FT232R-if00");
    let (mut master, slave, first) = pty();
    assert!(first.starts_with("/dev/pts/"));
    std::os::unix::fs::symlink(&first, &link).unwrap();
    let timeline = Timeline::in_memory();
    let console = console(
        &spec(serde_json::json!({"backend": "serial", "device": link, "reconnect_every": "100ms"})),
        &env(dir.path()),
    )
    .unwrap();
    let driven = Driven::new(timeline.clone(), "uc924-1", None, None, None, Some(console));
    driven.console.start().await.unwrap();
    master.write_all(b"before unplug\n").unwrap();
    wait_for(&timeline, Duration::from_secs(5), |e| {
        e.field_str("line") == Some("before unplug")
    })
    .await;

    // Unplug: the pty goes away and the link dangles.
    master.write_all(b"cut mid-li").unwrap();
    // Unplug only once the console has read it (the raw log shows that).
    let raw_log = dir.path().join("console-uc924-1.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&raw_log)
        .unwrap_or_default()
        .ends_with("cut mid-li")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the console never read the partial line"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(master);
    drop(slave);
    std::fs::remove_file(&link).unwrap();
    let lost = wait_for(&timeline, Duration::from_secs(5), |e| {
        e.kind == "console.lost"
    })
    .await;
    assert_eq!(
        lost.field_str("device"),
        Some(link.to_str().unwrap()),
        "named as the lab file names it"
    );
    assert!(lost.field_str("error").is_some());
    assert!(
        driven.console.send("x").await.is_err(),
        "nothing to write to while unplugged"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Plug back in: a new pty behind the same link.
    let (mut master, _slave, second) = pty();
    std::os::unix::fs::symlink(&second, &link).unwrap();
    let back = wait_for(&timeline, Duration::from_secs(5), |e| {
        e.kind == "console.back"
    })
    .await;
    assert_eq!(back.field_str("device"), Some(link.to_str().unwrap()));
    master.write_all(b"after replug\n").unwrap();
    wait_for(&timeline, Duration::from_secs(5), |e| {
        e.field_str("line") == Some("after replug")
    })
    .await;
    driven.console.send("help\n").await.unwrap();

    let k = kinds(&timeline);
    let at = |kind: &str| k.iter().position(|x| x == kind).unwrap();
    assert!(
        at("console.opened") < at("console.lost") && at("console.lost") < at("console.back"),
        "{k:?}"
    );
    let all = lines(&timeline);
    let cut = all.iter().position(|l| l == "cut mid-li");
    assert!(
        cut.is_some(),
        "the held partial line is published when the device is lost: {all:?}"
    );
    assert_eq!(all.last().map(String::as_str), Some("after replug"));
    assert_eq!(
        k.iter().filter(|x| *x == "console.lost").count(),
        1,
        "one loss, not one per retry: {k:?}"
    );
    driven.console.stop().await;
}

#[tokio::test]
async fn a_missing_device_fails_start_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("ttyUSB9");
    let console = console(
        &spec(serde_json::json!({"backend": "serial", "device": missing})),
        &env(dir.path()),
    )
    .unwrap();
    let driven = Driven::new(
        Timeline::in_memory(),
        "uc924-1",
        None,
        None,
        None,
        Some(console),
    );
    let error = driven.console.start().await.unwrap_err().to_string();
    assert!(error.contains("ttyUSB9"), "{error}");
}

/// serialport's own settings on a real tty (baud etc. are applied, not ignored).
#[test]
fn line_settings_are_applied_to_the_tty() {
    let (_master, _slave, path) = pty();
    let params = phonerig_drivers::backends::serial_console::SerialParams::parse(
        phonerig_drivers::Capability::Console,
        "serial",
        serde_json::json!({"device": path, "baud": 9600, "parity": "even", "data_bits": 7, "stop_bits": 2})
            .as_object()
            .unwrap(),
        &[],
    )
    .unwrap();
    let port = params.open(Path::new(&path)).unwrap();
    assert_eq!(port.baud_rate().unwrap(), 9600);
    // Data bits, parity and stop bits are not checked: Linux's pty driver
    // forces CS8 without parity, so they read back as 8N1 whatever was set.
}
