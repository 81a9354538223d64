//! The virtual phone's DHCP client against the rig's own DHCP server in its
//! loopback mode (replies to the source), as the bench runs them together.

mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use phonerig_core::{PhoneDirectory, Placeholders, ProvisioningTree, ServiceContext, Timeline};
use phonerig_dhcp::{DhcpConfig, OptionValue, Settings};
use phonerig_sim::ServicePorts;
use phonerig_sim::{Placement, SimHost, SimHostConfig, Timing, VirtualPhoneSpec};
use support::*;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htek_leases_from_the_rig_dhcp_server_and_fetches_from_its_option_66() {
    let server_ip = Ipv4Addr::new(127, 63, 0, 1);
    let http = TestHttp::start(server_ip).await;
    http.put(
        "cfg/cfg0012.xml",
        "<hl_provision version=\"1\"><config version=\"1\"><P3>x</P3></config></hl_provision>",
    );
    let placeholders = Placeholders::new();
    let directory = PhoneDirectory::new(Vec::new());
    let ctx = ServiceContext {
        timeline: Timeline::in_memory(),
        tree: ProvisioningTree::new(None, Vec::new(), placeholders.clone(), directory.clone()),
        directory,
        bind_ip: IpAddr::V4(server_ip),
        placeholders,
        shutdown: CancellationToken::new(),
    };
    let mut config = DhcpConfig::loopback(server_ip);
    config.port = 0;
    let settings = Settings {
        options: BTreeMap::from([("66".to_owned(), OptionValue::Text(http.url("cfg")))]),
        ..Settings::default()
    };
    let service = phonerig_dhcp::start(ctx.clone(), config, settings)
        .await
        .unwrap();
    let dhcp_server = service.addrs[0];
    let dir = tempfile::tempdir().unwrap();
    let sim = SimHost::start(SimHostConfig {
        sim_dir: dir.path().into(),
        placement: Placement::Loopback {
            dhcp_server,
            services: ServicePorts::default(),
        },
        phones: vec![VirtualPhoneSpec {
            name: "rigged".into(),
            model: "htek-uc924".into(),
            mac: "00:1f:c1:63:00:01".parse().unwrap(),
            firmware: "2.0.4.4.36".into(),
            flash: Default::default(),
            timing: Timing::default(),
            faults: Vec::new(),
        }],
    })
    .await
    .unwrap();
    assert_eq!(control(dir.path(), "rigged", "POWER ON").await, "OK");
    eventually("the configuration fetched from a leased 127.63.0.x address", Duration::from_secs(20), || {
        http.seen.lock().unwrap().iter().any(|s| s.path == "cfg/cfg0012.xml" && matches!(s.peer, IpAddr::V4(ip) if ip.octets()[..3] == [127, 63, 0] && ip != server_ip))
    })
    .await;
    let events = ctx.timeline.snapshot();
    let discover = events
        .iter()
        .find(|e| e.kind == "dhcp.discover")
        .expect("a dhcp.discover event");
    assert_eq!(discover.field_str("vendor_class"), Some("Htek UC924"));
    assert_eq!(discover.field_str("hostname"), Some("UC924-630001"));
    assert!(events.iter().any(|e| e.kind == "dhcp.ack"));
    sim.stop().await;
    ctx.shutdown.cancel();
    service.join(&ctx.timeline).await;
}
