//! `Broker`: the cheaply cloneable handle every connection holds. It ties
//! the node's local state (views of the replicated state), the state port,
//! the forwarder, metrics and the shutdown signal together; the publish
//! path lives in `router.rs`, the replicated operations in `ops.rs`,
//! connection handling in `connection/`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use starling_codec::{QoS, ReasonCode};
use tokio::sync::{watch, Notify};

use crate::auth::AuthService;
use crate::config::MqttConfig;
use crate::deadlines::DeadlineWheel;
use crate::durable::DurableIo;
use crate::forward::Forwarder;
use crate::ids::{ClientId, Epoch, EpochSource, NodeId};
use crate::memory::MemoryPort;
use crate::message::Message;
use crate::metrics::{Gauges, Metrics};
use crate::port::StatePort;
use crate::replicated::{LocalState, QueueLimits, Views, MAX_PER_SESSION};
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
    /// Applies replicated changes to this node's sessions and views.
    pub(crate) local: Arc<LocalState>,
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
    /// Delivery to other nodes; `None` on a single process.
    pub(crate) forwarder: Option<Arc<dyn Forwarder>>,
    pub(crate) auth: Arc<AuthService>,
    /// Keep-alive and idle deadlines of every connection.
    pub(crate) deadlines: Arc<DeadlineWheel>,
    /// Commits durable messages and their acknowledgements.
    pub(crate) durable: DurableIo,
}

/// What a broker is built from; the port and the forwarder are made
/// first, so nothing needs to be set on the broker afterwards.
pub struct BrokerParts {
    pub config: MqttConfig,
    /// This node's local state; the port applies replicated changes to it.
    pub local: Arc<LocalState>,
    pub port: Arc<dyn StatePort>,
    /// Delivery to subscribers on other nodes (`None`: a single process).
    pub forwarder: Option<Arc<dyn Forwarder>>,
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
    /// The parts every broker is made of.
    pub fn new(parts: BrokerParts) -> Broker {
        let BrokerParts { config, local, port, forwarder } = parts;
        let (shutdown, _) = watch::channel(false);
        let max_qos = QoS::from_u8(config.max_qos).unwrap_or(QoS::ExactlyOnce);
        let topic_limits = config.topic_limits();
        let node_id = local.node();
        let durable = DurableIo::start(port.clone(), local.metrics().clone());
        Broker {
            inner: Arc::new(Inner {
                node_id,
                topic_limits,
                max_qos,
                config,
                metrics: local.metrics().clone(),
                views: local.views().clone(),
                auth: local.auth().clone(),
                local,
                sys_retained: RetainedStore::new(),
                port,
                epochs: EpochSource::new(node_id),
                shutdown,
                started: Instant::now(),
                started_wall: SystemTime::now(),
                next_client_seq: AtomicU64::new(0),
                live_connections: AtomicUsize::new(0),
                idle: Notify::new(),
                forwarder,
                deadlines: DeadlineWheel::new(),
                durable,
            }),
        }
    }

    /// A single-process broker on `MemoryPort` (tests, embedding).
    pub fn in_memory(config: MqttConfig) -> Broker {
        let auth = Arc::new(AuthService::new(Default::default()));
        let limits = SessionLimits::from_config(&config);
        let local = Arc::new(LocalState::new(NodeId(1), auth, Arc::new(Metrics::default()), limits));
        let port = MemoryPort::start(local.clone());
        Broker::new(BrokerParts { config, local, port, forwarder: None })
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

    pub fn local(&self) -> &Arc<LocalState> {
        &self.inner.local
    }

    pub fn port(&self) -> &Arc<dyn StatePort> {
        &self.inner.port
    }

    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    pub fn gauges(&self) -> Gauges {
        let (mut durable_bytes, mut durable_messages) = (0, 0);
        self.inner.port.read_queues(&mut |q| {
            durable_bytes = q.bytes();
            durable_messages = q.messages();
        });
        Gauges {
            sessions: self.inner.views.registry.len() as u64,
            subscriptions: self.inner.views.routes.len() as u64,
            retained: self.inner.views.retained.len() as u64,
            durable_bytes,
            durable_messages,
        }
    }

    pub(crate) fn durable(&self) -> &DurableIo {
        &self.inner.durable
    }

    /// Stores `msg` in the durable queues of `targets`; the waiter answers
    /// once it is committed (or refused).
    pub(crate) fn enqueue_durable(
        &self,
        msg: &Message,
        targets: Vec<crate::replicated::DurableTarget>,
    ) -> crate::durable::StoredWaiter {
        let cmd = crate::replicated::Command::Enqueue {
            message: Arc::new(crate::replicated::StoredMessage::from_message(msg)),
            expires_in_ms: crate::replicated::expires_in_ms(msg, Instant::now()),
            targets,
            limits: self.queue_limits(),
        };
        self.inner.durable.enqueue(cmd)
    }

    /// The bounds of the durable queues this node asks for.
    pub(crate) fn queue_limits(&self) -> QueueLimits {
        let c = &self.inner.config;
        let per_session = c.max_queued_messages.min(MAX_PER_SESSION as usize) as u32;
        QueueLimits { per_session, total_bytes: c.max_durable_bytes }
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
        SessionLimits::from_config(&self.inner.config)
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
