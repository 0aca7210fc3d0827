//! `ClusterNode`: one Starling node's cluster side, wired from parts that
//! each have one job, built in dependency order (nothing is set after
//! construction, nothing points back):
//!
//! ```text
//! Store ─ ClusterId ─ PeerClient ──────────────┬─────────────┐
//! LocalState (broker's applier)                │             │
//!   └─ StateMachine ─ Raft ─ Readiness         │             │
//!                       └─ Proposer ─ Writer ─ ClusterPort   PeerForwarder
//!                                                └── Broker ─────┘
//! Membership (bootstrap, join, follow)   Liveness (reset, pings, clock)
//! PeerService, AdminService (gRPC)       status.rs (status, metrics)
//! ```
//!
//! A replicated change flows one way: Raft log → `StateMachine::apply` →
//! `ReplicatedState::apply` → `StateChange`s → `LocalState` → sessions,
//! routes, retained view, wills.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use parking_lot::Mutex;
use starling_broker::auth::AuthService;
use starling_broker::metrics::Metrics;
use starling_broker::replicated::LocalState;
use starling_broker::session::SessionLimits;
use starling_broker::{Broker, BrokerParts, MqttConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;

use crate::admin_service::AdminService;
use crate::bulk;
use crate::forwarder::PeerForwarder;
use crate::liveness::Liveness;
use crate::log_store::LogStore;
use crate::membership::Membership;
use crate::network::Network;
use crate::pb::admin::admin_server::AdminServer;
use crate::pb::peer::peer_server::PeerServer;
use crate::peer_client::{ClusterId, PeerClient, MAX_MESSAGE};
use crate::peer_service::PeerService;
use crate::port::ClusterPort;
use crate::queue_group::QueueGroup;
use crate::readiness::Readiness;
use crate::sm::{SmShared, StateMachine};
use crate::status::PeerStats;
use crate::storage::Store;
use crate::submitter::Submitter;
use crate::types::{Group, NodeId, NodeInfo, Raft};
use crate::writer::{Proposer, Writer};

/// How often `core_failed` looks at the Raft core's state.
const CORE_CHECK: Duration = Duration::from_millis(100);

/// Cluster settings (the `[cluster]` table of the server config).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    /// How other nodes and clients reach this node.
    pub advertise: NodeInfo,
    /// A member's gRPC address to join through (empty data dir only).
    pub join: Option<String>,
    /// With an empty data dir and no `join`, start a new cluster.
    pub bootstrap: bool,
    pub heartbeat: Duration,
    pub election_timeout: Duration,
    /// A member unreachable this long is declared down by the leader.
    pub node_down_after: Duration,
    /// Entries between snapshots.
    pub snapshot_every: u64,
    /// How long a write may wait for a leader and a commit.
    pub write_timeout: Duration,
    /// CPU priority (nice) of the bulk runtime's threads (bulk.rs).
    pub bulk_nice: i32,
}

pub struct ClusterNode {
    pub node_id: NodeId,
    pub raft: Raft,
    pub sm: Arc<SmShared>,
    pub store: Store,
    pub peers: PeerClient,
    pub membership: Arc<Membership>,
    pub liveness: Arc<Liveness>,
    pub readiness: Arc<Readiness>,
    pub forwarder: Arc<PeerForwarder>,
    pub proposer: Proposer,
    /// The durable queues' Raft group.
    pub queues: Arc<QueueGroup>,
    pub broker: Broker,
    pub stats: Arc<PeerStats>,
    /// Last committed index openraft reported (status, metrics).
    pub committed: Arc<AtomicU64>,
    /// Names of the users in this node's password file (not replicated).
    file_users: Mutex<Vec<String>>,
}

/// The Raft settings of both groups.
fn raft_config(c: &ClusterConfig) -> anyhow::Result<Arc<openraft::Config>> {
    let hb = c.heartbeat.as_millis() as u64;
    let el = c.election_timeout.as_millis() as u64;
    let config = openraft::Config {
        cluster_name: "starling".into(),
        heartbeat_interval: hb,
        election_timeout_min: el,
        election_timeout_max: el * 2,
        install_snapshot_timeout: 10_000,
        max_payload_entries: 256,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(c.snapshot_every),
        snapshot_max_chunk_size: 4 * 1024 * 1024,
        // Entries kept behind a snapshot for followers that lag a little:
        // as many as between snapshots, at most 2,000.
        max_in_snapshot_log_to_keep: c.snapshot_every.min(2000),
        purge_batch_size: 256,
        ..Default::default()
    };
    Ok(Arc::new(config.validate().context("Raft configuration")?))
}

