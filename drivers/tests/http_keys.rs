//! The `http` keys backend against a small HTTP server on a loopback address
//! that records what the "phone" was asked.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use common::spec;
use phonerig_core::Timeline;
use phonerig_drivers::{keys, Driven, DriverEnv, Key};

/// Answers 200 to everything except paths containing `forbidden` (403);
/// records `(request line, authorization header)`.
/// `(request line, authorization header)` of each request, in order.
type RequestLog = Arc<Mutex<Vec<(String, String)>>>;

fn fake_phone() -> (String, RequestLog) {
    let listener = TcpListener::bind("127.0.57.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut authorization = String::new();
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap() == 0 || header == "\r\n" {
                    break;
                }
                if let Some(value) = header
                    .strip_prefix("authorization: ")
                    .or_else(|| header.strip_prefix("Authorization: "))
                {
                    authorization = value.trim().to_owned();
                }
            }
            let status = if request_line.contains("forbidden") {
                "403 Forbidden"
            } else {
                "200 OK"
            };
            seen.lock()
                .unwrap()
                .push((request_line.trim().to_owned(), authorization));
            let _ = stream.write_all(
                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
        }
    });
    (base, log)
}

#[tokio::test]
async fn keys_request_the_configured_urls_with_basic_auth() {
    let (base, requests) = fake_phone();
    let env = DriverEnv {
        sim_dir: "/nonexistent".into(),
        run_dir: None,
        phone: "uc924-1".into(),
    };
    let backend = keys(
        &spec(serde_json::json!({
            "backend": "http", "base": base, "user": "admin", "password": "admin",
            "urls": {"answer": "/AutoTest&keyboard=OK", "dial": "/AutoTest&keyboard={digits}", "hangup": "/forbidden"}
        })),
        &env,
    )
    .unwrap();
    let timeline = Timeline::in_memory();
    let driven = Driven::new(timeline.clone(), "uc924-1", None, None, Some(backend), None);
    driven.keys.key(&Key::Answer).await.unwrap();
    driven.keys.key(&Key::Dial("4004#".into())).await.unwrap();
    let refused = driven.keys.key(&Key::Hangup).await.unwrap_err().to_string();
    assert!(refused.contains("403"), "{refused}");
    let unsupported = driven
        .keys
        .key(&Key::Speaker)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        unsupported.contains("add keys.urls.speaker"),
        "{unsupported}"
    );

    let auth = "Basic YWRtaW46YWRtaW4="; // admin:admin
    assert_eq!(
        *requests.lock().unwrap(),
        [
            (
                "GET /AutoTest&keyboard=OK HTTP/1.1".to_owned(),
                auth.to_owned()
            ),
            (
                "GET /AutoTest&keyboard=4004%23 HTTP/1.1".to_owned(),
                auth.to_owned()
            ),
            ("GET /forbidden HTTP/1.1".to_owned(), auth.to_owned()),
        ]
    );
    let events = timeline.snapshot();
    let outcome: Vec<(&str, bool)> = events
        .iter()
        .map(|e| {
            (
                e.kind.as_str(),
                e.field("ok") == Some(&serde_json::json!(true)),
            )
        })
        .collect();
    assert_eq!(
        outcome,
        [
            ("keys.answer", true),
            ("keys.dial", true),
            ("keys.hangup", false),
            ("keys.speaker", false)
        ]
    );
    assert_eq!(events[1].field_str("arg"), Some("4004#"));
}

#[tokio::test]
async fn an_unreachable_phone_is_an_error_not_a_hang() {
    // Nothing listens on this loopback port (bound, then closed).
    let port = TcpListener::bind("127.0.57.2:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = DriverEnv {
        sim_dir: "/nonexistent".into(),
        run_dir: None,
        phone: "p".into(),
    };
    let backend =
        keys(&spec(serde_json::json!({"backend": "http", "base": format!("http://127.0.57.2:{port}"), "urls": {"answer": "/a"}})), &env)
            .unwrap();
    let error = backend.key(&Key::Answer).await.unwrap_err().to_string();
    assert!(error.contains(&format!("127.0.57.2:{port}/a")), "{error}");
}
