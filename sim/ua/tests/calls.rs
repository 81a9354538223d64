//! General call control on the wire: outgoing calls with proxy auth and CANCEL,
//! remote CANCEL/BYE, hold by the phone, auto answer (intercom and H680 delay), and
//! the normal-mode panic rules that show on the wire (DND, hold-then-perform).

mod support;

use std::time::Duration;

use phonerig_sim_ua::{Key, PanicButton, PanicMode, PhoneState, UaEvent};
use support::*;

#[tokio::test]
async fn outgoing_call_answers_proxy_challenge_then_cancel() {
    let mut b = Bench::start("127.73.1", |_| {}).await;
    b.phone.key(Key::Dial("4006".into())).await.unwrap();
    let first = b.peer.request("INVITE").await;
    assert!(first.uri().starts_with("sip:4006@pbx.test"));
    assert_eq!(first.sdp_direction(), Some("sendrecv"));
    b.peer
        .reply(
            &first,
            407,
            Some("px"),
            &["Proxy-Authenticate: Digest realm=\"pbx.test\", nonce=\"abc\"".into()],
            None,
        )
        .await;
    // The INVITE client transaction ACKs the 407 itself.
    let ack = b.peer.request_in("ACK", first.call_id()).await;
    assert_eq!(ack.branch(), first.branch());
    let second = b.peer.request("INVITE").await;
    assert_eq!(second.call_id(), first.call_id());
    assert_eq!(second.cseq().0, first.cseq().0 + 1);
    assert!(second
        .header("Proxy-Authorization")
        .unwrap()
        .contains("username=\"4002\""));
    b.peer.reply(&second, 180, Some("t4006"), &[], None).await;
    next_event(&mut b.events, "OutgoingCall", |e| {
        matches!(e, UaEvent::OutgoingCall { .. })
    })
    .await;
    assert_eq!(b.phone.state().state, PhoneState::Dialing);

    b.phone.key(Key::Hangup).await.unwrap();
    let cancel = b.peer.request("CANCEL").await;
    assert_eq!(
        cancel.branch(),
        second.branch(),
        "CANCEL matches the INVITE transaction"
    );
    assert_eq!(cancel.cseq(), (second.cseq().0, "CANCEL".into()));
    b.peer.reply(&cancel, 200, None, &[], None).await;
    b.peer.reply(&second, 487, Some("t4006"), &[], None).await;
    b.peer.request_in("ACK", second.call_id()).await;
    assert_eq!(b.phone.state().state, PhoneState::Idle);
    b.phone.shutdown(false).await;
}

#[tokio::test]
async fn far_end_rejects_outgoing_call() {
    let mut b = Bench::start("127.73.2", |_| {}).await;
    b.phone.key(Key::Dial("4006".into())).await.unwrap();
    let invite = b.peer.request("INVITE").await;
    b.peer.reply(&invite, 486, Some("busy"), &[], None).await;
    assert_eq!(
        next_event(&mut b.events, "Rejected", |e| matches!(
            e,
            UaEvent::Rejected { .. }
        ))
        .await,
        UaEvent::Rejected {
            call_id: invite.call_id().into(),
            code: 486,
            by_remote: true
        }
    );
    b.peer.request_in("ACK", invite.call_id()).await;
    assert!(b.phone.state().calls.is_empty());
    b.phone.shutdown(false).await;
}

#[tokio::test]
async fn caller_cancels_ringing_call_and_remote_bye_ends_a_call() {
    let mut b = Bench::start("127.73.3", |_| {}).await;
    let rtp = RtpPeer::bind("127.73.3.1").await;
    let ringing = b.call_phone("4006", "c-1", rtp.addr, vec![]).await;
    let cancel = OutRequest {
        method: "CANCEL",
        from_user: "4006",
        to_user: "4002",
        call_id: "c-1",
        from_tag: "peer-tag",
        to_tag: None,
        cseq: 1,
        extra: vec![],
        body: None,
    };
    // CANCEL must carry the INVITE's branch: reuse the Via of the 180.
    let via = ringing.header("Via").unwrap();
    let rendered = cancel.render(b.peer.addr, b.phone_addr);
    let own_via = rendered.lines().find(|l| l.starts_with("Via:")).unwrap();
    let text = rendered.replacen(own_via, &format!("Via: {via}"), 1);
    b.peer.send(&text, b.phone_addr).await;
    b.peer.response(200, "CANCEL").await;
    b.peer.response(487, "INVITE").await;
    next_event(
        &mut b.events,
        "cancelled",
        |e| matches!(e, UaEvent::CallEnded { reason, .. } if reason == "cancelled"),
    )
    .await;

    let ringing = b.call_phone("4006", "c-2", rtp.addr, vec![]).await;
    b.phone.key(Key::Handset).await.unwrap(); // off-hook answers a ringing phone
    let ok = b
        .peer
        .wait_for("200", |m| m.code() == Some(200) && m.call_id() == "c-2")
        .await;
    assert_eq!(to_tag(&ok), to_tag(&ringing));
    b.ack("c-2", &to_tag(&ok), 1).await;
    eventually("4006 hears 4002", || rtp.count() >= 3).await;
    let bye = OutRequest {
        method: "BYE",
        from_user: "4006",
        to_user: "4002",
        call_id: "c-2",
        from_tag: "peer-tag",
        to_tag: Some(&to_tag(&ok)),
        cseq: 2,
        extra: vec![],
        body: None,
    };
    b.peer
        .send(&bye.render(b.peer.addr, b.phone_addr), b.phone_addr)
        .await;
    b.peer.response(200, "BYE").await;
    assert_eq!(b.phone.state().state, PhoneState::Idle);
    assert!(
        b.console.contains("ended by the far end"),
        "{}",
        b.console.dump()
    );
    b.phone.shutdown(false).await;
}

