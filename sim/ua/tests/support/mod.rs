//! A tiny scripted SIP peer for the loopback tests: it plays the registrar and the
//! other extensions (4004, 4006) on one UDP socket. Deliberately string-based and
//! separate from the crate's own parser, so the phone is checked by other code.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use phonerig_sim_ua::{Telephony, UaConfig, UaEvent};
use tokio::net::UdpSocket;
use tokio::sync::broadcast;
use tokio::time::Instant;

pub const WAIT: Duration = Duration::from_secs(5);

/// One message the peer received.
#[derive(Debug, Clone)]
pub struct Msg {
    pub raw: String,
    pub src: SocketAddr,
    pub at: Instant,
}

impl Msg {
    pub fn first_line(&self) -> &str {
        self.raw.lines().next().unwrap_or_default()
    }

    pub fn method(&self) -> Option<&str> {
        let first = self.first_line();
        (!first.starts_with("SIP/2.0")).then(|| first.split(' ').next().unwrap_or_default())
    }

    pub fn code(&self) -> Option<u16> {
        let first = self.first_line();
        first
            .strip_prefix("SIP/2.0 ")?
            .split(' ')
            .next()?
            .parse()
            .ok()
    }

    pub fn uri(&self) -> &str {
        self.first_line().split(' ').nth(1).unwrap_or_default()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let head = self.raw.split("\r\n\r\n").next().unwrap_or_default();
        head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    pub fn headers(&self, name: &str) -> Vec<&str> {
        let head = self.raw.split("\r\n\r\n").next().unwrap_or_default();
        head.lines()
            .skip(1)
            .filter_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
            })
            .collect()
    }

    pub fn body(&self) -> &str {
        self.raw
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    pub fn call_id(&self) -> &str {
        self.header("Call-ID").unwrap_or_default()
    }

    pub fn cseq(&self) -> (u32, String) {
        let v = self.header("CSeq").unwrap_or_default();
        let mut p = v.split_whitespace();
        (
            p.next().and_then(|n| n.parse().ok()).unwrap_or(0),
            p.next().unwrap_or_default().to_string(),
        )
    }

    pub fn branch(&self) -> &str {
        let via = self.header("Via").unwrap_or_default();
        via.split(';')
            .find_map(|p| p.trim().strip_prefix("branch="))
            .unwrap_or_default()
    }

    /// The `a=` direction attribute of the SDP body.
    pub fn sdp_direction(&self) -> Option<&str> {
        self.body().lines().find_map(|l| {
            let a = l.trim().strip_prefix("a=")?;
            ["sendrecv", "sendonly", "recvonly", "inactive"]
                .contains(&a)
                .then_some(a)
        })
    }

    /// Where the SDP says to send RTP.
    pub fn sdp_rtp(&self) -> Option<SocketAddr> {
        let body = self.body();
        let ip: IpAddr = body
            .lines()
            .find_map(|l| l.trim().strip_prefix("c=IN IP4 "))?
            .trim()
            .parse()
            .ok()?;
        let port: u16 = body
            .lines()
            .find_map(|l| l.trim().strip_prefix("m=audio "))?
            .split(' ')
            .next()?
            .parse()
            .ok()?;
        Some(SocketAddr::new(ip, port))
    }
}

/// The scripted far end.
pub struct Peer {
    pub sock: UdpSocket,
    pub addr: SocketAddr,
    backlog: Mutex<VecDeque<Msg>>,
}

impl Peer {
    pub async fn bind(ip: &str) -> Peer {
        let sock = UdpSocket::bind((ip.parse::<IpAddr>().unwrap(), 0))
            .await
            .unwrap();
        let addr = sock.local_addr().unwrap();
        Peer {
            sock,
            addr,
            backlog: Mutex::new(VecDeque::new()),
        }
    }

    async fn recv_new(&self, until: Instant) -> Option<Msg> {
        let mut buf = vec![0u8; 65535];
        match tokio::time::timeout_at(until, self.sock.recv_from(&mut buf)).await {
            Ok(Ok((n, src))) => Some(Msg {
                raw: String::from_utf8_lossy(&buf[..n]).into_owned(),
                src,
                at: Instant::now(),
            }),
            _ => None,
        }
    }

