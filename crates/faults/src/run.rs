//! One run: the network, the nodes, HAProxy, the workload and the nemesis
//! following the schedule; then heal, drain, final reads, and the history
//! handed to the checker.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;
use starling_codec::ProtocolVersion;
use tokio::sync::watch;

use crate::history::History;
use crate::net::Net;
use crate::nodes::{http_get, metric, Nodes};
use crate::schedule::{Fault, Step};
use crate::workload::{self, Ctx, Phase, Targets};

/// How long the cluster may take to serve again after the last heal.
pub const RECOVERY_BOUND: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct RunOptions {
    pub seed: u64,
    pub bin: PathBuf,
    pub out: PathBuf,
    pub steps: Vec<Step>,
    pub fault_ms: u64,
}

/// What a step left to undo.
enum Undo {
    /// The fault could not apply (no leader known, too few members...).
    Skipped,
    Nothing,
    Restart(usize),
    Resume(usize),
    Heal(Vec<usize>),
    FreeDisk(usize),
}

struct Nemesis {
    // Dropped in this order: the node processes stop before their
    // namespaces go.
    nodes: Nodes,
    net: Net,
    hist: History,
    targets: Targets,
    /// Fault in force and the slots it touches, for crash reports.
    current: Option<(Fault, Vec<usize>)>,
    /// Slot → times it crashed unexpectedly.
    crashes: Vec<(usize, Instant)>,
    /// The slot whose disk is full: its node is expected to stop (fail-stop
    /// on a storage error) and is started again once the disk is freed.
    disk_full: Option<usize>,
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

impl Nemesis {
    fn refresh_targets(&self) {
        let nodes: Vec<_> =
            self.nodes.members().into_iter().map(|s| (s, self.nodes.slot(s).mqtt())).collect();
        *self.targets.nodes.lock().unwrap_or_else(|e| e.into_inner()) = nodes;
    }

    fn rec(&self, kind: &str, v: serde_json::Value) {
        self.hist.rec("nemesis", kind, v);
    }

    /// Restarts processes that exited without being asked to; each such exit
    /// is recorded (the checker judges it).
    fn reap(&mut self) {
        for (slot, status) in self.nodes.reap_unexpected() {
            // A node stops itself after a storage error (fail-stop); after
            // a full disk that is expected, even once the disk is freed
            // (it may take the shutdown grace period to exit).
            let full = self.nodes.slot(slot).log_tail(40).contains("No space left on device");
            if self.disk_full == Some(slot) || full {
                let tail = self.nodes.slot(slot).log_tail(5);
                self.rec("exit-disk-full", json!({"slot": slot, "status": status, "log": tail}));
                if self.disk_full != Some(slot) {
                    let _ = self.nodes.start(slot, false, None);
                }
                continue;
            }
            let fault = self.current.as_ref().map(|(f, s)| (f.name(), s.clone()));
            let tail = self.nodes.slot(slot).log_tail(15);
            let recent = self
                .crashes
                .iter()
                .filter(|(s, t)| *s == slot && t.elapsed() < Duration::from_secs(30))
                .count();
            self.crashes.push((slot, Instant::now()));
            self.rec(
                "crash",
                json!({"slot": slot, "id": self.nodes.slot(slot).id, "status": status, "during": fault, "log": tail,
                       "again_within_30s": recent}),
            );
            if self.nodes.slot(slot).member && recent < 3 {
                let _ = self.nodes.start(slot, false, None);
            }
        }
    }

    /// Records how long a new node took to be ready (at most 30 s).
    fn joined(&self, slot: usize, via: usize) {
        let id = self.nodes.slot(slot).id;
        let took = self.nodes.wait_ready_blocking(slot, Duration::from_secs(30));
        self.rec(
            "joined",
            json!({"slot": slot, "id": id, "via": via, "ok": took.is_some(),
            "ms": took.map(|d| d.as_millis() as u64)}),
        );
    }

    fn pick(&self, members: &[usize], k: u64) -> usize {
        members[(k % members.len() as u64) as usize]
    }

