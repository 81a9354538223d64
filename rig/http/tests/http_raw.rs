//! The HTTP service against hand-written bytes: malformed requests, the
//! connection bound, shutdown.

mod support;

use std::time::Duration;

use phonerig_core::FileRule;
use support::{Rig, Setup};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn malformed_request_is_answered_400_and_logged_and_service_goes_on() {
    let rules = vec![FileRule {
        path: "a.cfg".into(),
        content: Some("fine".into()),
        ..FileRule::default()
    }];
    let rig = Rig::start(Setup {
        rules,
        ..Setup::default()
    })
    .await;
    let addr = rig.http.unwrap();

    let answer = exchange(addr, b"GARBAGE \x01\x02 NOT HTTP\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let malformed = rig.event("http.malformed", 0).await;
    assert_eq!(malformed.field_str("protocol"), Some("http"));
    assert!(malformed.field_str("error").is_some());

    let answer = exchange(
        addr,
        b"GET /a.cfg HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("fine"),
        "{answer}"
    );
    rig.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_bound_wait_their_turn_and_are_reported() {
    let rules = vec![FileRule {
        path: "a.cfg".into(),
        content: Some("fine".into()),
        ..FileRule::default()
    }];
    let rig = Rig::start(Setup {
        rules,
        max_connections: 2,
        ..Setup::default()
    })
    .await;
    let addr = rig.http.unwrap();

    // Two idle keep-alive connections hold both permits.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /a.cfg HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(stream);
    }
    // A third client over the bound is held back, not closed: a phone whose
    // fetch fails boots on without the file.
    let mut third = TcpStream::connect(addr).await.unwrap();
    third
        .write_all(b"GET /a.cfg HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let overloaded = rig.event("http.overloaded", 0).await;
    assert_eq!(overloaded.field_u64("limit"), Some(2));
    assert_eq!(overloaded.field_u64("queued"), Some(1));
    // A fourth waits in the listen backlog behind it.
    let mut fourth = TcpStream::connect(addr).await.unwrap();
    fourth
        .write_all(b"GET /a.cfg HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();

    // Releasing the held connections lets both waiting requests be answered
    // on the connections they were sent on.
    held.clear();
    for stream in [&mut third, &mut fourth] {
        let mut answer = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("fine"),
            "waiting connection was not served: {answer:?}"
        );
    }
    rig.stop().await;
}

#[tokio::test]
async fn stopping_releases_the_port_and_reports_it() {
    let rig = Rig::start(Setup::default()).await;
    let addr = rig.http.unwrap();
    // An idle open connection must not hold the service up.
    let _idle = TcpStream::connect(addr).await.unwrap();
    let timeline = rig.timeline.clone();
    rig.stop().await;
    assert!(timeline
        .snapshot()
        .iter()
        .any(|e| e.kind == "service.stopped" && e.field_str("service") == Some("http")));
    assert!(timeline
        .snapshot()
        .iter()
        .any(|e| e.kind == "service.started"));
    std::net::TcpListener::bind(addr).expect("port is free again");
}

#[tokio::test]
async fn https_asked_without_a_port_is_an_error() {
    let ctx = phonerig_core::ServiceContext {
        timeline: phonerig_core::Timeline::in_memory(),
        directory: Default::default(),
        bind_ip: support::unique_ip(),
        placeholders: Default::default(),
        tree: phonerig_core::ProvisioningTree::new(
            None,
            vec![],
            Default::default(),
            Default::default(),
        ),
        shutdown: Default::default(),
    };
    let settings = phonerig_http::Settings {
        https: Some(true),
        ..Default::default()
    };
    let config = phonerig_http::HttpConfig {
        http_port: Some(0),
        https_port: None,
        ..Default::default()
    };
    let error = phonerig_http::start(ctx, config, settings)
        .await
        .err()
        .expect("refused");
    assert!(error.to_string().contains("HTTPS"), "{error}");
}

#[tokio::test]
async fn disabled_service_binds_nothing() {
    let timeline = phonerig_core::Timeline::in_memory();
    let ctx = phonerig_core::ServiceContext {
        timeline: timeline.clone(),
        directory: Default::default(),
        bind_ip: support::unique_ip(),
        placeholders: Default::default(),
        tree: phonerig_core::ProvisioningTree::new(
            None,
            vec![],
            Default::default(),
            Default::default(),
        ),
        shutdown: Default::default(),
    };
    let settings = phonerig_http::Settings {
        enabled: Some(false),
        ..Default::default()
    };
    let service = phonerig_http::start(
        ctx,
        phonerig_http::HttpConfig {
            http_port: Some(0),
            ..Default::default()
        },
        settings,
    )
    .await
    .unwrap();
    assert!(service.addrs.is_empty());
    assert!(timeline.is_empty());
}

#[tokio::test]
async fn client_leaving_mid_download_is_an_aborted_fetch() {
    let root = tempfile::tempdir().unwrap();
    support::write_random(&root.path().join("fw.rom"), 8 * 1024 * 1024, 5);
    let rig = Rig::start(Setup {
        root: Some(root.path().into()),
        ..Setup::default()
    })
    .await;
    let mut stream = TcpStream::connect(rig.http.unwrap()).await.unwrap();
    stream
        .write_all(b"GET /fw.rom HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = vec![0u8; 100_000];
    stream.read_exact(&mut first).await.unwrap();
    drop(stream);
    let fetch = rig.event("http.fetch", 0).await;
    assert_eq!(fetch.field_str("outcome"), Some("aborted"));
    assert!(fetch.field_u64("bytes").unwrap() < 8 * 1024 * 1024);
    assert_eq!(fetch.field_u64("size"), Some(8 * 1024 * 1024));
    rig.stop().await;
}

#[tokio::test]
async fn http_1_0_client_without_host_is_served() {
    let rules = vec![FileRule {
        path: "a.cfg".into(),
        content: Some("old phone".into()),
        ..FileRule::default()
    }];
    let rig = Rig::start(Setup {
        rules,
        ..Setup::default()
    })
    .await;
    let answer = exchange(rig.http.unwrap(), b"GET /a.cfg HTTP/1.0\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
    assert!(answer.ends_with("old phone"));
    rig.stop().await;
}

#[tokio::test]
async fn mac_in_the_query_names_the_phone() {
    let rules = vec![FileRule {
        path: "cfg.xml".into(),
        content: Some("<ext>{phone.ext}</ext>".into()),
        ..FileRule::default()
    }];
    let rig = Rig::start(Setup {
        rules,
        ..Setup::default()
    })
    .await;
    let answer = exchange(
        rig.http.unwrap(),
        b"GET /cfg.xml?mac=001FC110D3A9 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.ends_with("<ext>4002</ext>"), "{answer}");
    assert_eq!(
        rig.event("http.fetch", 0).await.phone.as_deref(),
        Some("uc924-1")
    );
    rig.stop().await;
}

#[tokio::test]
async fn forced_statuses_without_body_are_sent_as_such() {
    let rules = vec![
        FileRule {
            path: "same.cfg".into(),
            status: Some(304),
            ..FileRule::default()
        },
        FileRule {
            path: "weird.cfg".into(),
            status: Some(101),
            ..FileRule::default()
        },
    ];
    let rig = Rig::start(Setup {
        rules,
        ..Setup::default()
    })
    .await;
    let answer = exchange(
        rig.http.unwrap(),
        b"GET /same.cfg HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 304"), "{answer}");
    assert!(
        answer.ends_with("\r\n\r\n"),
        "no body after a 304: {answer}"
    );
    let answer = exchange(
        rig.http.unwrap(),
        b"GET /weird.cfg HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 500"), "{answer}");
    assert_eq!(
        rig.event("http.fetch", 0).await.field_u64("code"),
        Some(304)
    );
    assert_eq!(
        rig.event("http.fetch", 1).await.field_str("outcome"),
        Some("forced")
    );
    rig.stop().await;
}
