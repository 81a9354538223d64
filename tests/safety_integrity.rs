//! Run integrity when something breaks mid-run (docs/safety.md "Run
//! integrity"): a panicking task, a case that runs out of time, a virtual
//! phone whose control socket is gone, a serial console unplugged, a phone
//! that reboots while its TFTP request is served. Each case ends with its
//! reason, every service stops, the next case runs, the run folder is whole
//! (`run.end` last, junit.xml, summary.json, report.html) and a second run on
//! the same addresses starts. Loopback 127.171.x.y is this file's own; each
//! test has its own slice of it (`loopback_lab_slice`).

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use phonerig_cli::{events, loopback_lab_slice, rig, wait_for_event_text, Workspace};
use serde_json::Value;

const RIG: &str = env!("CARGO_BIN_EXE_rig");
const OCTET: u8 = 171;

/// A case that passes on any virtual phone, quickly.
const BOOTS: &str = r#"
name = "boots after the broken case"
source = "test"
phones = "uc924"
[[step]]
power = "cycle"
[[step]]
expect.dhcp = "discover"
within = "5s"
"#;

/// The run's events, after checking the folder is complete: only whole
/// lines, `run.end` last with `verdict`, the three reports rendered, and
/// every service that started also stopped.
fn complete_run_folder(run: &Path, verdict: &str) -> Vec<Value> {
    let all = events(run);
    let last = all.last().expect("events");
    assert_eq!(last["kind"], "run.end", "the run end is the last event");
    assert_eq!(last["fields"]["verdict"], verdict, "{last}");
    for report in ["report.html", "summary.json", "junit.xml"] {
        assert!(run.join(report).is_file(), "{report} not rendered");
    }
    let count = |kind: &str| all.iter().filter(|e| e["kind"] == kind).count();
    assert!(count("service.started") > 0, "no service started");
    assert_eq!(
        count("service.started"),
        count("service.stopped"),
        "every started service stopped"
    );
    all
}

/// The `case.end` of the case whose id contains `name`.
fn case_end<'a>(all: &'a [Value], name: &str) -> &'a Value {
    all.iter()
        .find(|e| {
            e["kind"] == "case.end"
                && e["fields"]["case"]
                    .as_str()
                    .is_some_and(|c| c.contains(name))
        })
        .unwrap_or_else(|| panic!("no case.end for `{name}`"))
}

fn run_args<'a>(
    command: &'a str,
    path: &'a Path,
    ws: &'a Workspace,
    runs: &'a Path,
) -> Vec<String> {
    vec![
        command.into(),
        path.to_str().unwrap().into(),
        "--lab".into(),
        ws.lab().to_str().unwrap().into(),
        "--runs".into(),
        runs.to_str().unwrap().into(),
    ]
}

