//! End to end on loopback: the server as the rig starts it, a test client
//! that follows (or breaks) the protocol on purpose.

mod common;

use std::time::Duration;

use common::{client, get, pattern, put, start, start_with, Get};
use phonerig_core::duration::HumanDuration;
use phonerig_core::{FileRule, PhoneDirectory, PhoneInfo};
use phonerig_tftp::packet::{error_code, Mode, Packet, Request};
use phonerig_tftp::{Settings, TftpConfig};
use rstest::rstest;
use serde_json::json;

fn short_timeout() -> Settings {
    Settings {
        timeout: Some(HumanDuration(Duration::from_millis(200))),
        ..Settings::default()
    }
}

fn root_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    dir
}

#[rstest]
#[case::plain_512("127.69.1.1", &[], 512, 1)]
#[case::blksize_1428("127.69.1.2", &[("blksize", "1428")], 1428, 1)]
#[case::windowsize_16("127.69.1.3", &[("blksize", "1428"), ("windowsize", "16")], 1428, 16)]
#[case::windowsize_16_at_512("127.69.1.4", &[("windowsize", "16"), ("tsize", "0")], 512, 16)]
#[case::exact_multiple_of_block("127.69.1.5", &[("blksize", "1000")], 1000, 1)]
#[tokio::test]
async fn whole_file_arrives(
    #[case] ip: &str,
    #[case] options: &[(&str, &str)],
    #[case] blksize: usize,
    #[case] windowsize: u64,
) {
    let content = pattern(100_000, 1);
    let root = root_with(&[("fw/firmware.rom", &content)]);
    let server = start(
        ip,
        root.path(),
        vec![],
        common::config(),
        Settings::default(),
    )
    .await;
    let socket = client(ip).await;
    let mut request = Get::new("/fw/firmware.rom");
    for (name, value) in options {
        request = request.option(name, value);
    }
    let got = get(&socket, server.addr, &request).await;
    assert!(got.complete && got.error.is_none(), "{got:?}");
    assert!(got.data == content, "content differs");
    assert_eq!(got.duplicates(), 0);
    let blocks = content.len() / blksize + 1;
    assert_eq!(got.receptions.len(), blocks);
    if options.is_empty() {
        assert!(got.oack.is_none());
    } else {
        let oack = got.oack.clone().expect("OACK");
        assert!(oack.contains(&("blksize".into(), blksize.to_string())) || blksize == 512);
        if windowsize > 1 {
            assert!(oack.contains(&("windowsize".into(), windowsize.to_string())));
        }
    }

    let event = server.fetch_event("fw/firmware.rom").await;
    assert_eq!(event.field_str("outcome"), Some("complete"));
    assert_eq!(event.field_str("protocol"), Some("tftp"));
    assert_eq!(event.field_u64("bytes"), Some(content.len() as u64));
    assert_eq!(event.field_u64("size"), Some(content.len() as u64));
    assert_eq!(
        event.field_str("peer"),
        Some(socket.local_addr().unwrap().to_string().as_str())
    );
    let requested: serde_json::Map<_, _> = options
        .iter()
        .map(|(n, v)| (n.to_string(), json!(v)))
        .collect();
    assert_eq!(
        event.field("options"),
        Some(&serde_json::Value::Object(requested))
    );
    if options.iter().any(|(n, _)| *n == "tsize") {
        assert_eq!(
            event.field("agreed").unwrap()["tsize"],
            json!(content.len().to_string())
        );
    }
    assert!(event.field_u64("duration_us").is_some());
    server.stop().await;
}

#[tokio::test]
async fn transfer_uses_its_own_port_on_the_listener_address() {
    let root = root_with(&[("a.cfg", b"x")]);
    let server = start(
        "127.69.1.6",
        root.path(),
        vec![],
        common::config(),
        Settings::default(),
    )
    .await;
    let socket = client("127.69.1.6").await;
    let got = get(&socket, server.addr, &Get::new("a.cfg")).await;
    let tid = got.server_tid.unwrap();
    assert_eq!(tid.ip(), server.addr.ip());
    assert_ne!(tid.port(), server.addr.port());
    server.stop().await;
}

