//! How a connection ends, and what that means for its will and session.

use std::time::Duration;

use starling_codec::{Disconnect, MqttStr, Packet, ReasonCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{Conn, CLOSE_FLUSH_TIMEOUT};
use crate::replicated::WillOnRelease;

/// A release that cannot be committed (no leader during an election) is
/// tried this many times, `RELEASE_RETRY_DELAY` apart.
const RELEASE_ATTEMPTS: u32 = 3;
const RELEASE_RETRY_DELAY: Duration = Duration::from_millis(500);
/// How long, and how many bytes, a server-closed connection is still read
/// (and discarded) after the reason was sent.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
const CLOSE_LINGER_BYTES: usize = 1 << 20;

async fn linger<S: AsyncRead + Unpin>(stream: &mut S) {
    // On the heap: the connection task's future stays small (see the
    // size test in mod.rs).
    let mut sink = vec![0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + CLOSE_LINGER;
    let mut left = CLOSE_LINGER_BYTES;
    while left > 0 {
        match tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => return,
        }
    }
}

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

    /// Whether the broker ends the connection while the client may still
    /// be writing: then it lingers (`CLOSE_LINGER`) so that the client
    /// reads the reason instead of a reset.
    fn lingers(&self) -> bool {
        matches!(self, Close::Protocol(..) | Close::Kicked(_) | Close::KeepAlive)
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
        self.release(&close).await;
        if close.lingers() {
            // A socket closed with unread input answers the client's next
            // bytes with a reset, which can destroy the DISCONNECT before
            // the client reads it (paho's flow-control test got a broken
            // pipe). Our side is shut down for writing; read and discard
            // until the client closes, at most `CLOSE_LINGER` and
            // `CLOSE_LINGER_BYTES` (after the session's release, so a
            // client that keeps writing does not delay its will).
            linger(&mut self.stream).await;
        }
    }

    async fn release(&mut self, close: &Close) {
        // What becomes of the will and the session is a replicated
        // decision (replicated/state.rs): the will goes out now or after its
        // delay, a resumption cancels it, a session that ends publishes it.
        let will = if close.publishes_will() && self.will.is_some() {
            WillOnRelease::Publish
        } else {
            WillOnRelease::Discard
        };
        if !self.session.detach(self.epoch) {
            // Taken over: the claim that took the session decided about this
            // connection's will. This connection may have taken a wake-up
            // meant for its successor (they share the session's wake slot):
            // pass it on.
            self.session.wake();
            return;
        }
        let client = self.session.client_id().clone();
        let expiry = self.neg.session_expiry;
        for attempt in 1..=RELEASE_ATTEMPTS {
            match self.broker.release_session(&client, self.epoch, expiry, will).await {
                Ok(_) => return,
                Err(e) if attempt < RELEASE_ATTEMPTS => {
                    tracing::debug!(%client, error = %e, "session release not recorded yet; retrying");
                    tokio::time::sleep(RELEASE_RETRY_DELAY).await;
                }
                // The session stays recorded as connected here: if this
                // node is cut off, the majority resets it (wills included).
                Err(e) => tracing::warn!(%client, error = %e, "session release not recorded"),
            }
        }
    }
}
