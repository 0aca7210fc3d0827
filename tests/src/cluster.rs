//! A cluster of real `starling` processes on 127.0.0.1 for the cluster
//! tests: start, kill -9, stop/continue (SIGSTOP to cut a node off),
//! restart with the same data directory, and the admin CLI.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `starling` binary built by this workspace.
pub fn starling_bin() -> PathBuf {
    if let Ok(p) = std::env::var("STARLING_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("target"));
    let p = target.join("debug").join("starling");
    assert!(p.exists(), "{} not built: run `cargo build --bin starling` (scripts/test does)", p.display());
    p
}

/// A port reserved for one node's listener until the node definition is
/// dropped.
///
/// The node is a separate process, so the port cannot stay bound between
/// choosing it and the child binding it. Ports come from below the
/// kernel's ephemeral range (so outgoing connections never take them in
/// between), and a lock file per port keeps concurrently running test
/// processes from choosing the same one.
struct PortLease {
    addr: SocketAddr,
    lock: PathBuf,
}

const PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;

impl PortLease {
    fn take() -> PortLease {
        use std::hash::{BuildHasher, Hasher};
        let dir = std::env::temp_dir().join("starling-test-ports");
        std::fs::create_dir_all(&dir).expect("port lock dir");
        let span = u64::from(PORT_RANGE.end - PORT_RANGE.start);
        for attempt in 0u64..10_000 {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(attempt);
            h.write_u32(std::process::id());
            let port = PORT_RANGE.start + (h.finish() % span) as u16;
            let lock = dir.join(port.to_string());
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&lock) {
                Ok(_) => {}
                Err(_) => {
                    // A lock left by a test process that died long ago.
                    let stale = std::fs::metadata(&lock)
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(3600));
                    if stale {
                        let _ = std::fs::remove_file(&lock);
                    }
                    continue;
                }
            }
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            if std::net::TcpListener::bind(addr).is_ok() {
                return PortLease { addr, lock };
            }
            let _ = std::fs::remove_file(&lock);
        }
        panic!("no free port in {PORT_RANGE:?}");
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.lock);
    }
}

pub struct Node {
    pub id: u64,
    pub mqtt: SocketAddr,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub ws: SocketAddr,
    pub dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
    /// Environment variables for the process (e.g. a faked clock).
    pub env: Vec<(String, String)>,
    /// A command the node is started through (its arguments, then the
    /// binary and the node's arguments), e.g. to limit its file sizes.
    pub wrap: Vec<String>,
    _ports: Vec<PortLease>,
}

