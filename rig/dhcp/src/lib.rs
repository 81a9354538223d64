//! The bench's DHCPv4 server.
//!
//! Leases come from the bench pool, or a fixed address per phone MAC; the
//! provisioning options (66, 150, 128, 120, 43, any raw number) come from the
//! scenario, per vendor class (option 60 glob) and per phone, the most
//! specific set winning per option number. Messages are encoded and decoded
//! with `dhcproto`; the loop, lease table and option encodings are ours.
//!
//! Every request, offer, ack and nak is an event on the timeline (see
//! `docs/CONTRACTS.md` and `docs/dhcp.md`); malformed datagrams become
//! `dhcp.malformed` events and are dropped.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::Context;
use phonerig_core::event::NewEvent;
use phonerig_core::{Mac, RunningService, ServiceContext, Source};

pub mod leases;
pub mod options;
pub mod probe;
pub mod safety;
mod server;
pub mod settings;
mod socket;
pub mod wire;

pub use settings::{OptionSet, OptionValue, Settings};

/// Where replies go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyMode {
    /// Real NIC or veth: to 255.255.255.255:`client_port` while the client has
    /// no address (ciaddr 0), else to ciaddr; the socket is pinned to `interface`.
    Broadcast,
    /// Loopback: to the source address and port of the request.
    ToSource,
}

/// The lab-level facts the DHCP server needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpConfig {
    /// 67 on a NIC; 6767 (or 0 for any) on loopback.
    pub port: u16,
    /// 68 on a NIC; 6868 on loopback.
    pub client_port: u16,
    /// Pin the socket to this interface (SO_BINDTODEVICE) and bind 0.0.0.0:`port`.
    /// `None`: bind `ctx.bind_ip:port` (loopback).
    pub interface: Option<String>,
    pub reply_mode: ReplyMode,
    /// Prefix length of the bench subnet (option 1).
    pub subnet_prefix: u8,
    pub pool_start: Ipv4Addr,
    pub pool_end: Ipv4Addr,
    /// Fixed addresses per phone MAC (outside or inside the pool).
    pub fixed: Vec<(Mac, Ipv4Addr)>,
    /// Lease time when the scenario sets none.
    pub default_lease: Duration,
    /// Create the socket inside this network namespace.
    pub netns: Option<String>,
}

impl DhcpConfig {
    /// A loopback server on `server_ip` (a 127.x.y.z address): port 6767,
    /// replies to the source, pool .100–.199 of its /24, one-hour leases.
    pub fn loopback(server_ip: Ipv4Addr) -> DhcpConfig {
        let [a, b, c, _] = server_ip.octets();
        DhcpConfig {
            port: 6767,
            client_port: 6868,
            interface: None,
            reply_mode: ReplyMode::ToSource,
            subnet_prefix: 24,
            pool_start: Ipv4Addr::new(a, b, c, 100),
            pool_end: Ipv4Addr::new(a, b, c, 199),
            fixed: Vec::new(),
            default_lease: Duration::from_secs(3600),
            netns: None,
        }
    }

    pub fn subnet_mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(
            u32::MAX
                .checked_shl(32 - u32::from(self.subnet_prefix))
                .unwrap_or(0),
        )
    }
}

/// Addresses in a pool the table will manage; a larger pool is a typo.
pub const MAX_POOL: u32 = 65_536;

fn check_config(config: &DhcpConfig, server_ip: Ipv4Addr) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=30).contains(&config.subnet_prefix),
        "subnet prefix /{} is not a usable bench subnet (1–30)",
        config.subnet_prefix
    );
    let mask = u32::from(config.subnet_mask());
    let net = |ip: Ipv4Addr| u32::from(ip) & mask;
    let (start, end) = (u32::from(config.pool_start), u32::from(config.pool_end));
    anyhow::ensure!(
        start <= end,
        "pool {}–{} ends before it starts",
        config.pool_start,
        config.pool_end
    );
    anyhow::ensure!(
        end - start < MAX_POOL,
        "pool {}–{} has more than {MAX_POOL} addresses",
        config.pool_start,
        config.pool_end
    );
    for ip in [config.pool_start, config.pool_end]
        .iter()
        .chain(config.fixed.iter().map(|(_, ip)| ip))
    {
        anyhow::ensure!(
            net(*ip) == net(server_ip),
            "{ip} is outside the bench subnet {server_ip}/{}",
            config.subnet_prefix
        );
    }
    anyhow::ensure!(
        config.default_lease >= Duration::from_secs(1),
        "the default lease time must be at least 1s"
    );
    Ok(())
}

