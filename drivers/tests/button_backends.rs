//! Button backends against stand-ins for their hardware: a fake MCU on the
//! far end of a pseudo-terminal, a FIFO or file in place of /dev/hidgN, and
//! shell scripts for the `command` backend.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{spec, wait_for};
use phonerig_core::Timeline;
use phonerig_drivers::{button, power, Driven, DriverEnv, DriverError};
use serialport::{SerialPort, TTYPort};

fn env() -> DriverEnv {
    DriverEnv {
        sim_dir: "/nonexistent".into(),
        run_dir: None,
        phone: "kx-ut670".into(),
    }
}

/// Plays the button MCU: answers the line protocol the way the firmware in
/// docs/bench-wiring.md does, including `#` log lines before answers.
fn fake_mcu(mut master: TTYPort) -> Arc<Mutex<Vec<String>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    // Block on reads; the thread ends when the rig's side closes (EIO).
    master.set_timeout(Duration::from_secs(3600)).unwrap();
    std::thread::spawn(move || {
        let mut writer = master.try_clone_native().unwrap();
        let mut reader = BufReader::new(master);
        writer.write_all(b"# button-mcu 1.0 ready\n").unwrap();
        let mut pressed = false;
        let mut line = String::new();
        loop {
            line.clear();
            if !matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                return;
            }
            let command = line.trim().to_owned();
            seen.lock().unwrap().push(command.clone());
            let answer = match command.split_once(' ').unwrap_or((&command, "")) {
                ("PRESS", "") => {
                    pressed = true;
                    "# key down\nOK".to_owned()
                }
                ("RELEASE", "") if !pressed => "ERR not pressed".to_owned(),
                ("RELEASE", "") => {
                    pressed = false;
                    "OK".to_owned()
                }
                ("HOLD", ms) => match ms.parse::<u64>() {
                    Ok(ms) => {
                        std::thread::sleep(Duration::from_millis(ms));
                        "OK".to_owned()
                    }
                    Err(_) => format!("ERR bad duration {ms}"),
                },
                _ => format!("ERR unknown command {command}"),
            };
            if writer
                .write_all(format!("{answer}\r\n").as_bytes())
                .is_err()
            {
                return;
            }
        }
    });
    log
}

#[tokio::test]
async fn serial_mcu_protocol_end_to_end() {
    let (master, slave) = TTYPort::pair().unwrap();
    let path = slave.name().unwrap();
    let commands = fake_mcu(master);
    let timeline = Timeline::in_memory();
    let backend = button(
        &spec(serde_json::json!({"backend": "serial", "device": path, "baud": 9600})),
        &env(),
    )
    .unwrap();
    let driven = Driven::new(
        timeline.clone(),
        "kx-ut670",
        Some(backend),
        None,
        None,
        None,
    );

    let error = driven.button.release().await.unwrap_err();
    assert!(matches!(error, DriverError::Refused(_)), "{error:?}");
    assert!(
        error.to_string().contains("refused `RELEASE`: not pressed"),
        "{error}"
    );
    driven.button.press().await.unwrap();
    driven.button.release().await.unwrap();
    let started = Instant::now();
    driven
        .button
        .hold(Duration::from_millis(250))
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "the answer comes after the MCU's hold"
    );

    assert_eq!(
        *commands.lock().unwrap(),
        ["RELEASE", "PRESS", "RELEASE", "HOLD 250"]
    );
    let events = timeline.snapshot();
    let summary: Vec<(String, bool)> = events
        .iter()
        .map(|e| {
            (
                e.kind.clone(),
                e.field("ok") == Some(&serde_json::json!(true)),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("button.release".into(), false),
            ("button.press".into(), true),
            ("button.release".into(), true),
            ("button.hold".into(), true)
        ]
    );
    assert_eq!(events[3].field_u64("duration_ms"), Some(250));
    assert!(events
        .iter()
        .all(|e| e.field_str("backend") == Some("serial")));
    drop(slave);
}

