//! The start-up safety checks on real interfaces: veth pairs between two
//! network namespaces the tests create (198.18.150–153.0/24, namespaces
//! `prsafe…`, deleted on drop). Each test shows the server refusing a segment
//! it must not serve, and (where the refusal can be overridden) starting once
//! the operator declares the interface dedicated. Needs root (namespaces);
//! without it the tests print SKIPPED (and fail under CI).

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::*;
use phonerig_core::netns::{require, VethPair};
use phonerig_dhcp::safety::OVERRIDE_FLAG;
use phonerig_dhcp::{start_with, DhcpConfig, ReplyMode, Settings, StartupChecks};

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn nic_config(netns: &str, interface: &str, third: u8) -> DhcpConfig {
    DhcpConfig {
        port: 67,
        client_port: 68,
        interface: Some(interface.to_owned()),
        reply_mode: ReplyMode::Broadcast,
        subnet_prefix: 24,
        pool_start: Ipv4Addr::new(198, 18, third, 100),
        pool_end: Ipv4Addr::new(198, 18, third, 150),
        fixed: Vec::new(),
        default_lease: Duration::from_secs(600),
        netns: Some(netns.to_owned()),
    }
}

fn checks(dedicated: bool) -> StartupChecks {
    StartupChecks {
        dedicated,
        // Short: nothing else answers on these segments unless a test starts it.
        probe_wait: Some(Duration::from_millis(600)),
    }
}

fn refusals(ctx: &phonerig_core::ServiceContext) -> Vec<String> {
    ctx.timeline
        .snapshot()
        .iter()
        .filter(|e| e.kind == "dhcp.refused")
        .map(|e| e.field_str("reason").unwrap_or_default().to_owned())
        .collect()
}

async fn stop(ctx: &phonerig_core::ServiceContext, service: phonerig_core::RunningService) {
    ctx.shutdown.cancel();
    service.join(&ctx.timeline).await;
}

#[tokio::test]
async fn refuses_the_interface_with_the_default_route_unless_declared_dedicated() {
    if require(VethPair::available()).is_err() {
        return;
    }
    let server_ip = Ipv4Addr::new(198, 18, 150, 1);
    let pair =
        VethPair::create("safe1", &format!("{server_ip}/24"), Some("198.18.150.2/24")).unwrap();
    ip(&[
        "-n",
        &pair.a,
        "route",
        "add",
        "default",
        "via",
        "198.18.150.2",
        "dev",
        &pair.a_if,
    ]);

    let ctx = context(server_ip, Vec::new());
    let config = nic_config(&pair.a, &pair.a_if, 150);
    let error = start_with(
        ctx.clone(),
        config.clone(),
        Settings::default(),
        checks(false),
    )
    .await
    .err()
    .expect("a NIC with the default route must be refused")
    .to_string();
    assert!(error.contains("default route"), "{error}");
    assert!(error.contains(OVERRIDE_FLAG), "{error}");
    assert!(error.contains("dedicated = true"), "{error}");
    assert_eq!(refusals(&ctx), ["default_route"]);

    // Declared dedicated: starts, with the override on the timeline as a warning.
    let ctx = context(server_ip, Vec::new());
    let service = start_with(ctx.clone(), config, Settings::default(), checks(true))
        .await
        .unwrap();
    let warnings: Vec<String> = ctx
        .timeline
        .snapshot()
        .iter()
        .filter(|e| e.kind == "warning")
        .filter_map(|e| e.field_str("error").map(str::to_owned))
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("overridden") && w.contains("default route")),
        "{warnings:?}"
    );
    stop(&ctx, service).await;
}

#[tokio::test]
async fn refuses_an_interface_that_does_not_carry_the_lab_address_or_does_not_exist() {
    if require(VethPair::available()).is_err() {
        return;
    }
    let pair = VethPair::create("safe2", "198.18.151.1/24", None).unwrap();
    // The lab file says the rig is 198.18.151.9 on this NIC; the NIC has .1.
    let ctx = context(Ipv4Addr::new(198, 18, 151, 9), Vec::new());
    let config = nic_config(&pair.a, &pair.a_if, 151);
    let error = start_with(ctx.clone(), config, Settings::default(), checks(false))
        .await
        .err()
        .expect("the lab address is not on the NIC")
        .to_string();
    assert!(error.contains("198.18.151.9 is not on it"), "{error}");
    assert_eq!(refusals(&ctx), ["address_not_on_interface"]);

    // An interface the namespace does not have: refused even when "dedicated".
    let ctx = context(Ipv4Addr::new(198, 18, 151, 1), Vec::new());
    let config = nic_config(&pair.a, "prsafe-none", 151);
    let error = start_with(ctx.clone(), config, Settings::default(), checks(true))
        .await
        .err()
        .expect("no such interface")
        .to_string();
    assert!(error.contains("does not exist"), "{error}");
    assert_eq!(refusals(&ctx), ["no_such_interface"]);
}

#[tokio::test]
async fn refuses_to_start_beside_another_dhcp_server_and_names_it() {
    if require(VethPair::available()).is_err() {
        return;
    }
    let pair = VethPair::create("safe3", "198.18.152.1/24", Some("198.18.152.2/24")).unwrap();
    let rogue_mac = "02:00:5e:15:20:02";
    ip(&[
        "-n", &pair.b, "link", "set", &pair.b_if, "address", rogue_mac,
    ]);

    // The "office" server: another instance on the far end of the segment
    // (no probe of its own, or each would see the other).
    let rogue_ctx = context(Ipv4Addr::new(198, 18, 152, 2), Vec::new());
    let rogue = start_with(
        rogue_ctx.clone(),
        nic_config(&pair.b, &pair.b_if, 152),
        Settings::default(),
        StartupChecks {
            dedicated: true,
            probe_wait: None,
        },
    )
    .await
    .unwrap();

    let ctx = context(Ipv4Addr::new(198, 18, 152, 1), Vec::new());
    let config = nic_config(&pair.a, &pair.a_if, 152);
    let error = start_with(
        ctx.clone(),
        config.clone(),
        Settings::default(),
        checks(false),
    )
    .await
    .err()
    .expect("another server answered the probe")
    .to_string();
    assert!(error.contains("another DHCP server"), "{error}");
    assert!(error.contains("198.18.152.2"), "{error}");
    assert!(error.contains(rogue_mac), "{error}");
    let event = ctx
        .timeline
        .snapshot()
        .into_iter()
        .find(|e| e.kind == "dhcp.refused")
        .expect("a dhcp.refused event");
    assert_eq!(event.field_str("reason"), Some("foreign_server"));
    assert_eq!(event.field_str("server_mac"), Some(rogue_mac));
    assert_eq!(event.field_str("server_ip"), Some("198.18.152.2"));
    // Not even "dedicated" serves beside another server.
    assert!(start_with(
        ctx.clone(),
        config.clone(),
        Settings::default(),
        checks(true)
    )
    .await
    .is_err());

    // The other server gone, the segment is ours.
    stop(&rogue_ctx, rogue).await;
    let ctx = context(Ipv4Addr::new(198, 18, 152, 1), Vec::new());
    let service = start_with(ctx.clone(), config, Settings::default(), checks(false))
        .await
        .unwrap();
    let probe = ctx
        .timeline
        .snapshot()
        .into_iter()
        .find(|e| e.kind == "dhcp.probe")
        .expect("a dhcp.probe event");
    assert_eq!(probe.fields.get("answers"), Some(&serde_json::json!(0)));
    assert_eq!(service.addrs[0].ip(), IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    stop(&ctx, service).await;
}
