//! Panic button silent/monitor calls and their interruption rules (seed 000), on
//! the wire: the scripted peer plays 4004 (help / monitored) and 4006 (other).

mod support;

use std::time::Duration;

use phonerig_sim_ua::{CallKind, Key, PanicButton, PanicMode, PhoneState, UaEvent};
use support::*;

fn button(mode: PanicMode, function: u16, value: &str) -> Option<PanicButton> {
    Some(PanicButton {
        mode,
        function,
        value: value.into(),
        account: 0,
    })
}

/// Press the panic button set to silent call 4004 and let 4004 answer (recvonly).
/// Returns the silent call's INVITE as 4004 saw it.
async fn start_silent_call(b: &mut Bench, helper_rtp: &RtpPeer) -> Msg {
    b.phone
        .set_panic_button(button(PanicMode::Emergency, 57, "4004"));
    b.phone.panic_press().await.unwrap();
    let invite = b.peer.request("INVITE").await;
    assert!(
        invite.uri().starts_with("sip:4004@pbx.test"),
        "{}",
        invite.uri()
    );
    assert_eq!(
        invite.sdp_direction(),
        Some("sendonly"),
        "silent call offers sendonly"
    );
    b.answer_invite(&invite, "t4004", helper_rtp.addr, "recvonly")
        .await;
    next_event(&mut b.events, "silent call established", |e| {
        matches!(e, UaEvent::CallEstablished { .. })
    })
    .await;
    invite
}

#[tokio::test]
async fn silent_call_sends_to_helper_plays_nothing_and_keeps_lcd_idle() {
    let mut b = Bench::start("127.72.1", |_| {}).await;
    let helper = RtpPeer::bind("127.72.1.1").await;
    let invite = start_silent_call(&mut b, &helper).await;
    assert!(
        b.console
            .contains("[USB] panic button pressed: performed silent call to 4004"),
        "{}",
        b.console.dump()
    );

    // 4004 hears 4002.
    eventually("4004 receives the phone's RTP", || helper.count() >= 10).await;
    // 4002 does not hear 4004: what 4004 sends arrives but is not played.
    let phone_rtp = invite.sdp_rtp().unwrap();
    helper.send_packets(phone_rtp, 10).await;
    eventually("phone counts 4004's packets", || {
        b.phone.state().calls[0].rtp_received >= 10
    })
    .await;
    let st = b.phone.state();
    assert_eq!(
        st.state,
        PhoneState::Idle,
        "LCD stays idle during a silent call"
    );
    assert_eq!(st.calls[0].kind, CallKind::Silent);
    assert_eq!(st.calls[0].rtp_played, 0, "4002 must not hear 4004");
    assert!(st.calls[0].rtp_sent >= 10);
    b.phone.shutdown(false).await;
}

