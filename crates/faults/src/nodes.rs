//! The cluster under test: `starling serve` processes, one per network
//! namespace, each with its data directory on its own small tmpfs (so a
//! disk can be filled without touching the host's).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::{ns_name, sh, slot_ip, MAX_SLOTS};

/// Size of each node's data disk.
const DISK_MB: u32 = 256;

#[derive(Debug)]
pub struct Node {
    pub slot: usize,
    /// The node id the slot runs now (a replaced node gets a new one).
    pub id: u64,
    /// Whether the node is a member (added and not removed).
    pub member: bool,
    pub paused: bool,
    child: Option<Child>,
    pub log: PathBuf,
    disk: PathBuf,
}

impl Node {
    pub fn mqtt(&self) -> SocketAddr {
        format!("{}:1883", slot_ip(self.slot)).parse().expect("address")
    }
    pub fn http(&self) -> SocketAddr {
        format!("{}:8080", slot_ip(self.slot)).parse().expect("address")
    }
    pub fn grpc(&self) -> String {
        format!("{}:7000", slot_ip(self.slot))
    }
    pub fn data(&self) -> PathBuf {
        self.disk.join("data")
    }
    pub fn running(&self) -> bool {
        self.child.is_some()
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

#[derive(Debug)]
pub struct Nodes {
    bin: PathBuf,
    pub nodes: Vec<Node>,
    next_id: u64,
}

impl Nodes {
    /// Prepares every slot's log and tmpfs disk under `root`.
    pub fn new(bin: &Path, root: &Path) -> Result<Nodes> {
        let mut nodes = Vec::new();
        for slot in 1..=MAX_SLOTS {
            let dir = root.join(format!("node-slot{slot}"));
            let disk = dir.join("disk");
            std::fs::create_dir_all(&disk)?;
            sh(&[
                "mount",
                "-t",
                "tmpfs",
                "-o",
                &format!("size={DISK_MB}m"),
                "tmpfs",
                &disk.display().to_string(),
            ])
            .context("mount a tmpfs for the node's data (needs root)")?;
            nodes.push(Node {
                slot,
                id: 0,
                member: false,
                paused: false,
                child: None,
                log: dir.join("starling.log"),
                disk,
            });
        }
        Ok(Nodes { bin: bin.to_path_buf(), nodes, next_id: 1 })
    }

    pub fn slot(&self, slot: usize) -> &Node {
        &self.nodes[slot - 1]
    }
    fn slot_mut(&mut self, slot: usize) -> &mut Node {
        &mut self.nodes[slot - 1]
    }

    /// Slots of the current members.
    pub fn members(&self) -> Vec<usize> {
        self.nodes.iter().filter(|n| n.member).map(|n| n.slot).collect()
    }

    /// Slots whose process runs and is not paused.
    pub fn up(&self) -> Vec<usize> {
        self.nodes.iter().filter(|n| n.member && n.running() && !n.paused).map(|n| n.slot).collect()
    }

    pub fn free_slot(&self) -> Option<usize> {
        self.nodes.iter().find(|n| !n.member && !n.running()).map(|n| n.slot)
    }

    /// Starts the slot's process; a new node (`fresh`) gets the next id and
    /// joins through `join`.
    pub fn start(&mut self, slot: usize, fresh: bool, join: Option<usize>) -> Result<()> {
        if fresh {
            let id = self.next_id;
            self.next_id += 1;
            let n = self.slot_mut(slot);
            n.id = id;
            let _ = std::fs::remove_dir_all(n.data());
        }
        let bin = self.bin.clone();
        let join_addr = join.map(|j| self.slot(j).grpc());
        let n = self.slot_mut(slot);
        let ip = slot_ip(slot);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&n.log)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns_name(slot)])
            .arg(&bin)
            .args(["serve", "--node-id", &n.id.to_string(), "--data-dir", &n.data().display().to_string()])
            .args(["--mqtt-listen", &format!("{ip}:1883"), "--ws-listen", "off"])
            .args(["--http-listen", &format!("{ip}:8080"), "--grpc-listen", &format!("{ip}:7000")])
            .args(["--set", "cluster.node_down_after_secs=2", "--set", "cluster.election_timeout_ms=600"])
            .args(["--set", "cluster.heartbeat_ms=100", "--set", "cluster.write_timeout_ms=3000"])
            // Snapshots and log purges happen during every run.
            .args(["--set", "cluster.snapshot_every=1000", "--set", "mqtt.sys_interval_secs=0"]);
        if let Some(j) = join_addr {
            cmd.args(["--join", &j]);
        }
        let child = cmd
            .env("RUST_LOG", "info,starling_cluster=debug,starling_broker=debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start starling")?;
        n.child = Some(child);
        n.member = true;
        n.paused = false;
        Ok(())
    }

    fn signal(&self, slot: usize, sig: &str) {
        if let Some(pid) = self.slot(slot).pid() {
            let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
        }
    }

    pub fn kill(&mut self, slot: usize) {
        self.signal(slot, "-CONT");
        self.signal(slot, "-KILL");
        let n = self.slot_mut(slot);
        if let Some(mut c) = n.child.take() {
            let _ = c.wait();
        }
        n.paused = false;
    }

    /// SIGTERM and wait (up to 20 s, then SIGKILL); whether it exited 0.
    pub fn stop(&mut self, slot: usize) -> bool {
        self.signal(slot, "-CONT");
        self.signal(slot, "-TERM");
        let n = self.slot_mut(slot);
        n.paused = false;
        let Some(mut c) = n.child.take() else { return true };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pause(&mut self, slot: usize) {
        self.signal(slot, "-STOP");
        self.slot_mut(slot).paused = true;
    }

    pub fn resume(&mut self, slot: usize) {
        self.signal(slot, "-CONT");
        self.slot_mut(slot).paused = false;
    }

    /// Processes that exited without the harness asking: (slot, status).
    pub fn reap_unexpected(&mut self) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for n in &mut self.nodes {
            if let Some(c) = n.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    out.push((n.slot, status.to_string()));
                    n.child = None;
                }
            }
        }
        out
    }

    pub fn forget(&mut self, slot: usize) {
        self.slot_mut(slot).member = false;
    }

    /// `starling cluster <args> --server <slot's gRPC>` from the host.
    pub fn cli(&self, slot: usize, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.bin)
            .arg("cluster")
            .args(args)
            .args(["--server", &self.slot(slot).grpc()])
            .output()
            .context("run the admin CLI")?;
        if !out.status.success() {
            bail!("cluster {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn status(&self, slot: usize) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.cli(slot, &["status", "--json"])?)?)
    }

    /// The leader's slot as seen through any running node.
    pub fn leader(&self) -> Option<usize> {
        for slot in self.up() {
            if let Ok(s) = self.status(slot) {
                if let Some(id) = s["leader"].as_u64() {
                    return self.nodes.iter().find(|n| n.member && n.id == id).map(|n| n.slot);
                }
            }
        }
        None
    }

    /// Whether the slot's `/health/ready` answers 200 (blocking, 1 s).
    pub fn ready_blocking(&self, slot: usize) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect_timeout(&self.slot(slot).http(), Duration::from_secs(1))
        else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        if s.write_all(b"GET /health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 200")
    }

    /// Waits (blocking) until the slot is ready; how long it took.
    pub fn wait_ready_blocking(&self, slot: usize, within: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < within {
            if self.ready_blocking(slot) {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    }

    /// Fills the node's disk: a file takes all the space that is left.
    pub fn fill_disk(&self, slot: usize) -> Result<()> {
        let path = self.slot(slot).disk.join("filler");
        let mut f = std::fs::File::create(&path)?;
        let chunk = vec![0u8; 1 << 20];
        use std::io::Write;
        while f.write_all(&chunk).is_ok() {}
        let _ = f.flush();
        Ok(())
    }

    pub fn free_disk(&self, slot: usize) {
        let _ = std::fs::remove_file(self.slot(slot).disk.join("filler"));
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for slot in 1..=MAX_SLOTS {
            self.kill(slot);
            let _ = sh(&["umount", &self.slot(slot).disk.display().to_string()]);
        }
    }
}

/// `GET path` on a node's HTTP listener: (status, body); status 0 when the
/// node did not answer within `within`.
pub async fn http_get(addr: SocketAddr, path: &str, within: Duration) -> (u16, String) {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(within, fut).await.ok().flatten().unwrap_or((0, String::new()))
}

/// A metric's value from a `/metrics` body.
pub fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
