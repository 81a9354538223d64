//! The server on a 127.x address, driven by a dhcproto client in the test.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::*;
use dhcproto::v4::{DhcpOption, MessageType};
use dhcproto::Encodable;
use phonerig_core::RunningService;
use phonerig_dhcp::{start, DhcpConfig, OptionSet, OptionValue, Settings};
use serde_json::json;

const PHONE_MAC: &str = "00:1f:c1:10:d3:a9";

fn config(server: Ipv4Addr) -> DhcpConfig {
    // Port 0: every server in every test process gets its own port.
    DhcpConfig {
        port: 0,
        ..DhcpConfig::loopback(server)
    }
}

fn text(t: &str) -> OptionValue {
    OptionValue::Text(t.into())
}

fn provisioning_settings() -> Settings {
    Settings {
        options: [
            ("66".to_string(), text("http://{rig.http}/cfg")),
            (
                "150".to_string(),
                OptionValue::Ipv4(vec!["{rig.ip}".into(), "198.18.0.2".into()]),
            ),
            (
                "120".to_string(),
                OptionValue::SipServers(vec!["sip.example.com".into()]),
            ),
            ("43".to_string(), OptionValue::Hex("0104c0a80001".into())),
        ]
        .into(),
        vendor: [(
            "Htek*".to_string(),
            OptionSet {
                lease_time: None,
                options: [("150".to_string(), text("tftp://{rig.tftp}/"))].into(),
            },
        )]
        .into(),
        phone: [(
            "uc924-1".to_string(),
            OptionSet {
                lease_time: None,
                options: [(
                    "128".to_string(),
                    text("http://{rig.ip}/cfg{phone.mac}.xml"),
                )]
                .into(),
            },
        )]
        .into(),
        ..Settings::default()
    }
}

async fn serve(
    test: u8,
    settings: Settings,
    tweak: impl FnOnce(&mut DhcpConfig),
) -> (phonerig_core::ServiceContext, RunningService, SocketAddr) {
    let server_ip = unique_loopback(test);
    let ctx = context(server_ip, vec![phone("uc924-1", PHONE_MAC)]);
    let mut config = config(server_ip);
    tweak(&mut config);
    let service = start(ctx.clone(), config, settings).await.unwrap();
    let addr = service.addrs[0];
    (ctx, service, addr)
}

async fn stop(ctx: &phonerig_core::ServiceContext, service: RunningService) {
    ctx.shutdown.cancel();
    service.join(&ctx.timeline).await;
}

