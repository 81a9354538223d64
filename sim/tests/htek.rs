//! Htek UC9xx end to end over loopback: DHCP → server from option 66 → fetch
//! order → first success stops → REGISTER; NOTIFY check-sync; reboot=true;
//! identical config; AES; firmware upgrade and a failed download.

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
        firmware: "2.0.4.4.36".into(),
        flash: flash(flash_pairs),
        timing: Timing::default(),
        faults: Vec::new(),
    }
}

fn htek_xml(sip: std::net::SocketAddr, user: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\" ?>\n<hl_provision version=\"1\">\n<config version=\"1\">\n<P47 para=\"Account1_Sipserver\">{sip}</P47>\n<P35 para=\"Account1_UserId\">{user}</P35>\n<P34 para=\"Account1_Password\">pw{user}</P34>\n<P24944 para=\"PanicType\">57</P24944>\n<P24945 para=\"PanicValue\">4004</P24945>\n</config>\n</hl_provision>\n"
    )
}

async fn host(dir: &std::path::Path, dhcp: &TestDhcp, phones: Vec<VirtualPhoneSpec>) -> SimHost {
    SimHost::start(SimHostConfig {
        sim_dir: dir.to_owned(),
        placement: Placement::Loopback {
            dhcp_server: dhcp.addr,
            services: ServicePorts::default(),
        },
        phones,
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boots_fetches_in_documented_order_registers_and_follows_notify() {
    let ip = Ipv4Addr::new(127, 51, 0, 1);
    let sip = TestSip::start(ip).await;
    let http = TestHttp::start(ip).await;
    http.put("cfg/cfg001fc110d3a9.xml", htek_xml(sip.addr, "4002"));
    let dhcp = TestDhcp::start(ip, vec![(66, http.url("cfg").into_bytes())], 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let sim = host(
        dir.path(),
        &dhcp,
        vec![spec("desk", "htek-uc924", "00:1f:c1:10:d3:a9", &[])],
    )
    .await;
    assert_eq!(sim.phone_names(), ["desk"]);

    assert_eq!(control(dir.path(), "desk", "POWER?").await, "OK off");
    assert_eq!(control(dir.path(), "desk", "ATTACH").await, "OK");
    let console_path = control(dir.path(), "desk", "CONSOLE?").await;
    let console = ConsoleReader::open(console_path.strip_prefix("OK ").unwrap());
    assert_eq!(control(dir.path(), "desk", "POWER ON").await, "OK");
    assert_eq!(control(dir.path(), "desk", "POWER?").await, "OK on");
    console.wait_for("USB Button is connected!", WAIT).await;

    let mut phone_ip: Option<IpAddr> = None;
    eventually("a lease", WAIT, || {
        phone_ip = dhcp
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.message_type == 3)
            .then_some(IpAddr::V4(Ipv4Addr::new(127, 51, 1, 10)));
        phone_ip.is_some()
    })
    .await;
    let phone_ip = phone_ip.unwrap();
    eventually("REGISTER from the phone's address", WAIT, || {
        !sip.registers_from(phone_ip).is_empty()
    })
    .await;
    assert_eq!(address(dir.path(), "desk").await, Some(phone_ip));

    // 004 §2.1: cfg<devcode>.xml → cfg<mac> → cfg<mac>.xml, stopping at the first success.
    assert_eq!(
        http.paths_from(phone_ip),
        [
            "cfg/cfg0012.xml",
            "cfg/cfg001fc110d3a9",
            "cfg/cfg001fc110d3a9.xml"
        ]
    );
    assert!(http
        .seen
        .lock()
        .unwrap()
        .iter()
        .all(|s| s.user_agent == "Htek UC924 2.0.4.4.36"));
    assert_eq!(
        sip.registers_from(phone_ip)[0].user_agent,
        "Htek UC924 2.0.4.4.36"
    );
    let discover = dhcp
        .seen
        .lock()
        .unwrap()
        .iter()
        .find(|s| s.message_type == 1)
        .cloned()
        .unwrap();
    assert_eq!(discover.vendor_class.as_deref(), Some("Htek UC924"));
    assert_eq!(discover.params, [1, 3, 6, 15, 42, 66, 150, 128, 120, 43]);
    assert_eq!(
        discover.client_id.as_deref(),
        Some(&[1, 0x00, 0x1f, 0xc1, 0x10, 0xd3, 0xa9][..])
    );
    assert_eq!(discover.hostname.as_deref(), Some("UC924-10D3A9"));

    // NOTIFY check-sync: 200, provisioning again; the file is unchanged, so no new REGISTER.
    let phone_sip = std::net::SocketAddr::new(phone_ip, 5060);
    let registers_before = sip.registers_from(phone_ip).len();
    assert_eq!(sip.notify(phone_sip, "check-sync").await, Some(200));
    eventually("second round of fetches", WAIT, || {
        http.paths_from(phone_ip).len() == 6
    })
    .await;
    console
        .wait_for("identical to the last applied configuration", WAIT)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sip.registers_from(phone_ip).len(), registers_before);

    // An event the phone does not know is refused.
    assert_eq!(sip.notify(phone_sip, "ua-profile").await, Some(489));

    // reboot=true: DHCP again, then provisioning again.
    let mac = [0x00, 0x1f, 0xc1, 0x10, 0xd3, 0xa9];
    assert_eq!(dhcp.count(mac, 1), 1);
    assert_eq!(
        sip.notify(phone_sip, "check-sync;reboot=true").await,
        Some(200)
    );
    eventually("DISCOVER after the reboot", WAIT, || {
        dhcp.count(mac, 1) == 2
    })
    .await;
    eventually("third round of fetches", WAIT, || {
        http.paths_from(phone_ip).len() == 9
    })
    .await;

    // The panic button reaches the telephony part once registered.
    eventually("registered again", WAIT, || {
        sip.registers_from(phone_ip).len() > registers_before
    })
    .await;
    assert_eq!(control(dir.path(), "desk", "PRESS").await, "OK");
    console.wait_for("USB Button pressed", WAIT).await;
    // P24944 = 57 (silent call) to P24945 = 4004: the UA places the call through the registrar.
    eventually("INVITE for the silent call", WAIT, || {
        sip.seen
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.method == "INVITE" && s.peer.ip() == phone_ip)
    })
    .await;
    assert_eq!(control(dir.path(), "desk", "RELEASE").await, "OK");
    assert!(control(dir.path(), "desk", "JUMP")
        .await
        .starts_with("ERR unknown command"));

    assert_eq!(control(dir.path(), "desk", "POWER OFF").await, "OK");
    assert_eq!(control(dir.path(), "desk", "POWER?").await, "OK off");
    assert!(control(dir.path(), "desk", "PRESS")
        .await
        .starts_with("ERR"));
    sim.stop().await;
    assert!(!dir.path().join("desk.sock").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn common_file_stops_the_search_and_aes_encrypted_files_are_applied() {
    let ip = Ipv4Addr::new(127, 52, 0, 1);
    let sip = TestSip::start(ip).await;
    let http = TestHttp::start(ip).await;
    // Encrypted as 004 §3 shows, with `openssl enc` (key 001FC1BC, fixed IV).
    let plain = htek_xml(sip.addr, "4006");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("plain.xml"), &plain).unwrap();
    let status = std::process::Command::new("openssl")
        .args([
            "enc",
            "-aes-128-cbc",
            "-K",
            "001FC1BC",
            "-iv",
            "0B1E1D000F0B07091D1F04071F1E0407",
            "-in",
        ])
        .arg(dir.path().join("plain.xml"))
        .arg("-out")
        .arg(dir.path().join("enc"))
        .status();
    if phonerig_core::netns::require(
        status
            .as_ref()
            .map(|_| ())
            .map_err(|e| format!("openssl not available: {e}")),
    )
    .is_err()
    {
        return;
    }
    assert!(status.unwrap().success());
    http.put(
        "p/cfg0019.xml",
        std::fs::read(dir.path().join("enc")).unwrap(),
    );
    let dhcp = TestDhcp::start(ip, vec![(150, http.url("p").into_bytes())], 3600).await;
    let sim = host(
        dir.path(),
        &dhcp,
        vec![spec(
            "wall",
            "htek-uc912",
            "00:1f:c1:00:00:01",
            &[("P8631", "001FC1BC")],
        )],
    )
    .await;
    control(dir.path(), "wall", "POWER ON").await;
    let phone_ip = IpAddr::V4(Ipv4Addr::new(127, 52, 1, 10));
    eventually("REGISTER", WAIT, || {
        !sip.registers_from(phone_ip).is_empty()
    })
    .await;
    assert_eq!(http.paths_from(phone_ip), ["p/cfg0019.xml"]);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firmware_upgrade_reboots_with_the_new_version_and_a_truncated_image_keeps_the_old() {
    let ip = Ipv4Addr::new(127, 53, 0, 1);
    let http = TestHttp::start(ip).await;
    let mut image = b"HTEK-FW 2.0.4.5.1\n".to_vec();
    image.extend(std::iter::repeat_n(b'#', 4000));
    image.extend_from_slice(b"\nEND\n");
    http.put("fm/fw924.rom", image.clone());
    http.put_truncated("fm/fw926.rom", image[..2000].to_vec(), image.len());
    let dhcp = TestDhcp::start(ip, vec![], 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let fm = http.url("fm");
    let sim = host(
        dir.path(),
        &dhcp,
        vec![
            spec(
                "up",
                "htek-uc924",
                "00:1f:c1:00:00:02",
                &[("P192", &fm), ("P237", &http.url("cfg"))],
            ),
            spec("stuck", "htek-uc926", "00:1f:c1:00:00:03", &[("P192", &fm)]),
        ],
    )
    .await;
    let up_console = ConsoleReader::open(
        control(dir.path(), "up", "CONSOLE?")
            .await
            .strip_prefix("OK ")
            .unwrap(),
    );
    let stuck_console = ConsoleReader::open(
        control(dir.path(), "stuck", "CONSOLE?")
            .await
            .strip_prefix("OK ")
            .unwrap(),
    );
    control(dir.path(), "up", "POWER ON").await;
    up_console
        .wait_for("upgrading firmware 2.0.4.4.36 -> 2.0.4.5.1", WAIT)
        .await;
    eventually(
        "provisioning with the new version's User-Agent",
        WAIT,
        || {
            http.seen
                .lock()
                .unwrap()
                .iter()
                .any(|s| s.path == "cfg/cfg0012.xml" && s.user_agent == "Htek UC924 2.0.4.5.1")
        },
    )
    .await;
    up_console
        .wait_for("firmware 2.0.4.5.1 is up to date", WAIT)
        .await;
    assert_eq!(
        dhcp.count([0x00, 0x1f, 0xc1, 0, 0, 2], 1),
        2,
        "one reboot, not a loop"
    );

    control(dir.path(), "stuck", "POWER ON").await;
    stuck_console.wait_for("download failed", WAIT).await;
    stuck_console.wait_for("keeping 2.0.4.4.36", WAIT).await;
    let state = control(dir.path(), "stuck", "STATE?").await;
    assert!(state.contains("\"firmware\":\"2.0.4.4.36\""), "{state}");
    sim.stop().await;
}

#[tokio::test]
async fn unknown_models_faults_and_duplicate_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let placement = Placement::Loopback {
        dhcp_server: "127.54.0.1:6767".parse().unwrap(),
        services: ServicePorts::default(),
    };
    let mut bad_model = spec("a", "cisco-7960", "00:1f:c1:00:00:04", &[]);
    let error = SimHost::start(SimHostConfig {
        sim_dir: dir.path().into(),
        placement: placement.clone(),
        phones: vec![bad_model.clone()],
    })
    .await
    .err()
    .unwrap();
    assert!(error.to_string().contains("unknown model"));
    bad_model.model = "htek-uc924".into();
    bad_model.faults = vec!["ignore-notify".into()];
    let error = SimHost::start(SimHostConfig {
        sim_dir: dir.path().into(),
        placement: placement.clone(),
        phones: vec![bad_model],
    })
    .await
    .err()
    .unwrap();
    assert!(error.to_string().contains("unknown fault"));
    let twins = vec![
        spec("a", "htek-uc924", "00:1f:c1:00:00:05", &[]),
        spec("a", "htek-uc924", "00:1f:c1:00:00:06", &[]),
    ];
    let error = SimHost::start(SimHostConfig {
        sim_dir: dir.path().into(),
        placement,
        phones: twins,
    })
    .await
    .err()
    .unwrap();
    assert!(error.to_string().contains("two phones"));
}
