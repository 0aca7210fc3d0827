//! `Broker`: the cheaply cloneable handle every connection holds. It ties
//! the derived views, the state port, metrics and the shutdown signal
//! together; the publish path lives in `router.rs`, connection handling in
//! `connection/`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use starling_codec::{QoS, ReasonCode};
use tokio::sync::{watch, Notify};

use crate::auth::AuthService;
use crate::config::MqttConfig;
use crate::deadlines::DeadlineWheel;
use crate::forward::Forwarder;
use crate::ids::{ClientId, Epoch, EpochSource, NodeId};
use crate::memory::{MemoryState, Views};
use crate::metrics::{Gauges, Metrics};
use crate::port::StatePort;
use crate::retained::RetainedStore;
use crate::session::{Session, SessionLimits};
use crate::topic::TopicLimits;

pub(crate) struct Inner {
    pub(crate) node_id: NodeId,
    pub(crate) config: MqttConfig,
    pub(crate) topic_limits: TopicLimits,
    pub(crate) max_qos: QoS,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) views: Views,
    /// `$SYS/...` retained messages: node-local, never replicated.
    pub(crate) sys_retained: RetainedStore,
    pub(crate) port: Arc<dyn StatePort>,
    pub(crate) epochs: EpochSource,
    shutdown: watch::Sender<bool>,
    pub(crate) started: Instant,
    pub(crate) started_wall: SystemTime,
    next_client_seq: AtomicU64,
    live_connections: AtomicUsize,
    idle: Notify,
    /// Delivery to other nodes; unset on a single process.
    pub(crate) forwarder: OnceLock<Arc<dyn Forwarder>>,
    pub(crate) auth: Arc<AuthService>,
    /// Keep-alive and idle deadlines of every connection.
    pub(crate) deadlines: Arc<DeadlineWheel>,
}

/// A running broker node's MQTT side.
#[derive(Clone)]
pub struct Broker {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("node_id", &self.inner.node_id).finish()
    }
}

impl Broker {
    /// A broker over an existing state port and the views it maintains.
    pub fn new(
        node_id: NodeId,
        config: MqttConfig,
        metrics: Arc<Metrics>,
        views: Views,
        port: Arc<dyn StatePort>,
        auth: Arc<AuthService>,
    ) -> Broker {
        let (shutdown, _) = watch::channel(false);
        let max_qos = QoS::from_u8(config.max_qos).unwrap_or(QoS::ExactlyOnce);
        let topic_limits = config.topic_limits();
        Broker {
            inner: Arc::new(Inner {
                node_id,
                topic_limits,
                max_qos,
                config,
                metrics,
                views,
                sys_retained: RetainedStore::new(),
                port,
                epochs: EpochSource::new(node_id),
                shutdown,
                started: Instant::now(),
                started_wall: SystemTime::now(),
                next_client_seq: AtomicU64::new(0),
                live_connections: AtomicUsize::new(0),
                idle: Notify::new(),
                forwarder: OnceLock::new(),
                auth,
                deadlines: DeadlineWheel::new(),
            }),
        }
    }

    /// A single-process broker on `MemoryState` (tests, embedding).
    pub fn in_memory(config: MqttConfig) -> Broker {
        let views = Views::default();
        let port = Arc::new(MemoryState::new(views.clone()));
        let auth = Arc::new(AuthService::new(Default::default()));
        Broker::new(NodeId(1), config, Arc::new(Metrics::default()), views, port, auth)
    }

    /// Installs the forwarder for remote subscribers (once, at startup).
    pub fn set_forwarder(&self, f: Arc<dyn Forwarder>) {
        let _ = self.inner.forwarder.set(f);
    }

    pub fn auth(&self) -> &Arc<AuthService> {
        &self.inner.auth
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    pub fn config(&self) -> &MqttConfig {
        &self.inner.config
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    pub fn views(&self) -> &Views {
        &self.inner.views
    }

    pub fn port(&self) -> &Arc<dyn StatePort> {
        &self.inner.port
    }

    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    pub fn gauges(&self) -> Gauges {
        Gauges {
            sessions: self.inner.views.registry.len() as u64,
            subscriptions: self.inner.views.routes.len() as u64,
            retained: self.inner.views.retained.len() as u64,
        }
    }

    /// Prometheus text for `/metrics`.
    pub fn render_metrics(&self) -> String {
        let mut s = self.inner.metrics.render_prometheus(&self.gauges());
        let failures = self.inner.auth.failures_total.load(Ordering::Relaxed);
        s.push_str(&format!(
            "# HELP starling_auth_failures_total CONNECTs refused for bad or missing credentials.\n# TYPE starling_auth_failures_total counter\nstarling_auth_failures_total {failures}\n"
        ));
        s
    }

    /// Ready to take clients: the state port can commit.
    pub fn is_ready(&self) -> bool {
        !self.is_shutting_down() && self.inner.port.is_ready()
    }

    pub(crate) fn session_limits(&self) -> SessionLimits {
        SessionLimits {
            max_queued: self.inner.config.max_queued_messages,
            queue_qos0_offline: self.inner.config.queue_qos0_offline,
        }
    }

    pub(crate) fn new_session(&self, client: ClientId) -> Arc<Session> {
        Arc::new(Session::new(client, self.session_limits(), self.inner.metrics.clone()))
    }

    pub(crate) fn next_epoch(&self) -> Epoch {
        self.inner.epochs.next()
    }

    /// A client identifier for a client that sent an empty one; unique on
    /// this node and across restarts (node id, boot time, sequence).
    pub(crate) fn assign_client_id(&self) -> String {
        let seq = self.inner.next_client_seq.fetch_add(1, Ordering::Relaxed);
        let boot = self
            .inner
            .started_wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        format!("{}{}-{:x}-{}", self.inner.config.assigned_client_id_prefix, self.inner.node_id, boot, seq)
    }

    /// Tells every connection to close with "server shutting down" and
    /// stops accepting CONNECTs.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        // Connections learn it through their kick channel (no per-connection
        // watch): a handshake that attaches after this line sees the flag.
        self.inner.views.registry.kick_all(ReasonCode::SERVER_SHUTTING_DOWN);
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.inner.shutdown.borrow()
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    /// Closes every attached connection with `reason` (5.0 clients get a
    /// DISCONNECT with it), e.g. 0x9C "use another server" when draining.
    pub fn disconnect_all(&self, reason: ReasonCode) -> usize {
        self.inner.views.registry.kick_all(reason)
    }

    pub(crate) fn connection_started(&self) {
        self.inner.live_connections.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn connection_finished(&self) {
        if self.inner.live_connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.idle.notify_waiters();
        }
    }

    /// Number of connection tasks still running.
    pub fn live_connections(&self) -> usize {
        self.inner.live_connections.load(Ordering::Acquire)
    }

    /// Waits until every connection task has finished (after `shutdown`).
    pub async fn wait_idle(&self) {
        loop {
            let idle = self.inner.idle.notified();
            if self.live_connections() == 0 {
                return;
            }
            idle.await;
        }
    }
}