#[tokio::test]
async fn dora_delivers_the_configured_options_and_binds_the_phone() {
    let (ctx, service, addr) = serve(1, provisioning_settings(), |_| {}).await;
    let server_ip = match ctx.bind_ip {
        IpAddr::V4(ip) => ip,
        _ => unreachable!(),
    };
    let mut client = Client::new(server_ip, addr, PHONE_MAC).await;
    client.vendor_class = Some("Htek UC924".into());
    let (offer, ack) = client.dora(0x1234_5678).await;

    let leased = offer.message.yiaddr();
    let [a, b, c, _] = server_ip.octets();
    assert!(
        (100..=199).contains(&leased.octets()[3]) && leased.octets()[..3] == [a, b, c],
        "{leased}"
    );
    assert_eq!(ack.kind(), Some(MessageType::Ack));
    assert_eq!(ack.message.yiaddr(), leased);
    assert_eq!(ack.message.xid(), 0x1234_5678);
    for reply in [&offer, &ack] {
        assert_eq!(reply.text(66), format!("http://{server_ip}:8080/cfg"));
        // the vendor set's 150 (Htek's URL string) wins over the global IPv4 list
        assert_eq!(reply.text(150), format!("tftp://{server_ip}:6969/"));
        assert_eq!(
            reply.text(128),
            format!("http://{server_ip}/cfg001fc110d3a9.xml")
        );
        assert_eq!(
            reply.options[&120],
            b"\x00\x03sip\x07example\x03com\x00".to_vec()
        );
        assert_eq!(reply.options[&43], vec![1, 4, 0xc0, 0xa8, 0, 1]);
        assert_eq!(reply.options[&1], vec![255, 255, 255, 0]);
        assert_eq!(reply.options[&3], server_ip.octets().to_vec());
        assert_eq!(reply.options[&54], server_ip.octets().to_vec());
        assert_eq!(reply.options[&51], 3600u32.to_be_bytes().to_vec());
    }

    // other services can now attribute requests from the leased address to the phone
    assert_eq!(
        ctx.directory.by_ip(IpAddr::V4(leased)).unwrap().name,
        "uc924-1"
    );

    let discover = &events(&ctx.timeline, "dhcp.discover")[0];
    assert_eq!(discover.phone.as_deref(), Some("uc924-1"));
    assert_eq!(discover.field_str("mac"), Some(PHONE_MAC));
    assert_eq!(discover.field_str("xid"), Some("0x12345678"));
    assert_eq!(
        discover.field("param_request_list"),
        Some(&json!([1, 3, 66, 150, 128]))
    );
    assert_eq!(discover.field_str("vendor_class"), Some("Htek UC924"));
    assert_eq!(discover.field_str("hostname"), Some("test-client"));
    let request = &events(&ctx.timeline, "dhcp.request")[0];
    assert_eq!(
        request.field_str("requested_ip"),
        Some(leased.to_string().as_str())
    );
    assert_eq!(
        request.field_str("server_id"),
        Some(server_ip.to_string().as_str())
    );
    let ack_event = &events(&ctx.timeline, "dhcp.ack")[0];
    assert_eq!(ack_event.phone.as_deref(), Some("uc924-1"));
    assert_eq!(
        ack_event.field_str("address"),
        Some(leased.to_string().as_str())
    );
    let options = ack_event.field("options").unwrap();
    assert_eq!(options["66"], json!(format!("http://{server_ip}:8080/cfg")));
    assert_eq!(options["150"], json!(format!("tftp://{server_ip}:6969/")));
    assert_eq!(options["43"], json!("hex:0104c0a80001"));
    assert_eq!(options["120"], json!(["sip.example.com"]));
    assert_eq!(options["51"], json!(3600));
    assert_eq!(options["1"], json!(["255.255.255.0"]));
    assert_eq!(events(&ctx.timeline, "dhcp.offer").len(), 1);
    stop(&ctx, service).await;
}

#[tokio::test]
async fn a_client_outside_the_vendor_class_gets_the_global_ipv4_150_and_no_phone_options() {
    let (ctx, service, addr) = serve(2, provisioning_settings(), |_| {}).await;
    let IpAddr::V4(server_ip) = ctx.bind_ip else {
        unreachable!()
    };
    let client = Client::new(server_ip, addr, "02:00:00:00:00:01").await;
    let (offer, ack) = client.dora(7).await;
    assert_eq!(ack.kind(), Some(MessageType::Ack));
    let mut cisco = server_ip.octets().to_vec();
    cisco.extend([198, 18, 0, 2]);
    assert_eq!(offer.options[&150], cisco);
    assert!(
        !offer.options.contains_key(&128),
        "the phone's own option goes to that phone only"
    );
    let ack_event = &events(&ctx.timeline, "dhcp.ack")[0];
    assert_eq!(ack_event.phone, None);
    assert_eq!(
        ack_event.field("options").unwrap()["150"],
        json!([server_ip.to_string(), "198.18.0.2"])
    );
    assert!(ctx
        .directory
        .by_ip(IpAddr::V4(ack.message.yiaddr()))
        .is_none());
    stop(&ctx, service).await;
}

