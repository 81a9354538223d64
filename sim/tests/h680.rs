//! Lvswitch SIP-H680 end to end over loopback: common.boot first, then the
//! .cfg files it names in order, REGISTER, and Action URLs with variables.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use phonerig_sim::ServicePorts;
use phonerig_sim::{Placement, SimHost, SimHostConfig, Timing, VirtualPhoneSpec};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

fn spec(name: &str, mac: &str, flash_pairs: &[(&str, &str)]) -> VirtualPhoneSpec {
    VirtualPhoneSpec {
        name: name.into(),
        model: "lvswitch-sip-h680".into(),
        mac: mac.parse().unwrap(),
        firmware: "2.0.0.3".into(),
        flash: flash(flash_pairs),
        timing: Timing::default(),
        faults: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn common_boot_then_listed_files_then_register_and_action_urls() {
    let ip = Ipv4Addr::new(127, 57, 0, 1);
    let sip = TestSip::start(ip).await;
    let http = TestHttp::start(ip).await;
    let action = format!("http://{}/action", http.addr);
    http.put(
        "h680/common.boot",
        "#!version:1.0.0.1\ninclude:config \"common.cfg\"\ninclude:config \"$mac.cfg\"\n",
    );
    http.put(
        "h680/common.cfg",
        format!(
            "#!version:1.0.0.1\naccount.1.sip_server.1.address = {ip}\naccount.1.sip_server.1.port = {}\naction_url.boot_completed = {action}/boot?mac=$mac&ip=$ip&model=$model&fw=$firmware\naction_url.registered = {action}/registered?mac=$mac&ip=$ip&user=$local\naccount.1.user_name = 9999\n",
            sip.addr.port()
        ),
    );
    http.put(
        "h680/001a4d5c258d.cfg",
        "account.1.user_name = 4008\naccount.1.password = pw\n",
    );
    http.put("h680b/common.cfg", format!("account.1.sip_server.1.address = {ip}\naccount.1.sip_server.1.port = {}\naccount.1.user_name = 4010\n", sip.addr.port()));
    let dhcp = TestDhcp::start(ip, vec![], 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let sim = SimHost::start(SimHostConfig {
        sim_dir: dir.path().into(),
        placement: Placement::Loopback {
            dhcp_server: dhcp.addr,
            services: ServicePorts::default(),
        },
        phones: vec![
            spec(
                "handset",
                "00:1a:4d:5c:25:8d",
                &[("auto_provision.server.url", &http.url("h680"))],
            ),
            spec(
                "noboot",
                "00:1a:4d:5c:25:8e",
                &[("auto_provision.server.url", &http.url("h680b"))],
            ),
        ],
    })
    .await
    .unwrap();
    control(dir.path(), "handset", "POWER ON").await;
    let phone_ip = IpAddr::V4(Ipv4Addr::new(127, 57, 1, 10));
    eventually("registered Action URL", WAIT, || {
        http.paths_from(phone_ip)
            .iter()
            .any(|p| p.starts_with("action/registered"))
    })
    .await;
    let paths = http.paths_from(phone_ip);
    assert_eq!(
        paths[..3],
        [
            "h680/common.boot",
            "h680/common.cfg",
            "h680/001a4d5c258d.cfg"
        ]
    );
    assert!(
        paths.contains(
            &"action/boot?mac=001a4d5c258d&ip=127.57.1.10&model=SIP-H680&fw=2.0.0.3".to_owned()
        ),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"action/registered?mac=001a4d5c258d&ip=127.57.1.10&user=4008".to_owned()),
        "{paths:?}"
    );
    let register = sip.registers_from(phone_ip)[0].clone();
    assert!(
        register.from.contains("sip:4008@"),
        "later files override earlier ones: {}",
        register.from
    );
    assert_eq!(register.user_agent, "Lvswitch SIP-H680 2.0.0.3");

    // NOTIFY check-sync: 200 and the boot file and its configs again; anything else 489.
    let fetched = http
        .paths_from(phone_ip)
        .iter()
        .filter(|p| p.starts_with("h680/"))
        .count();
    let phone_sip = std::net::SocketAddr::new(phone_ip, 5060);
    assert_eq!(sip.notify(phone_sip, "check-sync").await, Some(200));
    eventually("provisioning again", WAIT, || {
        http.paths_from(phone_ip)
            .iter()
            .filter(|p| p.starts_with("h680/"))
            .count()
            == fetched + 3
    })
    .await;
    assert_eq!(sip.notify(phone_sip, "talk").await, Some(489));

    // Without common.boot the phone falls back to common.cfg and <mac>.cfg.
    control(dir.path(), "noboot", "POWER ON").await;
    let other_ip = IpAddr::V4(Ipv4Addr::new(127, 57, 1, 11));
    eventually("REGISTER", WAIT, || {
        !sip.registers_from(other_ip).is_empty()
    })
    .await;
    assert_eq!(
        http.paths_from(other_ip),
        [
            "h680b/common.boot",
            "h680b/common.cfg",
            "h680b/001a4d5c258e.cfg"
        ]
    );
    sim.stop().await;
}