#[tokio::test]
async fn lost_ack_is_retransmitted_and_file_still_correct() {
    let content = pattern(20_000, 2);
    let root = root_with(&[("cfg.xml", &content)]);
    let server = start(
        "127.69.1.10",
        root.path(),
        vec![],
        common::config(),
        short_timeout(),
    )
    .await;
    let socket = client("127.69.1.10").await;
    let mut request = Get::new("cfg.xml");
    request.drop_ack_of = Some(3);
    let got = get(&socket, server.addr, &request).await;
    assert!(got.complete && got.data == content);
    assert!(
        got.receptions[&3] >= 2,
        "block 3 was sent again after its ACK was lost: {:?}",
        got.receptions.get(&3)
    );
    assert_eq!(
        server.fetch_event("cfg.xml").await.field_str("outcome"),
        Some("complete")
    );
    server.stop().await;
}

#[tokio::test]
async fn duplicate_acks_do_not_cause_duplicate_sends() {
    let content = pattern(30 * 512 + 17, 3);
    let root = root_with(&[("big.cfg", &content)]);
    // A long retransmission timeout, so every duplicate seen could only come from a duplicate ACK.
    let settings = Settings {
        timeout: Some(HumanDuration(Duration::from_secs(20))),
        ..Settings::default()
    };
    let server = start(
        "127.69.1.11",
        root.path(),
        vec![],
        common::config(),
        settings,
    )
    .await;
    let socket = client("127.69.1.11").await;
    let mut request = Get::new("big.cfg");
    request.duplicate_acks = true;
    request.linger = Duration::from_millis(300);
    let got = get(&socket, server.addr, &request).await;
    assert!(got.complete && got.data == content);
    assert_eq!(
        got.duplicates(),
        0,
        "server resent blocks on duplicate ACKs: {:?}",
        got.receptions
    );
    server.stop().await;
}

#[tokio::test]
async fn windowed_transfer_resumes_after_the_acknowledged_block() {
    let content = pattern(200 * 700 + 5, 4);
    let root = root_with(&[("w.bin", &content)]);
    let server = start(
        "127.69.1.12",
        root.path(),
        vec![],
        common::config(),
        short_timeout(),
    )
    .await;
    let socket = client("127.69.1.12").await;
    let mut request = Get::new("w.bin")
        .option("blksize", "700")
        .option("windowsize", "16");
    // Block 21 (inside the second window) is lost: the client acknowledges 20
    // as soon as it sees 22, and the server must go on from 21.
    request.lose_data = Some(21);
    let got = get(&socket, server.addr, &request).await;
    assert!(got.complete, "{:?}", got.error);
    assert!(got.data == content, "content differs");
    assert!(got.receptions[&21] >= 2);
    let event = server.fetch_event("w.bin").await;
    assert_eq!(event.field_str("outcome"), Some("complete"));
    assert_eq!(event.field_u64("bytes"), Some(content.len() as u64));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_over_32_mb_at_512_rolls_block_numbers_over() {
    let content = pattern(33 * 1024 * 1024 + 1234, 5);
    let root = root_with(&[("huge.img", &content)]);
    let server = start(
        "127.69.1.13",
        root.path(),
        vec![],
        common::config(),
        Settings::default(),
    )
    .await;
    let socket = client("127.69.1.13").await;
    let got = get(&socket, server.addr, &Get::new("huge.img")).await;
    assert!(got.complete, "{:?}", got.error);
    assert!(got.receptions.len() > 65_536, "the block counter wrapped");
    assert!(got.data == content, "rolled-over file differs");
    let event = server.fetch_event("huge.img").await;
    assert_eq!(event.field_str("outcome"), Some("complete"));
    assert_eq!(event.field_u64("bytes"), Some(content.len() as u64));
    server.stop().await;
}

#[rstest]
#[case::parent("../secret", error_code::ACCESS_VIOLATION, "refused")]
#[case::nested_parent("cfg/../../secret", error_code::ACCESS_VIOLATION, "refused")]
#[case::backslashes("..\\secret", error_code::ACCESS_VIOLATION, "refused")]
#[case::symlink_out("link", error_code::ACCESS_VIOLATION, "refused")]
#[case::absolute_is_inside_root("/etc/passwd", error_code::FILE_NOT_FOUND, "not_found")]
#[case::absent("nothing.cfg", error_code::FILE_NOT_FOUND, "not_found")]
#[tokio::test]
async fn paths_outside_the_root_are_refused(
    #[case] path: &str,
    #[case] code: u16,
    #[case] outcome: &str,
) {
    let outside = root_with(&[("secret", b"s3cret")]);
    let root = root_with(&[("cfg/ok.xml", b"ok")]);
    std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("link")).unwrap();
    let server = start(
        "127.69.1.14",
        root.path(),
        vec![],
        common::config(),
        Settings::default(),
    )
    .await;
    let socket = client("127.69.1.14").await;
    let got = get(&socket, server.addr, &Get::new(path)).await;
    assert_eq!(got.error.as_ref().map(|e| e.0), Some(code), "{got:?}");
    assert!(got.data.is_empty());
    let event = server.event("tftp.fetch", |e| e.kind == "tftp.fetch").await;
    assert_eq!(event.field_str("outcome"), Some(outcome));
    assert_eq!(event.field_u64("code"), Some(u64::from(code)));
    assert_eq!(
        server.count("tftp.refused"),
        usize::from(outcome == "refused")
    );
    server.stop().await;
}