#[tokio::test]
async fn answering_4006_interrupts_silent_call_but_rejecting_does_not() {
    let mut b = Bench::start("127.72.2", |_| {}).await;
    let helper = RtpPeer::bind("127.72.2.1").await;
    let other = RtpPeer::bind("127.72.2.1").await;
    let silent = start_silent_call(&mut b, &helper).await;

    // Row "4006 calls 4002 / 4002 rejects / not interrupted".
    let ringing = b
        .call_phone("4006", "from-4006-a", other.addr, vec![])
        .await;
    assert_eq!(b.phone.state().state, PhoneState::Ringing);
    b.phone.key(Key::Reject).await.unwrap();
    let busy = b.peer.response(486, "INVITE").await;
    b.ack("from-4006-a", &to_tag(&ringing), busy.cseq().0).await;
    let extra = b.peer.drain(Duration::from_millis(300)).await;
    assert!(
        !extra.iter().any(|m| m.method() == Some("BYE")),
        "rejecting 4006 must not end the silent call"
    );
    assert_eq!(b.phone.state().calls.len(), 1);

    // Row "4006 calls 4002 / 4002 answers / interrupted".
    b.call_phone("4006", "from-4006-b", other.addr, vec![])
        .await;
    b.phone.key(Key::Answer).await.unwrap();
    let bye = b.peer.request_in("BYE", silent.call_id()).await;
    b.peer.reply(&bye, 200, None, &[], None).await;
    let ok = b
        .peer
        .wait_for("200 to 4006's INVITE", |m| {
            m.code() == Some(200) && m.call_id() == "from-4006-b"
        })
        .await;
    assert_eq!(ok.sdp_direction(), Some("sendrecv"));
    b.ack("from-4006-b", &to_tag(&ok), 1).await;
    let st = b.phone.state();
    assert_eq!(st.state, PhoneState::InCall);
    assert_eq!(st.calls.len(), 1);
    assert_eq!(st.calls[0].remote, "4006");
    eventually("4006 hears 4002", || other.count() >= 5).await;
    assert!(
        b.console.contains("silent call interrupted"),
        "{}",
        b.console.dump()
    );

    // "4002 presses the panic button again" continues the silent call (emergency mode
    // ends the 4006 call first).
    b.phone.panic_press().await.unwrap();
    let bye = b.peer.request_in("BYE", "from-4006-b").await;
    b.peer.reply(&bye, 200, None, &[], None).await;
    let again = b.peer.request("INVITE").await;
    assert_eq!(again.sdp_direction(), Some("sendonly"));
    assert_ne!(again.call_id(), silent.call_id());
    b.phone.shutdown(false).await;
}

#[tokio::test]
async fn calling_out_or_going_off_hook_interrupts_silent_call() {
    let mut b = Bench::start("127.72.3", |_| {}).await;
    let helper = RtpPeer::bind("127.72.3.1").await;
    let silent = start_silent_call(&mut b, &helper).await;

    // Off-hook (speaker) interrupts the silent call and opens the dial screen.
    b.phone.key(Key::Speaker).await.unwrap();
    let bye = b.peer.request_in("BYE", silent.call_id()).await;
    b.peer.reply(&bye, 200, None, &[], None).await;
    assert_eq!(b.phone.state().state, PhoneState::Dialing);
    b.phone.key(Key::OnHook).await.unwrap();
    assert_eq!(b.phone.state().state, PhoneState::Idle);

    // Row "4002 calls 4006 / interrupted".
    let silent = start_silent_call(&mut b, &helper).await;
    b.phone.key(Key::Dial("4006".into())).await.unwrap();
    let bye = b.peer.request_in("BYE", silent.call_id()).await;
    b.peer.reply(&bye, 200, None, &[], None).await;
    let invite = b
        .peer
        .wait_for("INVITE to 4006", |m| {
            m.method() == Some("INVITE") && m.uri().starts_with("sip:4006@")
        })
        .await;
    assert_eq!(invite.sdp_direction(), Some("sendrecv"));
    b.phone.shutdown(false).await;
}

#[rstest::rstest]
#[case::handset("127.72.4", Key::Handset)]
#[case::headset("127.72.5", Key::Headset)]
#[tokio::test]
async fn each_off_hook_key_interrupts_silent_call(#[case] net: &str, #[case] key: Key) {
    let mut b = Bench::start(net, |_| {}).await;
    let helper = RtpPeer::bind(&format!("{net}.1")).await;
    let silent = start_silent_call(&mut b, &helper).await;
    b.phone.key(key).await.unwrap();
    b.peer.request_in("BYE", silent.call_id()).await;
    b.phone.shutdown(false).await;
}

