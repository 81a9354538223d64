//! The SIP service against hand-driven sockets on unique loopback addresses:
//! what SIPp cannot easily show (SHA-256 digest, TCP framing, malformed input,
//! NOTIFY retransmission timing and challenge answering).

mod support;

use std::time::Duration;

use phonerig_sip::digest::{Algorithm, Challenge, Credentials};
use phonerig_sip::message::SipMsg;
use phonerig_sip::transport::take_frame;
use phonerig_sip::{NotifyOutcome, Settings, Timers, Transport};
use support::{fast_timers, is, phone, rig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

const WAIT: Duration = Duration::from_secs(10);

fn register(local: &str, rig: &str, cseq: u32, expires: u32, auth: Option<String>) -> String {
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    format!(
        "REGISTER sip:{rig} SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bKreg{cseq}\r\nFrom: <sip:4002@{rig}>;tag=ph1\r\nTo: <sip:4002@{rig}>\r\n\
         Call-ID: reg-1@{local}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:4002@{local};transport=tcp>\r\nExpires: {expires}\r\n{auth}\
         User-Agent: Panasonic-KX-UT670/01.133 (0080f0a1b2c3)\r\nContent-Length: 0\r\n\r\n"
    )
}

async fn read_message(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> SipMsg {
    loop {
        if let Some(frame) = take_frame(buffer).unwrap() {
            return SipMsg::parse(&frame).unwrap();
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("response in time")
            .unwrap();
        assert!(n > 0, "connection closed");
        buffer.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn sha256_digest_registration_over_tcp_then_unregistration() {
    let settings = Settings {
        auth: Some("sha-256".into()),
        ..Settings::default()
    };
    let rig = rig(
        "127.78.0.1",
        vec![phone("ut670", "4002", "0080f0a1b2c3")],
        settings,
        Timers::default(),
    )
    .await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.78.0.2:0".parse().unwrap()).unwrap();
    let mut stream = socket.connect(rig.addr).await.unwrap();
    let local = stream.local_addr().unwrap().to_string();
    let rig_host = rig.addr.to_string();
    let mut buffer = Vec::new();

    stream
        .write_all(register(&local, &rig_host, 1, 300, None).as_bytes())
        .await
        .unwrap();
    let challenge_response = read_message(&mut stream, &mut buffer).await;
    assert_eq!(challenge_response.status(), Some(401));
    let challenge =
        Challenge::parse(&challenge_response.header("www-authenticate").unwrap()).unwrap();
    assert_eq!(challenge.algorithm, Algorithm::Sha256);

    let uri = format!("sip:{rig_host}");
    let wrong = challenge.answer("4002", "not-the-password", "REGISTER", &uri, "c0");
    stream
        .write_all(register(&local, &rig_host, 2, 300, Some(wrong)).as_bytes())
        .await
        .unwrap();
    assert_eq!(
        read_message(&mut stream, &mut buffer).await.status(),
        Some(403)
    );

    let answer = challenge.answer("4002", "secret", "REGISTER", &uri, "c1");
    stream
        .write_all(register(&local, &rig_host, 3, 300, Some(answer.clone())).as_bytes())
        .await
        .unwrap();
    let ok = read_message(&mut stream, &mut buffer).await;
    assert_eq!(ok.status(), Some(200));
    let registration = rig.handle.registration("4002").expect("registered");
    assert_eq!(registration.transport, Transport::Tcp);
    assert_eq!(registration.expires, 300);
    assert_eq!(
        registration.contact,
        format!("sip:4002@{local};transport=tcp")
    );

    let event = rig
        .wait_for("sip.register ok", WAIT, |e| {
            is(e, "sip.register", "result", "ok")
        })
        .await;
    assert_eq!(event.phone.as_deref(), Some("ut670"));
    assert_eq!(event.field_str("ua_vendor"), Some("Panasonic"));
    assert_eq!(event.field_str("ua_model"), Some("KX-UT670"));
    assert_eq!(event.field_str("ua_version"), Some("01.133"));
    assert_eq!(event.field_str("transport"), Some("tcp"));
    let results: Vec<String> = rig
        .events("sip.register")
        .iter()
        .map(|e| e.field_str("result").unwrap().to_owned())
        .collect();
    assert_eq!(results, ["challenged", "rejected", "ok"]);

    let unregister = challenge.answer("4002", "secret", "REGISTER", &uri, "c2");
    stream
        .write_all(register(&local, &rig_host, 4, 0, Some(unregister)).as_bytes())
        .await
        .unwrap();
    assert_eq!(
        read_message(&mut stream, &mut buffer).await.status(),
        Some(200)
    );
    assert!(rig.handle.registration("4002").is_none());
    rig.wait_for("sip.register unregistered", WAIT, |e| {
        is(e, "sip.register", "result", "unregistered")
    })
    .await;
    // Every message in and out was recorded with its raw text.
    let messages = rig.events("sip.message");
    assert_eq!(messages.len(), 8);
    assert!(messages.iter().all(|e| e
        .field_str("raw")
        .is_some_and(|r| r.starts_with(e.field_str("first_line").unwrap()))));
    rig.stop().await;
}

#[tokio::test]
async fn forced_rejection_and_endless_challenge() {
    for (policy, code, result) in [
        (
            phonerig_sip::RegisterPolicy::Reject { code: 403 },
            403,
            "rejected",
        ),
        (
            phonerig_sip::RegisterPolicy::ChallengeForever,
            401,
            "challenged",
        ),
    ] {
        let settings = Settings {
            register: policy,
            ..Settings::default()
        };
        let rig = rig(
            if code == 403 {
                "127.78.4.1"
            } else {
                "127.78.5.1"
            },
            vec![phone("uc924", "4002", "001a4d5c258d")],
            settings,
            Timers::default(),
        )
        .await;
        let socket = TcpSocket::new_v4().unwrap();
        socket
            .bind(
                format!("127.78.{}.2:0", if code == 403 { 4 } else { 5 })
                    .parse()
                    .unwrap(),
            )
            .unwrap();
        let mut stream = socket.connect(rig.addr).await.unwrap();
        let local = stream.local_addr().unwrap().to_string();
        let rig_host = rig.addr.to_string();
        let mut buffer = Vec::new();
        stream
            .write_all(register(&local, &rig_host, 1, 300, None).as_bytes())
            .await
            .unwrap();
        let first = read_message(&mut stream, &mut buffer).await;
        assert_eq!(first.status(), Some(code));
        if let Some(challenge) = first.header("www-authenticate") {
            let answer = Challenge::parse(&challenge).unwrap().answer(
                "4002",
                "secret",
                "REGISTER",
                &format!("sip:{rig_host}"),
                "c",
            );
            stream
                .write_all(register(&local, &rig_host, 2, 300, Some(answer)).as_bytes())
                .await
                .unwrap();
            assert_eq!(
                read_message(&mut stream, &mut buffer).await.status(),
                Some(401),
                "challenged again despite right credentials"
            );
        }
        assert!(rig.handle.registration("4002").is_none());
        assert!(rig
            .events("sip.register")
            .iter()
            .all(|e| e.field_str("result") == Some(result)));
        rig.stop().await;
    }
}

#[tokio::test]
async fn malformed_datagrams_are_recorded_and_the_service_goes_on() {
    let rig = rig("127.78.1.1", vec![], Settings::default(), Timers::default()).await;
    let client = UdpSocket::bind("127.78.1.2:0").await.unwrap();
    client
        .send_to(b"\x00\x01garbage that is not SIP\r\n\r\n", rig.addr)
        .await
        .unwrap();
    client.send_to(b"OPTIONS sip:4004@127.78.1.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.78.1.2;branch=z9hG4bKx\r\n\r\n", rig.addr).await.unwrap();
    let event = rig
        .wait_for("sip.malformed", WAIT, |e| e.kind == "sip.malformed")
        .await;
    assert_eq!(event.field_str("transport"), Some("udp"));
    let local = client.local_addr().unwrap();
    let options = format!(
        "OPTIONS sip:4004@127.78.1.1 SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKopt\r\nFrom: <sip:probe@127.78.1.2>;tag=p\r\nTo: <sip:4004@127.78.1.1>\r\nCall-ID: opt-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    client.send_to(options.as_bytes(), rig.addr).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(WAIT, client.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let response = SipMsg::parse(&buf[..n]).unwrap();
    assert_eq!(response.status(), Some(200));
    assert_eq!(rig.events("sip.malformed").len(), 2);
    rig.stop().await;
}

#[tokio::test]
async fn notify_answers_a_digest_challenge_with_the_phones_credentials() {
    let uc924 = phone("uc924", "4002", "001a4d5c258d");
    let rig = rig(
        "127.78.2.1",
        vec![uc924.clone()],
        Settings::default(),
        Timers::default(),
    )
    .await;
    let fake_phone = UdpSocket::bind("127.78.2.2:5062").await.unwrap();
    let target = fake_phone.local_addr().unwrap();
    let handle = rig.handle.clone();
    let sent = tokio::spawn(async move {
        handle
            .notify(&uc924, "check-sync;reboot=true", Some(target))
            .await
    });

    let mut buf = vec![0u8; 4096];
    let (n, from) = tokio::time::timeout(WAIT, fake_phone.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let first = SipMsg::parse(&buf[..n]).unwrap();
    assert_eq!(first.method(), "NOTIFY");
    assert_eq!(
        first.header("event").as_deref(),
        Some("check-sync;reboot=true")
    );
    assert_eq!(
        first.header("subscription-state").as_deref(),
        Some("terminated")
    );
    assert_eq!(first.header("content-length").as_deref(), Some("0"));
    let challenge = phonerig_sip::digest::challenge("uc924", "phone-nonce", Algorithm::Sha256);
    let unauthorized = phonerig_sip::message::response_to(&first, Some("pt"))
        .header("WWW-Authenticate", challenge)
        .response(401);
    fake_phone
        .send_to(unauthorized.raw.as_bytes(), from)
        .await
        .unwrap();

    let second = loop {
        let (n, _) = tokio::time::timeout(WAIT, fake_phone.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let msg = SipMsg::parse(&buf[..n]).unwrap();
        if msg.cseq().map(|c| c.0) == Some(2) {
            break msg;
        }
    };
    assert_eq!(second.call_id(), first.call_id());
    assert_eq!(second.from_tag(), first.from_tag());
    let credentials = Credentials::parse(&second.header("authorization").unwrap()).unwrap();
    assert_eq!(credentials.algorithm, Algorithm::Sha256);
    assert!(credentials.verify("secret", "NOTIFY"));
    let ok = phonerig_sip::message::response_to(&second, Some("pt")).response(200);
    fake_phone.send_to(ok.raw.as_bytes(), from).await.unwrap();

    assert_eq!(
        sent.await.unwrap().unwrap(),
        NotifyOutcome::Answered { code: 200 }
    );
    let event = rig
        .wait_for("sip.notify", WAIT, |e| e.kind == "sip.notify")
        .await;
    assert_eq!(event.field_str("outcome"), Some("answered"));
    assert_eq!(event.field_u64("code"), Some(200));
    assert_eq!(event.field_str("event"), Some("check-sync;reboot=true"));
    assert_eq!(event.phone.as_deref(), Some("uc924"));
    rig.stop().await;
}

#[tokio::test]
async fn unanswered_notify_is_retransmitted_with_backoff_then_times_out() {
    let uc924 = phone("uc924", "4002", "001a4d5c258d");
    let rig = rig(
        "127.78.3.1",
        vec![uc924.clone()],
        Settings::default(),
        fast_timers(),
    )
    .await;
    let silent_phone = UdpSocket::bind("127.78.3.2:5062").await.unwrap();
    let target = silent_phone.local_addr().unwrap();
    let outcome = rig
        .handle
        .notify(&uc924, "resync", Some(target))
        .await
        .unwrap();
    assert_eq!(outcome, NotifyOutcome::Timeout);

    let mut branches = Vec::new();
    let mut buf = vec![0u8; 4096];
    while let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_millis(100), silent_phone.recv_from(&mut buf)).await
    {
        branches.push(SipMsg::parse(&buf[..n]).unwrap().branch().unwrap());
    }
    // 64·T1 = 1280 ms with intervals 20, 40, 80, 160, 160 … ms: about eleven
    // sends. Without backoff there would be 64, without retransmission one.
    assert!(
        (6..=16).contains(&branches.len()),
        "{} transmissions",
        branches.len()
    );
    assert!(
        branches.iter().all(|b| *b == branches[0]),
        "retransmissions keep the branch"
    );
    let event = rig
        .wait_for("sip.notify", WAIT, |e| e.kind == "sip.notify")
        .await;
    assert_eq!(event.field_str("outcome"), Some("timeout"));
    assert_eq!(rig.events("sip.message").len(), branches.len());
    rig.stop().await;
}

#[tokio::test]
async fn notify_to_an_unregistered_phone_without_target_is_an_error() {
    let uc924 = phone("uc924", "4002", "001a4d5c258d");
    let rig = rig(
        "127.78.6.1",
        vec![uc924.clone()],
        Settings::default(),
        Timers::default(),
    )
    .await;
    assert!(rig.handle.notify(&uc924, "check-sync", None).await.is_err());
    rig.stop().await;
}

#[tokio::test]
async fn notify_to_a_tcp_phone_uses_its_connection_then_its_contact_once_closed() {
    let settings = Settings {
        auth: Some("none".into()),
        ..Settings::default()
    };
    let uc924 = phone("uc924", "4002", "001a4d5c258d");
    let rig = rig(
        "127.78.7.1",
        vec![uc924.clone()],
        settings,
        Timers::default(),
    )
    .await;
    let contact_listener = tokio::net::TcpListener::bind("127.78.7.2:5070")
        .await
        .unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.78.7.2:0".parse().unwrap()).unwrap();
    let mut first = socket.connect(rig.addr).await.unwrap();
    let local = first.local_addr().unwrap();
    let register = format!(
        "REGISTER sip:{0} SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bKt1\r\nFrom: <sip:4002@{0}>;tag=t\r\nTo: <sip:4002@{0}>\r\nCall-ID: t1\r\nCSeq: 1 REGISTER\r\n\
         Contact: <sip:4002@127.78.7.2:5070;transport=tcp>\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n",
        rig.addr
    );
    let mut buffer = Vec::new();
    first.write_all(register.as_bytes()).await.unwrap();
    assert_eq!(
        read_message(&mut first, &mut buffer).await.status(),
        Some(200)
    );

    // While the phone's connection is open, the NOTIFY comes over it.
    let handle = rig.handle.clone();
    let phone_info = uc924.clone();
    let sent = tokio::spawn(async move { handle.notify(&phone_info, "check-sync", None).await });
    let notify = read_message(&mut first, &mut buffer).await;
    assert_eq!(notify.method(), "NOTIFY");
    // URI parameter values compare case-insensitively (rsip renders `TCP`).
    assert!(notify
        .request_uri()
        .unwrap()
        .eq_ignore_ascii_case("sip:4002@127.78.7.2:5070;transport=tcp"));
    first
        .write_all(
            phonerig_sip::message::response_to(&notify, Some("x"))
                .response(200)
                .raw
                .as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(
        sent.await.unwrap().unwrap(),
        NotifyOutcome::Answered { code: 200 }
    );

    // Once it is closed, the rig connects to the Contact address.
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let handle = rig.handle.clone();
    let sent = tokio::spawn(async move { handle.notify(&uc924, "check-sync", None).await });
    let (mut second, _) = tokio::time::timeout(WAIT, contact_listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut buffer = Vec::new();
    let notify = read_message(&mut second, &mut buffer).await;
    assert_eq!(notify.method(), "NOTIFY");
    second
        .write_all(
            phonerig_sip::message::response_to(&notify, Some("y"))
                .response(200)
                .raw
                .as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(
        sent.await.unwrap().unwrap(),
        NotifyOutcome::Answered { code: 200 }
    );
    rig.stop().await;
}

#[tokio::test]
async fn registration_and_notify_over_tls() {
    use std::sync::Arc;
    use tokio_rustls::rustls;

    let certified = rcgen::generate_simple_self_signed(vec!["127.78.8.1".to_owned()]).unwrap();
    let mut config = support::config(Timers::default());
    config.tls = Some(phonerig_sip::SipTls {
        port: 5061,
        chain_pem: certified.cert.pem(),
        key_pem: certified.signing_key.serialize_pem(),
    });
    let uc924 = phone("uc924", "4002", "001a4d5c258d");
    let rig = support::rig_with_config(
        "127.78.8.1",
        vec![uc924.clone()],
        Settings::default(),
        config,
    )
    .await;
    assert!(rig
        .handle
        .addrs()
        .contains(&"127.78.8.1:5061".parse().unwrap()));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.78.8.2:0".parse().unwrap()).unwrap();
    let tcp = socket
        .connect("127.78.8.1:5061".parse().unwrap())
        .await
        .unwrap();
    let local = tcp.local_addr().unwrap();
    let server_name = rustls::pki_types::ServerName::IpAddress(
        "127.78.8.1".parse::<std::net::IpAddr>().unwrap().into(),
    );
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(server_name, tcp)
        .await
        .unwrap();

    let rig_host = "127.78.8.1:5061";
    let request = |cseq: u32, auth: Option<String>| {
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        format!(
            "REGISTER sips:{rig_host} SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bKtls{cseq}\r\nFrom: <sip:4002@{rig_host}>;tag=t\r\nTo: <sip:4002@{rig_host}>\r\n\
             Call-ID: tls-1\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:4002@{local};transport=tls>\r\n{auth}Content-Length: 0\r\n\r\n"
        )
    };
    let mut buffer = Vec::new();
    tls.write_all(request(1, None).as_bytes()).await.unwrap();
    let challenged = read_tls(&mut tls, &mut buffer).await;
    assert_eq!(challenged.status(), Some(401));
    let challenge = Challenge::parse(&challenged.header("www-authenticate").unwrap()).unwrap();
    let answer = challenge.answer(
        "4002",
        "secret",
        "REGISTER",
        &format!("sips:{rig_host}"),
        "c1",
    );
    tls.write_all(request(2, Some(answer)).as_bytes())
        .await
        .unwrap();
    assert_eq!(read_tls(&mut tls, &mut buffer).await.status(), Some(200));
    assert_eq!(
        rig.handle.registration("4002").unwrap().transport,
        Transport::Tls
    );

    let handle = rig.handle.clone();
    let sent = tokio::spawn(async move { handle.notify(&uc924, "check-sync", None).await });
    let notify = read_tls(&mut tls, &mut buffer).await;
    assert_eq!(notify.method(), "NOTIFY");
    assert!(notify
        .header("via")
        .unwrap()
        .starts_with("SIP/2.0/TLS 127.78.8.1:5061;"));
    tls.write_all(
        phonerig_sip::message::response_to(&notify, Some("z"))
            .response(200)
            .raw
            .as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(
        sent.await.unwrap().unwrap(),
        NotifyOutcome::Answered { code: 200 }
    );
    let ok = rig
        .wait_for("sip.register ok", WAIT, |e| {
            is(e, "sip.register", "result", "ok")
        })
        .await;
    assert_eq!(ok.field_str("transport"), Some("tls"));
    drop(tls);

    // A client that does not speak TLS is a recorded handshake failure, nothing more.
    let mut plain = TcpStream::connect("127.78.8.1:5061").await.unwrap();
    plain
        .write_all(b"OPTIONS sip:x SIP/2.0\r\n\r\n")
        .await
        .unwrap();
    let failed = rig
        .wait_for("handshake failure", WAIT, |e| {
            e.kind == "sip.malformed" && e.field_str("transport") == Some("tls")
        })
        .await;
    assert!(failed
        .field_str("error")
        .unwrap()
        .starts_with("TLS handshake"));
    rig.stop().await;
}

async fn read_tls<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, buffer: &mut Vec<u8>) -> SipMsg {
    loop {
        if let Some(frame) = take_frame(buffer).unwrap() {
            return SipMsg::parse(&frame).unwrap();
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("message in time")
            .unwrap();
        assert!(n > 0, "connection closed");
        buffer.extend_from_slice(&chunk[..n]);
    }
}

/// `register = "ignore"`: a registrar that never answers. The phone's
/// REGISTER and each retransmission are recorded as `sip.message`, one
/// `sip.register` with `result = "ignored"` and no code marks the attempt,
/// and nothing at all comes back — while OPTIONS still gets its 200 (the
/// service is up; only REGISTER is ignored).
#[tokio::test]
async fn ignored_register_gets_no_answer_and_every_retransmission_is_recorded() {
    let settings = Settings {
        register: phonerig_sip::RegisterPolicy::Ignore,
        ..Settings::default()
    };
    let rig = rig(
        "127.130.3.1",
        vec![phone("h680", "4002", "0c383e680001")],
        settings,
        Timers::default(),
    )
    .await;
    let client = UdpSocket::bind("127.130.3.2:0").await.unwrap();
    let local = client.local_addr().unwrap();
    let rig_host = rig.addr.to_string();
    let request = format!(
        "REGISTER sip:{rig_host} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKign1\r\nFrom: <sip:4002@{rig_host}>;tag=h1\r\nTo: <sip:4002@{rig_host}>\r\n\
         Call-ID: ign-1@{local}\r\nCSeq: 1 REGISTER\r\nContact: <sip:4002@{local}>\r\nExpires: 300\r\n\
         User-Agent: Lvswitch SIP-H680 2.0.1.6\r\nContent-Length: 0\r\n\r\n"
    );
    // The original and two retransmissions (same branch, as timer E sends them).
    for _ in 0..3 {
        client.send_to(request.as_bytes(), rig.addr).await.unwrap();
    }
    let options = format!(
        "OPTIONS sip:4004@{rig_host} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKignopt\r\nFrom: <sip:4002@{rig_host}>;tag=o\r\nTo: <sip:4004@{rig_host}>\r\nCall-ID: ign-opt\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    client.send_to(options.as_bytes(), rig.addr).await.unwrap();
    // The only answer is the one to OPTIONS: nothing was sent for REGISTER.
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(WAIT, client.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let answer = SipMsg::parse(&buf[..n]).unwrap();
    assert_eq!(answer.status(), Some(200));
    assert!(answer.header("cseq").unwrap().ends_with("OPTIONS"));
    let attempt = rig
        .wait_for("sip.register ignored", WAIT, |e| {
            is(e, "sip.register", "result", "ignored")
        })
        .await;
    assert!(attempt.fields.get("code").is_none_or(|c| c.is_null()));
    assert_eq!(attempt.phone.as_deref(), Some("h680"));
    let registers_in = rig
        .events("sip.message")
        .iter()
        .filter(|e| {
            e.field_str("method") == Some("REGISTER") && e.field_str("direction") == Some("in")
        })
        .count();
    assert_eq!(registers_in, 3);
    assert_eq!(rig.events("sip.register").len(), 1);
    assert!(rig.handle.registration("4002").is_none());
    // No response of any kind went out for REGISTER.
    assert!(!rig
        .events("sip.message")
        .iter()
        .any(|e| e.field_str("direction") == Some("out")
            && e.field_str("cseq").is_some_and(|c| c.ends_with("REGISTER"))));
    rig.stop().await;
}