    fn inject(&mut self, step: &Step) -> Result<Undo> {
        let members = self.nodes.members();
        let up = self.nodes.up();
        let target = self.pick(&members, step.pick[0]);
        let other =
            |skip: &[usize]| members.iter().copied().filter(|s| !skip.contains(s)).collect::<Vec<_>>();
        let undo = match step.fault {
            Fault::Kill => {
                self.nodes.kill(target);
                Undo::Restart(target)
            }
            Fault::Stop => {
                let clean = self.nodes.stop(target);
                self.rec("stopped", json!({"slot": target, "clean_exit": clean}));
                Undo::Restart(target)
            }
            Fault::KillLeader => match self.nodes.leader() {
                Some(l) => {
                    self.nodes.kill(l);
                    self.current = Some((step.fault, vec![l]));
                    Undo::Restart(l)
                }
                None => {
                    self.rec("skipped", json!({"f": step.fault.name(), "why": "no leader known"}));
                    return Ok(Undo::Skipped);
                }
            },
            Fault::Pause => {
                self.nodes.pause(target);
                Undo::Resume(target)
            }
            Fault::Isolate | Fault::IsolateLeader => {
                let target = if step.fault == Fault::IsolateLeader {
                    let Some(l) = self.nodes.leader() else {
                        self.rec("skipped", json!({"f": step.fault.name(), "why": "no leader known"}));
                        return Ok(Undo::Skipped);
                    };
                    l
                } else {
                    target
                };
                for p in other(&[target]) {
                    self.net.block(target, p)?;
                    self.net.block(p, target)?;
                }
                self.current = Some((step.fault, vec![target]));
                Undo::Heal(members.clone())
            }
            Fault::Bridge | Fault::Loss => {
                let rest = other(&[target]);
                let b = self.pick(&rest, step.pick[1]);
                if step.fault == Fault::Bridge {
                    self.net.block(target, b)?;
                    self.net.block(b, target)?;
                } else {
                    let p = step.loss_pct as f64 / 100.0;
                    self.net.lossy(target, b, p)?;
                    self.net.lossy(b, target, p)?;
                }
                self.current = Some((step.fault, vec![target, b]));
                Undo::Heal(vec![target, b])
            }
            Fault::Slow => {
                self.net.slow(target, 512)?;
                Undo::Heal(vec![target])
            }
            Fault::DiskFull => {
                self.disk_full = Some(target);
                self.nodes.fill_disk(target)?;
                Undo::FreeDisk(target)
            }
            Fault::Join => {
                let (Some(slot), Some(&via)) = (self.nodes.free_slot(), up.first()) else {
                    self.rec("skipped", json!({"f": "join", "why": "no free slot or no running member"}));
                    return Ok(Undo::Skipped);
                };
                self.nodes.start(slot, true, Some(via))?;
                self.current = Some((step.fault, vec![slot]));
                self.refresh_targets();
                self.joined(slot, via);
                Undo::Nothing
            }
            Fault::Leave => {
                if members.len() <= 3 {
                    self.rec("skipped", json!({"f": "leave", "why": "only three members"}));
                    return Ok(Undo::Skipped);
                }
                let slot = self.pick(&members, step.pick[1]);
                self.current = Some((step.fault, vec![slot]));
                let r = self.nodes.cli(slot, &["leave"]);
                self.rec("left", json!({"slot": slot, "id": self.nodes.slot(slot).id, "ok": r.is_ok(), "err": r.err().map(|e| e.to_string())}));
                self.nodes.stop(slot);
                self.nodes.forget(slot);
                self.refresh_targets();
                Undo::Nothing
            }
            Fault::Replace => {
                let rest: Vec<usize> = up.iter().copied().filter(|s| *s != target).collect();
                if rest.is_empty() {
                    self.rec("skipped", json!({"f": "replace", "why": "no other running member"}));
                    return Ok(Undo::Skipped);
                }
                let old = self.nodes.slot(target).id;
                self.current = Some((step.fault, vec![target]));
                self.nodes.kill(target);
                // The removal needs a leader (perhaps the node just killed):
                // asked again, through each running member, for up to 30 s.
                let start = Instant::now();
                let mut result = Err(anyhow::anyhow!("not tried"));
                while start.elapsed() < Duration::from_secs(30) {
                    let via = rest[(start.elapsed().as_millis() / 500) as usize % rest.len()];
                    result = self.nodes.cli(via, &["remove", &old.to_string(), "--force"]);
                    if result.is_ok() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
                self.rec("removed", json!({"slot": target, "id": old, "ok": result.is_ok(), "ms": start.elapsed().as_millis() as u64,
                    "err": result.as_ref().err().map(|e| e.to_string())}));
                if result.is_err() {
                    // Not removed: the old node comes back with its disk.
                    self.nodes.start(target, false, None)?;
                    return Ok(Undo::Nothing);
                }
                self.nodes.start(target, true, Some(rest[0]))?;
                self.refresh_targets();
                self.joined(target, rest[0]);
                Undo::Nothing
            }
        };
        if self.current.is_none() {
            self.current = Some((step.fault, vec![target]));
        }
        self.refresh_targets();
        Ok(undo)
    }

    fn undo(&mut self, undo: Undo) -> Result<()> {
        match undo {
            Undo::Skipped | Undo::Nothing => {}
            Undo::Restart(slot) => {
                if !self.nodes.slot(slot).running() {
                    self.nodes.start(slot, false, None)?;
                }
            }
            Undo::Resume(slot) => self.nodes.resume(slot),
            Undo::Heal(slots) => {
                for s in slots {
                    self.net.heal(s)?;
                }
            }
            Undo::FreeDisk(slot) => {
                self.nodes.free_disk(slot);
                self.reap();
                self.disk_full = None;
                if !self.nodes.slot(slot).running() {
                    self.nodes.start(slot, false, None)?;
                }
            }
        }
        self.current = None;
        Ok(())
    }

    /// Heals everything: network, paused and stopped processes, disks.
    fn heal_all(&mut self) -> Result<()> {
        self.net.heal_all()?;
        self.disk_full = None;
        for slot in self.nodes.members() {
            self.nodes.free_disk(slot);
            if self.nodes.slot(slot).paused {
                self.nodes.resume(slot);
            }
        }
        self.reap();
        for slot in self.nodes.members() {
            if !self.nodes.slot(slot).running() {
                self.nodes.start(slot, false, None)?;
            }
        }
        self.current = None;
        self.refresh_targets();
        Ok(())
    }
}

/// HAProxy, stopped when dropped (also when a run ends with an error).
struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_haproxy(out: &Path) -> Result<Option<(Haproxy, std::net::SocketAddr)>> {
    if Command::new("haproxy").arg("-v").output().is_err() {
        return Ok(None);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut cfg = format!(
        "global\n    maxconn 4000\ndefaults\n    mode tcp\n    timeout connect 2s\n    timeout client 1h\n    timeout server 1h\n\
         \x20   retries 2\n    option redispatch\nfrontend mqtt\n    bind 127.0.0.1:{port}\n    default_backend nodes\n\
         backend nodes\n    balance leastconn\n    option httpchk GET /health/ready\n\
         \x20   default-server check port 8080 inter 500ms fall 2 rise 2 on-marked-down shutdown-sessions\n"
    );
    for slot in 1..=crate::net::MAX_SLOTS {
        cfg.push_str(&format!("    server n{slot} {}:1883\n", crate::net::slot_ip(slot)));
    }
    let path = out.join("haproxy.cfg");
    std::fs::write(&path, cfg)?;
    let log = std::fs::File::create(out.join("haproxy.log"))?;
    let child =
        Command::new("haproxy").arg("-db").arg("-f").arg(&path).stdout(Stdio::null()).stderr(log).spawn()?;
    Ok(Some((Haproxy(child), format!("127.0.0.1:{port}").parse()?)))
}

/// Whether every node answers `/health/ready` with 200 now.
async fn all_ready(nodes: &[(usize, std::net::SocketAddr)]) -> bool {
    let mut all = true;
    for (_, http) in nodes {
        if http_get(*http, "/health/ready", Duration::from_secs(1)).await.0 != 200 {
            all = false;
        }
    }
    all
}

async fn wait_ready(nodes: &[(usize, std::net::SocketAddr)], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if all_ready(nodes).await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const STATE_METRICS: [&str; 4] = [
    "starling_raft_applied_index",
    "starling_subscriptions",
    "starling_retained_messages",
    "starling_durable_queued_messages",
];

pub async fn run(opts: RunOptions) -> Result<PathBuf> {
    std::fs::create_dir_all(&opts.out)?;
    let hist_path = opts.out.join("history.jsonl");
    let hist = History::create(&hist_path)?;
    let net = Net::create().context("create the test network")?;
    let mut nodes = Nodes::new(&opts.bin, &opts.out)?;
    hist.rec(
        "nemesis",
        "schedule",
        json!({"seed": opts.seed, "fault_ms": opts.fault_ms,
        "steps": opts.steps.iter().map(|s| s.to_string()).collect::<Vec<_>>()}),
    );

    // The cluster: node 1 initializes, 2 and 3 join through it.
    let t0 = Instant::now();
    nodes.start(1, true, None)?;
    wait_ready(&[(1, nodes.slot(1).http())], Duration::from_secs(60)).await;
    for slot in [2, 3] {
        nodes.start(slot, true, Some(1))?;
        wait_ready(&[(slot, nodes.slot(slot).http())], Duration::from_secs(60)).await;
    }
    let https: Vec<_> = nodes.members().iter().map(|s| (*s, nodes.slot(*s).http())).collect();
    anyhow::ensure!(
        wait_ready(&https, Duration::from_secs(60)).await,
        "the cluster did not start:\n{}",
        nodes.slot(1).log_tail(30)
    );
    hist.rec("nemesis", "cluster-up", json!({"ms": t0.elapsed().as_millis() as u64}));

    let haproxy = start_haproxy(&opts.out)?;
    let lb = haproxy.as_ref().map(|(_, a)| *a);
    if lb.is_none() {
        eprintln!("haproxy not installed: clients connect to the nodes directly only");
    }
    let targets = Targets { lb, nodes: Arc::new(Mutex::new(Vec::new())) };
    let mut nemesis = Nemesis {
        net,
        nodes,
        hist: hist.clone(),
        targets: targets.clone(),
        current: None,
        crashes: Vec::new(),
        disk_full: None,
    };
    nemesis.refresh_targets();
    if lb.is_some() {
        // HAProxy's first health checks.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }

    let (phase_tx, phase_rx) = watch::channel(Phase::Run);
    let drained = Arc::new(AtomicUsize::new(0));
    let ctx = Ctx {
        hist: hist.clone(),
        targets: targets.clone(),
        phase: phase_rx,
        seed: opts.seed,
        drained: drained.clone(),
    };
    let mut tasks = Vec::new();
    use ProtocolVersion::{V311, V5};
    for (name, qos, v) in [("pub-a", 1, V5), ("pub-b", 2, V311), ("pub-c", 1, V311), ("pub-d", 2, V5)] {
        tasks.push(tokio::spawn(workload::publisher(ctx.clone(), name.into(), qos, v)));
    }
    let persistent = [("psub-a", 1, V5), ("psub-b", 1, V311), ("psub-c", 2, V5), ("psub-d", 2, V311)];
    for (name, qos, v) in persistent {
        tasks.push(tokio::spawn(workload::subscriber(
            ctx.clone(),
            name.into(),
            "jt/p/+".into(),
            qos,
            true,
            v,
        )));
    }
    for (name, v) in [("csub-a", V5), ("csub-b", V311)] {
        tasks.push(tokio::spawn(workload::subscriber(
            ctx.clone(),
            name.into(),
            "jt/p/#".into(),
            1,
            false,
            v,
        )));
    }
    for name in ["share-a", "share-b"] {
        tasks.push(tokio::spawn(workload::subscriber(
            ctx.clone(),
            name.into(),
            "$share/g/jt/p/+".into(),
            1,
            false,
            V5,
        )));
    }
    tasks.push(tokio::spawn(workload::retained_writer(ctx.clone(), "ret".into())));
    tasks.push(tokio::spawn(workload::prober(ctx.clone(), "probe".into())));
    tasks.push(tokio::spawn(workload::takeover(ctx.clone(), "tk".into())));

    // The schedule.
    let start = Instant::now();
    for step in &opts.steps {
        while start.elapsed() < Duration::from_millis(step.at_ms) {
            blocking(|| nemesis.reap());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!("  {step}");
        let undo = blocking(|| nemesis.inject(step));
        let slots = nemesis.current.as_ref().map(|(_, s)| s.clone()).unwrap_or_default();
        let ids: Vec<u64> = slots.iter().map(|s| nemesis.nodes.slot(*s).id).collect();
        let undo = match undo {
            Ok(Undo::Skipped) => {
                println!("           (skipped)");
                continue;
            }
            Ok(u) => {
                hist.rec(
                    "nemesis",
                    "fault",
                    json!({"f": step.fault.name(), "slots": slots, "ids": ids, "hold_ms": step.hold_ms}),
                );
                u
            }
            Err(e) => {
                hist.rec("nemesis", "fault-error", json!({"f": step.fault.name(), "err": e.to_string()}));
                Undo::Nothing
            }
        };
        let until = Instant::now() + Duration::from_millis(step.hold_ms);
        while Instant::now() < until {
            if !matches!(step.fault, Fault::Kill | Fault::Stop | Fault::KillLeader | Fault::Replace) {
                blocking(|| nemesis.reap());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let r = blocking(|| nemesis.undo(undo));
        hist.rec(
            "nemesis",
            "heal",
            json!({"f": step.fault.name(), "slots": slots, "err": r.err().map(|e| e.to_string())}),
        );
        blocking(|| nemesis.reap());
    }
    while start.elapsed() < Duration::from_millis(opts.fault_ms) {
        blocking(|| nemesis.reap());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Heal, and time how long until every member serves again.
    blocking(|| nemesis.heal_all())?;
    let healed = Instant::now();
    hist.rec("nemesis", "healed", json!({}));
    let members = nemesis.nodes.members();
    let https: Vec<_> = members.iter().map(|s| (*s, nemesis.nodes.slot(*s).http())).collect();
    // Nodes still stopping after the last fault (a full disk: the shutdown
    // grace period) are restarted meanwhile, as during the faults.
    let ready = loop {
        blocking(|| nemesis.reap());
        if all_ready(&https).await {
            break true;
        }
        if healed.elapsed() >= RECOVERY_BOUND {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let statuses_agree = {
        let mut ok = false;
        while healed.elapsed() < RECOVERY_BOUND {
            blocking(|| nemesis.reap());
            let s: Vec<_> =
                blocking(|| members.iter().filter_map(|m| nemesis.nodes.status(*m).ok()).collect());
            let alive = |v: &serde_json::Value| {
                v["members"]
                    .as_array()
                    .is_some_and(|ms| ms.len() == members.len() && ms.iter().all(|m| m["alive"] == true))
            };
            if s.len() == members.len() && s.iter().all(alive) {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        ok
    };
    hist.rec(
        "nemesis",
        "recovered",
        json!({"ok": ready && statuses_agree, "ms": healed.elapsed().as_millis() as u64,
               "bound_ms": RECOVERY_BOUND.as_millis() as u64, "members": members,
               "ids": members.iter().map(|s| nemesis.nodes.slot(*s).id).collect::<Vec<_>>()}),
    );

    // Drain: publishers stop; persistent subscribers collect their queues.
    let _ = phase_tx.send(Phase::Drain);
    let want = persistent.len() + 4; // + the clean and shared subscribers
    let drain_start = Instant::now();
    while drained.load(Ordering::SeqCst) < want && drain_start.elapsed() < Duration::from_secs(90) {
        blocking(|| nemesis.reap());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    hist.rec("nemesis", "drain-done", json!({"drained": drained.load(Ordering::SeqCst), "of": want}));

    // Final reads: retained messages and replicated state on every member.
    for slot in &members {
        let addr = nemesis.nodes.slot(*slot).mqtt();
        match workload::read_retained(addr, &format!("reader-{slot}")).await {
            Ok(values) => hist.rec("nemesis", "final-retained", json!({"slot": slot, "values": values})),
            Err(e) => hist.rec("nemesis", "final-retained", json!({"slot": slot, "err": e.to_string()})),
        };
    }
    let conv_start = Instant::now();
    loop {
        let mut state = serde_json::Map::new();
        for slot in &members {
            let (_, body) =
                http_get(nemesis.nodes.slot(*slot).http(), "/metrics", Duration::from_secs(2)).await;
            let vals: Vec<Option<f64>> = STATE_METRICS.iter().map(|m| metric(&body, m)).collect();
            state.insert(slot.to_string(), json!(vals));
        }
        let first = state.values().next().cloned();
        let same = state.values().all(|v| {
            Some(v) == first.as_ref() && v.as_array().is_some_and(|a| a.iter().all(|x| !x.is_null()))
        });
        if same || conv_start.elapsed() > Duration::from_secs(30) {
            hist.rec(
                "nemesis",
                "final-state",
                json!({"converged": same, "ms": conv_start.elapsed().as_millis() as u64,
                "metrics": STATE_METRICS, "nodes": state}),
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let _ = phase_tx.send(Phase::End);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
    }
    blocking(|| nemesis.reap());
    for n in &nemesis.nodes.nodes {
        let text = std::fs::read_to_string(&n.log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("panicked")) {
            hist.rec("nemesis", "panic", json!({"slot": n.slot, "line": line}));
        }
    }
    hist.rec("nemesis", "end", json!({}));
    hist.flush();
    drop(haproxy);
    drop(nemesis);
    Ok(hist_path)
}
