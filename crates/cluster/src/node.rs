//! `ClusterNode`: one Starling node's cluster side — storage, Raft, the
//! gRPC services, the forwarder, and the background duties: following the
//! membership, the startup reset, and (on the leader) liveness checks and
//! the janitor for expired sessions and delayed wills.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use parking_lot::Mutex;
use starling_broker::auth::AuthService;
use starling_broker::ids::NodeId as BrokerNodeId;
use starling_broker::memory::Views;
use starling_broker::metrics::Metrics;
use starling_broker::session::SessionLimits;
use starling_broker::{Broker, MqttConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin_service::AdminService;
use crate::forwarder::PeerForwarder;
use crate::log_store::LogStore;
use crate::network::{Channels, Network, MAX_MESSAGE};
use crate::pb::admin::admin_client::AdminClient;
use crate::pb::admin::admin_server::AdminServer;
use crate::pb::admin::{AddNodeRequest, InfoRequest, MemberStatus, StatusResponse};
use crate::pb::peer::peer_server::PeerServer;
use crate::pb::peer::PingRequest;
use crate::peer_service::PeerService;
use crate::port::ClusterPort;
use crate::sm::{SmShared, StateMachine};
use crate::storage::{new_cluster_id, Store};
use crate::types::{wall_ms, Command, NodeId, NodeInfo, Raft};
use crate::views::LocalViews;
use crate::writer::{Proposer, Writer};

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
}

pub struct ClusterNode {
    pub node_id: NodeId,
    pub info: NodeInfo,
    pub raft: Raft,
    pub sm: Arc<SmShared>,
    pub store: Store,
    pub channels: Channels,
    pub cluster_id: Arc<Mutex<String>>,
    pub forwarder: Arc<PeerForwarder>,
    pub proposer: Proposer,
    pub broker: Broker,
    committed: Arc<std::sync::atomic::AtomicU64>,
    last_leader_contact: Arc<Mutex<Option<Instant>>>,
    /// Leader's view of when each member last answered a ping.
    last_seen: Mutex<HashMap<NodeId, Instant>>,
    draining: AtomicBool,
    reset_done: AtomicBool,
    config: ClusterConfig,
    file_users: Mutex<Vec<String>>,
}

