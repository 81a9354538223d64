//! The HTTP service against curl on loopback.

mod support;

use std::time::Duration;

use phonerig_core::FileRule;
use support::{curl, have_curl, status_of, write_random, Rig, Setup};

fn rule(path: &str) -> FileRule {
    FileRule {
        path: path.into(),
        ..FileRule::default()
    }
}

/// `(outcome, code)` of every `http.fetch`, once `count` of them are there.
async fn fetch_outcomes(rig: &Rig, count: usize) -> Vec<(String, u64)> {
    rig.event("http.fetch", count - 1).await;
    rig.timeline
        .snapshot()
        .iter()
        .filter(|e| e.kind == "http.fetch")
        .map(|e| {
            (
                e.field_str("outcome").unwrap().to_owned(),
                e.field_u64("code").unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn serves_a_large_file_byte_identical_and_reports_the_fetch() {
    if !have_curl() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let firmware = write_random(&root.path().join("fw924.rom"), 32 * 1024 * 1024 + 17, 7);
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("got.rom");
    let rig = Rig::start(Setup {
        root: Some(root.path().into()),
        ..Setup::default()
    })
    .await;

    let result = curl(&[
        "-A",
        "Htek UC924 2.0.4.2",
        "-o",
        out.to_str().unwrap(),
        &rig.url("/fw924.rom"),
    ])
    .await;
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(
        std::fs::read(&out).unwrap() == firmware,
        "downloaded bytes differ"
    );

    let fetch = rig.event("http.fetch", 0).await;
    assert_eq!(fetch.field_str("file"), Some("fw924.rom"));
    assert_eq!(fetch.field_str("outcome"), Some("complete"));
    assert_eq!(fetch.field_str("protocol"), Some("http"));
    assert_eq!(fetch.field_str("method"), Some("GET"));
    assert_eq!(fetch.field_str("auth"), Some("none"));
    assert_eq!(fetch.field_str("user_agent"), Some("Htek UC924 2.0.4.2"));
    assert_eq!(fetch.field_u64("code"), Some(200));
    assert_eq!(fetch.field_u64("bytes"), Some(firmware.len() as u64));
    assert_eq!(fetch.field_u64("size"), Some(firmware.len() as u64));
    assert!(fetch.field_str("peer").unwrap().starts_with("127."));
    assert!(fetch.field_u64("duration_us").is_some());
    rig.stop().await;
}

#[tokio::test]
async fn absent_missing_and_forced_answers() {
    if !have_curl() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("cfg0012.xml"), "<x/>").unwrap();
    let rules = vec![
        FileRule {
            absent: true,
            ..rule("cfg0012.xml")
        },
        FileRule {
            status: Some(500),
            ..rule("broken.xml")
        },
        FileRule {
            status: Some(503),
            delay: Some(Duration::from_millis(200)),
            ..rule("busy.xml")
        },
    ];
    let rig = Rig::start(Setup {
        root: Some(root.path().into()),
        rules,
        ..Setup::default()
    })
    .await;

    assert_eq!(status_of(&[], &rig.url("/cfg0012.xml")).await.0, "404");
    assert_eq!(status_of(&[], &rig.url("/nothing-here.xml")).await.0, "404");
    assert_eq!(status_of(&[], &rig.url("/broken.xml")).await.0, "500");
    assert_eq!(status_of(&[], &rig.url("/busy.xml")).await.0, "503");
    assert_eq!(
        fetch_outcomes(&rig, 4).await,
        vec![
            ("not_found".into(), 404),
            ("not_found".into(), 404),
            ("forced".into(), 500),
            ("forced".into(), 503)
        ]
    );
    rig.stop().await;
}

#[tokio::test]
async fn delayed_file_still_arrives_whole() {
    if !have_curl() {
        return;
    }
    let rules = vec![FileRule {
        content: Some("slow but sure".into()),
        delay: Some(Duration::from_millis(300)),
        ..rule("slow.cfg")
    }];
    let rig = Rig::start(Setup {
        rules,
        ..Setup::default()
    })
    .await;
    let out = curl(&[&rig.url("/slow.cfg")]).await;
    assert!(out.status.success());
    assert_eq!(out.stdout, b"slow but sure");
    assert_eq!(
        rig.event("http.fetch", 0).await.field_str("outcome"),
        Some("complete")
    );
    rig.stop().await;
}

#[tokio::test]
async fn truncated_download_breaks_for_the_client() {
    if !have_curl() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let firmware = write_random(&root.path().join("fw924.rom"), 1024 * 1024, 3);
    let rules = vec![FileRule {
        truncate: Some(100_000),
        ..rule("fw*.rom")
    }];
    let rig = Rig::start(Setup {
        root: Some(root.path().into()),
        rules,
        ..Setup::default()
    })
    .await;
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("got.rom");

    let result = curl(&["-o", out.to_str().unwrap(), &rig.url("/fw924.rom")]).await;
    // 18: "Partial file. Only a part of the file was transferred."
    assert_eq!(
        result.status.code(),
        Some(18),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len(), 100_000);
    assert!(got[..] == firmware[..100_000]);

    let fetch = rig.event("http.fetch", 0).await;
    assert_eq!(fetch.field_str("outcome"), Some("truncated"));
    assert_eq!(fetch.field_u64("bytes"), Some(100_000));
    assert_eq!(fetch.field_u64("size"), Some(firmware.len() as u64));
    rig.stop().await;
}

#[tokio::test]
async fn path_escapes_are_refused() {
    if !have_curl() {
        return;
    }
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "do not serve").unwrap();
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("cfg")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("link")).unwrap();
    let rig = Rig::start(Setup {
        root: Some(root.path().into()),
        ..Setup::default()
    })
    .await;

    for path in [
        "/../etc/passwd",
        "/cfg/../../etc/passwd",
        "/%2e%2e/etc/passwd",
        "/cfg/%2E%2E/%2e%2e/etc/passwd",
        "/cfg%00.xml",
        "/..%5c..%5cetc",
        "/link",
    ] {
        let out = curl(&["--path-as-is", "-w", "%{http_code}", &rig.url(path)]).await;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.ends_with("403"), "{path}: {text}");
        assert!(!text.contains("do not serve"));
    }
    assert_eq!(rig.count("http.refused"), 7, "{}", rig.dump());
    let refused = rig.event("http.refused", 2).await;
    assert_eq!(refused.field_str("path"), Some("../etc/passwd"));
    assert_eq!(refused.field_str("reason"), Some("`..` in path"));
    assert!(fetch_outcomes(&rig, 7)
        .await
        .iter()
        .all(|(outcome, code)| outcome == "refused" && *code == 403));
    rig.stop().await;
}

