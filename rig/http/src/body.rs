//! The response body of every request to the tree. It streams the file (a
//! 32 MB firmware image is never loaded whole), cuts the transfer where the
//! scenario asked for a broken download, and publishes the one `http.fetch`
//! event of the request when the body has ended — completely, cut, or because
//! the client went away — so the event tells what really went over the wire.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use phonerig_core::event::{NewEvent, Source};
use phonerig_core::Timeline;
use serde::Serialize;
use tokio::fs::File;
use tokio::io::Take;
use tokio_util::io::ReaderStream;

/// Chunk size for reading files: large enough for throughput, small enough
/// that a cut lands close to the requested byte.
const FILE_CHUNK: usize = 64 * 1024;
/// After the last byte before a cut, hyper still holds it in its write
/// buffer; erroring at once would drop it. Idling this long first lets the
/// connection flush, so the client receives exactly the bytes before the cut.
const CUT_LINGER: Duration = Duration::from_millis(200);

/// The fields of an `http.fetch` event (docs/CONTRACTS.md).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FetchFields {
    pub method: String,
    pub file: String,
    pub protocol: &'static str,
    pub peer: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    pub auth: &'static str,
    pub code: u16,
    pub outcome: &'static str,
    pub bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    pub duration_us: u64,
}

/// What the body publishes when it is dropped.
#[derive(Debug)]
pub(crate) struct FetchReport {
    pub timeline: Timeline,
    pub phone: Option<String>,
    pub fields: FetchFields,
    pub started: Instant,
}

enum Content {
    Empty,
    Bytes(Bytes),
    File(ReaderStream<Take<File>>),
}

/// A response body that counts what it hands to hyper.
pub struct TrackedBody {
    content: Content,
    /// Bytes this response announces (its Content-Length).
    planned: u64,
    /// Stop with an error after this many bytes: hyper then closes the
    /// connection, and the client sees fewer bytes than announced.
    cut_after: Option<u64>,
    sent: u64,
    cut: bool,
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
    read_error: bool,
    report: Option<FetchReport>,
}

impl TrackedBody {
    /// A body without content (HEAD, 304-like answers).
    pub(crate) fn empty() -> Self {
        Self::new(Content::Empty, 0)
    }

    pub(crate) fn bytes(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        let len = bytes.len() as u64;
        Self::new(Content::Bytes(bytes), len)
    }

    /// `len` bytes read from `file`, which is already positioned at the start.
    pub(crate) fn file(file: File, len: u64) -> Self {
        use tokio::io::AsyncReadExt;
        Self::new(
            Content::File(ReaderStream::with_capacity(file.take(len), FILE_CHUNK)),
            len,
        )
    }

    fn new(content: Content, planned: u64) -> Self {
        TrackedBody {
            content,
            planned,
            cut_after: None,
            sent: 0,
            cut: false,
            linger: None,
            read_error: false,
            report: None,
        }
    }

    /// Ends the transfer abruptly after `bytes` bytes.
    pub(crate) fn cut_after(mut self, bytes: u64) -> Self {
        if bytes < self.planned {
            self.cut_after = Some(bytes);
        }
        self
    }

    /// Publishes `report` (with the bytes actually sent) when the body ends.
    pub(crate) fn reporting(mut self, report: FetchReport) -> Self {
        self.report = Some(report);
        self
    }

    fn cut_error(&mut self) -> std::io::Error {
        self.cut = true;
        std::io::Error::other("transfer cut short on purpose (scenario `truncate`)")
    }

    /// Hands out at most what the cut allows of `chunk`.
    fn limit(&self, mut chunk: Bytes) -> Bytes {
        if let Some(cut) = self.cut_after {
            let allowed = cut.saturating_sub(self.sent);
            if (chunk.len() as u64) > allowed {
                chunk.truncate(allowed as usize);
            }
        }
        chunk
    }
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        if this.cut_after.is_some_and(|cut| this.sent >= cut) {
            let linger = this
                .linger
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(CUT_LINGER)));
            if linger.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            return Poll::Ready(Some(Err(this.cut_error())));
        }
        let chunk = match &mut this.content {
            Content::Empty => return Poll::Ready(None),
            Content::Bytes(bytes) => {
                if bytes.is_empty() {
                    return Poll::Ready(None);
                }
                std::mem::take(bytes)
            }
            Content::File(stream) => match futures_core::Stream::poll_next(Pin::new(stream), cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(error))) => {
                    this.read_error = true;
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Ready(Some(Ok(chunk))) => chunk,
            },
        };
        let chunk = this.limit(chunk);
        this.sent += chunk.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.planned && self.cut_after.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.planned.saturating_sub(self.sent))
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        let Some(mut report) = self.report.take() else {
            return;
        };
        report.fields.bytes = self.sent;
        report.fields.duration_us = report.started.elapsed().as_micros() as u64;
        // Only a transfer that was meant to succeed can turn into a broken
        // one; a 404 page cut by a vanished client is still a `not_found`.
        if report.fields.outcome == "complete" {
            if self.cut {
                report.fields.outcome = "truncated";
            } else if self.read_error {
                report.fields.outcome = "error";
            } else if self.sent < self.planned {
                report.fields.outcome = "aborted";
            }
        }
        report.timeline.publish(
            NewEvent::new(Source::Http, "http.fetch")
                .phone(report.phone.take())
                .fields_from(&report.fields),
        );
    }
}
