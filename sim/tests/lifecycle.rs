//! Device life: DHCP renewal at T1, power cycle, button plug/unplug, keys
//! without an account, factory reset, periodic provisioning (Htek P194/P193,
//! Panasonic CFG_CYCLIC), option 128 over 66.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use phonerig_sim::ServicePorts;
use phonerig_sim::{Placement, SimHost, SimHostConfig, Timing, VirtualPhoneSpec};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

fn spec(name: &str, model: &str, mac: &str, flash_pairs: &[(&str, &str)]) -> VirtualPhoneSpec {
    VirtualPhoneSpec {
        name: name.into(),
        model: model.into(),
        mac: mac.parse().unwrap(),
        firmware: "1.0".into(),
        flash: flash(flash_pairs),
        timing: Timing::default(),
        faults: Vec::new(),
    }
}

async fn start(dir: &std::path::Path, dhcp: &TestDhcp, phones: Vec<VirtualPhoneSpec>) -> SimHost {
    SimHost::start(SimHostConfig {
        sim_dir: dir.into(),
        placement: Placement::Loopback {
            dhcp_server: dhcp.addr,
            services: ServicePorts::default(),
        },
        phones,
    })
    .await
    .unwrap()
}

async fn console(dir: &std::path::Path, name: &str) -> ConsoleReader {
    ConsoleReader::open(
        control(dir, name, "CONSOLE?")
            .await
            .strip_prefix("OK ")
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_at_t1_from_the_leased_address_and_power_cycles() {
    let ip = Ipv4Addr::new(127, 60, 0, 1);
    // 2000 s lease → T1 = 1000 s of phone time = 1 s at the default scale.
    let dhcp = TestDhcp::start(ip, vec![], 2000).await;
    let dir = tempfile::tempdir().unwrap();
    let sim = start(
        dir.path(),
        &dhcp,
        vec![spec(
            "r",
            "panasonic-kx-ut670",
            "00:80:f0:60:00:01",
            &[("factory_default", "false")],
        )],
    )
    .await;
    let console = console(dir.path(), "r").await;
    control(dir.path(), "r", "POWER ON").await;
    let leased = IpAddr::V4(Ipv4Addr::new(127, 60, 1, 10));
    eventually("a renewal REQUEST from the leased address", WAIT, || {
        dhcp.seen
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.message_type == 3 && s.peer.ip() == leased)
    })
    .await;
    console.wait_for("DHCP: renewed 127.60.1.10", WAIT).await;

    let mac = [0x00, 0x80, 0xf0, 0x60, 0x00, 0x01];
    assert_eq!(dhcp.count(mac, 1), 1);
    assert_eq!(control(dir.path(), "r", "POWER CYCLE 50").await, "OK");
    eventually("DISCOVER after the power cycle", WAIT, || {
        dhcp.count(mac, 1) == 2
    })
    .await;
    assert_eq!(console.count("Panasonic KX-UT670 Ver.1.0 booting"), 2);
    assert_eq!(control(dir.path(), "r", "POWER?").await, "OK on");
    // A Panasonic has no USB panic button.
    assert!(control(dir.path(), "r", "PRESS").await.starts_with("ERR"));
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn button_plug_keys_without_account_and_factory_reset() {
    let ip = Ipv4Addr::new(127, 61, 0, 1);
    let http = TestHttp::start(ip).await;
    http.put(
        "cfg/cfg0012.xml",
        "<hl_provision version=\"1\"><config version=\"1\"><P3>x</P3></config></hl_provision>",
    );
    let dhcp = TestDhcp::start(ip, vec![], 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let sim = start(
        dir.path(),
        &dhcp,
        vec![spec(
            "b",
            "htek-uc924",
            "00:1f:c1:61:00:01",
            &[("P237", &http.url("cfg"))],
        )],
    )
    .await;
    let console = console(dir.path(), "b").await;
    assert!(
        control(dir.path(), "b", "KEY answer")
            .await
            .starts_with("ERR"),
        "powered off"
    );
    control(dir.path(), "b", "POWER ON").await;
    console.wait_for("boot completed", WAIT).await;
    // Config Server Path from flash, HTTP by default.
    console
        .wait_for("config server http://127.61.0.1", WAIT)
        .await;
    console.wait_for("(from Config Server Path)", WAIT).await;
    // A virtual Htek boots with its button plugged in; unplugged, a press is refused.
    console.wait_for("USB Button is connected!", WAIT).await;
    assert_eq!(control(dir.path(), "b", "DETACH").await, "OK");
    console.wait_for("USB Button is disconnected!", WAIT).await;
    assert!(control(dir.path(), "b", "PRESS")
        .await
        .contains("no USB button attached"));
    assert_eq!(control(dir.path(), "b", "ATTACH").await, "OK");
    console.wait_for("USB Button is connected!", WAIT).await;
    assert_eq!(control(dir.path(), "b", "DETACH").await, "OK");
    console.wait_for("USB Button is disconnected!", WAIT).await;
    assert!(control(dir.path(), "b", "KEY dial 4004")
        .await
        .contains("no SIP account"));
    assert!(control(dir.path(), "b", "KEY fly")
        .await
        .starts_with("ERR unknown key"));

    let fetches_before = http.seen.lock().unwrap().len();
    assert_eq!(control(dir.path(), "b", "KEY factory-reset").await, "OK");
    console
        .wait_for("factory reset: erasing settings", WAIT)
        .await;
    console.wait_for("no provisioning server", WAIT).await;
    assert_eq!(
        http.seen.lock().unwrap().len(),
        fetches_before,
        "the erased Config Server Path is not used any more"
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_provisioning_and_option_128_over_66() {
    let ip = Ipv4Addr::new(127, 62, 0, 1);
    let http = TestHttp::start(ip).await;
    http.put("o128/cfg0012.xml", "<hl_provision version=\"1\"><config version=\"1\"><P194>1</P194><P193>1</P193></config></hl_provision>");
    let head = "# Panasonic SIP Phone Standard Format File #\r\n";
    http.put(
        "pana/Config0080f0620002.cfg",
        format!("{head}CFG_CYCLIC=\"Y\"\r\nCFG_CYCLIC_INTVL=\"1\"\r\n\r\n"),
    );
    let dhcp = TestDhcp::start(
        ip,
        vec![
            (66, http.url("o66").into_bytes()),
            (128, http.url("o128").into_bytes()),
        ],
        3600,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let standard = http.url("pana/");
    let sim = start(
        dir.path(),
        &dhcp,
        vec![
            spec("h", "htek-uc924", "00:1f:c1:62:00:01", &[]),
            spec(
                "p",
                "panasonic-kx-ut670",
                "00:80:f0:62:00:02",
                &[
                    ("factory_default", "false"),
                    ("CFG_STANDARD_FILE_PATH", &standard),
                ],
            ),
        ],
    )
    .await;
    let htek_console = console(dir.path(), "h").await;
    control(dir.path(), "h", "POWER ON").await;
    control(dir.path(), "p", "POWER ON").await;
    // P194=1 with P193=1 minute: the Htek checks again and again (no new fetch order from option 66).
    eventually("three Htek rounds", WAIT, || {
        http.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == "o128/cfg0012.xml")
            .count()
            >= 3
    })
    .await;
    assert!(!http
        .seen
        .lock()
        .unwrap()
        .iter()
        .any(|s| s.path.starts_with("o66/")));
    htek_console
        .wait_for("identical to the last applied configuration", WAIT)
        .await;
    // CFG_CYCLIC="Y", CFG_CYCLIC_INTVL="1": the trailing '/' got Config{mac}.cfg.
    eventually("three Panasonic rounds", WAIT, || {
        http.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == "pana/Config0080f0620002.cfg")
            .count()
            >= 3
    })
    .await;
    sim.stop().await;
}