#[tokio::test]
async fn write_requests_are_refused_without_upload_dir() {
    let root = root_with(&[("cfg.xml", b"original")]);
    let server = start(
        "127.69.1.15",
        root.path(),
        vec![],
        common::config(),
        Settings::default(),
    )
    .await;
    let socket = client("127.69.1.15").await;
    let result = put(&socket, server.addr, "cfg.xml", b"overwritten", vec![]).await;
    assert_eq!(result.unwrap_err().0, error_code::ACCESS_VIOLATION);
    let refused = server
        .event("tftp.refused", |e| e.kind == "tftp.refused")
        .await;
    assert_eq!(refused.field_str("path"), Some("cfg.xml"));
    assert_eq!(
        std::fs::read(root.path().join("cfg.xml")).unwrap(),
        b"original"
    );
    server.stop().await;
}

#[tokio::test]
async fn uploads_land_in_upload_dir_only() {
    let root = root_with(&[]);
    let uploads = tempfile::tempdir().unwrap();
    let settings = Settings {
        upload_dir: Some(uploads.path().to_owned()),
        ..short_timeout()
    };
    let server = start(
        "127.69.1.16",
        root.path(),
        vec![],
        common::config(),
        settings,
    )
    .await;
    let content = pattern(5000, 6);
    let socket = client("127.69.1.16").await;
    put(
        &socket,
        server.addr,
        "logs/boot.log",
        &content,
        vec![("blksize".into(), "1024".into())],
    )
    .await
    .unwrap();
    let event = server
        .event("tftp.upload", |e| e.kind == "tftp.upload")
        .await;
    assert_eq!(event.field_str("outcome"), Some("complete"));
    assert_eq!(event.field_u64("bytes"), Some(5000));
    assert_eq!(
        std::fs::read(uploads.path().join("logs/boot.log")).unwrap(),
        content
    );

    let socket = client("127.69.1.16").await;
    let refused = put(&socket, server.addr, "../escape.txt", b"x", vec![]).await;
    assert_eq!(refused.unwrap_err().0, error_code::ACCESS_VIOLATION);
    assert!(!uploads.path().parent().unwrap().join("escape.txt").exists());
    // An announced size over the limit is refused before any data (error 3).
    let socket = client("127.69.1.16").await;
    let too_big = put(
        &socket,
        server.addr,
        "huge.img",
        b"x",
        vec![(
            "tsize".into(),
            (phonerig_tftp::MAX_UPLOAD_BYTES + 1).to_string(),
        )],
    )
    .await;
    assert_eq!(too_big.unwrap_err().0, error_code::DISK_FULL);
    assert!(!uploads.path().join("huge.img").exists());
    // Nothing half-written is left behind.
    let names: Vec<_> = std::fs::read_dir(uploads.path().join("logs"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("boot.log")]);
    server.stop().await;
}

