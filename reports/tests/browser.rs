//! Opens `report.html` in headless Chromium (Debian package `chromium`):
//! the page must run its script without errors, keep one ladder arrow per
//! `sip.message` in the DOM, open a SIP message from a deep link, and render
//! a screenshot. Without Chromium the test prints `SKIPPED` — unless `CI` is
//! set, where a missing browser is a failure.
//!
//! `REPORT_SCREENSHOT=<file.png>` also keeps the screenshot (docs/report-screenshot.png
//! is made that way).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use phonerig_reports::{load_events, render_run_folder};

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::var_os("PATH")?
            .to_str()?
            .split(':')
            .map(|dir| Path::new(dir).join(name))
            .find(|candidate| candidate.is_file())
    })
}

fn skip_or_fail(reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{reason} (CI is set: install the Debian package `chromium`)");
    }
    println!("SKIPPED: {reason}");
}

/// What Chromium printed: the DOM on stdout for `--dump-dom`, its log on stderr.
struct Printed {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs headless Chromium with the flags safe for a sandbox-less root container
/// and no network use; kills it if it has not finished in two minutes. Output
/// goes to files: a dumped DOM is larger than a pipe's buffer.
fn run_chromium(browser: &Path, profile: &Path, extra: &[&str], url: &str) -> Printed {
    let stdout_path = profile.join("stdout.txt");
    let stderr_path = profile.join("stderr.txt");
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!(
            "--user-data-dir={}",
            profile.join("profile").display()
        ))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).unwrap())
        .stderr(File::create(&stderr_path).unwrap())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll chromium") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within two minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Printed {
        success: status.success(),
        stdout: std::fs::read_to_string(&stdout_path).unwrap(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap(),
    }
}

fn assert_no_script_errors(output: &Printed) {
    for line in output.stderr.lines() {
        assert!(
            !line.contains("Uncaught"),
            "script error in report.html: {line}"
        );
        assert!(
            !line.contains("CONSOLE") || !line.contains("ERROR"),
            "console error: {line}"
        );
    }
}

#[test]
fn report_renders_in_headless_chromium() {
    let Some(browser) = chromium() else {
        skip_or_fail("chromium is not installed");
        return;
    };
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/nightly/events.jsonl");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&data, dir.path().join("events.jsonl")).unwrap();
    std::fs::write(dir.path().join("capture.pcap"), b"").unwrap();
    std::fs::create_dir(dir.path().join("console")).unwrap();
    std::fs::write(dir.path().join("console/uc924-1.log"), "U-Boot 2016.01\n").unwrap();
    let report = render_run_folder(dir.path()).unwrap();
    let url = format!("file://{}", report.html.display());
    let profile = tempfile::tempdir().unwrap();

    let events = load_events(&data).unwrap();
    let messages_per_case: Vec<usize> = report
        .summary
        .cases
        .iter()
        .map(|case| {
            events[case.events.clone()]
                .iter()
                .filter(|e| e.kind == "sip.message")
                .count()
        })
        .collect();
    assert_eq!(messages_per_case, [4, 7, 2], "the recorded run changed");

    // The DOM after the script ran.
    let dumped = run_chromium(
        &browser,
        profile.path(),
        &["--dump-dom"],
        &format!("{url}#c2-raw-0"),
    );
    assert!(dumped.success, "chromium failed: {}", dumped.stderr);
    assert_no_script_errors(&dumped);
    let dom = dumped.stdout;
    assert!(
        dom.contains("data-report-ready=\"1\""),
        "the report script did not run to its end"
    );
    let sections: Vec<&str> = dom.split("<section class=\"case\"").skip(1).collect();
    assert_eq!(sections.len(), 3);
    for (section, expected) in sections.iter().zip(&messages_per_case) {
        let ladder = section
            .split("<svg")
            .nth(1)
            .expect("a ladder <svg> in every case with SIP");
        let ladder = ladder.split("</svg>").next().unwrap();
        assert_eq!(ladder.matches("class=\"sip-arrow").count(), *expected);
    }
    // The deep link #c2-raw-0 opened the INVITE in the raw-message viewer.
    let viewer = sections[1]
        .split("<pre class=\"raw-view\">")
        .nth(1)
        .expect("raw viewer");
    assert!(
        viewer.starts_with("INVITE sip:4004@198.18.0.1 SIP/2.0"),
        "viewer holds: {}",
        &viewer[..80.min(viewer.len())]
    );
    assert!(dom.contains("href=\"capture.pcap\"") && dom.contains("href=\"console/uc924-1.log\""));
    assert!(
        !dom.contains("http://") || no_external_resources(&dom),
        "the report must not fetch anything"
    );

    let shot = dir.path().join("report.png");
    let window = [
        "--window-size=1400,2000".to_owned(),
        format!("--screenshot={}", shot.display()),
    ];
    let shooting = run_chromium(&browser, profile.path(), &[&window[0], &window[1]], &url);
    assert!(shooting.success, "chromium failed: {}", shooting.stderr);
    assert_no_script_errors(&shooting);
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 40_000,
        "blank or not a screenshot: {} bytes",
        png.len()
    );
    if let Some(keep) = std::env::var_os("REPORT_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
}

/// True when no `src=` or `<link href=` points off the page (text may mention URLs).
fn no_external_resources(dom: &str) -> bool {
    !dom.contains("src=\"http") && !dom.contains("<link")
}