/// The safety checks before a server opens its socket on a NIC (see
/// [`safety`] and [`probe`]); on loopback there is no segment to protect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupChecks {
    /// The operator declared the NIC dedicated to phones (lab `[bench]
    /// dedicated = true` or `--i-know-this-interface-is-dedicated`): a default
    /// route, a management address or the lab address elsewhere do not stop the server.
    pub dedicated: bool,
    /// How long to listen for other servers' OFFERs to the probe DISCOVER;
    /// `None` skips the probe (only for a test's own second server).
    pub probe_wait: Option<Duration>,
}

/// Long enough for a router or dnsmasq to answer (they answer in
/// milliseconds; ISC dhcpd may ping the address first, for 500 ms).
pub const DEFAULT_PROBE_WAIT: Duration = Duration::from_millis(1500);

impl Default for StartupChecks {
    fn default() -> Self {
        StartupChecks {
            dedicated: false,
            probe_wait: Some(DEFAULT_PROBE_WAIT),
        }
    }
}

/// Starts the server with the default checks ([`StartupChecks::default`]).
pub async fn start(
    ctx: ServiceContext,
    config: DhcpConfig,
    settings: Settings,
) -> anyhow::Result<RunningService> {
    start_with(ctx, config, settings, StartupChecks::default()).await
}

/// The `dhcp.refused` event: the server did not start, and why.
fn refused(interface: &str, reason: &str, message: &str) -> NewEvent {
    NewEvent::new(Source::Dhcp, "dhcp.refused")
        .field("interface", interface)
        .field("reason", reason)
        .field("message", message)
}

/// On a NIC: refuses an interface that is not a dedicated phone segment,
/// then probes for other DHCP servers on it. Each refusal is a
/// `dhcp.refused` event and the error says why and how to override.
async fn preflight(
    ctx: &ServiceContext,
    config: &DhcpConfig,
    server_ip: Ipv4Addr,
    checks: &StartupChecks,
) -> anyhow::Result<()> {
    let Some(interface) = config
        .interface
        .clone()
        .filter(|_| config.reply_mode == ReplyMode::Broadcast)
    else {
        return Ok(());
    };
    let netns = config.netns.clone();
    let facts = tokio::task::spawn_blocking(move || safety::HostFacts::read(netns.as_deref()))
        .await
        .context("reading the host's interfaces")?
        .context("reading the host's interfaces")?;
    let all = safety::check_interface(&facts, &interface, server_ip, false);
    let (blocking, overridden): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|r| !checks.dedicated || !r.overridable());
    for refusal in &overridden {
        ctx.timeline.publish(
            NewEvent::new(Source::Rig, "warning")
                .field("service", "dhcp")
                .field(
                    "error",
                    format!("overridden because the interface is declared dedicated: {refusal}"),
                ),
        );
    }
    if let Some(first) = blocking.first() {
        for refusal in &blocking {
            ctx.timeline
                .publish(refused(&interface, refusal.code(), &refusal.to_string()));
        }
        return Err(anyhow::Error::new(first.clone()));
    }
    let Some(wait) = checks.probe_wait else {
        return Ok(());
    };
    let (netns, probe_if, port, client_port) = (
        config.netns.clone(),
        interface.clone(),
        config.port,
        config.client_port,
    );
    let found = tokio::task::spawn_blocking(move || {
        probe::probe(netns.as_deref(), &probe_if, port, client_port, wait)
    })
    .await
    .context("DHCP probe")?
    .context("probing for other DHCP servers")?;
    if found.is_empty() {
        ctx.timeline.publish(
            NewEvent::new(Source::Dhcp, "dhcp.probe")
                .field("interface", interface.as_str())
                .field("waited_ms", wait.as_millis() as u64)
                .field("answers", 0),
        );
        return Ok(());
    }
    let names: Vec<String> = found.iter().map(ToString::to_string).collect();
    let message = format!(
        "refusing to serve DHCP on `{interface}`: another DHCP server answered the probe DISCOVER: {}. Two servers on one segment give each phone whichever answers first; switch that server off or give the bench a segment of its own",
        names.join("; ")
    );
    for server in &found {
        ctx.timeline.publish(
            refused(&interface, "foreign_server", &message)
                .field("server_ip", server.server_ip.to_string())
                .field("server_mac", server.mac.colon())
                .field("offered", server.offered.to_string()),
        );
    }
    anyhow::bail!(message)
}

