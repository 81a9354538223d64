//! RFC 4475 (SIP torture test messages), §3.1.1 valid and §3.1.2 invalid
//! messages, from `tests/torture/{valid,invalid}/*.dat` (named as in the
//! RFC's archive). The parser must accept every valid one and refuse the
//! invalid ones (except the listed `KNOWN_GAPS`, held to their current
//! outcome), each within a bound (no hang) and without a panic; then
//! the whole set goes over UDP and TCP to a running SIP service, which
//! records the refused ones as `sip.malformed` and still registers a phone.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use phonerig_sip::message::SipMsg;
use phonerig_sip::Settings;
use support::{fast_timers, phone, rig};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};

fn messages(kind: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/torture")
        .join(kind);
    let mut all: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "dat"))
        .map(|p| {
            (
                p.file_stem().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    all.sort();
    assert!(
        all.len() >= 8,
        "torture messages missing in {}",
        dir.display()
    );
    all
}

/// Parses on another thread so a hang fails the test instead of stalling it.
fn parse_bounded(name: &str, bytes: Vec<u8>) -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let outcome = std::panic::catch_unwind(|| SipMsg::parse(&bytes).map(|_| ()));
        let _ = tx.send(outcome);
    });
    match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(result)) => result.map_err(|e| e.to_string()),
        Ok(Err(_)) => panic!("{name}: the parser panicked"),
        Err(_) => panic!("{name}: the parser did not return within 5 s"),
    }
}

/// Where `SipMsg::parse` (rsip underneath) departs from RFC 4475 today, with
/// why. The tests hold these to their current outcome, so a fixed parser
/// fails here until its entry is removed: the list only shrinks.
const KNOWN_GAPS: &[(&str, &str)] = &[
    (
        "esc01",
        "rsip's tokenizer refuses the escaped `%3A`/`%40` user part of the Request-URI",
    ),
    (
        "wsinv",
        "rsip's tokenizer refuses the folded, LWS-laden headers (`TO :` + continuation lines)",
    ),
    (
        "semiuri",
        "rsip's tokenizer refuses a `;` parameter in the user part of the Request-URI",
    ),
    (
        "noreason",
        "rsip's tokenizer needs a reason phrase after the status code",
    ),
    (
        "badinv01",
        "empty Via/Contact parameters (`;;,;,,`) are not checked",
    ),
    ("ltgtruri", "a Request-URI in `<>` is not refused"),
    (
        "mismatch01",
        "the CSeq method is not compared with the request method",
    ),
    ("ncl", "a negative Content-Length is not refused"),
];

fn known_gap(name: &str) -> bool {
    KNOWN_GAPS.iter().any(|(gap, _)| *gap == name)
}

#[test]
fn valid_torture_messages_parse() {
    let mut wrong = Vec::new();
    for (name, bytes) in messages("valid") {
        let outcome = parse_bounded(&name, bytes);
        match (outcome, known_gap(&name)) {
            (Ok(()), false) | (Err(_), true) => {}
            (Err(e), false) => wrong.push(format!("{name}: refused: {e}")),
            (Ok(()), true) => wrong.push(format!("{name}: parses now; remove it from KNOWN_GAPS")),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn invalid_torture_messages_are_refused() {
    let mut wrong = Vec::new();
    for (name, bytes) in messages("invalid") {
        let outcome = parse_bounded(&name, bytes);
        match (outcome, known_gap(&name)) {
            (Err(_), false) | (Ok(()), true) => {}
            (Ok(()), false) => wrong.push(format!("{name}: accepted")),
            (Err(_), true) => wrong.push(format!("{name}: refused now; remove it from KNOWN_GAPS")),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

fn register(cseq: u32) -> String {
    format!(
        "REGISTER sip:127.150.40.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.150.40.2:5070;branch=z9hG4bKtort{cseq}\r\nMax-Forwards: 70\r\nFrom: <sip:4002@127.150.40.1>;tag=t{cseq}\r\nTo: <sip:4002@127.150.40.1>\r\nCall-ID: torture-after-{cseq}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:4002@127.150.40.2:5070>\r\nExpires: 60\r\nContent-Length: 0\r\n\r\n"
    )
}

#[tokio::test]
async fn the_service_survives_every_torture_message_over_udp_and_tcp() {
    let rig = rig(
        "127.150.40.1",
        vec![phone("uc924", "4002", "00:1f:c1:15:00:02")],
        Settings::default(),
        fast_timers(),
    )
    .await;
    let all: Vec<(String, Vec<u8>)> = messages("valid")
        .into_iter()
        .chain(messages("invalid"))
        .collect();
    let udp = UdpSocket::bind("127.150.40.2:5070").await.unwrap();
    for (_, bytes) in &all {
        udp.send_to(bytes, rig.addr).await.unwrap();
    }
    let mut tcp = TcpStream::connect(rig.addr).await.unwrap();
    for (_, bytes) in &all {
        // A broken frame may make the server drop the connection: that is fine.
        if tcp.write_all(bytes).await.is_err() {
            break;
        }
    }
    drop(tcp);

    // Still a registrar: a well-formed REGISTER after the torture is answered.
    udp.send_to(register(1).as_bytes(), rig.addr).await.unwrap();
    let mut buffer = vec![0u8; 4096];
    let reply = loop {
        let (len, _) = tokio::time::timeout(Duration::from_secs(5), udp.recv_from(&mut buffer))
            .await
            .expect("the service answers after the torture messages")
            .unwrap();
        let text = String::from_utf8_lossy(&buffer[..len]).into_owned();
        if text.contains("torture-after-1") {
            break text;
        }
    };
    assert!(reply.starts_with("SIP/2.0 "), "{reply}");
    assert!(
        !rig.events("sip.malformed").is_empty(),
        "the invalid messages were not recorded as sip.malformed"
    );
    assert!(rig.events("service.panicked").is_empty());
    rig.stop().await;
}
