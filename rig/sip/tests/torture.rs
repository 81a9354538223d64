//! RFC 4475 (SIP torture test messages), §3.1.1 valid and §3.1.2 invalid
//! messages, from `tests/torture/{valid,invalid}/*.dat` (named as in the
//! RFC's archive). The parser must accept every valid one, with the fields
//! the RFC describes, and refuse every invalid one for the reason the RFC
//! gives, each within a bound (no hang) and without a panic; then
//! the whole set goes over UDP and TCP to a running SIP service, which
//! records the refused ones as `sip.malformed` and still registers a phone.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use phonerig_sip::message::SipMsg;
use phonerig_sip::Settings;
use rstest::rstest;
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

/// The torture message `name` of `kind` (`valid` or `invalid`).
fn message(kind: &str, name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/torture")
        .join(kind)
        .join(format!("{name}.dat"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every message of a folder has its row in the tables below, so a message
/// added to the folder cannot go untested.
#[rstest]
#[case::valid("valid", VALID)]
#[case::invalid("invalid", INVALID)]
fn every_torture_message_has_a_case(#[case] kind: &str, #[case] table: &[&str]) {
    let on_disk: Vec<String> = messages(kind).into_iter().map(|(name, _)| name).collect();
    let mut listed: Vec<String> = table.iter().map(|name| (*name).to_owned()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "tests/torture/{kind} and its table differ");
}

const VALID: &[&str] = &[
    "dblreq",
    "esc01",
    "escnull",
    "lwsdisp",
    "noreason",
    "semiuri",
    "transports",
    "unreason",
    "wsinv",
];

const INVALID: &[&str] = &[
    "badinv01",
    "badvers",
    "bigcode",
    "insuf",
    "ltgtruri",
    "lwsruri",
    "lwsstart",
    "mismatch01",
    "ncl",
    "scalar02",
    "trws",
];

#[test]
fn valid_torture_messages_parse() {
    let mut wrong = Vec::new();
    for (name, bytes) in messages("valid") {
        if let Err(e) = parse_bounded(&name, bytes) {
            wrong.push(format!("{name}: refused: {e}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn invalid_torture_messages_are_refused() {
    let mut wrong = Vec::new();
    for (name, bytes) in messages("invalid") {
        if parse_bounded(&name, bytes).is_ok() {
            wrong.push(format!("{name}: accepted"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The fields the rig acts on come out as RFC 4475 §3.1.1 describes them:
/// start line, Call-ID, CSeq, the user it routes by, the body cut to
/// Content-Length.
#[rstest]
#[case::wsinv("wsinv", Some("sip:vivekg@chair-dnrc.example.com;unknownparam"), None, "wsinv.ndaksdj@192.0.2.1", (9, "INVITE"), 150)]
#[case::esc01("esc01", Some("sip:sips%3Auser%40example.com@example.net"), None, "esc01.239409asdfakjkn23onasd0-3234", (234234, "INVITE"), 150)]
#[case::semiuri("semiuri", Some("sip:user;par=u%40example.net@example.com"), None, "semiuri.0ha0isndaksdj", (8, "OPTIONS"), 0)]
#[case::noreason("noreason", None, Some(100), "noreason.asndj203insdf99223ndf", (35, "INVITE"), 0)]
#[case::unreason("unreason", None, Some(200), "unreason.1234ksdfak3j2erwedfsASdf", (35, "INVITE"), 154)]
#[case::dblreq("dblreq", Some("sip:example.com"), None, "dblreq.0ha0isndaksdj99sdfafnl3lk233412", (8, "REGISTER"), 0)]
#[case::escnull("escnull", Some("sip:example.com"), None, "escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd", (14398234, "REGISTER"), 0)]
#[case::lwsdisp("lwsdisp", Some("sip:user@example.com"), None, "lwsdisp.1234abcd@funky.example.com", (60, "OPTIONS"), 0)]
#[case::transports("transports", Some("sip:user@example.com"), None, "transports.kijh4akdnaqjkwendsasfdj", (60, "OPTIONS"), 0)]
fn valid_torture_fields(
    #[case] name: &str,
    #[case] request_uri: Option<&str>,
    #[case] status: Option<u16>,
    #[case] call_id: &str,
    #[case] cseq: (u32, &str),
    #[case] body_len: usize,
) {
    let msg = SipMsg::parse(&message("valid", name)).unwrap();
    assert_eq!(msg.request_uri().as_deref(), request_uri);
    assert_eq!(msg.status(), status);
    assert_eq!(msg.call_id(), call_id);
    assert_eq!(msg.cseq(), Some((cseq.0, cseq.1.to_owned())));
    assert_eq!(msg.body().len(), body_len);
}

/// The header details the tricky ones are about: folded and LWS-laden
/// headers (wsinv), escaped and `;` user parts (esc01, semiuri), an escaped
/// NUL (escnull), a display name without a space (lwsdisp), five Vias.
#[test]
fn valid_torture_details() {
    let wsinv = SipMsg::parse(&message("valid", "wsinv")).unwrap();
    assert_eq!(wsinv.to_tag().as_deref(), Some("1918181833n"));
    assert_eq!(wsinv.from_tag().as_deref(), Some("98asjd8"));
    assert_eq!(wsinv.branch().as_deref(), Some("390skdjuw"));
    assert_eq!(wsinv.headers_named("via").len(), 2);
    assert_eq!(wsinv.header("max-forwards").as_deref(), Some("0068"));
    assert_eq!(
        wsinv.header("newfangledheader").as_deref(),
        Some("newfangled value continued newfangled value")
    );
    assert_eq!(wsinv.header("subject").as_deref(), Some(""));
    assert!(wsinv.body_text().starts_with("v=0\r\n"));

    let esc01 = SipMsg::parse(&message("valid", "esc01")).unwrap();
    assert_eq!(
        esc01.request_user().as_deref(),
        Some("sips:user@example.com")
    );
    assert_eq!(
        phonerig_sip::message::user_of(&esc01.to()).as_deref(),
        Some("user")
    );
    assert_eq!(
        esc01.header("content-type").as_deref(),
        Some("application/sdp")
    );

    let semiuri = SipMsg::parse(&message("valid", "semiuri")).unwrap();
    assert_eq!(
        semiuri.request_user().as_deref(),
        Some("user;par=u@example.net")
    );

    let escnull = SipMsg::parse(&message("valid", "escnull")).unwrap();
    assert_eq!(
        phonerig_sip::message::user_of(&escnull.to()).as_deref(),
        Some("null-\0-null")
    );
    assert_eq!(escnull.headers_named("contact").len(), 2);

    let lwsdisp = SipMsg::parse(&message("valid", "lwsdisp")).unwrap();
    assert_eq!(lwsdisp.from_tag().as_deref(), Some("323"));

    let transports = SipMsg::parse(&message("valid", "transports")).unwrap();
    assert_eq!(transports.headers_named("via").len(), 5);
    assert_eq!(transports.branch().as_deref(), Some("z9hG4bKkdjuw"));

    let noreason = SipMsg::parse(&message("valid", "noreason")).unwrap();
    assert_eq!(noreason.first_line(), "SIP/2.0 100");
    assert_eq!(noreason.method(), "INVITE");
}

/// Each invalid message is refused for the reason RFC 4475 §3.1.2 gives,
/// and the error says so.
#[rstest]
#[case::badinv01("badinv01", "an empty parameter")]
#[case::badvers("badvers", "not SIP/2.0")]
#[case::bigcode("bigcode", "status code is not three digits")]
#[case::insuf("insuf", "missing mandatory header")]
#[case::ltgtruri("ltgtruri", "no `<>`")]
#[case::lwsruri("lwsruri", "single spaces")]
#[case::lwsstart("lwsstart", "control character")]
#[case::mismatch01(
    "mismatch01",
    "CSeq method INVITE does not match the request method OPTIONS"
)]
#[case::ncl("ncl", "bad Content-Length `-999`")]
#[case::scalar02("scalar02", "bad CSeq")]
#[case::trws("trws", "single spaces")]
fn invalid_torture_reasons(#[case] name: &str, #[case] reason: &str) {
    let error = SipMsg::parse(&message("invalid", name))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(reason),
        "{name}: `{error}` does not say `{reason}`"
    );
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
