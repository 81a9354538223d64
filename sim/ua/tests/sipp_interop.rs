//! Interop with SIPp (Debian package `sip-tester`) as the far end: its built-in
//! `uas` answers a call the phone places, its built-in `uac` calls the phone.
//! Without `sipp` the tests print SKIPPED, unless `CI` is set.

mod support;

use std::process::Stdio;
use std::time::Duration;

use phonerig_sim_ua::{Key, PhoneState, UaEvent};
use support::*;
use tokio::process::Command;

fn sipp_available() -> bool {
    let found = std::process::Command::new("sipp")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("sipp (Debian package sip-tester) is required in CI");
        }
        println!("SKIPPED: sipp not installed (apt-get install sip-tester)");
    }
    found
}

/// A free UDP port on `ip` for SIPp to bind (the address is unique to the test).
fn free_port(ip: &str) -> u16 {
    std::net::UdpSocket::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn run_sipp(args: Vec<String>) -> (bool, String) {
    let child = Command::new("sipp")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sipp");
    let out = tokio::time::timeout(Duration::from_secs(40), child.wait_with_output())
        .await
        .expect("sipp finished")
        .expect("sipp output");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn common_args(ip: &str, port: u16) -> Vec<String> {
    [
        "-i",
        ip,
        "-mi",
        ip,
        "-p",
        &port.to_string(),
        "-m",
        "1",
        "-timeout",
        "30s",
        "-timeout_error",
        "-nostdin",
        "-max_recv_loops",
        "1000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[tokio::test]
async fn phone_calls_sipp_uas_and_hangs_up() {
    if !sipp_available() {
        return;
    }
    let sipp_ip = "127.74.1.1";
    let port = free_port(sipp_ip);
    let mut args = vec!["-sn".to_string(), "uas".to_string()];
    args.extend(common_args(sipp_ip, port));
    let sipp = tokio::spawn(run_sipp(args));
    // Give SIPp a moment to bind; the INVITE is retransmitted anyway if it is early.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut b = Bench::start("127.74.1", |c| {
        c.registrar = format!("{sipp_ip}:{port}").parse().unwrap()
    })
    .await;
    b.phone.key(Key::Dial("service".into())).await.unwrap();
    next_event(&mut b.events, "established with SIPp", |e| {
        matches!(e, UaEvent::CallEstablished { .. })
    })
    .await;
    assert_eq!(b.phone.state().state, PhoneState::InCall);
    tokio::time::sleep(Duration::from_millis(200)).await;
    b.phone.key(Key::Hangup).await.unwrap();
    let (ok, output) = sipp.await.unwrap();
    assert!(
        ok,
        "SIPp uas scenario failed:\n{output}\nphone console:\n{}",
        b.console.dump()
    );
    b.phone.shutdown(false).await;
}

#[tokio::test]
async fn sipp_uac_calls_auto_answering_phone() {
    if !sipp_available() {
        return;
    }
    let sipp_ip = "127.74.2.1";
    let port = free_port(sipp_ip);
    let mut b = Bench::start("127.74.2", |c| c.auto_answer = Some(Duration::ZERO)).await;
    let mut args = vec![
        "-sn".to_string(),
        "uac".to_string(),
        b.phone_addr.to_string(),
        "-s".to_string(),
        "4002".to_string(),
        "-d".to_string(),
        "300".to_string(),
    ];
    args.extend(common_args(sipp_ip, port));
    let (ok, output) = run_sipp(args).await;
    assert!(
        ok,
        "SIPp uac scenario failed:\n{output}\nphone console:\n{}",
        b.console.dump()
    );
    next_event(&mut b.events, "call from SIPp ended", |e| {
        matches!(e, UaEvent::CallEnded { .. })
    })
    .await;
    assert!(
        b.console.contains("auto answer: answering"),
        "{}",
        b.console.dump()
    );
    assert_eq!(b.phone.state().state, PhoneState::Idle);
    b.phone.shutdown(false).await;
}
