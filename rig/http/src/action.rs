//! The Action URL receiver: phones report state changes (registered, call
//! answered, …) with `GET /action/<event>?mac=…&ip=…`. Each report becomes an
//! `action.<event>` event carrying every query parameter.

use std::net::SocketAddr;

use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use phonerig_core::event::{NewEvent, Source};
use phonerig_core::{Mac, ServiceContext};

use crate::body::TrackedBody;

const PREFIX: &str = "/action/";
const MAX_EVENT_NAME: usize = 64;

/// The raw event name when `path` is an Action URL (`/action/<event>`).
pub fn event_name(path: &str) -> Option<&str> {
    path.strip_prefix(PREFIX)
}

/// `Registered` → `registered`; names are dotted lower case on the timeline.
/// Anything but letters, digits, `_`, `-` and `.` is refused.
pub fn normalise_event_name(raw: &str) -> Result<String, String> {
    let name = raw.trim_end_matches('/');
    if name.is_empty() {
        return Err("empty action event name".into());
    }
    if name.len() > MAX_EVENT_NAME {
        return Err(format!(
            "action event name longer than {MAX_EVENT_NAME} bytes"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(format!(
            "action event name `{name}` has characters other than letters, digits, `_`, `-`, `.`"
        ));
    }
    Ok(name.to_ascii_lowercase())
}

/// Publishes the report and answers 200 (400 for an unusable event name).
pub(crate) fn receive(
    ctx: &ServiceContext,
    raw_name: &str,
    query: Option<&str>,
    peer: SocketAddr,
    user_agent: Option<&str>,
) -> Response<TrackedBody> {
    let name = match normalise_event_name(raw_name) {
        Ok(name) => name,
        Err(error) => {
            ctx.timeline.publish(
                NewEvent::new(Source::Http, "http.malformed")
                    .field("peer", peer.to_string())
                    .field("error", &error),
            );
            return text(StatusCode::BAD_REQUEST, "bad action event name\n");
        }
    };
    let params: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    // The MAC the phone reports names it even before DHCP bound its address.
    let by_mac = params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("mac"))
        .and_then(|(_, v)| v.parse::<Mac>().ok())
        .and_then(|mac| ctx.directory.by_mac(&mac));
    let phone = by_mac.or_else(|| {
        ctx.directory
            .identify(peer.ip(), &[user_agent.unwrap_or("")])
    });
    let mut event = NewEvent::new(Source::Action, format!("action.{name}"))
        .phone(phone.map(|p| p.name.clone()));
    for (key, value) in params {
        event = event.field(&key, value);
    }
    // Set last: the observed address wins over a `peer` query parameter.
    event = event.field("peer", peer.to_string());
    ctx.timeline.publish(event);
    text(StatusCode::OK, "OK\n")
}

fn text(status: StatusCode, text: &'static str) -> Response<TrackedBody> {
    let mut response = Response::new(TrackedBody::bytes(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("/action/registered", Some("registered"))]
    #[case("/action/", Some(""))]
    #[case("/actions/x", None)]
    #[case("/cfg.xml", None)]
    fn action_paths(#[case] path: &str, #[case] expected: Option<&str>) {
        assert_eq!(event_name(path), expected);
    }

    #[rstest]
    #[case("Registered", Ok("registered"))]
    #[case("call.answered/", Ok("call.answered"))]
    #[case("off_hook-2", Ok("off_hook-2"))]
    #[case("", Err(()))]
    #[case("a b", Err(()))]
    #[case("a/b", Err(()))]
    #[case("%41", Err(()))]
    fn event_names(#[case] raw: &str, #[case] expected: Result<&str, ()>) {
        assert_eq!(
            normalise_event_name(raw).map_err(|_| ()),
            expected.map(str::to_owned)
        );
    }

    #[test]
    fn overlong_names_are_refused() {
        assert!(normalise_event_name(&"a".repeat(65)).is_err());
    }
}
