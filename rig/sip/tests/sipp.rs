//! Interop with SIPp (Debian `sip-tester`), loopback only, each test on its
//! own 127.79.N.x addresses: SIPp plays the phone (4002) against the rig's
//! registrar, NOTIFY client and the extensions it plays (4004, 4006).

mod support;

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use phonerig_core::netns::{program, require};
use phonerig_sip::{AnswerPolicy, CallOptions, NotifyOutcome, Settings, Timers};
use support::{is, phone, rig, Rig};
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(15);

fn scenario(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sipp")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn sipp_available() -> bool {
    require(program("sipp")).is_ok()
}

/// Runs SIPp to completion (it stops after `-m` calls or 30 s).
fn sipp(args: &[&str]) -> tokio::task::JoinHandle<Output> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::spawn(async move {
        let workdir = tempfile::tempdir().unwrap();
        Command::new("sipp")
            .args(&args)
            .args([
                "-nostdin",
                "-timeout",
                "30s",
                "-timeout_error",
                "-nd",
                "-max_recv_loops",
                "100",
            ])
            .current_dir(workdir.path())
            .kill_on_drop(true)
            .output()
            .await
            .expect("sipp runs")
    })
}

fn assert_sipp_ok(output: &Output, rig: &Rig) {
    if !output.status.success() {
        let seen: Vec<String> = rig.timeline.snapshot().iter().map(|e| e.brief()).collect();
        panic!(
            "sipp failed ({}):\nstdout: {}\nstderr: {}\ntimeline:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n"),
            String::from_utf8_lossy(&output.stderr),
            seen.join("\n")
        );
    }
}

#[tokio::test]
async fn sipp_phone_registers_with_md5_digest_and_unregisters() {
    if !sipp_available() {
        return;
    }
    let rig = rig(
        "127.79.1.1",
        vec![phone("uc924", "4002", "001a4d5c258d")],
        Settings::default(),
        Timers::default(),
    )
    .await;
    let output = sipp(&[
        "127.79.1.1:5060",
        "-sf",
        &scenario("uac_register_auth.xml"),
        "-i",
        "127.79.1.2",
        "-p",
        "5062",
        "-s",
        "4002",
        "-au",
        "4002",
        "-ap",
        "secret",
        "-m",
        "1",
    ])
    .await
    .unwrap();
    assert_sipp_ok(&output, &rig);
    let results: Vec<String> = rig
        .events("sip.register")
        .iter()
        .map(|e| e.field_str("result").unwrap().to_owned())
        .collect();
    assert_eq!(results, ["challenged", "ok", "unregistered"]);
    let ok = rig
        .events("sip.register")
        .into_iter()
        .find(|e| is(e, "sip.register", "result", "ok"))
        .unwrap();
    assert_eq!(ok.phone.as_deref(), Some("uc924"));
    assert_eq!(ok.field_str("ua_vendor"), Some("Htek"));
    assert_eq!(ok.field_str("ua_model"), Some("UC924"));
    assert_eq!(ok.field_str("ua_version"), Some("2.0.4.4.36"));
    assert_eq!(ok.field_u64("expires"), Some(120));
    assert_eq!(ok.field_str("aor"), Some("sip:4002@127.79.1.1"));
    assert!(
        rig.handle.registration("4002").is_none(),
        "Expires: 0 removed the binding"
    );
    rig.stop().await;
}