#[tokio::test]
async fn phone_holds_and_resumes_and_hangs_up() {
    let b = Bench::start("127.73.4", |_| {}).await;
    let rtp = RtpPeer::bind("127.73.4.1").await;
    b.phone.key(Key::Dial("4006".into())).await.unwrap();
    let invite = b.peer.request("INVITE").await;
    b.answer_invite(&invite, "t4006", rtp.addr, "sendrecv")
        .await;
    eventually("RTP to 4006", || rtp.count() >= 3).await;
    b.phone.key(Key::Hold).await.unwrap();
    let hold = b.peer.request_in("INVITE", invite.call_id()).await;
    assert_eq!(hold.sdp_direction(), Some("sendonly"));
    assert!(hold.header("To").unwrap().contains("tag=t4006"));
    b.peer
        .reply(
            &hold,
            200,
            None,
            &[],
            Some(&sdp(rtp.addr.ip(), rtp.addr.port(), "recvonly")),
        )
        .await;
    b.peer.request_in("ACK", invite.call_id()).await;
    assert_eq!(b.phone.state().state, PhoneState::Holding);
    b.phone.key(Key::Resume).await.unwrap();
    let resume = b.peer.request_in("INVITE", invite.call_id()).await;
    assert_eq!(resume.sdp_direction(), Some("sendrecv"));
    assert!(resume.cseq().0 > hold.cseq().0);
    b.peer
        .reply(
            &resume,
            200,
            None,
            &[],
            Some(&sdp(rtp.addr.ip(), rtp.addr.port(), "sendrecv")),
        )
        .await;
    assert_eq!(b.phone.state().state, PhoneState::InCall);
    b.phone.key(Key::OnHook).await.unwrap();
    let bye = b.peer.request_in("BYE", invite.call_id()).await;
    b.peer.reply(&bye, 200, None, &[], None).await;
    assert_eq!(b.phone.state().state, PhoneState::Idle);
    b.phone.shutdown(false).await;
}

#[tokio::test]
async fn intercom_request_is_answered_without_a_key() {
    let b = Bench::start("127.73.5", |_| {}).await;
    let rtp = RtpPeer::bind("127.73.5.1").await;
    b.call_phone(
        "4006",
        "ic-1",
        rtp.addr,
        vec!["Call-Info: <sip:pbx.test>;answer-after=0".into()],
    )
    .await;
    let ok = b
        .peer
        .wait_for("auto 200", |m| {
            m.code() == Some(200) && m.call_id() == "ic-1"
        })
        .await;
    b.ack("ic-1", &to_tag(&ok), 1).await;
    assert!(
        b.console.contains("intercom: answering"),
        "{}",
        b.console.dump()
    );
    assert_eq!(b.phone.state().state, PhoneState::InCall);
    b.phone.shutdown(false).await;
}

#[tokio::test]
async fn h680_auto_answer_after_delay_but_not_while_in_a_call() {
    let b = Bench::start("127.73.6", |c| {
        c.auto_answer = Some(Duration::from_millis(150))
    })
    .await;
    let rtp = RtpPeer::bind("127.73.6.1").await;
    b.call_phone("4006", "aa-1", rtp.addr, vec![]).await;
    assert_eq!(b.phone.state().state, PhoneState::Ringing, "rings first");
    let ok = b
        .peer
        .wait_for("auto 200", |m| {
            m.code() == Some(200) && m.call_id() == "aa-1"
        })
        .await;
    b.ack("aa-1", &to_tag(&ok), 1).await;

    // A second call while in the first one keeps ringing (call waiting).
    b.call_phone("4004", "aa-2", rtp.addr, vec![]).await;
    let seen = b.peer.drain(Duration::from_millis(500)).await;
    assert!(
        !seen
            .iter()
            .any(|m| m.code() == Some(200) && m.call_id() == "aa-2"),
        "no auto answer while in a call"
    );
    let calls = b.phone.state().calls;
    assert_eq!(calls.len(), 2);
    assert!(
        b.console.contains("not answering while in a call"),
        "{}",
        b.console.dump()
    );
    b.phone.shutdown(false).await;
}