#[tokio::test]
async fn malformed_packets_do_not_stop_the_server() {
    let root = root_with(&[("cfg.xml", b"still here")]);
    let server = start(
        "127.69.1.17",
        root.path(),
        vec![],
        common::config(),
        Settings::default(),
    )
    .await;
    let attacker = client("127.69.1.17").await;
    let junk: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        b"\x00\x09junk".to_vec(),
        b"\x00\x01no-terminator".to_vec(),
        b"\x00\x01file\x00mail\x00".to_vec(),
        b"\x00\x01file\x00octet\x00blksize\x00".to_vec(),
        b"\x00\x04\x00\x01".to_vec(),
        vec![0x55; 65_500],
    ];
    for packet in &junk {
        attacker.send_to(packet, server.addr).await.unwrap();
    }
    let mut buffer = vec![0u8; 1024];
    for _ in &junk {
        let (len, _) =
            tokio::time::timeout(Duration::from_secs(5), attacker.recv_from(&mut buffer))
                .await
                .unwrap()
                .unwrap();
        assert!(matches!(
            Packet::parse(&buffer[..len]),
            Ok(Packet::Error {
                code: error_code::ILLEGAL_OPERATION,
                ..
            })
        ));
    }
    // Error packets are never answered.
    attacker
        .send_to(b"\x00\x05\x00\x00bye\x00", server.addr)
        .await
        .unwrap();
    attacker
        .send_to(b"\x00\x05\x00", server.addr)
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), attacker.recv_from(&mut buffer))
            .await
            .is_err()
    );

    let socket = client("127.69.1.17").await;
    let got = get(&socket, server.addr, &Get::new("cfg.xml")).await;
    assert_eq!(got.data, b"still here");
    assert_eq!(server.count("tftp.malformed"), junk.len() + 1);
    server.stop().await;
}

#[tokio::test]
async fn netascii_converts_line_ends_on_the_fly() {
    let text = b"line one\nline two\r\nbare\rcr\n".repeat(100);
    let root = root_with(&[("boot.txt", &text)]);
    let server = start(
        "127.69.1.18",
        root.path(),
        vec![],
        common::config(),
        Settings::default(),
    )
    .await;
    let socket = client("127.69.1.18").await;
    let mut request = Get::new("boot.txt")
        .option("tsize", "0")
        .option("blksize", "64");
    request.mode = Mode::Netascii;
    let got = get(&socket, server.addr, &request).await;
    let mut wire = Vec::new();
    phonerig_tftp::netascii::encode_into(&text, &mut wire);
    assert!(got.complete);
    assert_eq!(got.data, wire);
    // tsize is left out in netascii (the size on the wire differs from the file).
    assert_eq!(
        got.oack.unwrap(),
        vec![("blksize".to_string(), "64".to_string())]
    );
    let event = server.fetch_event("boot.txt").await;
    assert_eq!(event.field_str("mode"), Some("netascii"));
    assert_eq!(event.field_u64("bytes"), Some(wire.len() as u64));
    server.stop().await;
}

#[rstest]
#[case::forced_404("gone.cfg", error_code::FILE_NOT_FOUND, "file not found")]
#[case::forced_503("busy.cfg", error_code::NOT_DEFINED, "forced 503")]
#[case::absent_hides_a_file("hidden.cfg", error_code::FILE_NOT_FOUND, "file not found")]
#[tokio::test]
async fn scenario_rules_force_answers(
    #[case] file: &str,
    #[case] code: u16,
    #[case] message: &str,
) {
    let root = root_with(&[("hidden.cfg", b"on disk"), ("gone.cfg", b"on disk")]);
    let rules = vec![
        FileRule {
            path: "gone.cfg".into(),
            status: Some(404),
            ..FileRule::default()
        },
        FileRule {
            path: "busy.cfg".into(),
            status: Some(503),
            ..FileRule::default()
        },
        FileRule {
            path: "hidden.cfg".into(),
            absent: true,
            ..FileRule::default()
        },
    ];
    let server = start(
        "127.69.1.19",
        root.path(),
        rules,
        common::config(),
        Settings::default(),
    )
    .await;
    let socket = client("127.69.1.19").await;
    let got = get(&socket, server.addr, &Get::new(file)).await;
    assert_eq!(got.error, Some((code, message.to_string())));
    let event = server.fetch_event(file).await;
    let expected_outcome = if file == "hidden.cfg" {
        "not_found"
    } else {
        "forced"
    };
    assert_eq!(event.field_str("outcome"), Some(expected_outcome));
    assert_eq!(event.field_u64("code"), Some(u64::from(code)));
    server.stop().await;
}