    /// The first message (backlog first) matching `pred`; others are kept.
    pub async fn try_wait_for(&self, within: Duration, pred: impl Fn(&Msg) -> bool) -> Option<Msg> {
        {
            let mut backlog = self.backlog.lock().unwrap();
            if let Some(pos) = backlog.iter().position(&pred) {
                return backlog.remove(pos);
            }
        }
        let until = Instant::now() + within;
        loop {
            let msg = self.recv_new(until).await?;
            if pred(&msg) {
                return Some(msg);
            }
            self.backlog.lock().unwrap().push_back(msg);
        }
    }

    pub async fn wait_for(&self, what: &str, pred: impl Fn(&Msg) -> bool) -> Msg {
        match self.try_wait_for(WAIT, pred).await {
            Some(m) => m,
            None => panic!(
                "peer: no {what} within {WAIT:?}; backlog: {:#?}",
                self.backlog
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|m| m.first_line().to_string())
                    .collect::<Vec<_>>()
            ),
        }
    }

    pub async fn request(&self, method: &str) -> Msg {
        self.wait_for(method, |m| m.method() == Some(method)).await
    }

    /// A request of `method` in the call `call_id`.
    pub async fn request_in(&self, method: &str, call_id: &str) -> Msg {
        self.wait_for(&format!("{method} in {call_id}"), |m| {
            m.method() == Some(method) && m.call_id() == call_id
        })
        .await
    }

    pub async fn response(&self, code: u16, method: &str) -> Msg {
        self.wait_for(&format!("{code} to {method}"), |m| {
            m.code() == Some(code) && m.cseq().1 == method
        })
        .await
    }

    /// Everything received (new and backlog) during `d`.
    pub async fn drain(&self, d: Duration) -> Vec<Msg> {
        let mut out: Vec<Msg> = self.backlog.lock().unwrap().drain(..).collect();
        let until = Instant::now() + d;
        while let Some(m) = self.recv_new(until).await {
            out.push(m);
        }
        out
    }

    pub async fn send(&self, text: &str, to: SocketAddr) {
        self.sock.send_to(text.as_bytes(), to).await.unwrap();
    }

    /// Answer `req` (to its source) with optional To tag, extra headers and SDP body.
    pub async fn reply(
        &self,
        req: &Msg,
        code: u16,
        to_tag: Option<&str>,
        extra: &[String],
        sdp: Option<&str>,
    ) {
        let mut out = format!("SIP/2.0 {code} Peer Says\r\n");
        for via in req.headers("Via") {
            out.push_str(&format!("Via: {via}\r\n"));
        }
        out.push_str(&format!("From: {}\r\n", req.header("From").unwrap()));
        let to = req.header("To").unwrap();
        match to_tag {
            Some(t) if !to.contains("tag=") => out.push_str(&format!("To: {to};tag={t}\r\n")),
            _ => out.push_str(&format!("To: {to}\r\n")),
        }
        out.push_str(&format!(
            "Call-ID: {}\r\nCSeq: {}\r\n",
            req.call_id(),
            req.header("CSeq").unwrap()
        ));
        for h in extra {
            out.push_str(h);
            out.push_str("\r\n");
        }
        let body = sdp.unwrap_or_default();
        if !body.is_empty() {
            out.push_str("Content-Type: application/sdp\r\n");
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        self.send(&out, req.src).await;
    }
}

pub fn sdp(ip: IpAddr, port: u16, dir: &str) -> String {
    format!(
        "v=0\r\no=peer 1 1 IN IP4 {ip}\r\ns=peer\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na={dir}\r\n"
    )
}

/// A request from the peer to the phone (an extension calling, a NOTIFY …).
pub struct OutRequest<'a> {
    pub method: &'a str,
    pub from_user: &'a str,
    pub to_user: &'a str,
    pub call_id: &'a str,
    pub from_tag: &'a str,
    pub to_tag: Option<&'a str>,
    pub cseq: u32,
    pub extra: Vec<String>,
    pub body: Option<String>,
}

