//! Stateless requests (protocol 2026-07-28): no session, any worker.
//!
//! Each request gets a fresh `McpServer` run with rmcp's `serve_directly`
//! over a [`ChannelTransport`]; every message it produces goes to the
//! gateway's reply subject, the response or error last.

use std::sync::Arc;
use std::time::Duration;

use proto::{Ack, Outbound, Principal, Route};
use rmcp::model::{
    ClientCapabilities, ClientJsonRpcMessage, GetMeta, Implementation, InitializeRequestParams, ProtocolVersion,
    ServerJsonRpcMessage,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::actor::{ACK_DELAY, Shared};
use crate::metrics::GaugeGuard;
use crate::router::respond_on;
use crate::transport::{ChannelTransport, Outlet};

/// Serve one stateless request; returns when its final message is published.
pub async fn serve(
    shared: Arc<Shared>,
    bus: async_nats::Client,
    principal: Principal,
    message: ClientJsonRpcMessage,
    route: Route,
    timeout: Duration,
    ack_to: async_nats::Subject,
) {
    let _inflight = GaugeGuard::new(&shared.metrics.stateless_inflight);
    let mut ack_to = Some(ack_to);
    let ClientJsonRpcMessage::Request(request) = &message else {
        // Notifications and responses have nothing to answer without a session.
        if let Some(reply) = ack_to.take() {
            respond_on(&bus, &shared, reply, &Ack::Accepted).await;
        }
        return;
    };
    let request_id = request.id.clone();
    let version = request
        .request
        .get_meta()
        .protocol_version()
        .unwrap_or(ProtocolVersion::V_2026_07_28);
    let peer_info = InitializeRequestParams::new(ClientCapabilities::default(), Implementation::default())
        .with_protocol_version(version);

    let (in_tx, in_rx) = mpsc::unbounded_channel();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<ServerJsonRpcMessage>();
    let transport = ChannelTransport::new(in_rx, Outlet::Channel(out_tx));
    let ct = CancellationToken::new();
    let server = tools::McpServer::new(shared.profile, Some(principal))
        .with_toolbox(shared.toolbox.clone())
        .with_listen_hub(shared.listen.clone())
        .with_vault(shared.vault.clone())
        .with_users(shared.user_client.clone())
        .with_tasks(shared.tasks.clone());
    let service = rmcp::service::serve_directly_with_ct(server, transport, Some(peer_info), ct.clone());
    let waiter = tokio::spawn(async move {
        let _ = service.waiting().await;
    });
    // Keep `in_tx` alive until the answer is out: closing it ends the service.
    if in_tx.send(message).is_err() {
        ct.cancel();
        if let Some(reply) = ack_to.take() {
            respond_on(&bus, &shared, reply, &Ack::First(Outbound::aborted(1))).await;
        }
        return;
    }
    let subject = match route {
        Route::Reply { subject } => Some(subject),
        _ => None,
    };
    let mut seq = 0u64;
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        // Until the first answer is out, acknowledge alone after ACK_DELAY.
        let ack_wait = tokio::time::sleep(if ack_to.is_some() { ACK_DELAY } else { timeout });
        tokio::pin!(ack_wait);
        let next = tokio::select! {
            m = out_rx.recv() => m,
            _ = &mut ack_wait, if ack_to.is_some() => {
                if let Some(reply) = ack_to.take() {
                    respond_on(&bus, &shared, reply, &Ack::Accepted).await;
                }
                continue;
            }
            _ = &mut deadline => {
                warn!(request_id = %request_id, "stateless request timed out");
                None
            }
        };
        seq += 1;
        let Some(message) = next else {
            match ack_to.take() {
                Some(reply) => respond_on(&bus, &shared, reply, &Ack::First(Outbound::aborted(seq))).await,
                None => {
                    if let Some(subject) = &subject {
                        publish(&shared, &bus, subject, Outbound::aborted(seq)).await;
                    }
                }
            }
            break;
        };
        let last = match &message {
            ServerJsonRpcMessage::Response(r) => r.id == request_id,
            ServerJsonRpcMessage::Error(e) => e.id.as_ref().is_none_or(|id| *id == request_id),
            _ => false,
        };
        match serde_json::to_vec(&message) {
            Ok(payload) => {
                let Some(payload) = crate::actor::fit_bus(&bus, "stateless", &message, payload) else {
                    continue;
                };
                let out = Outbound::new(seq, payload, last).with_step_up(tools::step_up_scopes(&message));
                match ack_to.take() {
                    // The first answer rides on the acknowledgement.
                    Some(reply) => respond_on(&bus, &shared, reply, &Ack::First(out)).await,
                    None => {
                        if let Some(subject) = &subject {
                            publish(&shared, &bus, subject, out).await;
                        }
                    }
                }
            }
            Err(err) => warn!(error = %err, "cannot serialize server message"),
        }
        if last {
            break;
        }
    }
    ct.cancel();
    drop(in_tx);
    let _ = waiter.await;
}

async fn publish(shared: &Shared, bus: &async_nats::Client, subject: &str, out: Outbound) {
    shared.metrics.outbound.with_label_values(&["stateless"]).inc();
    match out.to_bytes() {
        Ok(bytes) => {
            if let Err(err) = bus.publish(subject.to_owned(), bytes.into()).await {
                warn!(error = %err, "publish failed");
            }
        }
        Err(err) => warn!(error = %err, "cannot encode outbound"),
    }
}