fn run_rig(args: &[String]) -> std::process::Output {
    rig(RIG, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Ports released: a second run on the same lab addresses starts its
/// services and passes.
fn a_second_run_on_the_same_addresses_starts(ws: &Workspace) {
    let scenario = ws.write("again/boots.toml", BOOTS);
    let runs = ws.path().join("again-runs");
    let out = run_rig(&run_args("run", &scenario, ws, &runs));
    assert!(
        out.status.success(),
        "the second run did not pass:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_case_that_runs_out_of_time_fails_with_its_reason_and_the_next_case_runs() {
    let ws = Workspace::new(&loopback_lab_slice(OCTET, 0));
    ws.write(
        "suite/a-hangs.toml",
        "name = \"hangs\"\nsource = \"test\"\nphones = \"uc924\"\ntimeout = \"2s\"\n[[step]]\npower = \"cycle\"\n[[step]]\nwait = \"60s\"\n",
    );
    ws.write("suite/b-boots.toml", BOOTS);
    let out = run_rig(&run_args(
        "suite",
        &ws.path().join("suite"),
        &ws,
        &ws.runs(),
    ));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = complete_run_folder(&ws.run_dir(), "fail");
    let hung = case_end(&all, "a-hangs");
    assert_eq!(hung["fields"]["verdict"], "fail", "{hung}");
    let reason = hung["fields"]["reason"].as_str().unwrap();
    assert!(reason.contains("2s timeout"), "{reason}");
    assert_eq!(case_end(&all, "b-boots")["fields"]["verdict"], "pass");
    let junit = std::fs::read_to_string(ws.run_dir().join("junit.xml")).unwrap();
    assert!(junit.contains("2s timeout"), "{junit}");
    a_second_run_on_the_same_addresses_starts(&ws);
}

#[test]
fn a_virtual_phone_whose_control_socket_is_gone_fails_its_step_and_the_run_goes_on() {
    let lab = loopback_lab_slice(OCTET, 1);
    let sim_dir = tempfile::tempdir().unwrap();
    let lab = lab.replacen(
        "[[phone]]",
        &format!("[sim]\ndir = \"{}\"\n\n[[phone]]", sim_dir.path().display()),
        1,
    );
    let ws = Workspace::new(&lab);
    ws.write(
        "suite/a-lost.toml",
        "name = \"lost\"\nsource = \"test\"\nphones = \"uc924\"\n[[step]]\npower = \"cycle\"\n[[step]]\nwait = \"2s\"\n[[step]]\nname = \"needs the phone\"\npower = \"cycle\"\n[[step]]\nexpect.dhcp = \"discover\"\nwithin = \"5s\"\n",
    );
    ws.write("suite/b-boots.toml", &BOOTS.replace("uc924", "kx-ut670"));
    let child = Command::new(RIG)
        .args(run_args("suite", &ws.path().join("suite"), &ws, &ws.runs()))
        .env("RIG_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The phone booted; now its control socket disappears.
    wait_for_event_text(&ws.runs(), "\"dhcp.discover\"", Duration::from_secs(30));
    let socket = sim_dir.path().join("uc924.sock");
    std::fs::remove_file(&socket).expect("the phone's control socket");
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let all = complete_run_folder(&ws.run_dir(), "fail");
    // The driver call is an event saying why.
    let failed_power = all
        .iter()
        .find(|e| e["kind"] == "power.cycle" && e["fields"]["ok"] == false)
        .expect("a failed power.cycle event");
    let error = failed_power["fields"]["error"].as_str().unwrap();
    assert!(error.contains("uc924.sock"), "{error}");
    // The step that needed the phone failed, naming the socket; the
    // expectation after it was skipped.
    let verdicts: Vec<&Value> = all
        .iter()
        .filter(|e| e["kind"] == "step.verdict" && e["phone"] == "uc924")
        .collect();
    let needed = verdicts
        .iter()
        .find(|e| e["fields"]["name"] == "needs the phone")
        .unwrap();
    assert_eq!(needed["fields"]["verdict"], "error", "{needed}");
    assert!(
        needed["fields"]["explanation"]
            .as_str()
            .unwrap()
            .contains("is the virtual phone running"),
        "{needed}"
    );
    assert_eq!(verdicts.last().unwrap()["fields"]["verdict"], "skipped");
    let lost = case_end(&all, "a-lost");
    assert_eq!(lost["fields"]["verdict"], "error", "{lost}");
    assert!(
        lost["fields"]["reason"]
            .as_str()
            .unwrap()
            .contains("needs the phone"),
        "{lost}"
    );
    assert_eq!(case_end(&all, "b-boots")["fields"]["verdict"], "pass");
    a_second_run_on_the_same_addresses_starts(&ws);
}

#[test]
fn a_serial_console_unplugged_mid_run_is_an_event_and_a_clear_step_failure() {
    // A pseudo-terminal stands in for the USB serial adapter: the rig opens
    // its slave; closing the master is the cable pulled.
    let adapter = phonerig_sim::console::Console::open().expect("a pty");
    let device = adapter.path().display().to_string();
    // No reconnection during the test: pty numbers are reused by other
    // tests' virtual phones, and a "reconnect" to one of those would hide the loss.
    let lab = loopback_lab_slice(OCTET, 2).replacen(
        "password = \"htek4002\"\n",
        &format!(
            "password = \"htek4002\"\nconsole = {{ backend = \"serial\", device = \"{device}\", reconnect_every = \"1h\" }}\n"
        ),
        1,
    );
    let ws = Workspace::new(&lab);
    ws.write(
        "suite/a-console.toml",
        "name = \"console\"\nsource = \"test\"\nphones = \"uc924\"\n[[step]]\nconsole = { send = \"status\" }\n[[step]]\nwait = \"2s\"\n[[step]]\nname = \"needs the console\"\nconsole = { send = \"status\" }\n",
    );
    ws.write("suite/b-boots.toml", BOOTS);
    let child = Command::new(RIG)
        .args(run_args("suite", &ws.path().join("suite"), &ws, &ws.runs()))
        .env("RIG_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_event_text(&ws.runs(), "\"console.sent\"", Duration::from_secs(30));
    drop(adapter);
    let out = child.wait_with_output().unwrap();
    let console: Vec<String> = events(&ws.run_dir())
        .iter()
        .filter(|e| {
            e["kind"]
                .as_str()
                .is_some_and(|k| k.starts_with("console."))
        })
        .map(|e| e.to_string())
        .collect();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}\n{console:#?}",
        String::from_utf8_lossy(&out.stderr)
    );

    let all = complete_run_folder(&ws.run_dir(), "fail");
    let lost = all
        .iter()
        .find(|e| e["kind"] == "console.lost")
        .expect("a console.lost event");
    assert_eq!(lost["fields"]["device"], device.as_str(), "{lost}");
    let sent: Vec<&Value> = all.iter().filter(|e| e["kind"] == "console.sent").collect();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[0]["fields"]["ok"], true, "{}", sent[0]);
    assert_eq!(sent[1]["fields"]["ok"], false, "{}", sent[1]);
    let needed = all
        .iter()
        .find(|e| e["kind"] == "step.verdict" && e["fields"]["name"] == "needs the console")
        .unwrap();
    assert_eq!(needed["fields"]["verdict"], "error", "{needed}");
    let explanation = needed["fields"]["explanation"].as_str().unwrap();
    assert!(explanation.contains(&device), "{explanation}");
    assert_eq!(case_end(&all, "a-console")["fields"]["verdict"], "error");
    // A case that does not need the console still runs and passes.
    assert_eq!(case_end(&all, "b-boots")["fields"]["verdict"], "pass");
}

#[test]
fn a_phone_rebooting_while_its_tftp_request_is_served_fetches_again() {
    let ws = Workspace::new(&loopback_lab_slice(OCTET, 3));
    // The rig holds its answer for 1 s; the phone is power-cycled meanwhile,
    // so the transfer's client is gone when the first DATA goes out.
    let scenario = ws.write(
        "reboot.toml",
        r#"
name = "reboot mid-TFTP"
source = "test"
phones = "uc924"
[serve.dhcp.options]
66 = "tftp://{rig.tftp}"
[serve.tftp]
timeout = "200ms"
[[serve.file]]
path = "cfg{phone.mac}.xml"
content = "<hl_provision version=\"1\"><config version=\"1\"></config></hl_provision>"
delay = "1s"
[[step]]
power = "cycle"
[[step]]
wait = "500ms"
[[step]]
power = "cycle"
[[step]]
expect.fetch = { file = "cfg{phone.mac}.xml", protocol = "tftp", outcome = "complete" }
within = "8s"
"#,
    );
    let out = run_rig(&run_args("run", &scenario, &ws, &ws.runs()));
    let all = complete_run_folder(&ws.run_dir(), "pass");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fetches: Vec<&Value> = all
        .iter()
        .filter(|e| {
            e["kind"] == "tftp.fetch"
                && e["fields"]["file"]
                    .as_str()
                    .is_some_and(|f| f.starts_with("cfg"))
        })
        .collect();
    // The abandoned transfer is an event of its own, not a complete one.
    assert!(
        fetches.iter().any(|e| e["fields"]["outcome"] != "complete"),
        "no abandoned transfer: {fetches:?}"
    );
    assert!(fetches.iter().any(|e| e["fields"]["outcome"] == "complete"));
}

/// A panic in a task of the rig mid-case (here a task that dies once the
/// DHCP service has answered the phone — a service task as far as the
/// process can tell): the case ends at once as an error naming the panic
/// instead of running on for its 20 s and passing, its services stop and
/// release their ports, the next case runs and the reports are rendered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_task_mid_case_ends_the_case_with_the_panic_and_the_run_goes_on() {
    use phonerig::bench::Bench;
    use phonerig::lab::Lab;
    use phonerig::runner::{NoProgress, RunPlan, Runner};
    use phonerig::scenario::Scenario;

    let ws = Workspace::new(&loopback_lab_slice(OCTET, 4));
    let lab = Lab::load(&ws.lab()).unwrap();
    let first = ws.write(
        "suite/a-panics.toml",
        "name = \"panics\"\nsource = \"test\"\nphones = \"uc924\"\n[[step]]\npower = \"cycle\"\n[[step]]\nwait = \"20s\"\n",
    );
    let second = ws.write("suite/b-boots.toml", BOOTS);
    let plan = RunPlan {
        name: "panic".into(),
        scenarios: vec![
            Scenario::load(&first).unwrap(),
            Scenario::load(&second).unwrap(),
        ],
        base: ws.path().join("suite"),
        tags: vec![],
        phones: vec![],
    };
    std::fs::create_dir_all(ws.runs()).unwrap();
    let run_dir = phonerig::run::create_run_dir(&ws.runs(), &plan.name).unwrap();
    let timeline = phonerig::run::open_timeline(&run_dir).unwrap();
    phonerig::run::publish_run_start(&timeline, &plan.name, &lab.name, None);
    let bench = Bench::open(lab, timeline.clone(), Some(&run_dir))
        .await
        .unwrap();

    let mut reader = timeline.reader();
    let saboteur = tokio::spawn(async move {
        while let Some(event) = reader.next().await {
            if event.kind == "dhcp.ack" {
                panic!("injected: the task serving {:?} died", event.phone);
            }
        }
    });
    let runner = Runner {
        bench: &bench,
        cancel: Default::default(),
        progress: &NoProgress,
    };
    let results = runner.run(&plan).await;
    assert!(saboteur.await.unwrap_err().is_panic());
    bench.close().await;
    let verdict = phonerig::run::overall(&results, false);
    phonerig::run::publish_run_end(&timeline, &results, verdict);
    phonerig_reports::render_run_folder(&run_dir).expect("reports");

    let all = complete_run_folder(&run_dir, "fail");
    let panicked = all
        .iter()
        .find(|e| e["kind"] == "task.panicked")
        .expect("a task.panicked event");
    assert!(
        panicked["fields"]["message"]
            .as_str()
            .unwrap()
            .starts_with("injected"),
        "{panicked}"
    );
    let broken = case_end(&all, "a-panics");
    assert_eq!(broken["fields"]["verdict"], "error", "{broken}");
    let reason = broken["fields"]["reason"].as_str().unwrap();
    assert!(reason.contains("panicked: injected"), "{reason}");
    assert!(reason.contains("safety_integrity.rs"), "{reason}");
    assert_eq!(case_end(&all, "b-boots")["fields"]["verdict"], "pass");
    assert_eq!(
        all.iter()
            .filter(|e| e["kind"] == "service.stopped")
            .count(),
        10,
        "both cases' five services stopped"
    );
    // Ports released.
    let ip = Ipv4Addr::new(127, OCTET, 8, 1);
    for port in [8080, 2121, 5060] {
        TcpListener::bind((ip, port)).unwrap_or_else(|e| panic!("TCP {port} still held: {e}"));
    }
    for port in [6767, 6969, 5060] {
        UdpSocket::bind((ip, port)).unwrap_or_else(|e| panic!("UDP {port} still held: {e}"));
    }
}