#[tokio::test]
async fn malformed_datagrams_are_recorded_and_do_not_stop_the_service() {
    let (ctx, service, addr) = serve(3, Settings::default(), |_| {}).await;
    let IpAddr::V4(server_ip) = ctx.bind_ip else {
        unreachable!()
    };
    let client = Client::new(server_ip, addr, PHONE_MAC).await;

    let good = client
        .message(MessageType::Discover, 1, vec![])
        .to_vec()
        .unwrap();
    let mut bad_magic = good.clone();
    bad_magic[236] = 0;
    let mut huge_hlen = good.clone();
    huge_hlen[2] = 200;
    let mut truncated = good.clone();
    truncated.truncate(120);
    let mut no_type = good.clone();
    no_type.truncate(240);
    no_type.push(255);
    let mut server_type = client
        .message(MessageType::Ack, 2, vec![])
        .to_vec()
        .unwrap();
    server_type[0] = 1;
    for packet in [
        b"hello".to_vec(),
        bad_magic,
        huge_hlen,
        truncated,
        no_type,
        server_type,
        vec![],
    ] {
        client.send_raw(&packet).await;
    }
    let malformed = wait_for(&ctx.timeline, "dhcp.malformed", 7).await;
    assert!(malformed
        .iter()
        .all(|e| e.field_str("peer").is_some() && e.field_str("error").is_some()));
    assert_eq!(malformed[0].field_u64("len"), Some(5));
    assert!(malformed
        .iter()
        .any(|e| e.field_str("error").unwrap().contains("magic cookie")));
    assert!(malformed
        .iter()
        .any(|e| e.field_str("error").unwrap().contains("length 200")));
    assert!(malformed
        .iter()
        .any(|e| e.field_str("error").unwrap().contains("option 53")));

    let (_, ack) = client.dora(3).await;
    assert_eq!(ack.kind(), Some(MessageType::Ack));
    stop(&ctx, service).await;
}

#[tokio::test]
async fn wrong_addresses_are_nakked_and_renewal_keeps_the_address() {
    let (ctx, service, addr) = serve(4, Settings::default(), |_| {}).await;
    let IpAddr::V4(server_ip) = ctx.bind_ip else {
        unreachable!()
    };
    let client = Client::new(server_ip, addr, PHONE_MAC).await;
    // INIT-REBOOT with an address from another network
    client
        .send(&client.message(
            MessageType::Request,
            10,
            vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 1, 2, 3))],
        ))
        .await;
    let nak = client.recv().await;
    assert_eq!(nak.kind(), Some(MessageType::Nak));
    assert_eq!(nak.message.yiaddr(), Ipv4Addr::UNSPECIFIED);
    let nak_event = &events(&ctx.timeline, "dhcp.nak")[0];
    assert_eq!(nak_event.field_str("reason"), Some("not_ours"));
    assert_eq!(nak_event.field_str("address"), Some("10.1.2.3"));

    let (_, ack) = client.dora(11).await;
    let leased = ack.message.yiaddr();
    // RENEWING: ciaddr set, no requested address → same address, ACK
    let mut renew = client.message(MessageType::Request, 12, vec![]);
    renew.set_ciaddr(leased);
    client.send(&renew).await;
    let renewed = client.recv().await;
    assert_eq!(renewed.kind(), Some(MessageType::Ack));
    assert_eq!(renewed.message.yiaddr(), leased);

    // another client asking for the phone's address is refused
    let other = Client::new(server_ip, addr, "02:00:00:00:00:02").await;
    other
        .send(&other.message(
            MessageType::Request,
            13,
            vec![DhcpOption::RequestedIpAddress(leased)],
        ))
        .await;
    assert_eq!(other.recv().await.kind(), Some(MessageType::Nak));
    assert_eq!(
        events(&ctx.timeline, "dhcp.nak")[1].field_str("reason"),
        Some("in_use")
    );
    stop(&ctx, service).await;
}

