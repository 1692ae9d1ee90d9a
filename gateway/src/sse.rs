//! Server-Sent Events: framing, keep-alive comments, and streams that end
//! themselves when the gateway drains or the client goes away.

use std::time::Duration;

use actix_web::HttpResponse;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::metrics::StreamGuard;

/// Frames buffered between the producer task and the socket.
const SSE_BUFFER: usize = 8;

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

/// A named event with a text payload (the legacy transport's `endpoint`).
pub fn named_event(name: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

const KEEPALIVE: &[u8] = b": keep-alive\n\n";
/// Sent when the gateway drains: the client should reconnect elsewhere.
const DRAINING: &[u8] = b": gateway draining, reconnect\nretry: 1000\n\n";

/// Build an SSE response from `source`. Keep-alive comments every
/// `keepalive`; ends when the source ends, the client disconnects, or
/// `drain` fires (with a final retry hint). `on_close` runs when it ends.
pub fn response(
    source: impl Stream<Item = Bytes> + Send + 'static,
    keepalive: Duration,
    drain: CancellationToken,
    guard: StreamGuard,
    on_close: Option<Box<dyn FnOnce() + Send>>,
    headers: Vec<(&'static str, String)>,
) -> HttpResponse {
    let (tx, rx) = mpsc::channel::<Bytes>(SSE_BUFFER);
    tokio::spawn(async move {
        let _guard = guard;
        let mut source = std::pin::pin!(source);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
        loop {
            tokio::select! {
                _ = drain.cancelled() => {
                    let _ = tx.send(Bytes::from_static(DRAINING)).await;
                    break;
                }
                _ = tx.closed() => break,
                item = source.next() => match item {
                    Some(bytes) => if tx.send(bytes).await.is_err() { break },
                    None => break,
                },
                _ = ticker.tick() => {
                    if tx.send(Bytes::from_static(KEEPALIVE)).await.is_err() { break }
                }
            }
        }
        if let Some(f) = on_close {
            f();
        }
    });
    let body = ReceiverStream::new(rx).map(Ok::<_, std::convert::Infallible>);
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
        assert_eq!(named_event("endpoint", "/messages?sessionId=x"), Bytes::from_static(b"event: endpoint\ndata: /messages?sessionId=x\n\n"));
    }
}