#[tokio::test]
async fn action_url_becomes_an_event_with_every_parameter() {
    if !have_curl() {
        return;
    }
    let rig = Rig::start(Setup::default()).await;
    let out = curl(&[
        "-w",
        "%{http_code}",
        &rig.url("/action/Registered?mac=00:1f:c1:10:d3:a9&ip=127.0.0.9&line=1&note=a%20b"),
    ])
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n200");
    let event = rig.event("action.registered", 0).await;
    assert_eq!(event.source, phonerig_core::Source::Action);
    assert_eq!(event.phone.as_deref(), Some("uc924-1"));
    assert_eq!(event.field_str("mac"), Some("00:1f:c1:10:d3:a9"));
    assert_eq!(event.field_str("ip"), Some("127.0.0.9"));
    assert_eq!(event.field_str("line"), Some("1"));
    assert_eq!(event.field_str("note"), Some("a b"));
    assert!(event
        .field_str("peer")
        .unwrap()
        .starts_with(&rig.ip.to_string()[..4]));
    assert_eq!(rig.count("http.fetch"), 0, "action reports are not fetches");

    let (code, _) = status_of(&[], &rig.url("/action/bad%20name")).await;
    assert_eq!(code, "400");
    rig.event("http.malformed", 0).await;
    rig.stop().await;
}