#[tokio::test]
async fn serial_mcu_that_never_answers_times_out() {
    let (_master, slave) = TTYPort::pair().unwrap();
    let path = slave.name().unwrap();
    let backend = button(
        &spec(serde_json::json!({"backend": "serial", "device": path, "answer_timeout": "200ms"})),
        &env(),
    )
    .unwrap();
    let error = backend.press().await.unwrap_err();
    assert!(
        matches!(error, DriverError::TimedOut { after_ms: 200, .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn hid_gadget_writes_configured_reports_to_a_fifo() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("hidg0");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    // O_RDWR: opening a FIFO so never blocks, and it counts as the reader (the phone).
    let mut phone = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(0)
        .open(&fifo)
        .unwrap();
    // A boot keyboard report: modifier, reserved, key 0x28 (Enter).
    let press = [0u8, 0, 0x28, 0, 0, 0, 0, 0];
    let backend = button(
        &spec(serde_json::json!({"backend": "hid-gadget", "device": fifo, "press_report": press, "release_report": [0, 0, 0, 0, 0, 0, 0, 0]})),
        &env(),
    )
    .unwrap();
    backend.hold(Duration::from_millis(20)).await.unwrap();
    let mut got = [0u8; 16];
    phone.read_exact(&mut got).unwrap();
    assert_eq!(&got[..8], &press);
    assert_eq!(&got[8..], &[0u8; 8]);
}

#[tokio::test]
async fn hid_gadget_default_reports_are_one_byte() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hidg1");
    std::fs::write(&file, b"").unwrap();
    let backend = button(
        &spec(serde_json::json!({"backend": "hid-gadget", "device": file})),
        &env(),
    )
    .unwrap();
    backend.press().await.unwrap();
    backend.release().await.unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), [1, 0]);
}

#[tokio::test]
async fn hid_gadget_missing_device_and_bad_reports_are_explained() {
    let error = button(
        &spec(serde_json::json!({"backend": "hid-gadget", "device": "/nonexistent/hidg0"})),
        &env(),
    )
    .unwrap()
    .press()
    .await
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("/nonexistent/hidg0") && error.contains("bound to a UDC"),
        "{error}"
    );
    let error = button(&spec(serde_json::json!({"backend": "hid-gadget", "device": "/dev/hidg0", "press_report": [1, 2]})), &env())
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("field `release_report`: is 1 bytes but press_report is 2"),
        "{error}"
    );
    let error = button(&spec(serde_json::json!({"backend": "hid-gadget", "device": "/dev/hidg0", "press_report": [256]})), &env())
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("invalid value: integer `256`"), "{error}");
}

fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn command_backend_runs_the_program_per_action() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("actions.log");
    let relay = script(
        dir.path(),
        "relay.sh",
        &format!("echo \"$1 $2\" >> {}", log.display()),
    );
    let timeline = Timeline::in_memory();
    let b = button(
        &spec(serde_json::json!({"backend": "command", "argv": [relay, "{action}", "{ms}"]})),
        &env(),
    )
    .unwrap();
    let p = power(
        &spec(serde_json::json!({"backend": "command", "argv": [relay, "power-{action}", "{ms}"]})),
        &env(),
    )
    .unwrap();
    let driven = Driven::new(timeline.clone(), "kx-ut670", Some(b), Some(p), None, None);
    driven.button.press().await.unwrap();
    driven.button.release().await.unwrap();
    driven
        .button
        .hold(Duration::from_millis(1500))
        .await
        .unwrap();
    driven
        .power
        .cycle(Duration::from_millis(3000))
        .await
        .unwrap();
    driven.power.on().await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "press 0\nrelease 0\nhold 1500\npower-cycle 3000\npower-on 0\n"
    );
    let cycle = wait_for(&timeline, Duration::from_secs(1), |e| {
        e.kind == "power.cycle"
    })
    .await;
    assert_eq!(
        (cycle.field_str("backend"), cycle.field_u64("duration_ms")),
        (Some("command"), Some(3000))
    );
}

#[tokio::test]
async fn command_failure_carries_stderr_and_a_hung_command_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let failing = script(
        dir.path(),
        "fail.sh",
        "echo 'relay board unplugged' >&2; exit 3",
    );
    let error = button(
        &spec(serde_json::json!({"backend": "command", "argv": [failing, "{action}"]})),
        &env(),
    )
    .unwrap()
    .press()
    .await
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("exit status: 3") && error.contains("relay board unplugged"),
        "{error}"
    );

    let marker = dir.path().join("finished");
    let hung = script(
        dir.path(),
        "hang.sh",
        &format!("sleep 3; touch {}", marker.display()),
    );
    let started = Instant::now();
    let error = power(
        &spec(serde_json::json!({"backend": "command", "argv": [hung], "timeout": "200ms"})),
        &env(),
    )
    .unwrap()
    .off()
    .await
    .unwrap_err();
    assert!(matches!(error, DriverError::TimedOut { .. }), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(
        !marker.exists(),
        "the timed-out command was killed, not left running"
    );

    let error = button(
        &spec(serde_json::json!({"backend": "command", "argv": ["/nonexistent/relay"]})),
        &env(),
    )
    .unwrap()
    .press()
    .await
    .unwrap_err()
    .to_string();
    assert!(error.contains("cannot run `/nonexistent/relay`"), "{error}");
}