#[tokio::test]
async fn normal_mode_dnd_is_refused_in_a_call_and_toggles_when_idle() {
    let mut b = Bench::start("127.73.7", |_| {}).await;
    let rtp = RtpPeer::bind("127.73.7.1").await;
    b.phone.set_panic_button(Some(PanicButton {
        mode: PanicMode::Normal,
        function: 21,
        value: String::new(),
        account: 0,
    }));
    // In a call: "other function … will not perform".
    b.phone.key(Key::Dial("4006".into())).await.unwrap();
    let invite = b.peer.request("INVITE").await;
    b.answer_invite(&invite, "t4006", rtp.addr, "sendrecv")
        .await;
    b.phone.panic_press().await.unwrap();
    assert!(matches!(
        next_event(&mut b.events, "PanicPressed", |e| matches!(
            e,
            UaEvent::PanicPressed { .. }
        ))
        .await,
        UaEvent::PanicPressed {
            performed: false,
            ..
        }
    ));
    assert!(!b.phone.state().dnd);
    b.phone.key(Key::Hangup).await.unwrap();
    b.peer.request_in("BYE", invite.call_id()).await;

    // Idle: DND toggles on, and an incoming call is refused with 480.
    b.phone.panic_press().await.unwrap();
    next_event(&mut b.events, "DND on", |e| {
        *e == UaEvent::DndChanged { on: true }
    })
    .await;
    let invite = OutRequest {
        method: "INVITE",
        from_user: "4006",
        to_user: "4002",
        call_id: "dnd-1",
        from_tag: "x",
        to_tag: None,
        cseq: 1,
        extra: vec![],
        body: Some(sdp(rtp.addr.ip(), rtp.addr.port(), "sendrecv")),
    };
    b.peer
        .send(&invite.render(b.peer.addr, b.phone_addr), b.phone_addr)
        .await;
    b.peer.response(480, "INVITE").await;
    b.phone.panic_press().await.unwrap();
    next_event(&mut b.events, "DND off", |e| {
        *e == UaEvent::DndChanged { on: false }
    })
    .await;
    b.phone.shutdown(false).await;
}

#[tokio::test]
async fn normal_mode_speed_dial_in_a_call_holds_then_dials_and_not_while_dialing() {
    let mut b = Bench::start("127.73.8", |_| {}).await;
    let rtp = RtpPeer::bind("127.73.8.1").await;
    b.phone.set_panic_button(Some(PanicButton {
        mode: PanicMode::Normal,
        function: 2,
        value: "4004".into(),
        account: 0,
    }));
    // Dialing (off-hook dial screen): not performed.
    b.phone.key(Key::Speaker).await.unwrap();
    assert_eq!(b.phone.state().state, PhoneState::Dialing);
    b.phone.panic_press().await.unwrap();
    assert!(matches!(
        next_event(&mut b.events, "PanicPressed", |e| matches!(
            e,
            UaEvent::PanicPressed { .. }
        ))
        .await,
        UaEvent::PanicPressed {
            performed: false,
            ..
        }
    ));
    b.phone.key(Key::Dial("4006".into())).await.unwrap();
    let to_4006 = b.peer.request("INVITE").await;
    b.answer_invite(&to_4006, "t4006", rtp.addr, "sendrecv")
        .await;

    // In a call: hold the current call, then speed dial.
    b.phone.panic_press().await.unwrap();
    let hold = b.peer.request_in("INVITE", to_4006.call_id()).await;
    assert_eq!(hold.sdp_direction(), Some("sendonly"));
    let to_4004 = b
        .peer
        .wait_for("speed dial INVITE", |m| {
            m.method() == Some("INVITE") && m.uri().starts_with("sip:4004@")
        })
        .await;
    assert_eq!(to_4004.sdp_direction(), Some("sendrecv"));
    b.phone.shutdown(false).await;
}