#[rstest]
#[case::cut_inside_a_block(700, true)]
#[case::cut_on_a_block_boundary(1024, false)]
#[tokio::test]
async fn truncate_sends_only_the_first_bytes(
    #[case] limit: u64,
    #[case] ends_with_short_block: bool,
) {
    let content = pattern(5000, 7);
    let root = root_with(&[("fw.rom", &content)]);
    let rules = vec![FileRule {
        path: "fw.rom".into(),
        truncate: Some(limit),
        ..FileRule::default()
    }];
    // The default 1 s server timeout: long enough that a loaded machine does
    // not make the server give up before the client acknowledged the cut.
    let server = start(
        "127.69.1.20",
        root.path(),
        rules,
        TftpConfig {
            retries: 2,
            ..common::config()
        },
        Settings::default(),
    )
    .await;
    let socket = client("127.69.1.20").await;
    let mut request = Get::new("fw.rom");
    request.timeout = Duration::from_millis(500);
    request.retries = 2;
    let got = get(&socket, server.addr, &request).await;
    assert_eq!(got.data, content[..limit as usize]);
    // A cut inside a block ends in a short file; one on a boundary leaves the client waiting.
    assert_eq!(got.complete, ends_with_short_block);
    let event = server.fetch_event("fw.rom").await;
    assert_eq!(event.field_str("outcome"), Some("truncated"));
    assert_eq!(event.field_u64("bytes"), Some(limit));
    server.stop().await;
}

#[tokio::test]
async fn delay_holds_the_first_packet_and_repeated_requests_start_nothing_new() {
    let root = root_with(&[("slow.cfg", b"eventually")]);
    let rules = vec![FileRule {
        path: "slow.cfg".into(),
        delay: Some(Duration::from_millis(600)),
        ..FileRule::default()
    }];
    let server = start(
        "127.69.1.21",
        root.path(),
        rules,
        common::config(),
        Settings::default(),
    )
    .await;
    let socket = client("127.69.1.21").await;
    let started = std::time::Instant::now();
    let mut request = Get::new("slow.cfg");
    // The client resends its RRQ every 100 ms while the server waits.
    request.timeout = Duration::from_millis(100);
    request.retries = 20;
    let got = get(&socket, server.addr, &request).await;
    assert!(started.elapsed() >= Duration::from_millis(600));
    assert_eq!(got.data, b"eventually");
    server.fetch_event("slow.cfg").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        server.count("tftp.fetch"),
        1,
        "one transfer for one client TID"
    );
    server.stop().await;
}

#[tokio::test]
async fn beyond_max_transfers_the_answer_is_busy() {
    let root = root_with(&[("a.cfg", &pattern(4096, 8))]);
    // The stalled transfer holds its slot for (1 + retries) x 1 s: ample time for the second request.
    let config = TftpConfig {
        max_transfers: 1,
        retries: 2,
        ..common::config()
    };
    let server = start(
        "127.69.1.22",
        root.path(),
        vec![],
        config,
        Settings::default(),
    )
    .await;
    // The first client asks and then never acknowledges, holding the only slot.
    let stalled = client("127.69.1.22").await;
    let rrq = Packet::Rrq(Request {
        filename: "a.cfg".into(),
        mode: Mode::Octet,
        options: vec![],
    })
    .encode();
    stalled.send_to(&rrq, server.addr).await.unwrap();
    let mut buffer = vec![0u8; 1024];
    stalled.recv_from(&mut buffer).await.unwrap();

    let second = client("127.69.1.22").await;
    let got = get(&second, server.addr, &Get::new("a.cfg")).await;
    assert_eq!(
        got.error,
        Some((error_code::NOT_DEFINED, "busy".to_string()))
    );
    let refused = server
        .event("tftp.refused", |e| e.kind == "tftp.refused")
        .await;
    assert!(refused.field_str("reason").unwrap().starts_with("busy"));

    // The stalled transfer times out and frees the slot.
    let timed_out = server
        .event("timed_out fetch", |e| {
            e.field_str("outcome") == Some("timed_out")
        })
        .await;
    assert_eq!(
        timed_out.field_str("peer"),
        Some(stalled.local_addr().unwrap().to_string().as_str())
    );
    let third = client("127.69.1.22").await;
    assert!(get(&third, server.addr, &Get::new("a.cfg")).await.complete);
    server.stop().await;
}

