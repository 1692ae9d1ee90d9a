//! Server-Sent Events: framing, keep-alive comments, and streams that end
//! themselves when the gateway drains or the client goes away.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::HttpResponse;
use bytes::Bytes;
use futures::Stream;
use tokio_util::sync::CancellationToken;

use crate::metrics::StreamGuard;

/// One `message` event carrying a JSON-RPC message.
pub fn message_event(json: &[u8], id: Option<&str>) -> Bytes {
    let mut out = Vec::with_capacity(json.len() + 48);
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"event: message\n");
    // serde_json output has no raw newlines, but be safe with client input.
    for line in json.split(|b| *b == b'\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
    Bytes::from(out)
}

/// A named event with a text payload (the legacy transport's `endpoint`), and
/// an id when it is the stream's resume cursor.
pub fn named_event(name: &str, data: &str, id: Option<&str>) -> Bytes {
    match id {
        Some(id) => Bytes::from(format!("id: {id}\nevent: {name}\ndata: {data}\n\n")),
        None => Bytes::from(format!("event: {name}\ndata: {data}\n\n")),
    }
}

/// An event with an id and empty data: the cursor a client reconnects from
/// (`Last-Event-ID`) before any message came.
pub fn priming_event(id: &str) -> Bytes {
    Bytes::from(format!("id: {id}\ndata: \n\n"))
}

const KEEPALIVE: &[u8] = b": keep-alive\n\n";

/// What a long-lived stream (GET /mcp, /sse) watches while it is open: it ends
/// once the token it was opened with expires or is revoked, so no stream outlives
/// the rights that opened it. Nothing runs on a timer while neither happens: one
/// sleep until the expiry, and a wake-up when any revocation arrives (then the
/// stream checks its own token once). At 100k idle streams a periodic re-check
/// would wake the gateway tens of thousands of times a second.
pub struct StreamAuth {
    /// Unix seconds after which the token no longer validates (expiry + leeway).
    pub valid_until: u64,
    /// Told of every revocation the gateway learns of.
    pub changes: tokio::sync::watch::Receiver<u64>,
    /// Whether the token (its grant or its id) has been revoked since.
    pub revoked: Box<dyn Fn() -> bool + Send>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

type Changed = Pin<Box<dyn Future<Output = Option<tokio::sync::watch::Receiver<u64>>> + Send>>;

/// Wait for the next revocation; `None` once no more can come (the set is gone).
fn next_change(mut changes: tokio::sync::watch::Receiver<u64>) -> Changed {
    Box::pin(async move { changes.changed().await.ok().map(|()| changes) })
}

/// [`StreamAuth`] armed: the expiry's sleep and the pending revocation wait.
struct AuthWatch {
    expiry: Pin<Box<tokio::time::Sleep>>,
    change: Option<Changed>,
    revoked: Box<dyn Fn() -> bool + Send>,
}

impl AuthWatch {
    fn new(auth: StreamAuth) -> Self {
        let left = Duration::from_secs(auth.valid_until.saturating_sub(unix_now()));
        Self {
            expiry: Box::pin(tokio::time::sleep(left)),
            // Checked once at the first poll: a revocation that arrived after the
            // request's own check and before this subscription is not missed.
            change: Some(Box::pin(std::future::ready(Some(auth.changes)))),
            revoked: auth.revoked,
        }
    }

    /// Ready once the stream must end.
    fn poll_ended(&mut self, cx: &mut Context<'_>) -> Poll<&'static str> {
        if self.expiry.as_mut().poll(cx).is_ready() {
            return Poll::Ready("expired");
        }
        while let Some(change) = &mut self.change {
            match change.as_mut().poll(cx) {
                Poll::Pending => break,
                Poll::Ready(next) => {
                    if (self.revoked)() {
                        return Poll::Ready("revoked");
                    }
                    self.change = next.map(next_change);
                }
            }
        }
        Poll::Pending
    }
}
/// Sent when the gateway drains: the client should reconnect elsewhere.
const DRAINING: &[u8] = b": gateway draining, reconnect\nretry: 1000\n\n";

/// An SSE body: the source's frames, keep-alive comments while it is quiet,
/// and a final reconnect hint when the gateway drains. Polled directly by the
/// HTTP server (no task or channel per stream, which keeps idle streams small);
/// dropped when the client goes away, which runs `on_close`.
struct SseBody {
    source: Pin<Box<dyn Stream<Item = Bytes> + Send>>,
    ticker: tokio::time::Interval,
    drain: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    done: bool,
    auth: Option<AuthWatch>,
    _guard: StreamGuard,
    on_close: Option<Box<dyn FnOnce() + Send>>,
}

impl Stream for SseBody {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.drain.as_mut().poll(cx).is_ready() {
            this.done = true;
            return Poll::Ready(Some(Ok(Bytes::from_static(DRAINING))));
        }
        if let Some(auth) = &mut this.auth
            && let Poll::Ready(why) = auth.poll_ended(cx)
        {
            tracing::info!(why, "stream ended: its token expired or was revoked");
            this.done = true;
            return Poll::Ready(None);
        }
        match this.source.as_mut().poll_next(cx) {
            Poll::Ready(Some(frame)) => {
                this.ticker.reset();
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(None) => {
                this.done = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        if this.ticker.poll_tick(cx).is_ready() {
            return Poll::Ready(Some(Ok(Bytes::from_static(KEEPALIVE))));
        }
        Poll::Pending
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        if let Some(f) = self.on_close.take() {
            f();
        }
    }
}

/// Build an SSE response from `source`. Keep-alive comments every
/// `keepalive`; ends when the source ends, the client disconnects, `drain` fires
/// (with a final retry hint), or — with `auth` — the token that opened it expires
/// or is revoked. `on_close` runs when it ends.
pub fn response(
    source: impl Stream<Item = Bytes> + Send + 'static,
    keepalive: Duration,
    drain: CancellationToken,
    guard: StreamGuard,
    on_close: Option<Box<dyn FnOnce() + Send>>,
    headers: Vec<(&'static str, String)>,
    auth: Option<StreamAuth>,
) -> HttpResponse {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let body = SseBody {
        source: Box::pin(source),
        ticker,
        drain: Box::pin(drain.cancelled_owned()),
        done: false,
        auth: auth.map(AuthWatch::new),
        _guard: guard,
        on_close,
    };
    let mut resp = HttpResponse::Ok();
    resp.content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"));
    for (name, value) in headers {
        resp.insert_header((name, value));
    }
    resp.streaming(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_messages() {
        assert_eq!(
            message_event(br#"{"a":1}"#, Some("7")),
            Bytes::from_static(b"id: 7\nevent: message\ndata: {\"a\":1}\n\n")
        );
        assert_eq!(
            message_event(b"{\n}", None),
            Bytes::from_static(b"event: message\ndata: {\ndata: }\n\n")
        );
        assert_eq!(
            named_event("endpoint", "/messages?sessionId=x", None),
            Bytes::from_static(b"event: endpoint\ndata: /messages?sessionId=x\n\n")
        );
        assert_eq!(
            named_event("endpoint", "/m", Some("x:3")),
            Bytes::from_static(b"id: x:3\nevent: endpoint\ndata: /m\n\n")
        );
        assert_eq!(priming_event("12"), Bytes::from_static(b"id: 12\ndata: \n\n"));
    }
}