impl OutRequest<'_> {
    pub fn render(&self, peer: SocketAddr, phone: SocketAddr) -> String {
        let branch = format!("z9hG4bKpeer{}", fastrand::u64(..));
        let mut out = format!(
            "{m} sip:{to}@{phone} SIP/2.0\r\nVia: SIP/2.0/UDP {peer};branch={branch}\r\nMax-Forwards: 70\r\n\
From: <sip:{from}@pbx.test>;tag={ft}\r\nTo: <sip:{to}@pbx.test>{tt}\r\nCall-ID: {cid}\r\nCSeq: {n} {m}\r\n\
Contact: <sip:{from}@{peer}>\r\n",
            m = self.method,
            to = self.to_user,
            from = self.from_user,
            ft = self.from_tag,
            tt = self.to_tag.map(|t| format!(";tag={t}")).unwrap_or_default(),
            cid = self.call_id,
            n = self.cseq,
        );
        for h in &self.extra {
            out.push_str(h);
            out.push_str("\r\n");
        }
        let body = self.body.clone().unwrap_or_default();
        if !body.is_empty() {
            out.push_str("Content-Type: application/sdp\r\n");
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        out
    }
}

/// RTP endpoint of a far-end extension: counts what arrives, can send PCMU.
pub struct RtpPeer {
    pub addr: SocketAddr,
    pub received: Arc<AtomicU64>,
    sock: Arc<UdpSocket>,
}

