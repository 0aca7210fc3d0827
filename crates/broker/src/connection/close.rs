//! How a connection ends, and what that means for its will and session.

use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use starling_codec::{Disconnect, MqttStr, Packet, ReasonCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{Conn, CLOSE_FLUSH_TIMEOUT};
use crate::broker::Broker;
use crate::ids::{ClientId, Epoch};
use crate::port::Released;
use crate::session::Session;
use crate::will::PendingWill;

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Close {
    /// DISCONNECT from the client (reason 0x00 or any but 0x04).
    Client,
    /// DISCONNECT with reason 0x04: publish the will.
    ClientWithWill,
    /// Socket closed or failed without DISCONNECT.
    Lost(String),
    /// Nothing received for 1.5 × keep alive.
    KeepAlive,
    /// The client broke the protocol; `ReasonCode` is sent in 5.0.
    Protocol(ReasonCode, String),
    /// The broker closed it: takeover (0x8E), drain (0x9C), admin (0x98).
    Kicked(ReasonCode),
    /// The server is shutting down (0x8B).
    Shutdown,
}

impl Close {
    /// The reason code of a server-sent DISCONNECT (5.0 only).
    fn server_reason(&self) -> Option<ReasonCode> {
        match self {
            Close::KeepAlive => Some(ReasonCode::KEEP_ALIVE_TIMEOUT),
            Close::Protocol(code, _) => Some(*code),
            Close::Kicked(code) => Some(*code),
            Close::Shutdown => Some(ReasonCode::SERVER_SHUTTING_DOWN),
            _ => None,
        }
    }

    /// Whether the will applies (see `will.rs`).
    fn publishes_will(&self) -> bool {
        match self {
            Close::ClientWithWill | Close::Lost(_) | Close::KeepAlive | Close::Protocol(..) => true,
            Close::Kicked(code) => *code == ReasonCode::SESSION_TAKEN_OVER,
            Close::Client | Close::Shutdown => false,
        }
    }
}

impl<S> Conn<S>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    pub(super) async fn finish(mut self, close: Close) {
        let metrics = self.broker.metrics().clone();
        match &close {
            Close::KeepAlive => {
                metrics.keepalive_timeouts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Close::Kicked(ReasonCode::SESSION_TAKEN_OVER) => {
                metrics.sessions_taken_over.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Close::Protocol(code, why) => {
                tracing::info!(client = %self.session.client_id(), peer = %self.peer, %code, %why, "protocol violation");
            }
            _ => {}
        }
        tracing::debug!(client = %self.session.client_id(), ?close, "client disconnected");

        // Tell a 5.0 client why, then flush what is pending and close.
        if self.neg.version.is_v5() {
            if let Some(code) = close.server_reason() {
                // A reason string is always sent unless the client opted
                // out: some clients (paho-mqtt 2.1) ignore the reason code
                // of a DISCONNECT that carries no properties.
                let mut d = Disconnect::new(code);
                if self.neg.problem_info {
                    let why = match &close {
                        Close::Protocol(_, why) => why.as_str(),
                        _ => code.description(),
                    };
                    d.properties.reason_string = Some(MqttStr::from(why));
                }
                self.write_packet(&Packet::Disconnect(d));
            }
        }
        let (writer, wbuf) = (&mut self.stream, &self.wbuf);
        let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, async {
            if !matches!(close, Close::Lost(_)) {
                let _ = writer.write_all(wbuf).await;
                let _ = writer.flush().await;
            }
            let _ = writer.shutdown().await;
        })
        .await;
        metrics.connection_closed();

        let now = StdInstant::now();
        let will = if close.publishes_will() { self.will.take() } else { None };
        let expiry = self.neg.session_expiry;
        // A delayed will waits in the session; otherwise it goes now.
        let (pending, immediate) = match will {
            Some(w) if w.delay > 0 && expiry > 0 => (Some(PendingWill::new(w, now, expiry)), None),
            Some(w) => (None, Some(w)),
            None => (None, None),
        };
        let still_owner = self.session.detach(self.epoch, now, pending.clone());
        if !still_owner {
            // This connection may have taken a wake-up meant for its
            // successor (they share the session's wake slot): pass it on.
            self.session.wake();
            // Taken over. A delayed will is cancelled by the resumption,
            // unless the new owner started clean (the session ended).
            let publish = immediate.or_else(|| pending.filter(|_| self.session.is_ended()).map(|p| p.will));
            if let Some(w) = publish {
                self.broker.publish_will(self.session.client_id(), &w).await;
            }
            return;
        }
        if let Some(w) = &immediate {
            self.broker.publish_will(self.session.client_id(), w).await;
        }
        match self.broker.port().release_session(self.session.client_id(), self.epoch, expiry).await {
            Ok(Released::Ended) => {
                self.session.mark_ended();
                if let Some(p) = self.session.take_pending_will(Some(self.epoch)) {
                    self.broker.publish_will(self.session.client_id(), &p.will).await;
                }
            }
            Ok(Released::Kept) => {
                if let Some(p) = pending {
                    spawn_will_timer(
                        self.broker.clone(),
                        self.session.client_id().clone(),
                        self.session.clone(),
                        self.epoch,
                        p,
                    );
                }
                if expiry != u32::MAX {
                    spawn_expiry_timer(
                        self.broker.clone(),
                        self.session.client_id().clone(),
                        self.session.clone(),
                        self.epoch,
                        expiry,
                    );
                }
            }
            Ok(Released::NotOwner) => {}
            Err(e) => {
                tracing::warn!(client = %self.session.client_id(), error = %e, "session release not recorded");
            }
        }
    }
}

/// Publishes a delayed will when its delay passes, unless the session was
/// resumed (or the will already went out with the session's end).
fn spawn_will_timer(broker: Broker, client: ClientId, session: Arc<Session>, epoch: Epoch, p: PendingWill) {
    tokio::spawn(async move {
        tokio::time::sleep_until(p.publish_at.into()).await;
        if let Some(p) = session.take_pending_will(Some(epoch)) {
            broker.publish_will(&client, &p.will).await;
        }
    });
}

/// Ends a disconnected session when its expiry interval passes, unless a
/// connection resumed it meanwhile.
pub(crate) fn spawn_expiry_timer(
    broker: Broker,
    client: ClientId,
    session: Arc<Session>,
    epoch: Epoch,
    secs: u32,
) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(u64::from(secs))).await;
        if session.offline_since(epoch).is_none() {
            return;
        }
        match broker.port().expire_session(&client, epoch).await {
            Ok(true) => {
                session.mark_ended();
                broker.metrics().sessions_expired.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(client = %client, "session expired");
                if let Some(p) = session.take_pending_will(Some(epoch)) {
                    broker.publish_will(&client, &p.will).await;
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(client = %client, error = %e, "session expiry not recorded"),
        }
    });
}
