//! Phones on macvlans inside a network namespace get their leases by real
//! broadcast DHCP (ports 67/68) from the rig's DHCP server in the peer namespace.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use phonerig_core::netns::{program, require, VethPair};
use phonerig_core::{PhoneDirectory, Placeholders, ProvisioningTree, ServiceContext, Timeline};
use phonerig_dhcp::{DhcpConfig, ReplyMode, Settings};
use phonerig_sim::{Placement, SimHost, SimHostConfig, Timing, VirtualPhoneSpec};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

async fn control(dir: &std::path::Path, phone: &str, command: &str) -> String {
    let stream = UnixStream::connect(dir.join(format!("{phone}.sock")))
        .await
        .unwrap();
    let (read, mut write) = stream.into_split();
    write
        .write_all(format!("{command}\n").as_bytes())
        .await
        .unwrap();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await.unwrap();
    line.trim_end().to_owned()
}

fn spec(name: &str, model: &str, mac: &str) -> VirtualPhoneSpec {
    VirtualPhoneSpec {
        name: name.into(),
        model: model.into(),
        mac: mac.parse().unwrap(),
        firmware: "1.0".into(),
        flash: Default::default(),
        timing: Timing::default(),
        faults: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phones_in_a_namespace_get_leases_by_broadcast() {
    if require(VethPair::available()).is_err() || require(program("ip")).is_err() {
        return;
    }
    let server_ip = Ipv4Addr::new(198, 18, 77, 1);
    let pair = VethPair::create("sim", &format!("{server_ip}/24"), None).unwrap();
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
    let config = DhcpConfig {
        port: 67,
        client_port: 68,
        interface: Some(pair.a_if.clone()),
        reply_mode: ReplyMode::Broadcast,
        subnet_prefix: 24,
        pool_start: Ipv4Addr::new(198, 18, 77, 100),
        pool_end: Ipv4Addr::new(198, 18, 77, 150),
        fixed: Vec::new(),
        default_lease: Duration::from_secs(600),
        netns: Some(pair.a.clone()),
    };
    let service = phonerig_dhcp::start(ctx.clone(), config, Settings::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sim = SimHost::start(SimHostConfig {
        sim_dir: dir.path().into(),
        placement: Placement::Netns {
            netns: pair.b.clone(),
            parent_interface: pair.b_if.clone(),
        },
        phones: vec![
            spec("htek", "htek-uc924", "00:1f:c1:77:00:01"),
            spec("pana", "panasonic-kx-ut670", "00:80:f0:77:00:02"),
        ],
    })
    .await
    .unwrap();
    for name in ["htek", "pana"] {
        assert_eq!(control(dir.path(), name, "POWER ON").await, "OK");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let acked = loop {
        let acked: Vec<(String, String)> = ctx
            .timeline
            .snapshot()
            .iter()
            .filter(|e| e.kind == "dhcp.ack")
            .filter_map(|e| {
                Some((
                    e.field_str("mac")?.to_owned(),
                    e.field_str("address")?.to_owned(),
                ))
            })
            .collect();
        if acked.len() >= 2 || tokio::time::Instant::now() > deadline {
            break acked;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let macs: Vec<&str> = acked.iter().map(|(mac, _)| mac.as_str()).collect();
    assert!(
        macs.contains(&"00:1f:c1:77:00:01") && macs.contains(&"00:80:f0:77:00:02"),
        "{acked:?}"
    );
    let discover_classes: Vec<String> = ctx
        .timeline
        .snapshot()
        .iter()
        .filter(|e| e.kind == "dhcp.discover")
        .filter_map(|e| e.field_str("vendor_class").map(str::to_owned))
        .collect();
    assert!(
        discover_classes.contains(&"Htek UC924".to_owned())
            && discover_classes.contains(&"Panasonic KX-UT670".to_owned())
    );
    // The phone put its lease on its macvlan inside the namespace.
    let state = control(dir.path(), "htek", "STATE?").await;
    assert!(state.contains("\"address\":\"198.18.77."), "{state}");
    let addrs = std::process::Command::new("ip")
        .args(["-n", &pair.b, "-4", "addr", "show"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&addrs.stdout).contains("198.18.77."),
        "{}",
        String::from_utf8_lossy(&addrs.stdout)
    );
    sim.stop().await;
    ctx.shutdown.cancel();
    service.join(&ctx.timeline).await;
}
