//! Registration, retransmission and NOTIFY against the scripted peer on loopback.

mod support;

use std::time::Duration;

use md5::Md5;
use phonerig_sim_ua::sip::timers::RetransmitSchedule;
use phonerig_sim_ua::{NotifyDecision, RegisterFailure, UaEvent};
use rstest::rstest;
use sha2::{Digest, Sha256};
use support::*;

fn param<'a>(header: &'a str, name: &str) -> &'a str {
    header
        .split(',')
        .find_map(|p| {
            let p = p.trim().trim_start_matches("Digest ").trim();
            let (k, v) = p.split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
        .unwrap_or_else(|| panic!("no {name} in {header}"))
}

/// The registrar's own check of the phone's digest (RFC 2617 with qop=auth).
fn expected_response(alg: &str, auth: &str, method: &str) -> String {
    let h = |s: String| match alg {
        "SHA-256" => hex::encode(Sha256::digest(s.as_bytes())),
        _ => hex::encode(Md5::digest(s.as_bytes())),
    };
    let ha1 = h(format!(
        "{}:{}:secret",
        param(auth, "username"),
        param(auth, "realm")
    ));
    let ha2 = h(format!("{method}:{}", param(auth, "uri")));
    h(format!(
        "{ha1}:{}:{}:{}:auth:{ha2}",
        param(auth, "nonce"),
        param(auth, "nc"),
        param(auth, "cnonce")
    ))
}

#[rstest]
#[case::md5("127.71.1", "MD5")]
#[case::sha256("127.71.2", "SHA-256")]
#[tokio::test]
async fn registers_with_digest_refreshes_and_unregisters(#[case] net: &str, #[case] alg: &str) {
    let mut b = Bench::start(net, |c| c.expires = 2).await;
    let phone = b.phone.clone();
    let registering = tokio::spawn(async move { phone.register().await });

    let first = b.peer.request("REGISTER").await;
    assert_eq!(first.uri(), "sip:pbx.test");
    assert_eq!(first.header("Expires"), Some("2"));
    assert!(first.header("Authorization").is_none());
    assert!(first
        .header("Contact")
        .unwrap()
        .contains(&b.phone_addr.to_string()));
    b.peer
        .reply(
            &first,
            401,
            Some("reg"),
            &[format!(
                "WWW-Authenticate: Digest realm=\"pbx.test\", nonce=\"n0nce-{alg}\", algorithm={alg}, qop=\"auth\""
            )],
            None,
        )
        .await;

    let second = b.peer.request("REGISTER").await;
    let auth = second
        .header("Authorization")
        .expect("credentials after 401")
        .to_string();
    assert_eq!(param(&auth, "username"), "4002");
    assert_eq!(param(&auth, "algorithm"), alg);
    assert_eq!(
        param(&auth, "response"),
        expected_response(alg, &auth, "REGISTER")
    );
    assert_eq!(
        second.call_id(),
        first.call_id(),
        "one binding, one Call-ID"
    );
    assert_eq!(second.cseq().0, first.cseq().0 + 1);
    assert_ne!(second.branch(), first.branch());
    b.peer
        .reply(
            &second,
            200,
            Some("reg"),
            &[format!(
                "Contact: {};expires=2",
                second.header("Contact").unwrap()
            )],
            None,
        )
        .await;
    registering
        .await
        .unwrap()
        .expect("first registration succeeds");
    assert_eq!(
        next_event(&mut b.events, "Registered", |e| matches!(
            e,
            UaEvent::Registered { .. }
        ))
        .await,
        UaEvent::Registered { expires: 2 }
    );
    assert!(b.phone.state().registered);
    assert!(
        b.console.contains("[SIP] REGISTER 200 OK"),
        "{}",
        b.console.dump()
    );

    // Refresh before the 2 s expire, same Call-ID, higher CSeq.
    let refresh = b.peer.request("REGISTER").await;
    assert_eq!(refresh.call_id(), first.call_id());
    assert!(refresh.cseq().0 > second.cseq().0);
    b.peer
        .reply(&refresh, 200, Some("reg"), &["Expires: 60".into()], None)
        .await;
    assert_eq!(
        next_event(&mut b.events, "refresh", |e| matches!(
            e,
            UaEvent::Registered { .. }
        ))
        .await,
        UaEvent::Registered { expires: 60 }
    );

    let phone = b.phone.clone();
    let stopping = tokio::spawn(async move { phone.shutdown(true).await });
    let unreg = b.peer.request("REGISTER").await;
    assert_eq!(unreg.header("Expires"), Some("0"));
    b.peer.reply(&unreg, 200, Some("reg"), &[], None).await;
    stopping.await.unwrap();
    assert!(b.console.contains("unregistered"), "{}", b.console.dump());
}

#[tokio::test]
async fn register_retransmits_per_t1_t2_then_gives_up() {
    let t1 = Duration::from_millis(20);
    let t2 = Duration::from_millis(160);
    let mut b = Bench::start("127.71.3", |c| {
        c.t1 = t1;
        c.t2 = t2;
        c.register_retry = Duration::from_secs(3600);
    })
    .await;
    // Record arrivals while the phone tries (64 × T1 = 1.28 s, then a margin).
    let (result, seen) = tokio::join!(
        b.phone.register(),
        b.peer.drain(Duration::from_millis(1800))
    );
    assert!(result.is_err(), "no registrar answer must fail");
    assert_eq!(
        next_event(&mut b.events, "RegisterFailed", |e| matches!(
            e,
            UaEvent::RegisterFailed { .. }
        ))
        .await,
        UaEvent::RegisterFailed {
            reason: RegisterFailure::Timeout
        }
    );
    let registers: Vec<_> = seen
        .iter()
        .filter(|m| m.method() == Some("REGISTER"))
        .collect();
    let schedule = RetransmitSchedule::non_invite(t1, t2);
    assert_eq!(
        registers.len(),
        schedule.sends.len(),
        "one send per scheduled slot, then give up"
    );
    // Retransmissions are the same request: same branch and CSeq.
    assert!(registers
        .iter()
        .all(|m| m.branch() == registers[0].branch() && m.cseq() == registers[0].cseq()));
    // Loose shape check: the gaps grow from T1 towards T2 (no tight timing).
    let first_gap = registers[1].at - registers[0].at;
    let last_gap = registers[registers.len() - 1].at - registers[registers.len() - 2].at;
    assert!(
        last_gap > first_gap,
        "gaps grow: first {first_gap:?}, last {last_gap:?}"
    );
    assert!(
        b.console.contains("REGISTER failed: no answer"),
        "{}",
        b.console.dump()
    );
    b.phone.shutdown(false).await;
}

#[tokio::test]
async fn register_rejected_reports_the_code() {
    let mut b = Bench::start("127.71.4", |c| c.register_retry = Duration::from_secs(3600)).await;
    let phone = b.phone.clone();
    let registering = tokio::spawn(async move { phone.register().await });
    let req = b.peer.request("REGISTER").await;
    b.peer.reply(&req, 403, None, &[], None).await;
    assert!(registering.await.unwrap().is_err());
    assert_eq!(
        next_event(&mut b.events, "RegisterFailed", |e| matches!(
            e,
            UaEvent::RegisterFailed { .. }
        ))
        .await,
        UaEvent::RegisterFailed {
            reason: RegisterFailure::Status(403)
        }
    );
    assert!(!b.phone.state().registered);
    b.phone.shutdown(false).await;
}

#[rstest]
#[case::check_sync("127.71.5", "check-sync;reboot=false", 200, NotifyDecision::Accept)]
#[case::unknown_event("127.71.6", "resync-everything", 489, NotifyDecision::Reject(489))]
#[tokio::test]
async fn notify_is_answered_with_the_body_decision(
    #[case] net: &str,
    #[case] event: &str,
    #[case] code: u16,
    #[case] decision: NotifyDecision,
) {
    let mut b = Bench::start(net, |_| {}).await;
    let notify = OutRequest {
        method: "NOTIFY",
        from_user: "rig",
        to_user: "4002",
        call_id: "notify-1",
        from_tag: "n1",
        to_tag: None,
        cseq: 1,
        extra: vec![
            format!("Event: {event}"),
            "Subscription-State: terminated".into(),
        ],
        body: None,
    };
    b.peer
        .send(&notify.render(b.peer.addr, b.phone_addr), b.phone_addr)
        .await;
    let resp = b.peer.response(code, "NOTIFY").await;
    assert_eq!(resp.call_id(), "notify-1");
    assert_eq!(
        next_event(&mut b.events, "Notify", |e| matches!(
            e,
            UaEvent::Notify { .. }
        ))
        .await,
        UaEvent::Notify {
            event: event.to_string(),
            decision
        }
    );
    b.phone.shutdown(false).await;
}

#[tokio::test]
async fn malformed_datagram_is_logged_and_service_continues() {
    let b = Bench::start("127.71.7", |_| {}).await;
    b.peer.send("INVITE nonsense\r\n\r\n", b.phone_addr).await;
    b.peer.send("\u{0}\u{1}garbage", b.phone_addr).await;
    let options = OutRequest {
        method: "OPTIONS",
        from_user: "rig",
        to_user: "4002",
        call_id: "opt-1",
        from_tag: "o1",
        to_tag: None,
        cseq: 1,
        extra: vec![],
        body: None,
    };
    b.peer
        .send(&options.render(b.peer.addr, b.phone_addr), b.phone_addr)
        .await;
    let resp = b.peer.response(200, "OPTIONS").await;
    assert!(resp.header("Allow").unwrap().contains("INVITE"));
    assert!(
        b.console.contains("dropped malformed message"),
        "{}",
        b.console.dump()
    );
    b.phone.shutdown(false).await;
}