/// Starts the server after `checks`; it runs until `ctx.shutdown` is
/// cancelled, then closes its socket.
pub async fn start_with(
    ctx: ServiceContext,
    config: DhcpConfig,
    settings: Settings,
    checks: StartupChecks,
) -> anyhow::Result<RunningService> {
    let server_ip = match ctx.bind_ip {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(ip) => anyhow::bail!("DHCPv4 needs an IPv4 address to serve from, got {ip}"),
    };
    check_config(&config, server_ip)?;
    let plan = options::OptionPlan::new(&settings)?;
    server::check_plan(&plan, &ctx)?;
    preflight(&ctx, &config, server_ip, &checks).await?;
    let std_socket = socket::open(&config, server_ip).context("DHCP socket")?;
    let socket = tokio::net::UdpSocket::from_std(std_socket).context("DHCP socket")?;
    let mut addrs = vec![socket.local_addr()?];
    let watcher = match socket::open_watcher(&config) {
        None => None,
        Some(Ok(watcher)) => {
            let watcher =
                tokio::net::UdpSocket::from_std(watcher).context("DHCP client-port watcher")?;
            addrs.push(watcher.local_addr()?);
            Some(watcher)
        }
        Some(Err(error)) => {
            // Serving matters more than watching: go on, but say so.
            ctx.timeline.publish(
                NewEvent::new(Source::Rig, "warning")
                    .field("service", "dhcp")
                    .field(
                        "error",
                        format!(
                            "cannot watch port {} for other DHCP servers: {error}",
                            config.client_port
                        ),
                    ),
            );
            None
        }
    };
    ctx.timeline.publish(
        NewEvent::new(Source::Rig, "service.started")
            .field("service", "dhcp")
            .field(
                "addrs",
                addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ),
    );
    let server = server::Server::new(&ctx, &config, &settings, plan, server_ip);
    let task = tokio::spawn(server::run(server, socket, watcher, ctx.clone()));
    Ok(RunningService {
        name: "dhcp",
        addrs,
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(24, "255.255.255.0")]
    #[case(16, "255.255.0.0")]
    #[case(30, "255.255.255.252")]
    #[case(1, "128.0.0.0")]
    fn subnet_masks(#[case] prefix: u8, #[case] mask: &str) {
        let mut config = DhcpConfig::loopback(Ipv4Addr::new(127, 0, 0, 1));
        config.subnet_prefix = prefix;
        assert_eq!(config.subnet_mask().to_string(), mask);
    }

    #[rstest]
    #[case::fine(24, 100, 199, None)]
    #[case::reversed(24, 199, 100, Some("ends before"))]
    #[case::single_address(24, 150, 150, None)]
    #[case::bad_prefix(31, 100, 101, Some("prefix"))]
    fn config_checks(
        #[case] prefix: u8,
        #[case] start: u8,
        #[case] end: u8,
        #[case] error: Option<&str>,
    ) {
        let server = Ipv4Addr::new(127, 9, 9, 1);
        let mut config = DhcpConfig::loopback(server);
        config.subnet_prefix = prefix;
        config.pool_start = Ipv4Addr::new(127, 9, 9, start);
        config.pool_end = Ipv4Addr::new(127, 9, 9, end);
        match (check_config(&config, server), error) {
            (Ok(()), None) => {}
            (Err(e), Some(text)) => assert!(e.to_string().contains(text), "{e}"),
            (got, want) => panic!("got {got:?}, want error {want:?}"),
        }
    }

    #[test]
    fn fixed_address_outside_the_subnet_is_refused() {
        let server = Ipv4Addr::new(127, 9, 9, 1);
        let mut config = DhcpConfig::loopback(server);
        config
            .fixed
            .push((Mac([0, 1, 2, 3, 4, 5]), Ipv4Addr::new(127, 9, 10, 5)));
        assert!(check_config(&config, server)
            .unwrap_err()
            .to_string()
            .contains("outside the bench subnet"));
    }
}