#[tokio::test]
async fn helper_holding_and_resuming_the_silent_call() {
    let mut b = Bench::start("127.72.6", |_| {}).await;
    let helper = RtpPeer::bind("127.72.6.1").await;
    let silent = start_silent_call(&mut b, &helper).await;
    eventually("RTP flows to 4004", || helper.count() >= 3).await;

    // Row "4006 calls 4004 / 4004 answers / on hold": 4004's phone re-INVITEs inactive.
    let reinvite = |cseq: u32, dir: &str| OutRequest {
        method: "INVITE",
        from_user: "4004",
        to_user: "4002",
        call_id: silent.call_id(),
        from_tag: "t4004",
        to_tag: Some(silent_from_tag(&silent)),
        cseq,
        extra: vec![],
        body: Some(sdp(helper.addr.ip(), helper.addr.port(), dir)),
    };
    b.peer
        .send(
            &reinvite(10, "inactive").render(b.peer.addr, b.phone_addr),
            b.phone_addr,
        )
        .await;
    let ok = b.peer.response(200, "INVITE").await;
    assert_eq!(ok.sdp_direction(), Some("inactive"));
    b.ack(silent.call_id(), silent_from_tag(&silent), 10).await;
    next_event(&mut b.events, "held by remote", |e| {
        matches!(
            e,
            UaEvent::CallHeld {
                by_remote: true,
                ..
            }
        )
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = helper.count();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(helper.count(), before, "no RTP while 4004 holds");

    // "4004 presses resume".
    b.peer
        .send(
            &reinvite(11, "recvonly").render(b.peer.addr, b.phone_addr),
            b.phone_addr,
        )
        .await;
    let ok = b.peer.response(200, "INVITE").await;
    assert_eq!(ok.sdp_direction(), Some("sendonly"));
    b.ack(silent.call_id(), silent_from_tag(&silent), 11).await;
    next_event(&mut b.events, "resumed by remote", |e| {
        matches!(
            e,
            UaEvent::CallResumed {
                by_remote: true,
                ..
            }
        )
    })
    .await;
    eventually("RTP flows again", || helper.count() >= before + 3).await;

    // Row "4004 calls 4006 / interrupted": 4004 hangs up.
    let bye = OutRequest {
        method: "BYE",
        ..reinvite(12, "recvonly")
    };
    let bye = OutRequest { body: None, ..bye };
    b.peer
        .send(&bye.render(b.peer.addr, b.phone_addr), b.phone_addr)
        .await;
    b.peer.response(200, "BYE").await;
    assert!(b.phone.state().calls.is_empty());
    b.phone.shutdown(false).await;
}

/// In the phone's outgoing INVITE our tag is in From; for the peer's in-dialog
/// requests it is the To tag.
fn silent_from_tag(invite: &Msg) -> &str {
    invite
        .header("From")
        .unwrap()
        .split(';')
        .find_map(|p| p.trim().strip_prefix("tag="))
        .unwrap()
}

/// Press the button set to speed dial `*554004` (monitor call) and let the PBX side
/// answer sendonly.
async fn start_monitor_call(b: &mut Bench, monitored_rtp: &RtpPeer) -> Msg {
    b.phone
        .set_panic_button(button(PanicMode::Normal, 2, "*554004"));
    b.phone.panic_press().await.unwrap();
    let invite = b.peer.request("INVITE").await;
    assert!(
        invite.uri().starts_with("sip:*554004@pbx.test"),
        "{}",
        invite.uri()
    );
    assert_eq!(
        invite.sdp_direction(),
        Some("recvonly"),
        "monitor call offers recvonly"
    );
    b.answer_invite(&invite, "t4004", monitored_rtp.addr, "sendonly")
        .await;
    next_event(&mut b.events, "monitor established", |e| {
        matches!(e, UaEvent::CallEstablished { .. })
    })
    .await;
    invite
}

#[tokio::test]
async fn monitor_call_receives_only_and_survives_off_hook() {
    let mut b = Bench::start("127.72.7", |_| {}).await;
    let monitored = RtpPeer::bind("127.72.7.1").await;
    let invite = start_monitor_call(&mut b, &monitored).await;
    let phone_rtp = invite.sdp_rtp().unwrap();
    monitored.send_packets(phone_rtp, 10).await;
    eventually("4002 hears 4004", || {
        b.phone.state().calls[0].rtp_played >= 10
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(monitored.count(), 0, "the monitoring phone sends nothing");
    assert_eq!(b.phone.state().state, PhoneState::InCall);

    // Off-hook does not interrupt a monitor call.
    for key in [Key::Handset, Key::Speaker, Key::Headset] {
        b.phone.key(key).await.unwrap();
    }
    let seen = b.peer.drain(Duration::from_millis(300)).await;
    assert!(
        !seen.iter().any(|m| m.method() == Some("BYE")),
        "no BYE on off-hook"
    );
    assert_eq!(b.phone.state().calls.len(), 1);

    // Row "4002 calls 4006 / interrupted".
    b.phone.key(Key::Dial("4006".into())).await.unwrap();
    b.peer.request_in("BYE", invite.call_id()).await;
    b.phone.shutdown(false).await;
}

#[tokio::test]
async fn answering_4006_holds_monitor_and_resume_brings_it_back() {
    let mut b = Bench::start("127.72.8", |_| {}).await;
    let monitored = RtpPeer::bind("127.72.8.1").await;
    let other = RtpPeer::bind("127.72.8.1").await;
    let monitor = start_monitor_call(&mut b, &monitored).await;

    // Row "4006 calls 4002 / 4002 rejects / not interrupted".
    let ringing = b.call_phone("4006", "m-4006-a", other.addr, vec![]).await;
    b.phone.key(Key::Reject).await.unwrap();
    let busy = b.peer.response(486, "INVITE").await;
    b.ack("m-4006-a", &to_tag(&ringing), busy.cseq().0).await;
    assert_eq!(b.phone.state().calls.len(), 1);

    // Row "4006 calls 4002 / 4002 answers / monitor on hold".
    b.call_phone("4006", "m-4006-b", other.addr, vec![]).await;
    b.phone.key(Key::Answer).await.unwrap();
    let hold = b.peer.request_in("INVITE", monitor.call_id()).await;
    assert_eq!(
        hold.sdp_direction(),
        Some("inactive"),
        "held monitor: recvonly → inactive"
    );
    b.peer
        .reply(
            &hold,
            200,
            None,
            &[],
            Some(&sdp(monitored.addr.ip(), monitored.addr.port(), "inactive")),
        )
        .await;
    b.peer.request_in("ACK", monitor.call_id()).await;
    let ok = b
        .peer
        .wait_for("200 to 4006", |m| {
            m.code() == Some(200) && m.call_id() == "m-4006-b"
        })
        .await;
    b.ack("m-4006-b", &to_tag(&ok), 1).await;
    let st = b.phone.state();
    assert_eq!(st.calls.len(), 2);
    assert!(st
        .calls
        .iter()
        .any(|c| c.kind == CallKind::Monitor && c.held_locally));

    // "4002 presses resume": the 4006 call goes on hold, the monitor comes back.
    b.phone.key(Key::Resume).await.unwrap();
    let hold_4006 = b.peer.request_in("INVITE", "m-4006-b").await;
    assert_eq!(hold_4006.sdp_direction(), Some("sendonly"));
    b.peer
        .reply(
            &hold_4006,
            200,
            None,
            &[],
            Some(&sdp(other.addr.ip(), other.addr.port(), "recvonly")),
        )
        .await;
    let resume = b.peer.request_in("INVITE", monitor.call_id()).await;
    assert_eq!(resume.sdp_direction(), Some("recvonly"));
    b.peer
        .reply(
            &resume,
            200,
            None,
            &[],
            Some(&sdp(monitored.addr.ip(), monitored.addr.port(), "sendonly")),
        )
        .await;
    b.peer.request_in("ACK", monitor.call_id()).await;
    eventually("monitor active again", || {
        b.phone.state().calls.iter().any(|c| {
            c.kind == CallKind::Monitor && !c.held_locally && c.remote_sdp == Some("sendonly")
        })
    })
    .await;
    b.phone.shutdown(false).await;
}
