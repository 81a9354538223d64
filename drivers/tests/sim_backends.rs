//! The `sim` backends against a fake virtual-phone control socket that
//! speaks the line protocol of docs/CONTRACTS.md.

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{kinds, lines, spec, wait_for};
use phonerig_core::Timeline;
use phonerig_drivers::driven::PhoneDrivers;
use phonerig_drivers::{Capability, Driven, DriverEnv, Key};
use serialport::{SerialPort, TTYPort};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

struct FakeSim {
    commands: Arc<Mutex<Vec<String>>>,
    console_path: Arc<Mutex<String>>,
}

fn fake_sim(sim_dir: &Path, phone: &str) -> FakeSim {
    let listener = UnixListener::bind(sim_dir.join(format!("{phone}.sock"))).unwrap();
    let commands = Arc::new(Mutex::new(Vec::new()));
    let console_path = Arc::new(Mutex::new(String::new()));
    let (seen, console) = (commands.clone(), console_path.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (seen, console) = (seen.clone(), console.clone());
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(command)) = lines.next_line().await {
                    seen.lock().unwrap().push(command.clone());
                    let answer = match command.as_str() {
                        "CONSOLE?" => format!("OK {}", console.lock().unwrap()),
                        "POWER?" => "OK on".to_owned(),
                        "KEY factory-reset" => "ERR not allowed during a call".to_owned(),
                        c if c.starts_with("HOLD ") || c.starts_with("POWER CYCLE ") => {
                            let ms: u64 = c.rsplit(' ').next().unwrap().parse().unwrap();
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            "OK".to_owned()
                        }
                        _ => "OK".to_owned(),
                    };
                    if write
                        .write_all(format!("{answer}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    FakeSim {
        commands,
        console_path,
    }
}

fn drivers(backends: &[Capability]) -> PhoneDrivers {
    let sim = || Some(spec(serde_json::json!({"backend": "sim"})));
    let mut specs = PhoneDrivers::default();
    for capability in backends {
        match capability {
            Capability::Button => specs.button = sim(),
            Capability::Power => specs.power = sim(),
            Capability::Console => specs.console = sim(),
            Capability::Keys => specs.keys = sim(),
        }
    }
    specs
}

#[tokio::test]
async fn button_power_and_keys_send_the_protocol_commands() {
    let dir = tempfile::tempdir().unwrap();
    let sim = fake_sim(dir.path(), "htek-1");
    let timeline = Timeline::in_memory();
    let env = DriverEnv {
        sim_dir: dir.path().to_owned(),
        run_dir: None,
        phone: "htek-1".into(),
    };
    let driven = Driven::from_specs(
        timeline.clone(),
        &env,
        &drivers(&[Capability::Button, Capability::Power, Capability::Keys]),
    )
    .unwrap();
    driven.button.press().await.unwrap();
    driven.button.release().await.unwrap();
    driven
        .button
        .hold(Duration::from_millis(120))
        .await
        .unwrap();
    driven.power.off().await.unwrap();
    driven.power.on().await.unwrap();
    driven.power.cycle(Duration::from_millis(80)).await.unwrap();
    driven.keys.key(&Key::Answer).await.unwrap();
    driven.keys.key(&Key::Dial("4004".into())).await.unwrap();
    let error = driven
        .keys
        .key(&Key::FactoryReset)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("not allowed during a call"), "{error}");

    assert_eq!(
        *sim.commands.lock().unwrap(),
        [
            "PRESS",
            "RELEASE",
            "HOLD 120",
            "POWER OFF",
            "POWER ON",
            "POWER CYCLE 80",
            "KEY answer",
            "KEY dial 4004",
            "KEY factory-reset"
        ]
    );
    assert_eq!(
        kinds(&timeline),
        [
            "button.press",
            "button.release",
            "button.hold",
            "power.off",
            "power.on",
            "power.cycle",
            "keys.answer",
            "keys.dial",
            "keys.factory-reset"
        ]
    );
    let last = timeline.snapshot().last().cloned().unwrap();
    assert_eq!(last.field("ok"), Some(&serde_json::json!(false)));
    assert_eq!(last.field_str("backend"), Some("sim"));
}

#[tokio::test]
async fn a_virtual_phone_that_is_not_running_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let env = DriverEnv {
        sim_dir: dir.path().to_owned(),
        run_dir: None,
        phone: "ghost".into(),
    };
    let driven =
        Driven::from_specs(Timeline::in_memory(), &env, &drivers(&[Capability::Button])).unwrap();
    let error = driven.button.press().await.unwrap_err().to_string();
    assert!(
        error.contains("ghost.sock") && error.contains("is the virtual phone running?"),
        "{error}"
    );
}

#[tokio::test]
async fn sim_console_opens_the_pty_the_socket_names_and_follows_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sim = fake_sim(dir.path(), "lv-1");
    let (mut master, slave) = TTYPort::pair().unwrap();
    let first = slave.name().unwrap();
    *sim.console_path.lock().unwrap() = first.clone();
    let timeline = Timeline::in_memory();
    let env = DriverEnv {
        sim_dir: dir.path().to_owned(),
        run_dir: Some(dir.path().join("run")),
        phone: "lv-1".into(),
    };
    let specs = PhoneDrivers {
        console: Some(spec(
            serde_json::json!({"backend": "sim", "reconnect_every": "100ms", "flush_after": "200ms"}),
        )),
        ..Default::default()
    };
    let driven = Driven::from_specs(timeline.clone(), &env, &specs).unwrap();
    driven.console.start().await.unwrap();
    let opened = wait_for(&timeline, Duration::from_secs(5), |e| {
        e.kind == "console.opened"
    })
    .await;
    assert_eq!(opened.field_str("device"), Some(first.as_str()));
    master.write_all(b"SIP-H680 booting\r\nlogin: ").unwrap();
    wait_for(&timeline, Duration::from_secs(5), |e| {
        e.field_str("line") == Some("login: ")
    })
    .await;
    driven.console.send("root\n").await.unwrap();
    let mut echo = [0u8; 5];
    std::io::Read::read_exact(&mut master, &mut echo).unwrap();
    assert_eq!(&echo, b"root\n");

    // The virtual phone restarts with a new pseudo-terminal.
    drop(master);
    drop(slave);
    wait_for(&timeline, Duration::from_secs(5), |e| {
        e.kind == "console.lost"
    })
    .await;
    let (mut master, _slave) = TTYPort::pair().unwrap();
    let second = _slave.name().unwrap();
    *sim.console_path.lock().unwrap() = second.clone();
    let back = wait_for(&timeline, Duration::from_secs(5), |e| {
        e.kind == "console.back"
    })
    .await;
    assert_eq!(back.field_str("device"), Some(second.as_str()));
    master.write_all(b"rebooted\n").unwrap();
    wait_for(&timeline, Duration::from_secs(5), |e| {
        e.field_str("line") == Some("rebooted")
    })
    .await;
    driven.console.stop().await;

    assert_eq!(
        lines(&timeline),
        ["SIP-H680 booting", "login: ", "rebooted"]
    );
    let asked = sim
        .commands
        .lock()
        .unwrap()
        .iter()
        .filter(|c| *c == "CONSOLE?")
        .count();
    assert!(asked >= 2, "asked again after the loss ({asked})");
    let raw = std::fs::read(dir.path().join("run/console-lv-1.log")).unwrap();
    assert_eq!(raw, b"SIP-H680 booting\r\nlogin: rebooted\n");
}
