//! Panasonic KX-UT670 end to end over loopback: pre-provisioning by TFTP from
//! option 66 on a factory-default unit, master → standard files with {MAC},
//! priority, NOTIFY check-sync → restart and download, other events refused,
//! malformed files refused with the rule named, PROVISION_ENABLE="N".

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use phonerig_sim::ServicePorts;
use phonerig_sim::{Placement, SimHost, SimHostConfig, Timing, VirtualPhoneSpec};
use support::*;

const WAIT: Duration = Duration::from_secs(20);
const HEAD: &str = "# Panasonic SIP Phone Standard Format File # DO NOT CHANGE THIS LINE!\r\n";

fn spec(name: &str, mac: &str, flash_pairs: &[(&str, &str)]) -> VirtualPhoneSpec {
    VirtualPhoneSpec {
        name: name.into(),
        model: "panasonic-kx-ut670".into(),
        mac: mac.parse().unwrap(),
        firmware: "01.133".into(),
        flash: flash(flash_pairs),
        timing: Timing::default(),
        faults: Vec::new(),
    }
}

fn cfg(lines: &[String]) -> String {
    let mut text = HEAD.to_owned();
    for line in lines {
        text.push_str(line);
        text.push_str("\r\n");
    }
    text.push_str("\r\n");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn factory_unit_pre_provisions_then_loads_master_and_standard_and_resyncs_on_notify() {
    let ip = Ipv4Addr::new(127, 55, 0, 1);
    let sip = TestSip::start(ip).await;
    let http = TestHttp::start(ip).await;
    let tftp = TestTftp::start(ip).await;
    let base = format!("http://{}/prov", http.addr);
    tftp.put(
        "KX-UT670.cfg",
        cfg(&[
            format!("CFG_STANDARD_FILE_PATH=\"{base}/Config{{MAC}}.cfg\""),
            format!("CFG_MASTER_FILE_PATH=\"{base}/ConfigCommon.cfg\""),
        ]),
    );
    http.put(
        "prov/ConfigCommon.cfg",
        cfg(&[
            format!("SIP_RGSTR_ADDR_1=\"{}\"", ip),
            format!("SIP_RGSTR_PORT_1=\"{}\"", sip.addr.port()),
            "PHONE_NUMBER_1=\"9999\"".into(),
            "SIP_PASS_1=\"common\"".into(),
        ]),
    );
    http.put(
        "prov/Config0080F0123456.cfg",
        cfg(&[
            "PHONE_NUMBER_1=\"4002\"".into(),
            "SIP_PASS_1=\"secret\"".into(),
        ]),
    );
    let dhcp = TestDhcp::start(ip, vec![(66, tftp.addr.to_string().into_bytes())], 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let sim = SimHost::start(SimHostConfig {
        sim_dir: dir.path().into(),
        placement: Placement::Loopback {
            dhcp_server: dhcp.addr,
            services: ServicePorts::default(),
        },
        phones: vec![spec("ut670", "00:80:f0:12:34:56", &[])],
    })
    .await
    .unwrap();
    control(dir.path(), "ut670", "POWER ON").await;
    let phone_ip = IpAddr::V4(Ipv4Addr::new(127, 55, 1, 10));
    eventually("REGISTER", WAIT, || {
        !sip.registers_from(phone_ip).is_empty()
    })
    .await;
    assert_eq!(
        tftp.seen.lock().unwrap().clone(),
        [(phone_ip, "KX-UT670.cfg".to_owned())]
    );
    assert_eq!(
        http.paths_from(phone_ip),
        ["prov/ConfigCommon.cfg", "prov/Config0080F0123456.cfg"]
    );
    assert!(http
        .seen
        .lock()
        .unwrap()
        .iter()
        .all(|s| s.user_agent == "Panasonic-KX-UT670/01.133 (0080f0123456)"));
    // §2.5: the standard file wins over the master file.
    let register = sip.registers_from(phone_ip)[0].clone();
    assert!(register.from.contains("sip:4002@"), "{}", register.from);
    let discover = dhcp.seen.lock().unwrap()[0].clone();
    assert_eq!(discover.vendor_class.as_deref(), Some("Panasonic KX-UT670"));

    // Another event text: 489, nothing happens.
    let phone_sip = SocketAddr::new(phone_ip, 5060);
    assert_eq!(sip.notify(phone_sip, "resync").await, Some(489));
    // CFG_RESYNC_FROM_SIP (default check-sync): 200, restart, download again —
    // and the unit is no longer factory default, so no second pre-provisioning.
    let mac = [0x00, 0x80, 0xf0, 0x12, 0x34, 0x56];
    assert_eq!(dhcp.count(mac, 1), 1);
    assert_eq!(sip.notify(phone_sip, "check-sync").await, Some(200));
    eventually("DISCOVER after the restart", WAIT, || {
        dhcp.count(mac, 1) == 2
    })
    .await;
    eventually("files downloaded again", WAIT, || {
        http.paths_from(phone_ip).len() == 4
    })
    .await;
    assert_eq!(tftp.seen.lock().unwrap().len(), 1);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_files_are_refused_naming_the_rule_and_provision_enable_n_stops_everything() {
    let ip = Ipv4Addr::new(127, 56, 0, 1);
    let http = TestHttp::start(ip).await;
    let tftp = TestTftp::start(ip).await;
    tftp.put("KX-UT670.cfg", cfg(&["PROVISION_ENABLE=\"Y\"".into()]));
    http.put("p/lf.cfg", format!("{}SIP_RGSTR_ADDR_1=\"h\"\n\r\n", HEAD));
    http.put("p/spaces.cfg", cfg(&["DISPLAY_NAME_1 = \"John\"".into()]));
    let dhcp = TestDhcp::start(ip, vec![(66, tftp.addr.to_string().into_bytes())], 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let lf = http.url("p/lf.cfg");
    let spaces = http.url("p/spaces.cfg");
    let sim = SimHost::start(SimHostConfig {
        sim_dir: dir.path().into(),
        placement: Placement::Loopback {
            dhcp_server: dhcp.addr,
            services: ServicePorts::default(),
        },
        phones: vec![
            spec(
                "lf",
                "00:80:f0:00:00:01",
                &[
                    ("factory_default", "false"),
                    ("CFG_STANDARD_FILE_PATH", &lf),
                ],
            ),
            spec(
                "spaces",
                "00:80:f0:00:00:02",
                &[
                    ("factory_default", "false"),
                    ("CFG_MASTER_FILE_PATH", &spaces),
                ],
            ),
            spec(
                "off",
                "00:80:f0:00:00:03",
                &[
                    ("factory_default", "false"),
                    ("PROVISION_ENABLE", "N"),
                    ("CFG_STANDARD_FILE_PATH", &lf),
                ],
            ),
        ],
    })
    .await
    .unwrap();
    let mut consoles = Vec::new();
    for name in ["lf", "spaces", "off"] {
        consoles.push(ConsoleReader::open(
            control(dir.path(), name, "CONSOLE?")
                .await
                .strip_prefix("OK ")
                .unwrap(),
        ));
        control(dir.path(), name, "POWER ON").await;
    }
    consoles[0]
        .wait_for(
            "lf.cfg refused (§5.2.1): line 2 does not end with CR LF",
            WAIT,
        )
        .await;
    consoles[1]
        .wait_for(
            "spaces.cfg refused (§5.2.1): line 2 is not NAME=\"value\"",
            WAIT,
        )
        .await;
    consoles[2]
        .wait_for("PROVISIONING: disabled (PROVISION_ENABLE=\"N\")", WAIT)
        .await;
    consoles[2].wait_for("boot completed", WAIT).await;
    // Configured units never pre-provision; the disabled one fetched nothing at all.
    assert!(tftp.seen.lock().unwrap().is_empty());
    // One fetch each for "lf" and "spaces"; none for "off".
    let fetched: Vec<String> = http
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.path.clone())
        .collect();
    assert_eq!(fetched.len(), 2, "{fetched:?}");
    sim.stop().await;
}