#[tokio::test]
async fn foreign_transfer_ids_get_error_5_and_the_transfer_goes_on() {
    let content = pattern(3000, 9);
    let root = root_with(&[("f.bin", &content)]);
    let server = start(
        "127.69.1.23",
        root.path(),
        vec![],
        common::config(),
        Settings::default(),
    )
    .await;
    let socket = client("127.69.1.23").await;
    socket
        .send_to(
            &Packet::Rrq(Request {
                filename: "f.bin".into(),
                mode: Mode::Octet,
                options: vec![],
            })
            .encode(),
            server.addr,
        )
        .await
        .unwrap();
    let mut buffer = vec![0u8; 2048];
    let (len, tid) = socket.recv_from(&mut buffer).await.unwrap();
    let mut data = match Packet::parse(&buffer[..len]).unwrap() {
        Packet::Data { block: 1, data } => data,
        other => panic!("{other:?}"),
    };

    let intruder = client("127.69.1.23").await;
    intruder
        .send_to(&Packet::Ack { block: 1 }.encode(), tid)
        .await
        .unwrap();
    let (len, from) = intruder.recv_from(&mut buffer).await.unwrap();
    assert_eq!(from, tid);
    assert!(matches!(
        Packet::parse(&buffer[..len]),
        Ok(Packet::Error {
            code: error_code::UNKNOWN_TRANSFER_ID,
            ..
        })
    ));

    let mut block = 1u16;
    loop {
        socket
            .send_to(&Packet::Ack { block }.encode(), tid)
            .await
            .unwrap();
        let (len, _) = socket.recv_from(&mut buffer).await.unwrap();
        let Ok(Packet::Data {
            block: next,
            data: chunk,
        }) = Packet::parse(&buffer[..len])
        else {
            panic!("expected DATA")
        };
        assert_eq!(next, block + 1);
        block = next;
        data.extend_from_slice(&chunk);
        if chunk.len() < 512 {
            socket
                .send_to(&Packet::Ack { block }.encode(), tid)
                .await
                .unwrap();
            break;
        }
    }
    assert_eq!(data, content);
    assert_eq!(
        server.fetch_event("f.bin").await.field_str("outcome"),
        Some("complete")
    );
    server.stop().await;
}

#[tokio::test]
async fn client_error_aborts_the_transfer() {
    let root = root_with(&[("f.bin", &pattern(3000, 10))]);
    let server = start(
        "127.69.1.24",
        root.path(),
        vec![],
        common::config(),
        Settings::default(),
    )
    .await;
    let socket = client("127.69.1.24").await;
    let rrq = Packet::Rrq(Request {
        filename: "f.bin".into(),
        mode: Mode::Octet,
        options: vec![("blksize".into(), "1024".into())],
    });
    socket.send_to(&rrq.encode(), server.addr).await.unwrap();
    let mut buffer = vec![0u8; 2048];
    let (_, tid) = socket.recv_from(&mut buffer).await.unwrap();
    // Refuse the OACK the way RFC 2347 says a client does.
    socket
        .send_to(
            &Packet::Error {
                code: error_code::OPTION_NEGOTIATION,
                message: "no thanks".into(),
            }
            .encode(),
            tid,
        )
        .await
        .unwrap();
    let event = server.fetch_event("f.bin").await;
    assert_eq!(event.field_str("outcome"), Some("aborted"));
    assert_eq!(
        event.field_u64("code"),
        Some(u64::from(error_code::OPTION_NEGOTIATION))
    );
    assert_eq!(event.field_str("message"), Some("no thanks"));
    server.stop().await;
}

