//! `rig serve --power-on` with the virtual lab on a loopback address of this
//! test's own; once the Htek phone registers, `rig notify` (through the
//! serve's control socket) prints the phone's `200` and the phone fetches its
//! configuration again.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use phonerig_cli::{loopback_lab, repo_root, rig, Workspace};

const RIG: &str = env!("CARGO_BIN_EXE_rig");

/// The `rig serve` child, stopped with SIGTERM (and reaped) even when the test fails.
struct Serve(Child);

impl Serve {
    fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.0.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        self.0.wait().expect("reap rig serve")
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn events(run_dir: &Path) -> Vec<serde_json::Value> {
    // The serve is still writing: a last line may be partial.
    std::fs::read_to_string(run_dir.join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Polls the serve's run folder until an event satisfies `found` (or panics after `within`).
fn wait_for(
    run_dir: &Path,
    within: Duration,
    what: &str,
    found: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        if let Some(event) = events(run_dir).into_iter().find(|e| found(e)) {
            return event;
        }
        assert!(Instant::now() < deadline, "no {what} within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn serve_run_dir(runs: &Path, within: Duration) -> PathBuf {
    let deadline = Instant::now() + within;
    loop {
        let found = std::fs::read_dir(runs).ok().and_then(|dirs| {
            dirs.flatten()
                .map(|e| e.path())
                .find(|p| p.join("serve.sock").exists())
        });
        if let Some(dir) = found {
            return dir;
        }
        assert!(
            Instant::now() < deadline,
            "rig serve made no control socket"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn notify_through_a_running_serve_gets_200_and_a_refetch() {
    let ws = Workspace::new(&loopback_lab(160));
    let scenario = repo_root().join("scenarios/htek/resync/check-sync-refetch.toml");
    let child = Command::new(RIG)
        .args([
            "serve",
            "--scenario",
            scenario.to_str().unwrap(),
            "--lab",
            ws.lab().to_str().unwrap(),
            "--runs",
            ws.runs().to_str().unwrap(),
            "--power-on",
        ])
        .env("RIG_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rig serve");
    let mut serve = Serve(child);
    let run_dir = serve_run_dir(&ws.runs(), Duration::from_secs(30));

    wait_for(
        &run_dir,
        Duration::from_secs(30),
        "sip.register ok from uc924",
        |e| e["kind"] == "sip.register" && e["phone"] == "uc924" && e["fields"]["result"] == "ok",
    );

    let out = rig(
        RIG,
        &["notify", "uc924", "--runs", ws.runs().to_str().unwrap()],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "200");

    // The NOTIFY is on the timeline, then the phone fetches its configuration again.
    let notify = wait_for(&run_dir, Duration::from_secs(10), "sip.notify", |e| {
        e["kind"] == "sip.notify" && e["phone"] == "uc924"
    });
    assert_eq!(notify["fields"]["event"], "check-sync");
    assert_eq!(notify["fields"]["code"], 200);
    let notified_at = notify["t_us"].as_u64().expect("t_us");
    wait_for(
        &run_dir,
        Duration::from_secs(20),
        "http.fetch of cfg001fc110d3a9.xml after the NOTIFY",
        |e| {
            e["kind"] == "http.fetch"
                && e["fields"]["file"] == "cfg001fc110d3a9.xml"
                && e["t_us"].as_u64().is_some_and(|t| t > notified_at)
        },
    );

    // The same through an explicit --control path; an unknown phone is an error answer.
    let socket = run_dir.join("serve.sock");
    let out = rig(
        RIG,
        &[
            "notify",
            "nosuchphone",
            "--control",
            socket.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ERROR no phone `nosuchphone`"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let status = serve.terminate();
    assert!(status.success(), "rig serve ended with {status}");
    assert!(!socket.exists(), "the control socket was left behind");
}

#[test]
fn notify_without_a_running_serve_says_so() {
    let ws = Workspace::new(&loopback_lab(161));
    let out = rig(
        RIG,
        &["notify", "uc924", "--runs", ws.runs().to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rig serve"), "{stderr}");
}
