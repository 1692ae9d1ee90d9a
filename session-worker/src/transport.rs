//! The rmcp transport that connects an rmcp server to messages from NATS.
//!
//! Client messages arrive on an unbounded channel fed by the session actor (or
//! the stateless server); everything rmcp sends goes to an [`Outlet`]: the actor's
//! mailbox, which routes it to the right NATS subject, or a plain channel for
//! stateless requests.

use std::future::Future;

use actix::Recipient;
use rmcp::RoleServer;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::Transport;
use tokio::sync::mpsc;

/// A server message produced by rmcp, delivered to the session actor.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct FromServer(pub ServerJsonRpcMessage);

/// Where rmcp's outgoing messages go.
pub enum Outlet {
    Actor(Recipient<FromServer>),
    Channel(mpsc::UnboundedSender<ServerJsonRpcMessage>),
}

/// The receiving side has gone away.
#[derive(Debug, thiserror::Error)]
#[error("session closed")]
pub struct Closed;

pub struct ChannelTransport {
    inbound: mpsc::UnboundedReceiver<ClientJsonRpcMessage>,
    outlet: Outlet,
}

impl ChannelTransport {
    pub fn new(inbound: mpsc::UnboundedReceiver<ClientJsonRpcMessage>, outlet: Outlet) -> Self {
        Self { inbound, outlet }
    }
}

impl Transport<RoleServer> for ChannelTransport {
    type Error = Closed;

    fn send(&mut self, item: ServerJsonRpcMessage) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let sent = match &self.outlet {
            Outlet::Actor(recipient) => {
                if recipient.connected() {
                    recipient.do_send(FromServer(item));
                    Ok(())
                } else {
                    Err(Closed)
                }
            }
            Outlet::Channel(tx) => tx.send(item).map_err(|_| Closed),
        };
        std::future::ready(sent)
    }

    fn receive(&mut self) -> impl Future<Output = Option<ClientJsonRpcMessage>> + Send {
        self.inbound.recv()
    }

    fn close(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.inbound.close();
        std::future::ready(Ok(()))
    }
}