#[tokio::test]
async fn release_frees_the_address_and_decline_retires_it() {
    let (ctx, service, addr) = serve(5, Settings::default(), |c| {
        let [a, b, cc, _] = c.pool_start.octets();
        c.pool_end = Ipv4Addr::new(a, b, cc, 101);
    })
    .await;
    let IpAddr::V4(server_ip) = ctx.bind_ip else {
        unreachable!()
    };
    let phone_client = Client::new(server_ip, addr, PHONE_MAC).await;
    let (_, ack) = phone_client.dora(20).await;
    let first = ack.message.yiaddr();
    assert!(ctx.directory.by_ip(IpAddr::V4(first)).is_some());

    let mut release = phone_client.message(
        MessageType::Release,
        21,
        vec![DhcpOption::ServerIdentifier(server_ip)],
    );
    release.set_ciaddr(first);
    phone_client.send(&release).await;
    wait_for(&ctx.timeline, "dhcp.release", 1).await;
    assert!(
        ctx.directory.by_ip(IpAddr::V4(first)).is_none(),
        "release unbinds the phone's address"
    );

    let other = Client::new(server_ip, addr, "02:00:00:00:00:03").await;
    let (_, other_ack) = other.dora(22).await;
    assert_eq!(
        other_ack.message.yiaddr(),
        first,
        "the released address is the lowest free one again"
    );
    other
        .send(&other.message(
            MessageType::Decline,
            23,
            vec![
                DhcpOption::RequestedIpAddress(first),
                DhcpOption::ServerIdentifier(server_ip),
            ],
        ))
        .await;
    wait_for(&ctx.timeline, "dhcp.decline", 1).await;

    // the declined address is never offered again: the two-address pool has one left
    let (offer, _) = other.dora(24).await;
    assert_ne!(offer.message.yiaddr(), first);
    let third = Client::new(server_ip, addr, "02:00:00:00:00:04").await;
    third
        .send(&third.message(MessageType::Discover, 25, vec![]))
        .await;
    assert!(third
        .recv_within(Duration::from_millis(500))
        .await
        .is_none());
    let no_offer = wait_for(&ctx.timeline, "dhcp.no_offer", 1).await;
    assert_eq!(no_offer[0].field_str("reason"), Some("pool_exhausted"));
    assert_eq!(no_offer[0].field_str("mac"), Some("02:00:00:00:00:04"));
    stop(&ctx, service).await;
}

#[tokio::test]
async fn fixed_address_goes_to_its_phone() {
    let fixed = |c: &mut DhcpConfig| {
        let [a, b, cc, _] = c.pool_start.octets();
        c.fixed
            .push((PHONE_MAC.parse().unwrap(), Ipv4Addr::new(a, b, cc, 42)));
    };
    let (ctx, service, addr) = serve(6, Settings::default(), fixed).await;
    let IpAddr::V4(server_ip) = ctx.bind_ip else {
        unreachable!()
    };
    let client = Client::new(server_ip, addr, PHONE_MAC).await;
    let (_, ack) = client.dora(30).await;
    assert_eq!(ack.message.yiaddr().octets()[3], 42);
    stop(&ctx, service).await;
}

#[tokio::test]
async fn silent_records_but_never_answers_and_nak_refuses_every_request() {
    let (ctx, service, addr) = serve(
        7,
        Settings {
            silent: true,
            ..Settings::default()
        },
        |_| {},
    )
    .await;
    let IpAddr::V4(server_ip) = ctx.bind_ip else {
        unreachable!()
    };
    let client = Client::new(server_ip, addr, PHONE_MAC).await;
    client
        .send(&client.message(MessageType::Discover, 40, vec![]))
        .await;
    assert!(client
        .recv_within(Duration::from_millis(500))
        .await
        .is_none());
    assert_eq!(
        wait_for(&ctx.timeline, "dhcp.discover", 1).await[0]
            .phone
            .as_deref(),
        Some("uc924-1")
    );
    assert!(events(&ctx.timeline, "dhcp.offer").is_empty());
    stop(&ctx, service).await;

    let (ctx, service, addr) = serve(
        8,
        Settings {
            nak: true,
            ..Settings::default()
        },
        |_| {},
    )
    .await;
    let client = Client::new(server_ip, addr, PHONE_MAC).await;
    let (offer, nak) = client.dora(41).await;
    assert_eq!(offer.kind(), Some(MessageType::Offer));
    assert_eq!(nak.kind(), Some(MessageType::Nak));
    assert_eq!(
        events(&ctx.timeline, "dhcp.nak")[0].field_str("reason"),
        Some("scenario_nak")
    );
    stop(&ctx, service).await;
}