impl RtpPeer {
    pub async fn bind(ip: &str) -> RtpPeer {
        let sock = Arc::new(
            UdpSocket::bind((ip.parse::<IpAddr>().unwrap(), 0))
                .await
                .unwrap(),
        );
        let addr = sock.local_addr().unwrap();
        let received = Arc::new(AtomicU64::new(0));
        let (s, r) = (sock.clone(), received.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, _)) = s.recv_from(&mut buf).await {
                if n >= 12 && buf[0] >> 6 == 2 {
                    r.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        RtpPeer {
            addr,
            received,
            sock,
        }
    }

    pub fn count(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Send `n` RTP packets to `to`, 5 ms apart.
    pub async fn send_packets(&self, to: SocketAddr, n: u16) {
        for seq in 0..n {
            let mut pkt = vec![0x80, 0, (seq >> 8) as u8, seq as u8, 0, 0, 0, 0, 1, 2, 3, 4];
            pkt.extend_from_slice(&[0xffu8; 160]);
            self.sock.send_to(&pkt, to).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Wait until `f` is true (polling), or panic with `what`.
pub async fn eventually(what: &str, f: impl Fn() -> bool) {
    let until = Instant::now() + WAIT;
    while !f() {
        if Instant::now() > until {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Collected console lines of a phone.
#[derive(Clone, Default)]
pub struct ConsoleLog(pub Arc<Mutex<Vec<String>>>);

impl ConsoleLog {
    pub fn sink(&self) -> phonerig_sim_ua::Console {
        let lines = self.0.clone();
        Arc::new(move |l: String| lines.lock().unwrap().push(l))
    }

    pub fn contains(&self, text: &str) -> bool {
        self.0.lock().unwrap().iter().any(|l| l.contains(text))
    }

    pub fn dump(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }
}

/// Next event matching `pred` within the standard wait.
pub async fn next_event(
    rx: &mut broadcast::Receiver<UaEvent>,
    what: &str,
    pred: impl Fn(&UaEvent) -> bool,
) -> UaEvent {
    let until = Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Ok(ev)) if pred(&ev) => return ev,
            Ok(Ok(_)) => continue,
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
            _ => panic!("no event {what} within {WAIT:?}"),
        }
    }
}

/// A phone "4002" and its peer on a unique pair of loopback addresses.
pub struct Bench {
    pub peer: Peer,
    pub phone: Telephony,
    pub phone_addr: SocketAddr,
    pub console: ConsoleLog,
    pub events: broadcast::Receiver<UaEvent>,
    pub net: String,
}

pub fn config(net: &str, registrar: SocketAddr) -> UaConfig {
    UaConfig {
        local_ip: format!("{net}.2").parse().unwrap(),
        sip_port: 0,
        user_agent: "Htek UC924U 2.42.6.3.36 (sim)".into(),
        registrar,
        domain: "pbx.test".into(),
        user: "4002".into(),
        auth_user: "4002".into(),
        password: "secret".into(),
        expires: 60,
        rtp_port_base: 0,
        ..UaConfig::default()
    }
}

impl Bench {
    /// `net` is a unique "127.a.b" prefix for this test.
    pub async fn start(net: &str, tweak: impl FnOnce(&mut UaConfig)) -> Bench {
        let peer = Peer::bind(&format!("{net}.1")).await;
        let mut cfg = config(net, peer.addr);
        tweak(&mut cfg);
        let console = ConsoleLog::default();
        let phone = Telephony::start(
            cfg,
            console.sink(),
            Arc::new(|event: &str| {
                if event.starts_with("check-sync") {
                    phonerig_sim_ua::NotifyDecision::Accept
                } else {
                    phonerig_sim_ua::NotifyDecision::Reject(489)
                }
            }),
        )
        .await
        .unwrap();
        let events = phone.events();
        let phone_addr = phone.local_addr();
        Bench {
            peer,
            phone,
            phone_addr,
            console,
            events,
            net: net.to_string(),
        }
    }

    pub fn ip(&self) -> IpAddr {
        format!("{}.1", self.net).parse().unwrap()
    }

    /// The peer answers the phone's INVITE with 200 and `dir`, RTP to `rtp`; waits for the ACK.
    pub async fn answer_invite(&self, invite: &Msg, tag: &str, rtp: SocketAddr, dir: &str) {
        let contact = format!(
            "Contact: <sip:{}@{}>",
            invite
                .uri()
                .trim_start_matches("sip:")
                .split('@')
                .next()
                .unwrap(),
            self.peer.addr
        );
        self.peer
            .reply(invite, 180, Some(tag), std::slice::from_ref(&contact), None)
            .await;
        self.peer
            .reply(
                invite,
                200,
                Some(tag),
                &[contact],
                Some(&sdp(rtp.ip(), rtp.port(), dir)),
            )
            .await;
        self.peer.request_in("ACK", invite.call_id()).await;
    }

    /// An extension (`from`) calls the phone; returns the 180 the phone sent.
    pub async fn call_phone(
        &self,
        from: &str,
        call_id: &str,
        rtp: SocketAddr,
        extra: Vec<String>,
    ) -> Msg {
        let invite = OutRequest {
            method: "INVITE",
            from_user: from,
            to_user: "4002",
            call_id,
            from_tag: "peer-tag",
            to_tag: None,
            cseq: 1,
            extra,
            body: Some(sdp(rtp.ip(), rtp.port(), "sendrecv")),
        };
        self.peer
            .send(
                &invite.render(self.peer.addr, self.phone_addr),
                self.phone_addr,
            )
            .await;
        self.peer
            .wait_for("180 from the phone", |m| {
                m.code() == Some(180) && m.call_id() == call_id
            })
            .await
    }

    /// ACK the phone's final answer to the peer's INVITE `call_id`.
    pub async fn ack(&self, call_id: &str, to_tag: &str, final_cseq: u32) {
        let ack = OutRequest {
            method: "ACK",
            from_user: "4006",
            to_user: "4002",
            call_id,
            from_tag: "peer-tag",
            to_tag: Some(to_tag),
            cseq: final_cseq,
            extra: vec![],
            body: None,
        };
        self.peer
            .send(
                &ack.render(self.peer.addr, self.phone_addr),
                self.phone_addr,
            )
            .await;
    }
}

pub fn to_tag(msg: &Msg) -> String {
    let to = msg.header("To").unwrap_or_default();
    to.split(';')
        .find_map(|p| p.trim().strip_prefix("tag="))
        .unwrap_or_default()
        .to_string()
}