/// Readiness: a leader is known and recently heard from (or, on the
/// leader, a quorum acknowledged recently), the startup reset is done, and
/// the node is not draining.
fn ready(
    raft: &Raft,
    contact: &Mutex<Option<Instant>>,
    draining: &AtomicBool,
    reset: &AtomicBool,
    fresh: Duration,
) -> bool {
    if draining.load(Ordering::Relaxed) || !reset.load(Ordering::Relaxed) {
        return false;
    }
    let m = raft.metrics().borrow().clone();
    match m.current_leader {
        Some(l) if l == m.id => {
            // A single-voter cluster has no one to ack; it is its own quorum.
            let voters = m.membership_config.membership().voter_ids().count();
            voters == 1 || m.millis_since_quorum_ack.is_some_and(|ms| ms < fresh.as_millis() as u64)
        }
        Some(_) => contact.lock().is_some_and(|t| t.elapsed() < fresh),
        None => false,
    }
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
        let store = Store::open(&config.data_dir, node_id)?;
        let cluster_id = Arc::new(Mutex::new(store.cluster_id()?.unwrap_or_default()));

        let views = Views::default();
        let limits = SessionLimits {
            max_queued: mqtt.max_queued_messages,
            queue_qos0_offline: mqtt.queue_qos0_offline,
        };
        let local = Arc::new(LocalViews::new(node_id, views.clone(), limits, metrics.clone()));
        let sm = StateMachine::open(store.clone(), local.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
        let shared = sm.shared.clone();
        let log_store = LogStore::new(store.clone());
        let committed = log_store.committed.clone();
        let channels = Channels::default();
        let network = Network { channels: channels.clone(), cluster_id: cluster_id.clone() };

        let hb = config.heartbeat.as_millis() as u64;
        let el = config.election_timeout.as_millis() as u64;
        let raft_config = openraft::Config {
            cluster_name: "starling".into(),
            heartbeat_interval: hb,
            election_timeout_min: el,
            election_timeout_max: el * 2,
            install_snapshot_timeout: 10_000,
            max_payload_entries: 256,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            snapshot_max_chunk_size: 4 * 1024 * 1024,
            max_in_snapshot_log_to_keep: 2000,
            purge_batch_size: 256,
            ..Default::default()
        };
        let raft_config = Arc::new(raft_config.validate().context("Raft configuration")?);
        let raft = Raft::new(node_id, raft_config, network, log_store, sm).await.context("starting Raft")?;

        let proposer = Proposer {
            raft: raft.clone(),
            node_id,
            channels: channels.clone(),
            cluster_id: cluster_id.clone(),
            sm: shared.clone(),
            timeout: config.write_timeout,
        };
        let writer = Writer::start(proposer.clone());
        let last_leader_contact = Arc::new(Mutex::new(None));

        // The node exists before the port's readiness check can see it.
        let node = Arc::new_cyclic(|weak: &std::sync::Weak<ClusterNode>| {
            let w = weak.clone();
            let readiness: Arc<dyn Fn() -> bool + Send + Sync> =
                Arc::new(move || w.upgrade().is_some_and(|n| n.is_ready()));
            let port = Arc::new(ClusterPort {
                node_id,
                writer,
                sm: shared.clone(),
                channels: channels.clone(),
                cluster_id: cluster_id.clone(),
                readiness,
            });
            let broker = Broker::new(BrokerNodeId(node_id), mqtt, metrics, views, port, auth);
            ClusterNode {
                node_id,
                info: config.advertise.clone(),
                raft: raft.clone(),
                sm: shared.clone(),
                store,
                channels: channels.clone(),
                cluster_id: cluster_id.clone(),
                forwarder: Arc::new(PeerForwarder::new(node_id, cluster_id.clone(), channels.clone())),
                proposer: proposer.clone(),
                broker,
                committed,
                last_leader_contact: last_leader_contact.clone(),
                last_seen: Mutex::new(HashMap::new()),
                draining: AtomicBool::new(false),
                reset_done: AtomicBool::new(false),
                config: config.clone(),
                file_users: Mutex::new(Vec::new()),
            }
        });
        shared.with_state(|st| local.set_broker(node.broker.clone(), st));
        node.broker.set_forwarder(node.forwarder.clone());

        // gRPC services.
        let peer = PeerService {
            raft: raft.clone(),
            cluster_id: cluster_id.clone(),
            proposer: proposer.clone(),
            sm: shared.clone(),
            broker: node.broker.clone(),
            last_leader_contact,
        };
        let admin = AdminService { node: node.clone() };
        let mut stop = shutdown.clone();
        // Nagle off on accepted peer sockets: tonic applies its own
        // `tcp_nodelay` only to listeners it binds itself, and small gRPC
        // responses otherwise wait for delayed ACKs (~40 ms).
        let incoming =
            tonic::transport::server::TcpIncoming::from_listener(grpc, true, Some(Duration::from_secs(10)))
                .map_err(|e| anyhow::anyhow!("gRPC listener: {e}"))?;
        tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .tcp_nodelay(true)
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
        });

        node.bootstrap_or_join().await?;
        tokio::spawn(node.clone().follow_membership(shutdown.clone()));
        tokio::spawn(node.clone().startup_reset(shutdown.clone()));
        tokio::spawn(node.clone().leader_duties(shutdown));
        Ok(node)
    }

    async fn bootstrap_or_join(self: &Arc<Self>) -> anyhow::Result<()> {
        let have_cluster = !self.cluster_id.lock().is_empty();
        if let Some(join) = self.config.join.clone() {
            if have_cluster {
                // Restart of a member: make sure the address is our cluster.
                match self.remote_info(&join).await {
                    Ok(info) if !info.cluster_id.is_empty() && info.cluster_id != *self.cluster_id.lock() => {
                        bail!(
                            "--join {join} points at cluster {}, but this data directory belongs to cluster {}",
                            info.cluster_id,
                            self.cluster_id.lock()
                        );
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(%join, error = %e, "cannot check the join address; continuing with local state")
                    }
                }
                return Ok(());
            }
            return self.join(&join).await;
        }
        if have_cluster {
            if !self.raft.is_initialized().await? && self.config.bootstrap {
                self.initialize().await?;
            }
            return Ok(());
        }
        if self.config.bootstrap {
            let id = new_cluster_id();
            self.store.set_cluster_id(&id)?;
            *self.cluster_id.lock() = id.clone();
            self.initialize().await?;
            tracing::info!(cluster = %id, node = self.node_id, "initialized a new one-member cluster");
        } else {
            tracing::info!(node = self.node_id, "waiting to be added to a cluster (`starling cluster add`)");
        }
        Ok(())
    }

    async fn initialize(&self) -> anyhow::Result<()> {
        let members = BTreeMap::from([(self.node_id, self.info.clone())]);
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => {
                Ok(())
            }
            Err(e) => Err(anyhow::anyhow!("cannot initialize the cluster: {e}")),
        }
    }

    async fn remote_info(&self, addr: &str) -> anyhow::Result<crate::pb::admin::InfoResponse> {
        let mut c = AdminClient::new(self.channels.get(addr)?);
        Ok(c.info(InfoRequest {}).await?.into_inner())
    }

    async fn join(self: &Arc<Self>, join: &str) -> anyhow::Result<()> {
        tracing::info!(%join, node = self.node_id, "joining the cluster");
        let mut delay = Duration::from_millis(200);
        loop {
            let attempt = async {
                let mut c = AdminClient::new(self.channels.get(join)?);
                let r = c
                    .add_node(AddNodeRequest {
                        node_id: self.node_id,
                        grpc_addr: self.info.grpc.clone(),
                        hops: 0,
                    })
                    .await;
                anyhow::Ok(r)
            };
            match attempt.await {
                Ok(Ok(r)) => {
                    let id = r.into_inner().cluster_id;
                    self.adopt(&id)?;
                    tracing::info!(cluster = %id, "joined");
                    return Ok(());
                }
                Ok(Err(s))
                    if matches!(
                        s.code(),
                        tonic::Code::AlreadyExists
                            | tonic::Code::FailedPrecondition
                            | tonic::Code::InvalidArgument
                    ) =>
                {
                    bail!("cannot join through {join}: {}", s.message());
                }
                Ok(Err(s)) => tracing::warn!(%join, error = %s.message(), "join failed; retrying"),
                Err(e) => tracing::warn!(%join, error = %e, "join failed; retrying"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Makes this (empty) node part of `cluster_id`.
    pub fn adopt(&self, cluster_id: &str) -> anyhow::Result<()> {
        self.store.set_cluster_id(cluster_id)?;
        *self.cluster_id.lock() = cluster_id.to_string();
        Ok(())
    }

    pub fn is_ready(&self) -> bool {
        ready(
            &self.raft,
            &self.last_leader_contact,
            &self.draining,
            &self.reset_done,
            self.config.election_timeout * 3,
        )
    }

    /// Keeps the forwarder's links equal to the membership, and their
    /// down flags equal to the replicated liveness.
    async fn follow_membership(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut metrics = self.raft.metrics();
        let mut applied = self.sm.applied_watch();
        loop {
            let peers: Vec<(NodeId, String)> = metrics
                .borrow()
                .membership_config
                .membership()
                .nodes()
                .filter(|(id, _)| **id != self.node_id)
                .map(|(id, n)| (*id, n.grpc.clone()))
                .collect();
            self.forwarder.set_peers(&peers);
            self.forwarder.set_down(&self.sm.with_state(|s| s.down.clone()));
            tokio::select! {
                r = metrics.changed() => if r.is_err() { return },
                r = applied.changed() => if r.is_err() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// After a (re)start every connection this node had is gone: once a
    /// leader is reachable, say so (wills, clean sessions, routes), then
    /// become ready.
    async fn startup_reset(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            let member =
                self.raft.metrics().borrow().membership_config.membership().get_node(&self.node_id).is_some();
            if member {
                let cmds = vec![
                    Command::NodeReset { node: self.node_id, adopter: Some(self.node_id) },
                    Command::SetLiveness { node: self.node_id, alive: true },
                ];
                match self.proposer.propose(cmds, 0).await {
                    Ok((_, index)) => {
                        if self.sm.wait_applied(index, Duration::from_secs(10)).await {
                            self.reset_done.store(true, Ordering::Relaxed);
                            tracing::info!(node = self.node_id, "node ready");
                            return;
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "startup reset not committed yet; retrying"),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// On the leader: ping members, declare unreachable ones down (their
    /// sessions reset, wills published), bring returning ones back, and
    /// sweep expired unowned sessions and due wills.
    async fn leader_duties(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut was_leader = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let m = self.raft.metrics().borrow().clone();
            let leader = m.current_leader == Some(self.node_id);
            if !leader {
                was_leader = false;
                continue;
            }
            let members: Vec<(NodeId, String)> = m
                .membership_config
                .membership()
                .nodes()
                .filter(|(id, _)| **id != self.node_id)
                .map(|(id, n)| (*id, n.grpc.clone()))
                .collect();
            let now = Instant::now();
            if !was_leader {
                // A new leader gives everyone a fresh grace period.
                let mut seen = self.last_seen.lock();
                seen.clear();
                for (id, _) in &members {
                    seen.insert(*id, now);
                }
                was_leader = true;
            }
            let pings = members.iter().map(|(id, addr)| {
                let node = self.clone();
                let (id, addr) = (*id, addr.clone());
                async move {
                    let ok = async {
                        let mut c = node.channels.peer(&addr).ok()?;
                        let mut req = tonic::Request::new(PingRequest {
                            cluster_id: node.cluster_id.lock().clone(),
                            from_node: node.node_id,
                        });
                        req.set_timeout(Duration::from_secs(1));
                        c.ping(req).await.ok()
                    }
                    .await
                    .is_some();
                    (id, ok)
                }
            });
            let results = futures_util::future::join_all(pings).await;
            let down = self.sm.with_state(|s| s.down.clone());
            let mut cmds = Vec::new();
            if down.contains(&self.node_id) {
                // Declared down while cut off; leading again proves otherwise.
                cmds.push(Command::SetLiveness { node: self.node_id, alive: true });
            }
            {
                let mut seen = self.last_seen.lock();
                for (id, ok) in results {
                    if ok {
                        seen.insert(id, Instant::now());
                        if down.contains(&id) {
                            tracing::info!(node = id, "node reachable again");
                            cmds.push(Command::SetLiveness { node: id, alive: true });
                        }
                    } else {
                        let last = *seen.entry(id).or_insert(now);
                        if last.elapsed() >= self.config.node_down_after && !down.contains(&id) {
                            tracing::warn!(node = id, after = ?self.config.node_down_after, "node unreachable; marking it down");
                            cmds.push(Command::SetLiveness { node: id, alive: false });
                            cmds.push(Command::NodeReset { node: id, adopter: Some(self.node_id) });
                        }
                    }
                }
            }
            cmds.extend(self.sm.with_state(|s| s.due_work(wall_ms())));
            if !cmds.is_empty() {
                if let Err(e) = self.proposer.propose(cmds, 0).await {
                    tracing::debug!(error = %e, "leader duties not committed");
                }
            }
        }
    }

    /// Users from this node's password file (not replicated).
    pub fn file_users(&self) -> Vec<String> {
        self.file_users.lock().clone()
    }

    /// Records the names of the password file's users, for `user list`.
    pub fn set_file_users(&self, names: Vec<String>) {
        *self.file_users.lock() = names;
    }

    /// Whether `node` answers a ping now (within a second).
    pub async fn ping(&self, node: NodeId) -> bool {
        let Some(addr) = self.sm.member_addr(node) else { return false };
        let Ok(mut c) = self.channels.peer(&addr) else { return false };
        let mut req = tonic::Request::new(PingRequest {
            cluster_id: self.cluster_id.lock().clone(),
            from_node: self.node_id,
        });
        req.set_timeout(Duration::from_secs(1));
        c.ping(req).await.is_ok()
    }

    /// Stops taking clients and closes every connection with "use another
    /// server"; waits up to `grace` for them to finish.
    pub async fn drain(&self, grace: Duration) -> usize {
        self.draining.store(true, Ordering::Relaxed);
        let n = self.broker.disconnect_all(starling_codec::ReasonCode::USE_ANOTHER_SERVER);
        let _ = tokio::time::timeout(grace, self.broker.wait_idle()).await;
        n
    }

    pub fn status(&self) -> StatusResponse {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let down = self.sm.with_state(|s| s.down.clone());
        let last = m.last_log_index.unwrap_or(0);
        let replication = m.replication.clone().unwrap_or_default();
        let members = membership
            .nodes()
            .map(|(id, n)| {
                let role = if Some(*id) == m.current_leader {
                    "leader"
                } else if voters.contains(id) {
                    "voter"
                } else {
                    "learner"
                };
                let matched = if *id == self.node_id {
                    Some(last)
                } else {
                    replication.get(id).map(|l| l.map_or(0, |l| l.index))
                };
                MemberStatus {
                    id: *id,
                    grpc_addr: n.grpc.clone(),
                    mqtt_addr: n.mqtt.clone(),
                    http_addr: n.http.clone(),
                    role: role.into(),
                    matched_index: matched.unwrap_or(0),
                    alive: !down.contains(id),
                    lag: matched.map_or(0, |x| last.saturating_sub(x)),
                }
            })
            .collect();
        let g = self.broker.gauges();
        StatusResponse {
            node_id: self.node_id,
            cluster_id: self.cluster_id.lock().clone(),
            leader_id: m.current_leader.unwrap_or(0),
            has_leader: m.current_leader.is_some(),
            term: m.current_term,
            commit_index: self.committed.load(Ordering::Relaxed),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            members,
            sessions: g.sessions,
            subscriptions: g.subscriptions,
            retained: g.retained,
            ready: self.is_ready(),
        }
    }

    /// Prometheus text for the cluster side.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write as _;
        let st = self.status();
        let mut s = String::new();
        let mut g = |name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        g("starling_raft_term", "Current Raft term.", "gauge", st.term);
        g("starling_raft_leader", "Node id of the current leader (0: none).", "gauge", st.leader_id);
        g("starling_raft_is_leader", "1 on the leader.", "gauge", u64::from(st.leader_id == self.node_id));
        g("starling_raft_commit_index", "Highest committed log index.", "gauge", st.commit_index);
        g("starling_raft_applied_index", "Highest applied log index.", "gauge", st.applied_index);
        g("starling_ready", "1 when the node accepts clients.", "gauge", u64::from(st.ready));
        let relaxed = Ordering::Relaxed;
        g(
            "starling_raft_applied_entries_total",
            "Log entries applied to the state machine.",
            "counter",
            self.sm.applied_entries.load(relaxed),
        );
        let _ = writeln!(
            s,
            "# HELP starling_raft_apply_seconds_total Time spent applying entries (divide by entries for the mean apply latency).\n# TYPE starling_raft_apply_seconds_total counter\nstarling_raft_apply_seconds_total {:.6}",
            self.sm.apply_nanos.load(relaxed) as f64 / 1e9
        );
        let _ =
            writeln!(s, "# HELP starling_raft_replication_lag Entries a member is behind (leader's view).");
        let _ = writeln!(s, "# TYPE starling_raft_replication_lag gauge");
        for mbr in &st.members {
            let _ = writeln!(s, "starling_raft_replication_lag{{node=\"{}\"}} {}", mbr.id, mbr.lag);
        }
        let links = self.forwarder.report();
        for (name, help, f) in [
            (
                "starling_forward_messages_total",
                "Messages forwarded to a peer.",
                (|r: &crate::forwarder::LinkReport| r.messages) as fn(&crate::forwarder::LinkReport) -> u64,
            ),
            ("starling_forward_bytes_total", "Payload bytes forwarded to a peer.", |r| r.bytes),
            (
                "starling_forward_dropped_total",
                "Messages for a peer dropped (queue full or peer down).",
                |r| r.dropped,
            ),
            ("starling_forward_queue_depth", "Messages waiting for a peer's stream.", |r| r.queued as u64),
            ("starling_forward_connected", "1 while the stream to a peer is open.", |r| {
                u64::from(r.connected)
            }),
        ] {
            let kind = if name.ends_with("_total") { "counter" } else { "gauge" };
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for r in &links {
                let _ = writeln!(s, "{name}{{peer=\"{}\"}} {}", r.node, f(r));
            }
        }
        s
    }

    /// Stops Raft after the gRPC server has been told to stop.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "Raft shutdown");
        }
        let _ = self.store.sync();
    }
}