#[tokio::test]
async fn inform_gets_options_without_a_lease() {
    let (ctx, service, addr) = serve(9, provisioning_settings(), |_| {}).await;
    let IpAddr::V4(server_ip) = ctx.bind_ip else {
        unreachable!()
    };
    let client = Client::new(server_ip, addr, "02:00:00:00:00:09").await;
    let mut inform = client.message(MessageType::Inform, 50, vec![]);
    inform.set_ciaddr(Ipv4Addr::new(
        server_ip.octets()[0],
        server_ip.octets()[1],
        server_ip.octets()[2],
        7,
    ));
    client.send(&inform).await;
    let ack = client.recv().await;
    assert_eq!(ack.kind(), Some(MessageType::Ack));
    assert_eq!(ack.message.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(!ack.options.contains_key(&51), "no lease time for INFORM");
    assert_eq!(ack.text(66), format!("http://{server_ip}:8080/cfg"));
    stop(&ctx, service).await;
}

#[tokio::test]
async fn stopping_releases_the_port_and_is_recorded() {
    let (ctx, service, addr) = serve(10, Settings::default(), |_| {}).await;
    stop(&ctx, service).await;
    std::net::UdpSocket::bind(addr).expect("port released after stop");
    let started = &events(&ctx.timeline, "service.started")[0];
    assert_eq!(started.field("addrs"), Some(&json!([addr.to_string()])));
    assert_eq!(started.field_str("service"), Some("dhcp"));
    assert_eq!(events(&ctx.timeline, "service.stopped").len(), 1);
}

#[tokio::test]
async fn mistakes_in_the_scenario_fail_the_start() {
    let server_ip = unique_loopback(11);
    let ctx = context(server_ip, vec![phone("uc924-1", PHONE_MAC)]);
    let try_start = |settings: Settings| start(ctx.clone(), config(server_ip), settings);

    let unknown_phone = Settings {
        phone: [("nobody".to_string(), OptionSet::default())].into(),
        ..Settings::default()
    };
    let error = try_start(unknown_phone).await.err().unwrap().to_string();
    assert!(
        error.contains("no phone `nobody`") && error.contains("uc924-1"),
        "{error}"
    );

    let typo = Settings {
        options: [("66".to_string(), text("http://{rig.ip}/cfg{phone.mca}"))].into(),
        ..Settings::default()
    };
    let error = try_start(typo).await.err().unwrap().to_string();
    assert!(error.contains("phone.mca"), "{error}");

    let not_an_address = Settings {
        options: [(
            "150".to_string(),
            OptionValue::Ipv4(vec!["tftp.example.com".into()]),
        )]
        .into(),
        ..Settings::default()
    };
    let error = try_start(not_an_address).await.err().unwrap().to_string();
    assert!(error.contains("not an IPv4 address"), "{error}");

    let mut broadcast_without_interface = config(server_ip);
    broadcast_without_interface.reply_mode = phonerig_dhcp::ReplyMode::Broadcast;
    let error = format!(
        "{:#}",
        start(
            ctx.clone(),
            broadcast_without_interface,
            Settings::default()
        )
        .await
        .err()
        .unwrap()
    );
    assert!(error.contains("need an interface"), "{error}");
}

#[tokio::test]
async fn phone_placeholders_are_left_out_for_unknown_clients_and_reported() {
    let settings = Settings {
        options: [(
            "128".to_string(),
            text("http://{rig.ip}/cfg{phone.mac}.xml"),
        )]
        .into(),
        ..Settings::default()
    };
    let (ctx, service, addr) = serve(12, settings, |_| {}).await;
    let IpAddr::V4(server_ip) = ctx.bind_ip else {
        unreachable!()
    };
    let stranger = Client::new(server_ip, addr, "02:00:00:00:00:0c").await;
    let (offer, _) = stranger.dora(60).await;
    assert!(!offer.options.contains_key(&128));
    let offer_event = &events(&ctx.timeline, "dhcp.offer")[0];
    assert!(offer_event.field("option_errors").unwrap()["128"]
        .as_str()
        .unwrap()
        .contains("phone.mac"));
    let phone_client = Client::new(server_ip, addr, PHONE_MAC).await;
    let (offer, _) = phone_client.dora(61).await;
    assert_eq!(
        offer.text(128),
        format!("http://{server_ip}/cfg001fc110d3a9.xml")
    );
    stop(&ctx, service).await;
}
