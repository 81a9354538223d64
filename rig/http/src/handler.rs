//! One HTTP request: Action URL reports go to the timeline, everything else
//! is a fetch from the provisioning tree.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ACCEPT_RANGES, ALLOW, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE,
    USER_AGENT, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use phonerig_core::event::{NewEvent, Source};
use phonerig_core::tree::Body as TreeBody;
use phonerig_core::{PhoneInfo, ResolveError, ServedFile, ServiceContext};
use tokio::io::AsyncSeekExt;

use crate::action;
use crate::auth::{AuthVerdict, Authenticator};
use crate::body::{FetchFields, FetchReport, TrackedBody};
use crate::range::RangeRequest;
use crate::request_path;

/// `http` or `https`, for events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Https,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
        }
    }
}

/// Shared by every connection of both listeners.
pub(crate) struct Handler {
    pub ctx: ServiceContext,
    pub auth: Option<Authenticator>,
}

/// Facts about the request that every answer reports.
struct Fetch {
    started: Instant,
    method: Method,
    file: String,
    peer: SocketAddr,
    protocol: Protocol,
    user_agent: Option<String>,
    auth: &'static str,
    phone: Option<String>,
}

impl Handler {
    pub(crate) async fn serve(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
        protocol: Protocol,
    ) -> Result<Response<TrackedBody>, Infallible> {
        let user_agent = request
            .headers()
            .get(USER_AGENT)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        if let Some(event) = action::event_name(request.uri().path()) {
            return Ok(action::receive(
                &self.ctx,
                event,
                request.uri().query(),
                peer,
                user_agent.as_deref(),
            ));
        }
        Ok(self.fetch(request, peer, protocol, user_agent).await)
    }

    async fn fetch(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        protocol: Protocol,
        user_agent: Option<String>,
    ) -> Response<TrackedBody> {
        let started = Instant::now();
        let decoded = request_path::decode(request.uri().path());
        let shown = match &decoded {
            Ok(path) => request_path::shown(path),
            Err(_) => request.uri().path().trim_start_matches('/').to_owned(),
        };
        // Phones name themselves in the path, the query (`?mac=…`) or the User-Agent.
        let hints = [
            decoded.as_deref().unwrap_or(""),
            request.uri().query().unwrap_or(""),
            user_agent.as_deref().unwrap_or(""),
        ];
        let requester = self.ctx.directory.identify(peer.ip(), &hints);
        let mut fetch = Fetch {
            started,
            method: request.method().clone(),
            file: shown,
            peer,
            protocol,
            user_agent,
            auth: "none",
            phone: requester.as_ref().map(|p| p.name.clone()),
        };

        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut response = self.answer(
                &fetch,
                StatusCode::METHOD_NOT_ALLOWED,
                "error",
                "method not allowed\n",
            );
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }

        let requester = match self.authenticate(&request, requester, &mut fetch) {
            Ok(requester) => requester,
            Err(response) => return *response,
        };

