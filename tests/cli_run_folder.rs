//! The CLI end to end on virtual phones: the run folder, a failing
//! expectation that explains itself, `rig check` naming file/line/field,
//! `rig schema`, and a `kill -9` that leaves only whole events.

use std::process::{Command, Stdio};
use std::time::Duration;

use phonerig_cli::{events, loopback_lab, rig, Workspace};

const RIG: &str = env!("CARGO_BIN_EXE_rig");

const FETCHES_THEN_FAILS: &str = r#"
name = "expects a file the phone never asks for"
source = "test fixture"
phones = "uc924"
timeout = "1m"

[serve.dhcp.options]
66 = "http://{rig.http}"

[[serve.file]]
path = "cfg{phone.mac}.xml"
content = "<hl_provision version=\"1\"><config version=\"1\"></config></hl_provision>"

[[step]]
power = "cycle"

[[step]]
expect.fetch = { file = "cfg{phone.mac}.xml", protocol = "http" }
within = "20s"

[[step]]
name = "impossible"
expect.fetch = { file = "never-requested.xml" }
within = "2s"
"#;

#[test]
fn failing_expectation_explains_itself_with_nearest_events() {
    let ws = Workspace::new(&loopback_lab(101));
    let scenario = ws.write("fails.toml", FETCHES_THEN_FAILS);
    let out = rig(
        RIG,
        &[
            "run",
            scenario.to_str().unwrap(),
            "--lab",
            ws.lab().to_str().unwrap(),
            "--runs",
            ws.runs().to_str().unwrap(),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = ws.run_dir();
    let events = events(&run);
    let verdicts: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "step.verdict")
        .collect();
    assert_eq!(verdicts.len(), 3);
    assert_eq!(verdicts[0]["fields"]["verdict"], "pass");
    assert_eq!(verdicts[1]["fields"]["verdict"], "pass", "{}", verdicts[1]);
    let failed = verdicts[2];
    assert_eq!(failed["fields"]["verdict"], "fail");
    let explanation = failed["fields"]["explanation"].as_str().unwrap();
    assert!(explanation.contains("never-requested.xml"), "{explanation}");
    assert!(explanation.contains("within 2s"), "{explanation}");
    assert!(explanation.contains("Nearest events"), "{explanation}");
    // The nearest events include the fetch that did happen, with its timestamp.
    let nearest = failed["fields"]["nearest"].as_array().unwrap();
    assert!(
        nearest.iter().any(|n| n["kind"] == "http.fetch"),
        "{nearest:?}"
    );
    assert!(explanation.contains("http.fetch"), "{explanation}");
    let end = events.iter().find(|e| e["kind"] == "case.end").unwrap();
    assert_eq!(end["fields"]["verdict"], "fail");
    assert!(run.join("summary.json").is_file());
}

#[test]
fn check_names_file_line_and_field() {
    let ws = Workspace::new(&loopback_lab(102));
    let broken = FETCHES_THEN_FAILS.replace("within = \"2s\"", "within = \"two seconds\"");
    let scenario = ws.write("broken.toml", &broken);
    let out = rig(
        RIG,
        &[
            "check",
            scenario.to_str().unwrap(),
            "--lab",
            ws.lab().to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let line = broken
        .lines()
        .position(|l| l.contains("two seconds"))
        .unwrap()
        + 1;
    assert!(stdout.contains(&format!("broken.toml:{line}:")), "{stdout}");
    assert!(stdout.contains("field `within`"), "{stdout}");

    let good = ws.write("good.toml", FETCHES_THEN_FAILS);
    let out = rig(
        RIG,
        &[
            "check",
            good.to_str().unwrap(),
            "--lab",
            ws.lab().to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn schema_is_json_schema_of_scenarios() {
    let out = rig(RIG, &["schema"]);
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(schema["$schema"]
        .as_str()
        .unwrap()
        .contains("json-schema.org"));
    assert!(schema.to_string().contains("fetch_order"));
}

#[test]
fn kill_9_mid_run_leaves_only_whole_events() {
    let ws = Workspace::new(&loopback_lab(103));
    let scenario = ws.write(
        "long.toml",
        "name = \"long\"\nsource = \"test\"\nphones = \"all\"\n[[step]]\npower = \"cycle\"\n[[step]]\nwait = \"60s\"\n",
    );
    let mut child = Command::new(RIG)
        .args([
            "run",
            scenario.to_str().unwrap(),
            "--lab",
            ws.lab().to_str().unwrap(),
            "--runs",
            ws.runs().to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the phone is busy provisioning, so events are being written.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let written = std::fs::read_dir(ws.runs())
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| e.path().join("events.jsonl"));
        if let Some(path) = written {
            if std::fs::read_to_string(&path)
                .map(|t| t.contains("dhcp."))
                .unwrap_or(false)
            {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no DHCP event within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let text = std::fs::read_to_string(ws.run_dir().join("events.jsonl")).unwrap();
    assert!(text.ends_with('\n'), "last line cut");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() > 3);
    for line in lines {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
}