#[tokio::test]
async fn silent_client_times_out_after_the_retry_limit() {
    let root = root_with(&[("f.bin", &pattern(3000, 11))]);
    let config = TftpConfig {
        retries: 2,
        ..common::config()
    };
    let server = start("127.69.1.25", root.path(), vec![], config, short_timeout()).await;
    let socket = client("127.69.1.25").await;
    socket
        .send_to(
            &Packet::Rrq(Request {
                filename: "f.bin".into(),
                mode: Mode::Octet,
                options: vec![],
            })
            .encode(),
            server.addr,
        )
        .await
        .unwrap();
    let event = server.fetch_event("f.bin").await;
    assert_eq!(event.field_str("outcome"), Some("timed_out"));
    // The first block was sent once and then resent exactly `retries` times.
    let mut buffer = vec![0u8; 2048];
    let mut copies = 0;
    while let Ok(Ok((len, _))) =
        tokio::time::timeout(Duration::from_millis(100), socket.recv_from(&mut buffer)).await
    {
        assert!(matches!(
            Packet::parse(&buffer[..len]),
            Ok(Packet::Data { block: 1, .. })
        ));
        copies += 1;
    }
    assert_eq!(copies, 3);
    server.stop().await;
}

#[tokio::test]
async fn disable_options_behaves_as_plain_rfc_1350() {
    let content = pattern(2000, 12);
    let root = root_with(&[("f.bin", &content)]);
    let settings = Settings {
        disable_options: true,
        ..Settings::default()
    };
    let server = start(
        "127.69.1.26",
        root.path(),
        vec![],
        common::config(),
        settings,
    )
    .await;
    let socket = client("127.69.1.26").await;
    let got = get(
        &socket,
        server.addr,
        &Get::new("f.bin")
            .option("blksize", "1428")
            .option("tsize", "0"),
    )
    .await;
    assert!(got.oack.is_none());
    assert_eq!(got.receptions.len(), 2000 / 512 + 1);
    assert_eq!(got.data, content);
    server.stop().await;
}

#[tokio::test]
async fn blksize_is_clamped_to_the_configured_maximum() {
    let content = pattern(10_000, 13);
    let root = root_with(&[("f.bin", &content)]);
    let config = TftpConfig {
        max_blksize: 1468,
        ..common::config()
    };
    let server = start(
        "127.69.1.28",
        root.path(),
        vec![],
        config,
        Settings::default(),
    )
    .await;
    let socket = client("127.69.1.28").await;
    let got = get(
        &socket,
        server.addr,
        &Get::new("f.bin").option("blksize", "65464"),
    )
    .await;
    assert_eq!(
        got.oack.unwrap(),
        vec![("blksize".to_string(), "1468".to_string())]
    );
    assert_eq!(got.data, content);
    let event = server.fetch_event("f.bin").await;
    assert_eq!(event.field("agreed"), Some(&json!({"blksize": "1468"})));
    server.stop().await;
}

#[tokio::test]
async fn events_name_the_phone_that_asked() {
    let phone = PhoneInfo {
        name: "uc924-1".into(),
        model: "htek-uc924".into(),
        mac: "001fc110d3a9".parse().unwrap(),
        ext: "4002".into(),
        password: "pw".into(),
        devcode: Some("0012".into()),
    };
    let directory = PhoneDirectory::new([phone]);
    directory.bind_ip(
        &"001fc110d3a9".parse().unwrap(),
        "127.69.1.29".parse().unwrap(),
    );
    let root = root_with(&[("cfg0012.xml", b"<cfg/>")]);
    let server = start_with(
        "127.69.1.29",
        root.path(),
        vec![],
        directory,
        common::config(),
        Settings::default(),
    )
    .await;
    let socket = client("127.69.1.29").await;
    get(&socket, server.addr, &Get::new("cfg0012.xml")).await;
    let event = server.fetch_event("cfg0012.xml").await;
    assert_eq!(event.phone.as_deref(), Some("uc924-1"));
    server.stop().await;
}

#[tokio::test]
async fn stopping_the_service_releases_the_port() {
    let root = root_with(&[]);
    let server = start(
        "127.69.1.30",
        root.path(),
        vec![],
        common::config(),
        Settings::default(),
    )
    .await;
    let addr = server.addr;
    server.stop().await;
    std::net::UdpSocket::bind(addr).expect("port free again after stop");
}