#[tokio::test]
async fn sipp_phone_registers_over_tcp() {
    if !sipp_available() {
        return;
    }
    let rig = rig(
        "127.79.7.1",
        vec![phone("uc924", "4002", "001a4d5c258d")],
        Settings::default(),
        Timers::default(),
    )
    .await;
    let output = sipp(&[
        "127.79.7.1:5060",
        "-t",
        "t1",
        "-sf",
        &scenario("uac_register_auth.xml"),
        "-i",
        "127.79.7.2",
        "-p",
        "5062",
        "-s",
        "4002",
        "-au",
        "4002",
        "-ap",
        "secret",
        "-m",
        "1",
    ])
    .await
    .unwrap();
    assert_sipp_ok(&output, &rig);
    let results: Vec<(String, String)> = rig
        .events("sip.register")
        .iter()
        .map(|e| {
            (
                e.field_str("result").unwrap().to_owned(),
                e.field_str("transport").unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        results,
        [
            ("challenged".into(), "tcp".into()),
            ("ok".into(), "tcp".into()),
            ("unregistered".into(), "tcp".into())
        ]
    );
    rig.stop().await;
}

#[tokio::test]
async fn sipp_phone_gets_notify_check_sync_and_reboot_and_challenges_them() {
    if !sipp_available() {
        return;
    }
    let uc924 = phone("uc924", "4002", "001a4d5c258d");
    let rig = rig(
        "127.79.2.1",
        vec![uc924.clone()],
        Settings::default(),
        Timers::default(),
    )
    .await;
    let phone_side = sipp(&[
        "-sf",
        &scenario("uas_notify.xml"),
        "-i",
        "127.79.2.2",
        "-p",
        "5062",
        "-m",
        "2",
    ]);
    let target = Some("127.79.2.2:5062".parse().unwrap());
    // SIPp may still be starting: the first NOTIFY is then retransmitted (timer E).
    assert_eq!(
        rig.handle
            .notify(&uc924, "check-sync", target)
            .await
            .unwrap(),
        NotifyOutcome::Answered { code: 200 }
    );
    assert_eq!(
        rig.handle
            .notify(&uc924, "check-sync;reboot=true", target)
            .await
            .unwrap(),
        NotifyOutcome::Answered { code: 200 }
    );
    assert_sipp_ok(&phone_side.await.unwrap(), &rig);
    let notifies: Vec<_> = rig
        .events("sip.message")
        .into_iter()
        .filter(|e| {
            e.field_str("direction") == Some("out") && e.field_str("method") == Some("NOTIFY")
        })
        .collect();
    assert!(notifies.iter().any(|e| e
        .field_str("raw")
        .unwrap()
        .contains("Event: check-sync;reboot=true\r\n")));
    assert!(notifies.iter().any(|e| e
        .field_str("raw")
        .unwrap()
        .contains("Authorization: Digest username=\"4002\"")));
    let outcomes: Vec<_> = rig
        .events("sip.notify")
        .iter()
        .map(|e| {
            (
                e.field_str("event").unwrap().to_owned(),
                e.field_u64("code"),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("check-sync".to_owned(), Some(200)),
            ("check-sync;reboot=true".to_owned(), Some(200))
        ]
    );
    rig.stop().await;
}

#[tokio::test]
async fn rig_calls_sipp_phone_with_auto_answer_then_holds_resumes_and_hangs_up() {
    if !sipp_available() {
        return;
    }
    let uc924 = phone("uc924", "4002", "001a4d5c258d");
    let rig = rig(
        "127.79.3.1",
        vec![uc924.clone()],
        Settings::default(),
        Timers::default(),
    )
    .await;
    let phone_side = sipp(&[
        "-sf",
        &scenario("uas_call_hold.xml"),
        "-i",
        "127.79.3.2",
        "-p",
        "5062",
        "-m",
        "1",
        "-mi",
        "127.79.3.2",
        "-mp",
        "6000",
        "-rtp_echo",
    ]);
    let opts = CallOptions {
        dialog: Some("silent".into()),
        auto_answer: true,
        target: Some("127.79.3.2:5062".parse().unwrap()),
        transport: None,
    };
    let call_id = rig.handle.call("4004", &uc924, opts).await.unwrap();

    let answered = rig
        .wait_for("answered", WAIT, |e| {
            is(e, "call.state", "state", "answered")
        })
        .await;
    assert_eq!(answered.field_str("call_id"), Some(call_id.0.as_str()));
    assert_eq!(answered.field_str("role"), Some("4004"));
    assert_eq!(answered.field_str("remote"), Some("4002"));
    assert_eq!(answered.field_str("direction"), Some("outbound"));
    assert_eq!(answered.field_str("dialog"), Some("silent"));
    assert_eq!(answered.field_str("remote_sdp_direction"), Some("sendrecv"));
    // 4004 talks to 4002, and what 4002 sends (SIPp's echo) reaches 4004.
    let heard = rig
        .wait_for("rtp from 4002", WAIT, |e| {
            is(e, "rtp.stats", "observed", "received") && e.field_str("from") == Some("4002")
        })
        .await;
    assert_eq!(heard.field_str("to"), Some("4004"));
    assert_eq!(heard.field_str("dialog"), Some("silent"));
    assert!(heard.field_u64("packets").unwrap() > 10);
    rig.wait_for("rtp to 4002", WAIT, |e| {
        is(e, "rtp.started", "observed", "sent") && e.field_str("to") == Some("4002")
    })
    .await;

    rig.handle.hold("4004").await.unwrap();
    let held = rig
        .wait_for("held", WAIT, |e| is(e, "call.state", "state", "held"))
        .await;
    assert_eq!(held.field_str("local_sdp_direction"), Some("sendonly"));
    assert_eq!(held.field_str("remote_sdp_direction"), Some("recvonly"));
    rig.handle.resume("4004").await.unwrap();
    let resumed = rig
        .wait_for("resumed", WAIT, |e| is(e, "call.state", "state", "resumed"))
        .await;
    assert_eq!(resumed.field_str("local_sdp_direction"), Some("sendrecv"));
    rig.handle.hangup("4004").await.unwrap();
    let ended = rig
        .wait_for("ended", WAIT, |e| is(e, "call.state", "state", "ended"))
        .await;
    assert_eq!(ended.field_u64("code"), Some(200));
    assert_sipp_ok(&phone_side.await.unwrap(), &rig);

    let invite = rig
        .events("sip.message")
        .into_iter()
        .find(|e| {
            e.field_str("method") == Some("INVITE") && e.field_str("direction") == Some("out")
        })
        .unwrap();
    let raw = invite.field_str("raw").unwrap();
    assert!(
        raw.contains("Alert-Info: <http://127.79.3.1>;info=alert-autoanswer\r\n"),
        "{raw}"
    );
    assert!(raw.contains("Call-Info: <sip:127.79.3.1>;answer-after=0\r\n"));
    assert!(raw.contains("m=audio 42000 RTP/AVP 0 8 9\r\n") || raw.contains("RTP/AVP 0 8 9\r\n"));
    assert_eq!(invite.field_str("role"), Some("4004"));
    assert_eq!(invite.field_str("dialog"), Some("silent"));
    rig.wait_for("rtp stopped", WAIT, |e| {
        e.kind == "rtp.stopped" && e.field_str("observed") == Some("sent")
    })
    .await;
    rig.stop().await;
}

#[tokio::test]
async fn rig_cancels_a_ringing_call() {
    if !sipp_available() {
        return;
    }
    let uc924 = phone("uc924", "4002", "001a4d5c258d");
    let rig = rig(
        "127.79.5.1",
        vec![uc924.clone()],
        Settings::default(),
        Timers::default(),
    )
    .await;
    let phone_side = sipp(&[
        "-sf",
        &scenario("uas_ring_cancel.xml"),
        "-i",
        "127.79.5.2",
        "-p",
        "5062",
        "-m",
        "1",
    ]);
    let opts = CallOptions {
        target: Some("127.79.5.2:5062".parse().unwrap()),
        ..CallOptions::default()
    };
    rig.handle.call("4006", &uc924, opts).await.unwrap();
    rig.wait_for("ringing", WAIT, |e| is(e, "call.state", "state", "ringing"))
        .await;
    rig.handle.cancel("4006").await.unwrap();
    let cancelled = rig
        .wait_for("cancelled", WAIT, |e| {
            is(e, "call.state", "state", "cancelled")
        })
        .await;
    assert_eq!(cancelled.field_u64("code"), Some(487));
    assert_eq!(cancelled.field_str("role"), Some("4006"));
    assert_sipp_ok(&phone_side.await.unwrap(), &rig);
    rig.stop().await;
}

#[tokio::test]
async fn sipp_phone_calls_an_extension_the_rig_plays_and_is_answered() {
    if !sipp_available() {
        return;
    }
    let rig = rig(
        "127.79.4.1",
        vec![phone("uc924", "4002", "001a4d5c258d")],
        Settings::default(),
        Timers::default(),
    )
    .await;
    // The phone's panic button places a silent call to 4004: the scenario labels it.
    rig.handle.set_inbound_dialog("4004", Some("silent"));
    let output = sipp(&[
        "127.79.4.1:5060",
        "-sf",
        &scenario("uac_call_extension.xml"),
        "-i",
        "127.79.4.2",
        "-p",
        "5062",
        "-s",
        "4004",
        "-m",
        "1",
        "-mi",
        "127.79.4.2",
        "-mp",
        "6000",
        "-rtp_echo",
    ])
    .await
    .unwrap();
    assert_sipp_ok(&output, &rig);
    let states: Vec<String> = rig
        .events("call.state")
        .iter()
        .map(|e| e.field_str("state").unwrap().to_owned())
        .collect();
    assert_eq!(states, ["ringing", "answered", "ended"]);
    let answered = rig
        .events("call.state")
        .into_iter()
        .find(|e| is(e, "call.state", "state", "answered"))
        .unwrap();
    assert_eq!(answered.field_str("role"), Some("4004"));
    assert_eq!(answered.field_str("remote"), Some("4002"));
    assert_eq!(answered.field_str("direction"), Some("inbound"));
    assert_eq!(answered.field_str("local_sdp_direction"), Some("sendrecv"));
    assert_eq!(answered.field_str("dialog"), Some("silent"));
    assert_eq!(answered.phone.as_deref(), Some("uc924"));
    let heard = rig
        .events("rtp.started")
        .into_iter()
        .find(|e| is(e, "rtp.started", "observed", "received"))
        .expect("4004 heard 4002");
    assert_eq!(
        (heard.field_str("from"), heard.field_str("to")),
        (Some("4002"), Some("4004"))
    );
    rig.stop().await;
}

#[tokio::test]
async fn ring_until_told_then_answer_and_reject_policies() {
    if !sipp_available() {
        return;
    }
    let settings = Settings {
        answer: [("4006".to_owned(), AnswerPolicy::Ring)]
            .into_iter()
            .collect(),
        ..Settings::default()
    };
    let rig = rig(
        "127.79.6.1",
        vec![phone("uc924", "4002", "001a4d5c258d")],
        settings,
        Timers::default(),
    )
    .await;
    let caller = sipp(&[
        "127.79.6.1:5060",
        "-sf",
        &scenario("uac_call_extension.xml"),
        "-i",
        "127.79.6.2",
        "-p",
        "5062",
        "-s",
        "4006",
        "-m",
        "1",
        "-mi",
        "127.79.6.2",
        "-mp",
        "6000",
        "-rtp_echo",
    ]);
    rig.wait_for("ringing", WAIT, |e| is(e, "call.state", "state", "ringing"))
        .await;
    assert!(
        rig.handle.answer("4004").await.is_err(),
        "nothing rings at 4004"
    );
    rig.handle.answer("4006").await.unwrap();
    assert_sipp_ok(&caller.await.unwrap(), &rig);

    rig.handle
        .set_answer_policy("4004", AnswerPolicy::Reject(486));
    let output = sipp(&[
        "127.79.6.1:5060",
        "-sf",
        &scenario("uac_call_rejected.xml"),
        "-i",
        "127.79.6.3",
        "-p",
        "5062",
        "-s",
        "4004",
        "-m",
        "1",
    ])
    .await
    .unwrap();
    assert_sipp_ok(&output, &rig);
    let rejected = rig
        .wait_for("rejected", WAIT, |e| {
            is(e, "call.state", "state", "rejected")
        })
        .await;
    assert_eq!(rejected.field_u64("code"), Some(486));
    assert_eq!(rejected.field_str("role"), Some("4004"));
    rig.stop().await;
}
