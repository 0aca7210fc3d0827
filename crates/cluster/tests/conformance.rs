//! The broker's `StatePort` conformance suite against the Raft cluster
//! port: a one-node cluster and a three-node cluster, each node a real
//! `ClusterNode` (sled store in a temporary directory, gRPC on a loopback
//! port) in this process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use starling_broker::auth::AuthService;
use starling_broker::conformance::{run_all, Harness};
use starling_broker::ids::NodeId;
use starling_broker::metrics::Metrics;
use starling_broker::Broker;
use starling_cluster::types::NodeInfo;
use starling_cluster::{ClusterConfig, ClusterNode};
use tokio::net::TcpListener;
use tokio::sync::watch;

struct Cluster {
    nodes: Vec<Arc<ClusterNode>>,
    stop: watch::Sender<bool>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Harness for Cluster {
    fn brokers(&self) -> Vec<Broker> {
        self.nodes.iter().map(|n| n.broker.clone()).collect()
    }
}

async fn start(size: u64) -> Cluster {
    let (stop, stop_rx) = watch::channel(false);
    let mut nodes: Vec<Arc<ClusterNode>> = Vec::new();
    let mut dirs = Vec::new();
    let mut first = None;
    for id in 1..=size {
        let dir = tempfile::tempdir().expect("temp dir");
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = grpc.local_addr().expect("addr").to_string();
        let config = ClusterConfig {
            node_id: NodeId(id),
            data_dir: dir.path().to_path_buf(),
            advertise: NodeInfo { grpc: addr.clone(), mqtt: String::new(), http: String::new() },
            join: first.clone(),
            bootstrap: id == 1,
            heartbeat: Duration::from_millis(100),
            election_timeout: Duration::from_millis(600),
            node_down_after: Duration::from_secs(2),
            snapshot_every: 10_000,
            write_timeout: Duration::from_secs(3),
            bulk_nice: 0,
        };
        let auth = Arc::new(AuthService::new(Default::default()));
        let node = ClusterNode::start(
            config,
            Default::default(),
            Arc::new(Metrics::default()),
            auth,
            grpc,
            stop_rx.clone(),
        )
        .await
        .expect("node starts");
        first.get_or_insert(addr);
        nodes.push(node);
        dirs.push(dir);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !nodes.iter().all(|n| n.is_ready() && n.membership.members().len() == size as usize) {
        assert!(Instant::now() < deadline, "cluster of {size} not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Cluster { nodes, stop, _dirs: dirs }
}

impl Cluster {
    async fn stop(self) {
        let _ = self.stop.send(true);
        for n in &self.nodes {
            n.broker.shutdown();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        for n in &self.nodes {
            n.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_cluster_conforms() {
    let c = start(1).await;
    run_all(&c).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_cluster_conforms() {
    let c = start(3).await;
    run_all(&c).await;
    c.stop().await;
}
