//! Out-of-dialog NOTIFY (`Event: check-sync` and friends) that makes a phone
//! re-provision or reboot. Phones often challenge it; the rig answers with the
//! phone's own credentials, as a PBX would.

use std::net::SocketAddr;

use phonerig_core::event::NewEvent;
use phonerig_core::{PhoneInfo, Source};

use crate::digest::Challenge;
use crate::endpoint::Core;
use crate::message::{new_branch, token, Builder, SipMsg, Transport};
use crate::NotifyOutcome;

/// One NOTIFY exchange: the retry after a challenge keeps Call-ID and From tag.
pub(crate) struct NotifyExchange<'a> {
    pub uri: &'a str,
    pub ext: &'a str,
    pub event: &'a str,
    pub call_id: &'a str,
    pub from_tag: &'a str,
    pub transport: Transport,
}

/// The NOTIFY request (RFC 3265 §3.2 out of dialog, as Htek §8 and Panasonic §2.4.3.5 expect).
pub(crate) fn build(
    core: &Core,
    exchange: &NotifyExchange,
    cseq: u32,
    authorization: Option<(&str, String)>,
) -> anyhow::Result<SipMsg> {
    let NotifyExchange {
        uri,
        ext,
        event,
        call_id,
        from_tag,
        transport,
    } = *exchange;
    let mut builder = Builder::new()
        .header("Via", core.via(transport, &new_branch()))
        .header("Max-Forwards", "70")
        .header(
            "From",
            format!("<sip:phonerig@{}>;tag={from_tag}", core.domain),
        )
        .header("To", format!("<sip:{ext}@{}>", core.domain))
        .header("Call-ID", call_id)
        .header("CSeq", format!("{cseq} NOTIFY"))
        .header("Contact", core.contact("phonerig", transport))
        .header("Event", event)
        .header("Subscription-State", "terminated")
        .header("User-Agent", "phonerig");
    if let Some((name, value)) = authorization {
        builder = builder.header(name, value);
    }
    builder.request(rsip::Method::Notify, uri)
}

pub(crate) async fn send(
    core: &Core,
    phone: &PhoneInfo,
    event: &str,
    target: Option<SocketAddr>,
) -> anyhow::Result<NotifyOutcome> {
    let registration = core.registrar.get(&phone.ext);
    let (dest, transport, uri) = match (target, &registration) {
        (Some(target), _) => (
            target,
            Transport::Udp,
            format!("sip:{}@{target}", phone.ext),
        ),
        (None, Some(reg)) => (
            core.registration_target(reg),
            reg.transport,
            reg.contact.clone(),
        ),
        (None, None) => anyhow::bail!(
            "phone {} (ext {}) is not registered and no target address was given",
            phone.name,
            phone.ext
        ),
    };
    let call_id = format!("{}@phonerig", token(8));
    let result = exchange(core, phone, event, &uri, &call_id, dest, transport).await;
    let (outcome, code, error) = match &result {
        Ok(NotifyOutcome::Answered { code }) => ("answered", Some(*code), None),
        Ok(NotifyOutcome::Timeout) => ("timeout", None, None),
        Err(error) => ("error", None, Some(error.to_string())),
    };
    core.ctx.timeline.publish(
        NewEvent::new(Source::Sip, "sip.notify")
            .phone(Some(phone.name.clone()))
            .field("event", event)
            .field("target", dest.to_string())
            .field("transport", transport)
            .field("call_id", &call_id)
            .field("outcome", outcome)
            .field("code", code)
            .field("error", error),
    );
    result
}

async fn exchange(
    core: &Core,
    phone: &PhoneInfo,
    event: &str,
    uri: &str,
    call_id: &str,
    dest: SocketAddr,
    transport: Transport,
) -> anyhow::Result<NotifyOutcome> {
    let from_tag = token(4);
    let exchange = NotifyExchange {
        uri,
        ext: &phone.ext,
        event,
        call_id,
        from_tag: &from_tag,
        transport,
    };
    let first = build(core, &exchange, 1, None)?;
    let Some(response) = core.non_invite(&first, dest, transport).await? else {
        return Ok(NotifyOutcome::Timeout);
    };
    let code = response.status().unwrap_or(0);
    if code != 401 && code != 407 {
        return Ok(NotifyOutcome::Answered { code });
    }
    // One digest round (RFC 3261 §22.2); a second challenge is the answer.
    let (challenge_header, answer_header) = if code == 401 {
        ("www-authenticate", "Authorization")
    } else {
        ("proxy-authenticate", "Proxy-Authorization")
    };
    let Some(challenge) = response
        .headers_named(challenge_header)
        .iter()
        .find_map(|h| Challenge::parse(h))
    else {
        return Ok(NotifyOutcome::Answered { code });
    };
    let authorization = challenge.answer(&phone.ext, &phone.password, "NOTIFY", uri, &token(8));
    let second = build(core, &exchange, 2, Some((answer_header, authorization)))?;
    Ok(match core.non_invite(&second, dest, transport).await? {
        Some(response) => NotifyOutcome::Answered {
            code: response.status().unwrap_or(0),
        },
        None => NotifyOutcome::Timeout,
    })
}
