//! One process hosts a thousand virtual phones: each gets a lease and fetches
//! its configuration once (no timing assertion).

mod support;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use phonerig_core::Mac;
use phonerig_sim::ServicePorts;
use phonerig_sim::{Placement, SimHost, SimHostConfig, Timing, VirtualPhoneSpec};
use support::*;

const PHONES: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_phones_boot_in_one_process() {
    let ip = Ipv4Addr::new(127, 58, 0, 1);
    let http = TestHttp::start(ip).await;
    http.put("cfg/cfg0012.xml", "<hl_provision version=\"1\"><config version=\"1\"><P3 para=\"Name\">lobby</P3></config></hl_provision>");
    let dhcp = TestDhcp::start(ip, vec![(66, http.url("cfg").into_bytes())], 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let phones: Vec<VirtualPhoneSpec> = (0..PHONES)
        .map(|i| VirtualPhoneSpec {
            name: format!("p{i:04}"),
            model: "htek-uc924".into(),
            mac: Mac([0x00, 0x1f, 0xc1, 0x58, (i >> 8) as u8, i as u8]),
            firmware: "2.0.4.4.36".into(),
            flash: Default::default(),
            timing: Timing::default(),
            faults: Vec::new(),
        })
        .collect();
    let sim = SimHost::start(SimHostConfig {
        sim_dir: dir.path().into(),
        placement: Placement::Loopback {
            dhcp_server: dhcp.addr,
            services: ServicePorts::default(),
        },
        phones,
    })
    .await
    .unwrap();
    assert_eq!(sim.phone_names().len(), PHONES);
    for name in sim.phone_names() {
        assert_eq!(control(dir.path(), &name, "POWER ON").await, "OK");
    }
    eventually(
        "every phone fetched its configuration",
        Duration::from_secs(300),
        || {
            http.seen
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.path == "cfg/cfg0012.xml")
                .map(|s| s.peer)
                .collect::<HashSet<_>>()
                .len()
                == PHONES
        },
    )
    .await;
    let acks: HashSet<[u8; 6]> = dhcp
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.message_type == 3)
        .map(|s| s.mac)
        .collect();
    assert_eq!(acks.len(), PHONES);
    // First success stops the search: nobody asked for cfg<mac> files.
    assert!(http
        .seen
        .lock()
        .unwrap()
        .iter()
        .all(|s| s.path == "cfg/cfg0012.xml"));
    sim.stop().await;
}