impl ClusterNode {
    /// Opens storage, starts Raft and the gRPC services on `grpc`, and
    /// joins or bootstraps a cluster as configured.
    pub async fn start(
        config: ClusterConfig,
        mqtt: MqttConfig,
        metrics: Arc<Metrics>,
        auth: Arc<AuthService>,
        grpc: TcpListener,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Arc<ClusterNode>> {
        let node_id = config.node_id;
        let dir = config.data_dir.display().to_string();
        let damaged = |what: &str| {
            format!(
                "{what} in {dir}: the data directory is damaged; the cluster still has this node's data \
                 (see \"A damaged data directory\" in docs/operations.md: `starling cluster remove {} --force` \
                 on a live member, move {dir} away, start again with --join)",
                node_id.0
            )
        };
        bulk::start(config.bulk_nice).context("cannot start the bulk runtime")?;
        let store = Store::open(&config.data_dir, node_id.0)?;
        let peers = PeerClient::new(node_id, ClusterId::new(store.cluster_id()?));
        let local = Arc::new(LocalState::new(node_id, auth, metrics, SessionLimits::from_config(&mqtt)));
        let sm = StateMachine::open(store.clone(), local.clone())
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| damaged("cannot load the snapshot"))?;
        let shared = sm.shared.clone();
        let log_store = LogStore::open(store.clone())
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| damaged("cannot open the Raft log"))?;
        let committed = log_store.committed.clone();
        let progress = log_store.progress.clone();
        let network =
            Network { peers: peers.clone(), group: Group::Main, log_on_disk: store.log_on_disk.clone() };
        let raft_config = raft_config(&config)?;
        let raft = Raft::new(node_id, raft_config.clone(), network, log_store, sm)
            .await
            .with_context(|| damaged("cannot read the Raft log"))?;
        progress.follow(raft.data_metrics());
        let readiness = Arc::new(Readiness::new(raft.clone(), config.election_timeout * 3));
        let proposer = Proposer {
            group: Group::Main,
            raft: raft.clone(),
            peers: peers.clone(),
            applied: shared.applied_watch(),
            timeout: config.write_timeout,
        };
        let stats = Arc::new(PeerStats::default());
        // After the main group: its state made this node's session
        // runtimes, which the queue group's state then fills.
        // On the bulk runtime: the group's Raft core and the tasks it and
        // its writer spawn stay there (bulk.rs).
        let opening = bulk::handle().spawn(QueueGroup::open(
            config.data_dir.clone(),
            raft_config,
            peers.clone(),
            local.clone(),
            stats.clone(),
            config.election_timeout * 3,
            config.write_timeout,
        ));
        let queues = Arc::new(
            opening
                .await
                .context("the durable queues' group did not start")?
                .with_context(|| damaged("cannot open the durable queues' group"))?,
        );
        let writer = Writer::start(proposer.clone());
        let port = Arc::new(ClusterPort {
            queues: queues.clone(),
            submitter: Submitter::start(proposer.clone(), writer.clone(), stats.clone()),
            writer,
            proposer: proposer.clone(),
            sm: shared.clone(),
            peers: peers.clone(),
            readiness: readiness.clone(),
            local: local.clone(),
            stats: stats.clone(),
            confirm_deadline: config.write_timeout.max(config.node_down_after + Duration::from_secs(2)),
        });
        let forwarder = Arc::new(PeerForwarder::new(peers.clone()));
        let broker =
            Broker::new(BrokerParts { config: mqtt, local, port, forwarder: Some(forwarder.clone()) });
        let membership = Arc::new(Membership::new(
            config.advertise.clone(),
            raft.clone(),
            queues.raft.clone(),
            store.clone(),
            peers.clone(),
            config.join.clone(),
            config.bootstrap,
        ));
        let liveness = Arc::new(Liveness::new(
            raft.clone(),
            shared.clone(),
            proposer.clone(),
            membership.clone(),
            readiness.clone(),
            config.node_down_after,
        ));
        let node = Arc::new(ClusterNode {
            node_id,
            raft,
            sm: shared,
            store,
            peers,
            membership,
            liveness,
            readiness,
            forwarder,
            proposer,
            queues,
            broker,
            stats,
            committed,
            file_users: Mutex::new(Vec::new()),
        });
        node.serve_grpc(grpc, shutdown.clone());
        node.membership.bootstrap_or_join().await?;
        node.spawn_duties(shutdown);
        Ok(node)
    }

    /// Following the membership, the startup reset, liveness and the
    /// clock, until `stop`.
    fn spawn_duties(self: &Arc<Self>, stop: watch::Receiver<bool>) {
        let follow = self.membership.clone().follow(
            self.forwarder.clone(),
            self.sm.clone(),
            self.readiness.clone(),
            stop.clone(),
        );
        tokio::spawn(follow);
        tokio::spawn(self.liveness.clone().startup_reset(stop.clone()));
        tokio::spawn(self.liveness.clone().watch_members(stop.clone()));
        tokio::spawn(self.liveness.clone().keep_time(stop.clone()));
        let (removed, node) = (self.liveness.clone().until_removed(stop.clone()), self.clone());
        tokio::spawn(async move {
            if removed.await.is_some() {
                node.readiness.set_removed();
                node.stop_campaigning();
            }
        });
        bulk::handle().spawn(self.queues.clone().follow(
            self.raft.clone(),
            self.sm.clone(),
            self.membership.info().clone(),
            stop,
        ));
    }

    /// Stops both groups' timers, for a node no longer a member (after
    /// `leave`, or told by a member that it was removed). Raft does not
    /// tell a removed node it was removed, so both its groups would
    /// campaign every election timeout until the process is stopped
    /// (refused: the members have a leader, and refuse its queue-group
    /// messages, peer_service.rs `admit`).
    pub fn stop_campaigning(&self) {
        self.raft.runtime_config().tick(false);
        self.queues.raft.runtime_config().tick(false);
    }

    /// Serves the peer and admin services on `grpc` until `stop`.
    fn serve_grpc(self: &Arc<Self>, grpc: TcpListener, stop: watch::Receiver<bool>) {
        let peer = PeerService {
            forwarded: Default::default(),
            queues: self.queues.clone(),
            raft: self.raft.clone(),
            proposer: self.proposer.clone(),
            sm: self.sm.clone(),
            broker: self.broker.clone(),
            readiness: self.readiness.clone(),
            stats: self.stats.clone(),
        };
        let admin = AdminService { node: self.clone() };
        // Two servers of the same services: bulk connections (lane.rs)
        // on the bulk runtime, every other on this one. Nagle is off on
        // every accepted socket (small gRPC responses otherwise wait for
        // delayed ACKs, ~40 ms).
        let sorted = crate::lane::sort_incoming(grpc, stop.clone());
        let main = grpc_server(peer.clone(), admin.clone(), ReceiverStream::new(sorted.main), stop.clone());
        let bulk = grpc_server(peer, admin, ReceiverStream::new(sorted.bulk), stop);
        tokio::spawn(main);
        bulk::handle().spawn(bulk);
    }

    /// Whether the node takes clients: both Raft groups in contact with
    /// their leaders and caught up (and the node not draining, reset).
    pub fn is_ready(&self) -> bool {
        self.readiness.is_ready() && self.queues.readiness.is_ready()
    }

    /// Users from this node's password file (not replicated).
    pub fn file_users(&self) -> Vec<String> {
        self.file_users.lock().clone()
    }

    /// Records the names of the password file's users, for `user list`.
    pub fn set_file_users(&self, names: Vec<String>) {
        *self.file_users.lock() = names;
    }

    /// Stops taking clients and closes every connection with "use another
    /// server"; waits up to `grace` for them to finish.
    pub async fn drain(&self, grace: Duration) -> usize {
        self.readiness.drain();
        let n = self.broker.disconnect_all(starling_codec::ReasonCode::USE_ANOTHER_SERVER);
        let _ = tokio::time::timeout(grace, self.broker.wait_idle()).await;
        n
    }

    /// Resolves when the Raft core stopped by itself: a storage error (a
    /// full or failing disk) leaves the node unable to vote or apply, so it
    /// must stop and be restarted (fail-stop) rather than linger half alive.
    pub async fn core_failed(&self) -> String {
        // Looked at every `CORE_CHECK` rather than on every change of
        // openraft's metrics: they change several times per entry, and
        // each wake-up of this (main) thread costs more than the check.
        let cores = [(self.raft.metrics(), ""), (self.queues.raft.metrics(), "durable queues: ")];
        loop {
            for (rx, group) in &cores {
                if let Err(e) = &rx.borrow().running_state {
                    if !matches!(e, openraft::error::Fatal::Stopped) {
                        return format!("{group}{e}");
                    }
                }
                if rx.has_changed().is_err() {
                    return format!("{group}the Raft core ended");
                }
            }
            tokio::time::sleep(CORE_CHECK).await;
        }
    }

    /// Stops Raft after the gRPC server has been told to stop.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "Raft shutdown");
        }
        if let Err(e) = self.queues.raft.shutdown().await {
            tracing::warn!(error = %e, "Raft shutdown (durable queues)");
        }
        let _ = self.store.sync();
        let _ = self.queues.store.sync();
    }
}

/// One tonic server of the peer and admin services, on `incoming`, until
/// `stop`.
async fn grpc_server(
    peer: PeerService,
    admin: AdminService,
    incoming: ReceiverStream<std::io::Result<tokio::net::TcpStream>>,
    mut stop: watch::Receiver<bool>,
) {
    let result = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .add_service(
            PeerServer::new(peer)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(AdminServer::new(admin))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "gRPC server failed");
    }
}
