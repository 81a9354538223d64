//! Real third-party clients against the server on loopback: curl (Debian
//! `curl`) and the tftp-hpa client (Debian `tftp-hpa`). Without them the tests
//! print `SKIPPED: …` and pass, except under CI where they fail.

mod common;

use std::path::Path;
use std::process::Output;

use common::{pattern, start, Server};
use phonerig_core::netns::{program, require};
use phonerig_core::FileRule;
use phonerig_tftp::Settings;
use rstest::rstest;

fn root_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    dir
}

/// Runs a client program, killed if it is still running after two minutes
/// (tftp-hpa would otherwise wait a long time for a server that went quiet).
async fn run(program: &str, args: Vec<String>, cwd: &Path) -> Output {
    let child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(cwd)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(std::time::Duration::from_secs(120), child)
        .await
        .unwrap_or_else(|_| panic!("{program} did not finish"))
        .unwrap()
}

async fn curl(server: &Server, file: &str, extra: &[&str], out: &Path) -> Output {
    let url = format!("tftp://{}/{file}", server.addr);
    let mut args: Vec<String> = vec![
        "--silent".into(),
        "--show-error".into(),
        "--max-time".into(),
        "120".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(["--output".into(), out.display().to_string(), url]);
    run("curl", args, out.parent().unwrap()).await
}

async fn tftp_hpa(server: &Server, mode: &str, command: &str, cwd: &Path) -> Output {
    let args = vec![
        "-m".into(),
        mode.into(),
        server.addr.ip().to_string(),
        server.addr.port().to_string(),
        "-c".into(),
    ]
    .into_iter()
    .chain(command.split(' ').map(String::from))
    .collect();
    run("tftp", args, cwd).await
}

fn ok(output: &Output) {
    assert!(
        output.status.success(),
        "client failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[rstest]
#[case::default_options("127.69.2.1", &[])]
#[case::blksize_1428("127.69.2.2", &["--tftp-blksize", "1428"])]
#[case::blksize_8("127.69.2.3", &["--tftp-blksize", "8"])]
#[case::no_options("127.69.2.4", &["--tftp-no-options"])]
#[tokio::test]
async fn curl_downloads_byte_identical(#[case] ip: &str, #[case] extra: &[&str]) {
    if require(program("curl")).is_err() {
        return;
    }
    let content = pattern(if extra.contains(&"8") { 3_001 } else { 300_001 }, 21);
    let root = root_with(&[("firmware.rom", &content)]);
    let server = start(
        ip,
        root.path(),
        vec![],
        common::config(),
        Settings::default(),
    )
    .await;
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("got");
    ok(&curl(&server, "firmware.rom", extra, &target).await);
    assert!(
        std::fs::read(&target).unwrap() == content,
        "curl got different bytes"
    );
    let event = server.fetch_event("firmware.rom").await;
    assert_eq!(event.field_str("outcome"), Some("complete"));
    if extra.contains(&"1428") {
        assert_eq!(event.field("agreed").unwrap()["blksize"], "1428");
    }
    if extra.contains(&"--tftp-no-options") {
        assert_eq!(event.field("options"), Some(&serde_json::json!({})));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_a_file_over_32_mb_across_block_rollover() {
    if require(program("curl")).is_err() {
        return;
    }
    let content = pattern(32 * 1024 * 1024 + 4096 + 3, 22);
    let root = root_with(&[("big.img", &content)]);
    let server = start(
        "127.69.2.5",
        root.path(),
        vec![],
        common::config(),
        Settings::default(),
    )
    .await;
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("got");
    ok(&curl(&server, "big.img", &["--tftp-blksize", "512"], &target).await);
    assert!(
        std::fs::read(&target).unwrap() == content,
        "curl got different bytes"
    );
    server.stop().await;
}

#[tokio::test]
async fn curl_reports_missing_and_refused_files() {
    if require(program("curl")).is_err() {
        return;
    }
    let root = root_with(&[("ok.cfg", b"ok")]);
    let rules = vec![FileRule {
        path: "denied.cfg".into(),
        status: Some(403),
        ..FileRule::default()
    }];
    let server = start(
        "127.69.2.6",
        root.path(),
        rules,
        common::config(),
        Settings::default(),
    )
    .await;
    let out = tempfile::tempdir().unwrap();
    let missing = curl(&server, "missing.cfg", &[], &out.path().join("a")).await;
    // curl's exit code 68: "TFTP server: file not found".
    assert_eq!(
        missing.status.code(),
        Some(68),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    let denied = curl(&server, "denied.cfg", &[], &out.path().join("b")).await;
    assert!(!denied.status.success());
    assert_eq!(
        server.fetch_event("denied.cfg").await.field_str("outcome"),
        Some("forced")
    );
    server.stop().await;
}

#[tokio::test]
async fn tftp_hpa_downloads_binary_byte_identical() {
    if require(program("tftp")).is_err() {
        return;
    }
    let content = pattern(200_003, 23);
    let root = root_with(&[("fw.bin", &content)]);
    let server = start(
        "127.69.2.7",
        root.path(),
        vec![],
        common::config(),
        Settings::default(),
    )
    .await;
    let out = tempfile::tempdir().unwrap();
    ok(&tftp_hpa(&server, "binary", "get fw.bin got.bin", out.path()).await);
    assert!(std::fs::read(out.path().join("got.bin")).unwrap() == content);
    let event = server.fetch_event("fw.bin").await;
    assert_eq!(event.field_str("outcome"), Some("complete"));
    assert_eq!(event.field_str("mode"), Some("octet"));
    server.stop().await;
}

#[tokio::test]
async fn tftp_hpa_ascii_mode_round_trips_text() {
    if require(program("tftp")).is_err() {
        return;
    }
    let text = b"<?xml version=\"1.0\"?>\n<cfg>\r\n  <line>1</line>\n</cfg>\n".repeat(300);
    let root = root_with(&[("cfg.xml", &text)]);
    let server = start(
        "127.69.2.8",
        root.path(),
        vec![],
        common::config(),
        Settings::default(),
    )
    .await;
    let out = tempfile::tempdir().unwrap();
    ok(&tftp_hpa(&server, "ascii", "get cfg.xml got.xml", out.path()).await);
    assert!(
        std::fs::read(out.path().join("got.xml")).unwrap() == text,
        "netascii did not round-trip"
    );
    assert_eq!(
        server.fetch_event("cfg.xml").await.field_str("mode"),
        Some("netascii")
    );
    server.stop().await;
}

#[tokio::test]
async fn tftp_hpa_upload_lands_in_upload_dir() {
    if require(program("tftp")).is_err() {
        return;
    }
    let root = root_with(&[]);
    let uploads = tempfile::tempdir().unwrap();
    let settings = Settings {
        upload_dir: Some(uploads.path().to_owned()),
        ..Settings::default()
    };
    let server = start(
        "127.69.2.9",
        root.path(),
        vec![],
        common::config(),
        settings,
    )
    .await;
    let work = tempfile::tempdir().unwrap();
    let content = pattern(70_000, 24);
    std::fs::write(work.path().join("syslog.bin"), &content).unwrap();
    ok(&tftp_hpa(&server, "binary", "put syslog.bin phone.log", work.path()).await);
    server
        .event("tftp.upload", |e| e.kind == "tftp.upload")
        .await;
    assert!(std::fs::read(uploads.path().join("phone.log")).unwrap() == content);
    server.stop().await;
}
