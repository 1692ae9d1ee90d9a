//! The gateway's intake of a client POST (`/mcp` and legacy `/messages`): the body
//! through `Incoming::parse` (and, when refused, the JSON-RPC error body the client
//! gets), the message relayed in an envelope, and the request headers the gateway
//! reads before that (Host/Origin, `traceparent`, `Content-Type`,
//! `X-Forwarded-For`, the `/messages?sessionId=` query).
//!
//! Input: `<header line>\n<body>`; the header line is offered as each of those
//! headers (and as the query string), the rest is the POST body. No newline: it is
//! all body.

#![no_main]

use std::net::IpAddr;

use actix_web::ResponseError;
use actix_web::http::StatusCode;
use actix_web::http::header::HeaderValue;
use actix_web::test::TestRequest;
use bytes::Bytes;
use gateway::errors::Kind;
use gateway::mcp::{Incoming, MessageKind};
use libfuzzer_sys::fuzz_target;
use proto::trace::TraceParent;
use proto::{Body, Envelope, Principal, Route};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let (head, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&data[..0], data),
    };
    intake(body);
    headers(head);
});

fn intake(body: &[u8]) {
    match Incoming::parse(Bytes::copy_from_slice(body)) {
        Ok(msg) => {
            // The client's bytes are relayed unchanged.
            assert_eq!(&msg.raw[..], body);
            let id_ok = matches!(msg.id, Some(Value::String(_) | Value::Number(_)));
            match msg.kind {
                MessageKind::Request => assert!(msg.method.is_some() && id_ok),
                MessageKind::Notification => assert!(msg.method.is_some() && msg.id.is_none()),
                MessageKind::Response => assert!(msg.method.is_none() && id_ok),
            }
            let _ = gateway::metrics::method_label(msg.method.as_deref());
            // As relayed to the worker: the envelope carries the bytes intact.
            let env = Envelope::new(
                Principal::default(),
                "0123456789abcdef0123456789abcdef",
                Body::Deliver {
                    message: msg.raw.to_vec(),
                    route: Route::SessionEvents,
                },
            );
            let bytes = env.to_bytes().expect("an envelope always encodes");
            assert_eq!(Envelope::from_bytes(&bytes).expect("and decodes"), env);
        }
        Err(e) => {
            assert!(
                matches!(
                    e.kind,
                    Kind::ParseError | Kind::BatchNotSupported | Kind::InvalidRequest
                ),
                "unexpected refusal {:?}",
                e.kind
            );
            let resp = e.error_response();
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
            let bytes = futures::executor::block_on(actix_web::body::to_bytes(resp.into_body()))
                .unwrap_or_else(|_| panic!("error body is readable"));
            let v: Value = serde_json::from_slice(&bytes).expect("the error body is JSON");
            assert_eq!(v["jsonrpc"], "2.0");
            assert!(v["error"]["code"].is_i64());
        }
    }
}

fn headers(head: &[u8]) {
    let Ok(text) = std::str::from_utf8(head) else {
        return;
    };
    if let Some(tp) = TraceParent::parse(text) {
        assert_eq!(TraceParent::parse(&tp.header_value()), Some(tp));
    }
    let _ = actix_web::web::Query::<gateway::legacy::MessagesQuery>::from_query(text);
    let Ok(value) = HeaderValue::from_bytes(head) else {
        return;
    };
    let req = TestRequest::default()
        .insert_header(("host", value.clone()))
        .insert_header(("origin", value.clone()))
        .insert_header(("content-type", value.clone()))
        .insert_header(("traceparent", value.clone()))
        .insert_header(("x-forwarded-for", value))
        .peer_addr("10.0.0.1:40000".parse().expect("address"))
        .to_http_request();
    let hosts = ["localhost".to_owned(), "127.0.0.1".to_owned(), "[::1]".to_owned()];
    let _ = gateway::guard::OriginPolicy::new(&hosts, &[]).check(&req);
    let _ = gateway::guard::OriginPolicy::new(&hosts, &["https://app.example".to_owned()]).check(&req);
    let _ = gateway::mcp::check_content_type(&req);
    let _ = gateway::mcp::trace_of(&req);
    let proxies = gateway::limits::TrustedProxies::parse(&["10.0.0.0/8".to_owned()]).expect("networks");
    let client = proxies.client_of(&req);
    assert!(client.is_some_and(|ip: IpAddr| !proxies.contains(ip) || ip == IpAddr::from([10, 0, 0, 1])));
}