#[tokio::test]
async fn emergency_mode_hangs_up_a_ringing_call_before_the_silent_call() {
    let b = Bench::start("127.73.9", |_| {}).await;
    let rtp = RtpPeer::bind("127.73.9.1").await;
    b.phone.set_panic_button(Some(PanicButton {
        mode: PanicMode::Emergency,
        function: 57,
        value: "4004".into(),
        account: 0,
    }));
    b.call_phone("4006", "em-1", rtp.addr, vec![]).await;
    b.phone.panic_press().await.unwrap();
    let refused = b
        .peer
        .wait_for("final to 4006", |m| {
            m.call_id() == "em-1" && m.code().is_some_and(|c| c >= 400)
        })
        .await;
    assert_eq!(refused.code(), Some(486));
    let invite = b.peer.request("INVITE").await;
    assert_eq!(invite.sdp_direction(), Some("sendonly"));
    b.phone.shutdown(false).await;
}

#[tokio::test]
async fn power_cycle_releases_and_rebinds_the_sip_port() {
    let ip = "127.73.10.2";
    let port = std::net::UdpSocket::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let b = Bench::start("127.73.10", |c| c.sip_port = port).await;
    let rtp = RtpPeer::bind("127.73.10.1").await;
    // Leave a call and transactions running, then cut the power.
    b.phone.key(Key::Dial("4006".into())).await.unwrap();
    let invite = b.peer.request("INVITE").await;
    b.answer_invite(&invite, "t4006", rtp.addr, "sendrecv")
        .await;
    let Bench { peer, phone, .. } = b;
    phone.shutdown(false).await;
    let console = ConsoleLog::default();
    let again = phonerig_sim_ua::Telephony::start(
        phonerig_sim_ua::UaConfig {
            sip_port: port,
            ..config("127.73.10", peer.addr)
        },
        console.sink(),
        std::sync::Arc::new(|_: &str| phonerig_sim_ua::NotifyDecision::Accept),
    )
    .await
    .expect("SIP port is free again after shutdown");
    assert_eq!(again.local_addr().port(), port);
    // A power cut sends nothing: no BYE for the call that was up.
    let seen = peer.drain(Duration::from_millis(300)).await;
    assert!(!seen.iter().any(|m| m.method() == Some("BYE")));
    again.shutdown(false).await;
}

#[tokio::test]
async fn forward_key_redirects_incoming_calls_with_302() {
    let mut b = Bench::start("127.73.11", |_| {}).await;
    let rtp = RtpPeer::bind("127.73.11.1").await;
    b.phone.set_panic_button(Some(PanicButton {
        mode: PanicMode::Normal,
        function: 18,
        value: "4010".into(),
        account: 0,
    }));
    b.phone.panic_press().await.unwrap();
    next_event(&mut b.events, "forward on", |e| {
        *e == UaEvent::ForwardChanged {
            target: Some("4010".into()),
        }
    })
    .await;
    let invite = OutRequest {
        method: "INVITE",
        from_user: "4006",
        to_user: "4002",
        call_id: "fw-1",
        from_tag: "x",
        to_tag: None,
        cseq: 1,
        extra: vec![],
        body: Some(sdp(rtp.addr.ip(), rtp.addr.port(), "sendrecv")),
    };
    b.peer
        .send(&invite.render(b.peer.addr, b.phone_addr), b.phone_addr)
        .await;
    let moved = b.peer.response(302, "INVITE").await;
    assert!(moved
        .header("Contact")
        .unwrap()
        .contains("sip:4010@pbx.test"));
    b.phone.panic_press().await.unwrap();
    next_event(&mut b.events, "forward off", |e| {
        *e == UaEvent::ForwardChanged { target: None }
    })
    .await;
    assert_eq!(b.phone.state().forward, None);
    b.phone.shutdown(false).await;
}

#[tokio::test]
async fn unacknowledged_200_is_repeated_then_the_call_is_given_up() {
    let b = Bench::start("127.73.12", |c| {
        c.t1 = Duration::from_millis(20);
        c.t2 = Duration::from_millis(160);
    })
    .await;
    let rtp = RtpPeer::bind("127.73.12.1").await;
    b.call_phone("4006", "noack-1", rtp.addr, vec![]).await;
    b.phone.key(Key::Answer).await.unwrap();
    // The peer never ACKs: the 200 comes again and again, then the phone hangs up.
    let bye = b.peer.request_in("BYE", "noack-1").await;
    let oks: Vec<_> = b
        .peer
        .drain(Duration::ZERO)
        .await
        .into_iter()
        .filter(|m| m.code() == Some(200) && m.call_id() == "noack-1")
        .collect();
    assert!(oks.len() >= 3, "200 OK retransmitted, got {}", oks.len());
    assert!(
        oks.iter().all(|m| m.body() == oks[0].body()),
        "the same 200 each time"
    );
    assert!(bye.header("To").unwrap().contains("tag=peer-tag"));
    assert!(
        b.console.contains("no ACK for 200 OK"),
        "{}",
        b.console.dump()
    );
    b.phone.shutdown(false).await;
}