        let path = match decoded {
            Ok(path) => path,
            Err(reason) => return self.refuse(&fetch, &reason),
        };
        match self.ctx.tree.resolve(&path, requester) {
            Ok(served) => {
                fetch.file = served.path.clone();
                if served.phone.is_some() {
                    fetch.phone = served.phone.clone();
                }
                if let Some(delay) = served.delay {
                    if !self.wait(delay).await {
                        return self.answer(
                            &fetch,
                            StatusCode::SERVICE_UNAVAILABLE,
                            "aborted",
                            "rig shutting down\n",
                        );
                    }
                }
                let range = request.headers().get(RANGE).and_then(|v| v.to_str().ok());
                self.send_file(&fetch, &served, range).await
            }
            Err(ResolveError::NotFound) => {
                self.answer(&fetch, StatusCode::NOT_FOUND, "not_found", "not found\n")
            }
            Err(ResolveError::Refused(reason)) => self.refuse(&fetch, &reason),
            Err(ResolveError::Forced { status, delay }) => {
                if let Some(delay) = delay {
                    if !self.wait(delay).await {
                        return self.answer(
                            &fetch,
                            StatusCode::SERVICE_UNAVAILABLE,
                            "aborted",
                            "rig shutting down\n",
                        );
                    }
                }
                let code = forced_status(status);
                if code == StatusCode::NOT_MODIFIED || code == StatusCode::NO_CONTENT {
                    return self.answer(&fetch, code, "forced", "");
                }
                self.answer(&fetch, code, "forced", format!("{code}\n"))
            }
        }
    }

    /// Checks credentials when the scenario asks for them. On success returns
    /// the requester (credentials may name the phone); otherwise the 401.
    fn authenticate(
        &self,
        request: &Request<Incoming>,
        requester: Option<Arc<PhoneInfo>>,
        fetch: &mut Fetch,
    ) -> Result<Option<Arc<PhoneInfo>>, Box<Response<TrackedBody>>> {
        let Some(auth) = &self.auth else {
            return Ok(requester);
        };
        let header = request
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let verdict = auth.check(request.method().as_str(), target, header, requester.clone());
        let stale = match verdict {
            AuthVerdict::Ok(phone) => {
                fetch.auth = "ok";
                if let Some(phone) = &phone {
                    fetch.phone = Some(phone.name.clone());
                }
                return Ok(phone.or(requester));
            }
            AuthVerdict::Missing => {
                fetch.auth = "missing";
                false
            }
            AuthVerdict::Failed { stale } => {
                fetch.auth = "failed";
                stale
            }
        };
        let mut response = self.answer(
            fetch,
            StatusCode::UNAUTHORIZED,
            "refused",
            "authentication required\n",
        );
        for challenge in auth.challenges(requester.as_deref(), stale) {
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                response.headers_mut().append(WWW_AUTHENTICATE, value);
            }
        }
        Err(Box::new(response))
    }

    /// Waits `delay` unless the rig stops first (then `false`).
    async fn wait(&self, delay: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = self.ctx.shutdown.cancelled() => false,
        }
    }

    fn refuse(&self, fetch: &Fetch, reason: &str) -> Response<TrackedBody> {
        self.ctx.timeline.publish(
            NewEvent::new(Source::Http, "http.refused")
                .phone(fetch.phone.clone())
                .field("path", &fetch.file)
                .field("reason", reason)
                .field("peer", fetch.peer.to_string())
                .field("protocol", fetch.protocol.as_str()),
        );
        self.answer(fetch, StatusCode::FORBIDDEN, "refused", "forbidden\n")
    }

    fn report(
        &self,
        fetch: &Fetch,
        code: StatusCode,
        outcome: &'static str,
        size: Option<u64>,
    ) -> FetchReport {
        FetchReport {
            timeline: self.ctx.timeline.clone(),
            phone: fetch.phone.clone(),
            started: fetch.started,
            fields: FetchFields {
                method: fetch.method.to_string(),
                file: fetch.file.clone(),
                protocol: fetch.protocol.as_str(),
                peer: fetch.peer.to_string(),
                user_agent: fetch.user_agent.clone(),
                auth: fetch.auth,
                code: code.as_u16(),
                outcome,
                bytes: 0,
                size,
                duration_us: 0,
            },
        }
    }

    /// A short text answer (errors, forced statuses).
    fn answer(
        &self,
        fetch: &Fetch,
        code: StatusCode,
        outcome: &'static str,
        text: impl Into<String>,
    ) -> Response<TrackedBody> {
        let text = text.into();
        let body = if fetch.method == Method::HEAD {
            TrackedBody::empty()
        } else {
            TrackedBody::bytes(text.clone())
        };
        let mut response = Response::new(body.reporting(self.report(fetch, code, outcome, None)));
        *response.status_mut() = code;
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if fetch.method == Method::HEAD {
            response
                .headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(text.len()));
        }
        response
    }

    async fn send_file(
        &self,
        fetch: &Fetch,
        served: &ServedFile,
        range_header: Option<&str>,
    ) -> Response<TrackedBody> {
        // The announced size is the real one even when the scenario cuts the
        // transfer: a phone must see a download that breaks, not a short file.
        let (content, full_size) = match &served.body {
            TreeBody::Bytes(bytes) => (Content::Memory(bytes.clone()), bytes.len() as u64),
            TreeBody::File(path) => {
                let opened = if served.truncate.is_none() && served.size <= READ_WHOLE_LIMIT {
                    // A config file is opened and read right here: the tree
                    // has just resolved and stat'ed it on this thread, and the
                    // page-cache read costs less than the hand-off to the
                    // blocking pool and back (two thread wake-ups per request).
                    Ok(open_file(path))
                } else {
                    let path = path.clone();
                    tokio::task::spawn_blocking(move || open_file(&path)).await
                };
                match opened {
                    Ok(Ok(opened)) => opened,
                    Ok(Err(OpenError::Missing)) => {
                        return self.answer(
                            fetch,
                            StatusCode::NOT_FOUND,
                            "not_found",
                            "not found\n",
                        )
                    }
                    Ok(Err(OpenError::Unreadable)) | Err(_) => {
                        return self.answer(
                            fetch,
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "error",
                            "cannot read file\n",
                        )
                    }
                }
            }
        };
        let range = RangeRequest::parse(range_header, full_size);
        let (status, start, len) = match range {
            RangeRequest::Whole => (StatusCode::OK, 0, full_size),
            RangeRequest::Part { start, end } => {
                (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
            }
            RangeRequest::Unsatisfiable => {
                let mut response = self.answer(
                    fetch,
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "error",
                    "range not satisfiable\n",
                );
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{full_size}")) {
                    response.headers_mut().insert(CONTENT_RANGE, value);
                }
                return response;
            }
        };
        let report = self.report(fetch, status, "complete", Some(full_size));
        let body = if fetch.method == Method::HEAD {
            TrackedBody::empty()
        } else {
            let body = match content {
                Content::Memory(bytes) => {
                    let from = start as usize;
                    TrackedBody::bytes(bytes::Bytes::copy_from_slice(
                        &bytes[from..from + len as usize],
                    ))
                }
                Content::Read(bytes) => {
                    let from = start as usize;
                    TrackedBody::bytes(bytes.slice(from..from + len as usize))
                }
                Content::Disk(mut file) => {
                    if start > 0 && file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
                        return self.answer(
                            fetch,
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "error",
                            "cannot read file\n",
                        );
                    }
                    TrackedBody::file(file, len)
                }
            };
            match served.truncate {
                Some(limit) => body.cut_after(limit.saturating_sub(start)),
                None => body,
            }
        };
        let mut response = Response::new(body.reporting(report));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static(content_type(&served.path)),
        );
        headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if fetch.method == Method::HEAD {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        }
        if status == StatusCode::PARTIAL_CONTENT {
            if let Ok(value) =
                HeaderValue::from_str(&format!("bytes {start}-{}/{full_size}", start + len - 1))
            {
                headers.insert(CONTENT_RANGE, value);
            }
        }
        response
    }
}