impl Node {
    fn args(&self, join: Option<SocketAddr>) -> Vec<String> {
        let mut a = vec![
            "serve".to_string(),
            "--node-id".into(),
            self.id.to_string(),
            "--data-dir".into(),
            self.dir.display().to_string(),
            "--mqtt-listen".into(),
            self.mqtt.to_string(),
            "--ws-listen".into(),
            self.ws.to_string(),
            "--http-listen".into(),
            self.http.to_string(),
            "--grpc-listen".into(),
            self.grpc.to_string(),
            "--set".into(),
            "cluster.node_down_after_secs=2".into(),
            "--set".into(),
            "cluster.election_timeout_ms=600".into(),
            "--set".into(),
            "cluster.heartbeat_ms=100".into(),
            "--set".into(),
            "cluster.write_timeout_ms=3000".into(),
            "--set".into(),
            "mqtt.sys_interval_secs=0".into(),
        ];
        if let Some(j) = join {
            a.push("--join".into());
            a.push(j.to_string());
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    fn spawn(&mut self, join: Option<SocketAddr>) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let mut cmd = match self.wrap.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(starling_bin());
                c
            }
            None => Command::new(starling_bin()),
        };
        let child = cmd
            .args(self.args(join))
            .env("RUST_LOG", "info,starling_cluster=debug")
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn starling");
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the process is still running (it must never crash-loop).
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
        }
    }

    /// Resident memory of the node process, in KiB.
    pub fn rss_kb(&self) -> u64 {
        let Some(pid) = self.pid() else { return 0 };
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }

    /// Whether the node's log shows a panic.
    pub fn panicked(&self) -> bool {
        std::fs::read_to_string(&self.log).unwrap_or_default().contains("panicked")
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` nodes: node 1 bootstraps, the others join through it.
    pub async fn start(n: usize) -> Cluster {
        Cluster::start_with(n, &[]).await
    }

    /// Starts `n` nodes, each with `extra` command-line arguments.
    pub async fn start_with(n: usize, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = Cluster { nodes: Vec::new(), dir };
        if n == 0 {
            return c;
        }
        for i in 1..=n as u64 {
            c.add_node(i, extra.iter().map(|s| s.to_string()).collect());
            let join = if i == 1 { None } else { Some(c.nodes[0].grpc) };
            c.nodes.last_mut().expect("node").spawn(join);
            c.wait_ready(i).await;
        }
        c.wait_members(n).await;
        c
    }

    /// Adds a node definition (not started).
    pub fn add_node(&mut self, id: u64, extra: Vec<String>) -> &mut Node {
        let base = self.dir.path().join(format!("node{id}-{}", self.nodes.len()));
        std::fs::create_dir_all(&base).expect("node dir");
        let ports: Vec<PortLease> = (0..4).map(|_| PortLease::take()).collect();
        self.nodes.push(Node {
            id,
            mqtt: ports[0].addr,
            http: ports[1].addr,
            grpc: ports[2].addr,
            ws: ports[3].addr,
            dir: base.join("data"),
            log: base.join("starling.log"),
            child: None,
            extra,
            env: Vec::new(),
            wrap: Vec::new(),
            _ports: ports,
        });
        self.nodes.last_mut().expect("node")
    }

    pub fn node(&self, id: u64) -> &Node {
        self.nodes.iter().find(|n| n.id == id).expect("node id")
    }

    pub fn node_mut(&mut self, id: u64) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.id == id).expect("node id")
    }

    /// Starts a defined node (or restarts a stopped one) with its data dir.
    pub fn launch(&mut self, id: u64, join: Option<SocketAddr>) {
        self.node_mut(id).spawn(join);
    }

    /// Starts the node at position `idx` in `nodes` (for two definitions
    /// sharing an id).
    pub fn launch_at(&mut self, idx: usize, join: Option<SocketAddr>) {
        self.nodes[idx].spawn(join);
    }

    /// Waits for the node at `idx` to exit; its exit code.
    pub async fn wait_exit_at(&mut self, idx: usize, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(c) = self.nodes[idx].child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return status.code();
                }
            }
            assert!(Instant::now() < deadline, "node did not exit");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn kill9(&mut self, id: u64) {
        let n = self.node_mut(id);
        n.signal("-KILL");
        if let Some(mut c) = n.child.take() {
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self, id: u64) -> Option<i32> {
        let n = self.node_mut(id);
        n.signal("-TERM");
        n.child.take().and_then(|mut c| c.wait().ok()).and_then(|s| s.code())
    }

    pub fn freeze(&self, id: u64) {
        self.node(id).signal("-STOP");
    }

    pub fn thaw(&self, id: u64) {
        self.node(id).signal("-CONT");
    }

    pub async fn ready(&self, id: u64) -> bool {
        crate::http_get_within(self.node(id).http, "/health/ready", Duration::from_secs(2)).await.0 == 200
    }

    pub async fn wait_ready(&self, id: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.ready(id).await {
            assert!(Instant::now() < deadline, "node {id} not ready; log:\n{}", self.node(id).log_tail());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_not_ready(&self, id: u64, within: Duration) {
        let deadline = Instant::now() + within;
        while self.ready(id).await {
            assert!(Instant::now() < deadline, "node {id} still ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `starling cluster <args> --server <node's gRPC>`; (success, stdout, stderr).
    pub fn cli(&self, id: u64, args: &[&str]) -> (bool, String, String) {
        let args: Vec<&str> = std::iter::once("cluster").chain(args.iter().copied()).collect();
        self.cli_cmd(id, &args)
    }

    /// `starling <args> --server <node's gRPC>` for any admin command.
    pub fn cli_cmd(&self, id: u64, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(starling_bin())
            .args(args)
            .args(["--server", &self.node(id).grpc.to_string()])
            .output()
            .expect("run the CLI");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    /// The last lines of every node's log, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes.iter().map(|n| format!("--- node {} ---\n{}\n", n.id, n.log_tail())).collect()
    }

    /// A metric of node `id` (the first line of it in `/metrics`).
    pub async fn metric(&self, id: u64, name: &str) -> f64 {
        let (_, body) = crate::http_get(self.node(id).http, "/metrics").await;
        crate::metric_value(&body, name).unwrap_or_else(|| panic!("metric {name} not found on node {id}"))
    }

    /// Waits until metric `name` of node `id` reads `want`, failing at
    /// `deadline` (the node may still be applying what was committed, or
    /// not answering yet).
    pub async fn wait_metric(&self, id: u64, name: &str, want: f64, deadline: Instant) {
        loop {
            let (_, body) =
                crate::http_get_within(self.node(id).http, "/metrics", Duration::from_secs(2)).await;
            let have = crate::metric_value(&body, name);
            if have == Some(want) {
                return;
            }
            assert!(Instant::now() < deadline, "metric {name} on node {id}: {have:?}, want {want}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `cluster status --json` as seen through node `id`.
    pub fn status(&self, id: u64) -> serde_json::Value {
        let (ok, out, err) = self.cli(id, &["status", "--json"]);
        assert!(ok, "status failed: {err}");
        serde_json::from_str(&out).expect("status json")
    }

    /// Waits until the cluster reports `n` voters, all alive.
    pub async fn wait_members(&self, n: usize) {
        self.wait_members_seen_by(self.nodes[0].id, n).await
    }

    /// Waits until node `id` reports `n` voters, all alive (for when the
    /// first node is gone).
    pub async fn wait_members_seen_by(&self, id: u64, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = tokio::task::block_in_place(|| self.status(id));
            let members = s["members"].as_array().cloned().unwrap_or_default();
            let voters = members.iter().filter(|m| m["role"] != "learner" && m["alive"] == true).count();
            if voters == n && members.len() == n {
                return;
            }
            assert!(Instant::now() < deadline, "cluster did not reach {n} members: {s}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
