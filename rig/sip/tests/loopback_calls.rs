//! Calls to the extensions the rig plays, driven from a hand-made UDP phone on
//! loopback: routing by Request-URI, the max_calls bound, answer policies,
//! CANCEL, a phone-initiated hold, RTP loss counting, registration expiry.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use phonerig_core::duration::HumanDuration;
use phonerig_sip::message::SipMsg;
use phonerig_sip::rtp::RtpHeader;
use phonerig_sip::{sdp, AnswerPolicy, Settings, Timers};
use support::{is, phone, rig};
use tokio::net::UdpSocket;

const WAIT: Duration = Duration::from_secs(10);

struct UdpPhone {
    socket: UdpSocket,
    rig: SocketAddr,
}

impl UdpPhone {
    async fn new(ip: &str, rig: SocketAddr) -> UdpPhone {
        UdpPhone {
            socket: UdpSocket::bind(format!("{ip}:0")).await.unwrap(),
            rig,
        }
    }

    fn local(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    async fn send(&self, text: &str) {
        self.socket
            .send_to(text.as_bytes(), self.rig)
            .await
            .unwrap();
    }

    /// The next response with `code` (others, e.g. 100 Trying, are skipped).
    async fn expect(&self, code: u16) -> SipMsg {
        let mut buf = vec![0u8; 8192];
        loop {
            let (n, _) = tokio::time::timeout(WAIT, self.socket.recv_from(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no {code} in time"))
                .unwrap();
            let msg = SipMsg::parse(&buf[..n]).unwrap();
            if msg.status() == Some(code) {
                return msg;
            }
        }
    }

    /// The next request the rig sent that `wanted` accepts (retransmissions are skipped).
    async fn next_request(&self, wanted: impl Fn(&SipMsg) -> bool) -> SipMsg {
        let mut buf = vec![0u8; 8192];
        loop {
            let (n, _) = tokio::time::timeout(WAIT, self.socket.recv_from(&mut buf))
                .await
                .expect("request in time")
                .unwrap();
            let msg = SipMsg::parse(&buf[..n]).unwrap();
            if msg.is_request() && wanted(&msg) {
                return msg;
            }
        }
    }

    /// `tx` is `(Call-ID, CSeq number, branch)`.
    fn request(
        &self,
        method: &str,
        ext: &str,
        tx: (&str, u32, &str),
        to_tag: Option<&str>,
        body: Option<&str>,
    ) -> String {
        let (call_id, cseq, branch) = tx;
        let local = self.local();
        let rig = self.rig;
        let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
        let (content_type, body) = match body {
            Some(body) => ("Content-Type: application/sdp\r\n", body),
            None => ("", ""),
        };
        format!(
            "{method} sip:{ext}@{rig} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch}\r\nFrom: <sip:4002@{rig}>;tag=ph-{call_id}\r\nTo: <sip:{ext}@{rig}>{to_tag}\r\n\
             Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContact: <sip:4002@{local}>\r\nMax-Forwards: 70\r\n{content_type}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }
}

fn offer(ip: &str, port: u16, direction: &str) -> String {
    format!("v=0\r\no=ph 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\na={direction}\r\n")
}

#[tokio::test]
async fn invites_are_routed_by_request_user_and_bounded_by_max_calls() {
    let settings = Settings {
        answer: [("4004".to_owned(), AnswerPolicy::Ring)]
            .into_iter()
            .collect(),
        ..Settings::default()
    };
    let rig = rig(
        "127.78.10.1",
        vec![phone("uc924", "4002", "001a4d5c258d")],
        settings,
        Timers::default(),
    )
    .await;
    let phone = UdpPhone::new("127.78.10.2", rig.addr).await;
    let sdp = offer("127.78.10.2", 7000, "sendrecv");

    phone
        .send(&phone.request(
            "INVITE",
            "4010",
            ("c-unknown", 1, "z9hG4bKu"),
            None,
            Some(&sdp),
        ))
        .await;
    phone.expect(404).await;

    for i in 0..4 {
        phone
            .send(&phone.request(
                "INVITE",
                "4004",
                (&format!("c-{i}"), 1, &format!("z9hG4bKi{i}")),
                None,
                Some(&sdp),
            ))
            .await;
        phone.expect(180).await;
    }
    phone
        .send(&phone.request("INVITE", "4004", ("c-4", 1, "z9hG4bKi4"), None, Some(&sdp)))
        .await;
    let busy = phone.expect(486).await;
    assert!(busy.header("warning").unwrap().contains("max_calls"));

    // CANCEL matches the INVITE by branch: 200 for the CANCEL, 487 for the INVITE.
    phone
        .send(&phone.request("CANCEL", "4004", ("c-0", 1, "z9hG4bKi0"), None, None))
        .await;
    phone.expect(200).await;
    let terminated = phone.expect(487).await;
    assert_eq!(terminated.method(), "INVITE");
    let cancelled = rig
        .wait_for("cancelled", WAIT, |e| {
            is(e, "call.state", "state", "cancelled")
        })
        .await;
    assert_eq!(cancelled.field_str("call_id"), Some("c-0"));
    assert_eq!(
        rig.events("call.state")
            .iter()
            .filter(|e| e.field_str("state") == Some("ringing"))
            .count(),
        4
    );
    rig.stop().await;
}

/// Seed 000 "Monitor call": the phone dials feature code + extension; the PBX
/// (the rig) connects it to the monitored extension without that extension
/// picking up, even while its own calls only ring.
#[tokio::test]
async fn silent_intercom_feature_code_reaches_the_extension_answered_at_once() {
    let settings = Settings {
        answer: [("4004".to_owned(), AnswerPolicy::Ring)]
            .into_iter()
            .collect(),
        silent_intercom: Some("*55".into()),
        ..Settings::default()
    };
    let rig = rig(
        "127.125.10.1",
        vec![phone("uc924", "4002", "001a4d5c2591")],
        settings,
        Timers::default(),
    )
    .await;
    let phone = UdpPhone::new("127.125.10.2", rig.addr).await;
    let sdp = offer("127.125.10.2", 7100, "recvonly");

    // Not an extension, and the bare feature code reaches nobody.
    for (i, user) in ["*554010", "*55"].into_iter().enumerate() {
        phone
            .send(&phone.request(
                "INVITE",
                user,
                (&format!("m-no-{i}"), 1, &format!("z9hG4bKmn{i}")),
                None,
                Some(&sdp),
            ))
            .await;
        phone.expect(404).await;
    }

    phone
        .send(&phone.request(
            "INVITE",
            "*554004",
            ("m-1", 1, "z9hG4bKm1"),
            None,
            Some(&sdp),
        ))
        .await;
    let ok = phone.expect(200).await;
    assert!(ok.body_text().contains("a=sendonly"), "{}", ok.body_text());
    let answered = rig
        .wait_for("answered", WAIT, |e| {
            is(e, "call.state", "state", "answered")
        })
        .await;
    assert_eq!(answered.field_str("role"), Some("4004"));
    assert_eq!(answered.field_str("call_id"), Some("m-1"));

    // A plain call to 4004 still follows its policy: it rings.
    phone
        .send(&phone.request("INVITE", "4004", ("m-2", 1, "z9hG4bKm2"), None, Some(&sdp)))
        .await;
    phone.expect(180).await;
    assert_eq!(
        rig.events("call.state")
            .iter()
            .filter(|e| e.field_str("state") == Some("answered"))
            .count(),
        1
    );
    rig.stop().await;
}

#[tokio::test]
async fn delayed_answer_phone_hold_and_rtp_loss_then_phone_hangs_up() {
    let delay = HumanDuration(Duration::from_millis(200));
    let settings = Settings {
        answer: [("4006".to_owned(), AnswerPolicy::After(delay))]
            .into_iter()
            .collect(),
        ..Settings::default()
    };
    let rig = rig(
        "127.78.11.1",
        vec![phone("uc924", "4002", "001a4d5c258d")],
        settings,
        Timers::default(),
    )
    .await;
    let phone = UdpPhone::new("127.78.11.2", rig.addr).await;
    let media = UdpSocket::bind("127.78.11.2:0").await.unwrap();
    let media_port = media.local_addr().unwrap().port();

    phone
        .send(&phone.request(
            "INVITE",
            "4006",
            ("call-1", 1, "z9hG4bKa1"),
            None,
            Some(&offer("127.78.11.2", media_port, "sendrecv")),
        ))
        .await;
    phone.expect(180).await;
    let ok = phone.expect(200).await;
    let answer = sdp::parse(&ok.body_text()).unwrap();
    assert_eq!(answer.direction, sdp::Direction::SendRecv);
    assert_eq!(answer.payload_types, vec![0]);
    let rig_rtp = answer.rtp.unwrap();
    let to_tag = ok.to_tag().unwrap();
    phone
        .send(&phone.request(
            "ACK",
            "4006",
            ("call-1", 1, "z9hG4bKack1"),
            Some(&to_tag),
            None,
        ))
        .await;

    // The rig talks: PCMU, 20 ms of audio per packet.
    let mut buf = vec![0u8; 2048];
    let (n, from) = tokio::time::timeout(WAIT, media.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(from, rig_rtp);
    assert_eq!(n, 12 + 160);
    assert_eq!(RtpHeader::parse(&buf[..n]).unwrap().payload_type, 0);

    // The phone talks, with packets 10 and 11 of 60 missing.
    for seq in (0u16..60).filter(|s| *s != 10 && *s != 11) {
        let packet = RtpHeader {
            payload_type: 0,
            marker: seq == 0,
            sequence: 1000 + seq,
            timestamp: u32::from(seq) * 160,
            ssrc: 7,
        }
        .write(&[0xff; 160]);
        media.send_to(&packet, rig_rtp).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopped = rig
        .wait_for("rtp.stopped from 4002", WAIT, |e| {
            is(e, "rtp.stopped", "observed", "received")
        })
        .await;
    assert_eq!(
        (stopped.field_str("from"), stopped.field_str("to")),
        (Some("4002"), Some("4006"))
    );
    assert_eq!(stopped.field_u64("packets"), Some(58));
    assert_eq!(stopped.field_u64("lost"), Some(2));

    // The phone holds the call: the rig answers recvonly and stops talking.
    phone
        .send(&phone.request(
            "INVITE",
            "4006",
            ("call-1", 2, "z9hG4bKa2"),
            Some(&to_tag),
            Some(&offer("127.78.11.2", media_port, "sendonly")),
        ))
        .await;
    let held_ok = phone.expect(200).await;
    assert_eq!(
        sdp::parse(&held_ok.body_text()).unwrap().direction,
        sdp::Direction::RecvOnly
    );
    phone
        .send(&phone.request(
            "ACK",
            "4006",
            ("call-1", 2, "z9hG4bKack2"),
            Some(&to_tag),
            None,
        ))
        .await;
    let held = rig
        .wait_for("held", WAIT, |e| is(e, "call.state", "state", "held"))
        .await;
    assert_eq!(held.field_str("remote_sdp_direction"), Some("sendonly"));
    assert_eq!(held.field_str("local_sdp_direction"), Some("recvonly"));
    rig.wait_for("rig stops sending", WAIT, |e| {
        is(e, "rtp.stopped", "observed", "sent")
    })
    .await;

    phone
        .send(&phone.request(
            "BYE",
            "4006",
            ("call-1", 3, "z9hG4bKbye"),
            Some(&to_tag),
            None,
        ))
        .await;
    phone.expect(200).await;
    let states: Vec<String> = rig
        .events("call.state")
        .iter()
        .map(|e| e.field_str("state").unwrap().to_owned())
        .collect();
    assert_eq!(states, ["ringing", "answered", "held", "ended"]);
    rig.stop().await;
}

#[tokio::test]
async fn registration_that_is_not_refreshed_expires() {
    let settings = Settings {
        auth: Some("none".into()),
        ..Settings::default()
    };
    let rig = rig(
        "127.78.12.1",
        vec![phone("uc924", "4002", "001a4d5c258d")],
        settings,
        Timers::default(),
    )
    .await;
    let phone = UdpPhone::new("127.78.12.2", rig.addr).await;
    let local = phone.local();
    let register = format!(
        "REGISTER sip:{0} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKr\r\nFrom: <sip:4002@{0}>;tag=r\r\nTo: <sip:4002@{0}>\r\nCall-ID: r1\r\nCSeq: 1 REGISTER\r\nContact: <sip:4002@{local}>;expires=1\r\nContent-Length: 0\r\n\r\n",
        rig.addr
    );
    phone.send(&register).await;
    let ok = phone.expect(200).await;
    assert!(ok.header("contact").unwrap().ends_with(";expires=1"));
    assert!(rig.handle.registration("4002").is_some());
    let expired = rig
        .wait_for("expired", WAIT, |e| {
            is(e, "sip.register", "result", "expired")
        })
        .await;
    assert_eq!(expired.phone.as_deref(), Some("uc924"));
    assert!(rig.handle.registration("4002").is_none());
    rig.stop().await;
}

#[tokio::test]
async fn rig_calls_a_registered_phone_which_declines_then_answers() {
    let settings = Settings {
        auth: Some("none".into()),
        ..Settings::default()
    };
    let uc924 = phone("uc924", "4002", "001a4d5c258d");
    let rig = rig(
        "127.78.13.1",
        vec![uc924.clone()],
        settings,
        // Short timers: the unanswered BYE at the end gives up after 64·T1 = 1.28 s.
        support::fast_timers(),
    )
    .await;
    let phone = UdpPhone::new("127.78.13.2", rig.addr).await;
    let local = phone.local();
    phone
        .send(&format!(
            "REGISTER sip:{0} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKr\r\nFrom: <sip:4002@{0}>;tag=r\r\nTo: <sip:4002@{0}>\r\nCall-ID: r1\r\nCSeq: 1 REGISTER\r\nContact: <sip:4002@{local}>\r\nContent-Length: 0\r\n\r\n",
            rig.addr
        ))
        .await;
    phone.expect(200).await;

    // First call: the phone declines.
    rig.handle
        .call("4006", &uc924, Default::default())
        .await
        .unwrap();
    let invite = phone.next_request(|m| m.method() == "INVITE").await;
    assert_eq!(invite.request_uri().unwrap(), format!("sip:4002@{local}"));
    assert!(
        invite.header("alert-info").is_none(),
        "no auto-answer unless asked"
    );
    let decline = phonerig_sip::message::response_to(&invite, Some("d1")).response(603);
    phone
        .socket
        .send_to(decline.raw.as_bytes(), rig.addr)
        .await
        .unwrap();
    let ack = phone.next_request(|m| m.method() == "ACK").await;
    assert_eq!(
        ack.branch(),
        invite.branch(),
        "ACK for a failure is in the INVITE's transaction"
    );
    let rejected = rig
        .wait_for("rejected", WAIT, |e| {
            is(e, "call.state", "state", "rejected")
        })
        .await;
    assert_eq!(rejected.field_u64("code"), Some(603));

    // Second call: the phone answers sendonly (it will not receive), so the rig must not talk.
    rig.handle
        .call("4006", &uc924, Default::default())
        .await
        .unwrap();
    let first_call = invite.call_id();
    let invite = phone
        .next_request(|m| m.method() == "INVITE" && m.call_id() != first_call)
        .await;
    let media = UdpSocket::bind("127.78.13.2:0").await.unwrap();
    let body = offer(
        "127.78.13.2",
        media.local_addr().unwrap().port(),
        "sendonly",
    );
    let ok = phonerig_sip::message::response_to(&invite, Some("a2"))
        .header("Contact", format!("<sip:4002@{local}>"))
        .body("application/sdp", body)
        .response(200);
    phone
        .socket
        .send_to(ok.raw.as_bytes(), rig.addr)
        .await
        .unwrap();
    let ack = phone
        .next_request(|m| m.method() == "ACK" && m.call_id() != first_call)
        .await;
    assert_ne!(
        ack.branch(),
        invite.branch(),
        "ACK for a 2xx is a transaction of its own"
    );
    let answered = rig
        .wait_for("answered", WAIT, |e| {
            is(e, "call.state", "state", "answered")
        })
        .await;
    assert_eq!(answered.field_str("remote_sdp_direction"), Some("sendonly"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        rig.events("rtp.started")
            .iter()
            .all(|e| e.field_str("observed") != Some("sent")),
        "the rig talked to a phone that does not receive"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(100), media.recv_from(&mut [0u8; 256]))
            .await
            .is_err()
    );

    rig.handle.hangup("4006").await.unwrap_err(); // the phone never answers the BYE: timer F
    let ended = rig
        .wait_for("ended", WAIT, |e| is(e, "call.state", "state", "ended"))
        .await;
    assert_eq!(ended.field_u64("code"), None);
    rig.stop().await;
}

#[tokio::test]
async fn answer_is_retransmitted_until_acked_and_a_repeated_invite_gets_it_again() {
    let rig = rig(
        "127.78.14.1",
        vec![phone("uc924", "4002", "001a4d5c258d")],
        Settings::default(),
        support::fast_timers(),
    )
    .await;
    let phone = UdpPhone::new("127.78.14.2", rig.addr).await;
    let invite = phone.request(
        "INVITE",
        "4004",
        ("rtx-1", 1, "z9hG4bKrtx"),
        None,
        Some(&offer("127.78.14.2", 7100, "sendrecv")),
    );
    phone.send(&invite).await;
    let first_ok = phone.expect(200).await;
    // No ACK yet: the 200 comes again (timer G-like doubling from T1 = 20 ms).
    for _ in 0..3 {
        let again = phone.expect(200).await;
        assert_eq!(
            again.raw, first_ok.raw,
            "a retransmission is the same message"
        );
    }
    // The INVITE repeated (as if our 200 was lost): the server transaction answers with the same 200.
    phone.send(&invite).await;
    assert_eq!(phone.expect(200).await.raw, first_ok.raw);
    let to_tag = first_ok.to_tag().unwrap();
    phone
        .send(&phone.request(
            "ACK",
            "4004",
            ("rtx-1", 1, "z9hG4bKrtxack"),
            Some(&to_tag),
            None,
        ))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent_before = rig
        .events("sip.message")
        .iter()
        .filter(|e| e.field_u64("status") == Some(200))
        .count();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent_after = rig
        .events("sip.message")
        .iter()
        .filter(|e| e.field_u64("status") == Some(200))
        .count();
    assert_eq!(
        sent_before, sent_after,
        "retransmission stopped after the ACK"
    );
    assert_eq!(
        rig.events("call.state")
            .iter()
            .filter(|e| e.field_str("state") == Some("answered"))
            .count(),
        1,
        "one call, not two"
    );
    rig.stop().await;
}

#[tokio::test]
async fn invite_to_a_silent_phone_is_retransmitted_then_times_out() {
    let uc924 = phone("uc924", "4002", "001a4d5c258d");
    let rig = rig(
        "127.78.15.1",
        vec![uc924.clone()],
        Settings::default(),
        support::fast_timers(),
    )
    .await;
    let silent = UdpSocket::bind("127.78.15.2:0").await.unwrap();
    let opts = phonerig_sip::CallOptions {
        target: Some(silent.local_addr().unwrap()),
        ..Default::default()
    };
    rig.handle.call("4004", &uc924, opts).await.unwrap();
    let ended = rig
        .wait_for("ended", WAIT, |e| is(e, "call.state", "state", "ended"))
        .await;
    assert_eq!(ended.field_u64("code"), Some(408));
    let mut sends = 0;
    let mut buf = vec![0u8; 8192];
    while let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_millis(100), silent.recv_from(&mut buf)).await
    {
        assert_eq!(SipMsg::parse(&buf[..n]).unwrap().method(), "INVITE");
        sends += 1;
    }
    // Timer A doubles without a cap: 0, 20, 60, 140, 300, 620 ms — six sends in 64·T1 = 1280 ms.
    assert!((4..=8).contains(&sends), "{sends} INVITE transmissions");
    rig.stop().await;
}