/// The status a scenario forced, as HTTP can send it: a 1xx is no final
/// answer and an out-of-range number no status, so both become 500.
fn forced_status(status: u16) -> StatusCode {
    match StatusCode::from_u16(status) {
        Ok(code) if !code.is_informational() => code,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// What a served file is read from.
enum Content {
    Memory(Arc<Vec<u8>>),
    /// A small file read whole when it was opened.
    Read(bytes::Bytes),
    Disk(tokio::fs::File),
}

/// Files up to this size are read whole in the same call that opens them,
/// on the request's own thread (no trip to the blocking pool: at thousands of
/// requests per second the trips, not the bytes, were the price). Larger
/// files are opened in the blocking pool and streamed.
const READ_WHOLE_LIMIT: u64 = 64 * 1024;

enum OpenError {
    Missing,
    Unreadable,
}

/// Opens `path` (blocking): small files come back read, others as an open file.
fn open_file(path: &std::path::Path) -> Result<(Content, u64), OpenError> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|_| OpenError::Missing)?;
    let size = file.metadata().map_err(|_| OpenError::Unreadable)?.len();
    if size > READ_WHOLE_LIMIT {
        return Ok((Content::Disk(tokio::fs::File::from_std(file)), size));
    }
    // Read to the end rather than `size` bytes: a file rewritten meanwhile is
    // served as it is now, with a Content-Length that matches what is sent.
    let mut bytes = Vec::with_capacity(size as usize + 1);
    file.read_to_end(&mut bytes)
        .map_err(|_| OpenError::Unreadable)?;
    let size = bytes.len() as u64;
    Ok((Content::Read(bytes.into()), size))
}

/// Phones mostly ignore the type, but browsers and curl users read it.
fn content_type(path: &str) -> &'static str {
    let extension = path
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "xml" => "application/xml",
        "cfg" | "txt" | "conf" | "ini" => "text/plain; charset=utf-8",
        "json" => "application/json",
        "htm" | "html" => "text/html; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(500, 500)]
    #[case(404, 404)]
    #[case(302, 302)]
    #[case(599, 599)]
    #[case(101, 500)]
    #[case(100, 500)]
    #[case(1000, 500)]
    #[case(42, 500)]
    fn forced_statuses(#[case] asked: u16, #[case] sent: u16) {
        assert_eq!(forced_status(asked).as_u16(), sent);
    }

    #[rstest]
    #[case("cfg0012.xml", "application/xml")]
    #[case("Config001A.CFG", "text/plain; charset=utf-8")]
    #[case("fw924.rom", "application/octet-stream")]
    #[case("noext", "application/octet-stream")]
    fn content_types(#[case] path: &str, #[case] expected: &str) {
        assert_eq!(content_type(path), expected);
    }
}
