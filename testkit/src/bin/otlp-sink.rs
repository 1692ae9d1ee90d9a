//! otlp-sink: a small OTLP/HTTP trace receiver for the trace tests.
//!
//! `otlp-sink <spans.jsonl>` listens on 127.0.0.1 (a free port; `OTLP_SINK_LISTEN`
//! picks one), prints `listening http://127.0.0.1:<port>` on stdout, and takes
//! `POST /v1/traces` bodies in the OTLP protobuf encoding (the official
//! `opentelemetry-proto` definitions). Every span received is appended to the file
//! as one JSON line: service, trace and span ids, parent, name, kind, attributes,
//! links. A body that does not decode gets 400 and is counted in the file as an
//! `{"error": ...}` line, so a test sees it.

use std::io::Write;
use std::sync::Mutex;

use actix_web::{App, HttpResponse, HttpServer, web};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use serde_json::{Map, Value, json};

struct Sink {
    out: Mutex<std::fs::File>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn value(v: Option<&AnyValue>) -> Value {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => Value::from(s.as_str()),
        Some(any_value::Value::BoolValue(b)) => Value::from(*b),
        Some(any_value::Value::IntValue(i)) => Value::from(*i),
        Some(any_value::Value::DoubleValue(d)) => Value::from(*d),
        Some(any_value::Value::ArrayValue(a)) => Value::Array(a.values.iter().map(|v| value(Some(v))).collect()),
        Some(other) => Value::from(format!("{other:?}")),
        None => Value::Null,
    }
}

fn attributes(kvs: &[KeyValue]) -> Value {
    let map: Map<String, Value> = kvs
        .iter()
        .map(|kv| (kv.key.clone(), value(kv.value.as_ref())))
        .collect();
    Value::Object(map)
}

fn lines(request: &ExportTraceServiceRequest) -> Vec<String> {
    let mut out = Vec::new();
    for rs in &request.resource_spans {
        let resource = rs
            .resource
            .as_ref()
            .map_or(Value::Object(Map::new()), |r| attributes(&r.attributes));
        let service = resource.get("service.name").cloned().unwrap_or(Value::Null);
        for ss in &rs.scope_spans {
            for span in &ss.spans {
                let links: Vec<Value> = span
                    .links
                    .iter()
                    .map(|l| json!({"trace_id": hex(&l.trace_id), "span_id": hex(&l.span_id)}))
                    .collect();
                let line = json!({
                    "service": service,
                    "trace_id": hex(&span.trace_id),
                    "span_id": hex(&span.span_id),
                    "parent_span_id": hex(&span.parent_span_id),
                    "name": span.name,
                    "kind": span.kind,
                    "start_ns": span.start_time_unix_nano,
                    "end_ns": span.end_time_unix_nano,
                    "status": span.status.as_ref().map(|s| s.code),
                    "attributes": attributes(&span.attributes),
                    "links": links,
                });
                out.push(line.to_string());
            }
        }
    }
    out
}

async fn traces(sink: web::Data<Sink>, body: web::Bytes) -> HttpResponse {
    let (status, lines) = match ExportTraceServiceRequest::decode(body.as_ref()) {
        Ok(request) => (200, lines(&request)),
        Err(err) => (400, vec![json!({"error": err.to_string()}).to_string()]),
    };
    if let Ok(mut file) = sink.out.lock() {
        for line in &lines {
            let _ = writeln!(file, "{line}");
        }
        let _ = file.flush();
    }
    if status != 200 {
        return HttpResponse::BadRequest().finish();
    }
    HttpResponse::Ok()
        .content_type("application/x-protobuf")
        .body(ExportTraceServiceResponse::default().encode_to_vec())
}

fn main() -> std::io::Result<()> {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: otlp-sink <spans.jsonl>");
        std::process::exit(64);
    };
    let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
    let listen = std::env::var("OTLP_SINK_LISTEN").unwrap_or_else(|_| "127.0.0.1:0".into());
    let sink = web::Data::new(Sink { out: Mutex::new(file) });
    actix_web::rt::System::new().block_on(async move {
        let server = HttpServer::new(move || {
            App::new()
                .app_data(sink.clone())
                .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
                .route("/v1/traces", web::post().to(traces))
        })
        .workers(1)
        .bind(listen)?;
        for addr in server.addrs() {
            println!("listening http://{addr}");
        }
        std::io::stdout().flush()?;
        server.run().await
    })
}