#[tokio::test]
async fn action_without_mac_is_attributed_by_address() {
    if !have_curl() {
        return;
    }
    let rig = Rig::start(Setup::default()).await;
    // Bind the phone to the address curl will come from.
    let client_ip: std::net::IpAddr = support::unique_ip();
    rig.directory.bind_ip(&support::phone().mac, client_ip);
    let out = curl(&[
        "--interface",
        &client_ip.to_string(),
        &rig.url("/action/offhook"),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let event = rig.event("action.offhook", 0).await;
    assert_eq!(event.phone.as_deref(), Some("uc924-1"));
    assert!(event
        .field_str("peer")
        .unwrap()
        .starts_with(&format!("{client_ip}:")));
    rig.stop().await;
}

#[tokio::test]
async fn head_and_ranges() {
    if !have_curl() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let data = write_random(&root.path().join("fw.rom"), 300_000, 11);
    let rig = Rig::start(Setup {
        root: Some(root.path().into()),
        ..Setup::default()
    })
    .await;

    let head = curl(&["-I", &rig.url("/fw.rom")]).await;
    let head = String::from_utf8_lossy(&head.stdout).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-length: 300000"), "{head}");
    assert!(head.contains("accept-ranges: bytes"), "{head}");
    let fetch = rig.event("http.fetch", 0).await;
    assert_eq!(fetch.field_str("method"), Some("HEAD"));
    assert_eq!(
        (fetch.field_str("outcome"), fetch.field_u64("bytes")),
        (Some("complete"), Some(0))
    );

    let part = curl(&["-r", "1000-1999", "-D", "-", &rig.url("/fw.rom")]).await;
    let text = String::from_utf8_lossy(&part.stdout).to_string();
    assert!(text.starts_with("HTTP/1.1 206"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-range: bytes 1000-1999/300000"),
        "{text}"
    );
    assert!(part.stdout.ends_with(&data[1000..2000]));

    let tail = curl(&["-r", "-10", &rig.url("/fw.rom")]).await;
    assert_eq!(tail.stdout, &data[data.len() - 10..]);
    assert_eq!(
        status_of(&["-r", "400000-"], &rig.url("/fw.rom")).await.0,
        "416"
    );

    // Resuming a download (curl -C) gives the same bytes as one go.
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("resume.rom");
    std::fs::write(&out, &data[..123_456]).unwrap();
    let resumed = curl(&["-C", "-", "-o", out.to_str().unwrap(), &rig.url("/fw.rom")]).await;
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert!(std::fs::read(&out).unwrap() == data);

    assert_eq!(
        fetch_outcomes(&rig, 5).await[1..],
        [
            ("complete".into(), 206),
            ("complete".into(), 206),
            ("error".into(), 416),
            ("complete".into(), 206)
        ]
    );
    rig.stop().await;
}

#[tokio::test]
async fn templates_expand_for_the_phone_named_in_the_path() {
    if !have_curl() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    std::fs::write(
        root.path().join("cfg001fc110d3a9.xml"),
        "<P47>{rig.ip}:{rig.sip_port}</P47><P35>{phone.ext}</P35>",
    )
    .unwrap();
    let rules = vec![FileRule {
        template: true,
        ..rule("cfg{phone.mac}.xml")
    }];
    let rig = Rig::start(Setup {
        root: Some(root.path().into()),
        rules,
        ..Setup::default()
    })
    .await;
    let out = curl(&[&rig.url("/cfg001fc110d3a9.xml")]).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("<P47>{}:5060</P47><P35>4002</P35>", rig.ip)
    );
    let fetch = rig.event("http.fetch", 0).await;
    assert_eq!(fetch.phone.as_deref(), Some("uc924-1"));
    rig.stop().await;
}

#[tokio::test]
async fn other_methods_get_405() {
    if !have_curl() {
        return;
    }
    let rules = vec![FileRule {
        content: Some("x".into()),
        ..rule("a.cfg")
    }];
    let rig = Rig::start(Setup {
        rules,
        ..Setup::default()
    })
    .await;
    for method in ["POST", "PUT", "DELETE"] {
        assert_eq!(
            status_of(&["-X", method], &rig.url("/a.cfg")).await.0,
            "405"
        );
    }
    assert_eq!(
        fetch_outcomes(&rig, 3).await,
        vec![("error".into(), 405); 3]
    );
    rig.stop().await;
}
