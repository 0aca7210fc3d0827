//! Wiring: bind the listeners, start the cluster node (a one-member
//! cluster by default) and its broker, run until the shutdown future
//! resolves, then stop in order: MQTT listeners, connections, HTTP, gRPC,
//! Raft.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use starling_broker::auth::{acl, password::PasswordFile, AuthService, AuthSettings};
use starling_broker::metrics::Metrics;
use starling_cluster::types::NodeInfo;
use starling_cluster::{ClusterConfig, ClusterNode};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::config::{listen_addr, Config};
use crate::listener::{accept_loop, Transport};

/// Bound sockets, so callers (and tests, with port 0) choose addresses.
#[derive(Debug, Default)]
pub struct Listeners {
    pub mqtt: Option<TcpListener>,
    pub ws: Option<TcpListener>,
    pub http: Option<TcpListener>,
    pub grpc: Option<TcpListener>,
    pub mqtts: Option<TcpListener>,
    pub wss: Option<TcpListener>,
}

/// The addresses actually bound.
#[derive(Debug, Default, Clone, Copy)]
pub struct Addresses {
    pub mqtt: Option<SocketAddr>,
    pub ws: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub grpc: Option<SocketAddr>,
    pub mqtts: Option<SocketAddr>,
    pub wss: Option<SocketAddr>,
}

async fn bind(key: &str, value: &str) -> anyhow::Result<Option<TcpListener>> {
    match listen_addr(key, value)? {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (`{key}`)"))?;
            Ok(Some(l))
        }
        None => Ok(None),
    }
}

impl Listeners {
    pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let l = &config.listeners;
        let tls = config.tls.enabled();
        Ok(Listeners {
            mqtt: bind("listeners.mqtt", &l.mqtt).await?,
            ws: bind("listeners.ws", &l.ws).await?,
            http: bind("listeners.http", &l.http).await?,
            grpc: bind("cluster.grpc", &config.cluster.grpc).await?,
            mqtts: if tls { bind("listeners.mqtts", &l.mqtts).await? } else { None },
            wss: if tls { bind("listeners.wss", &l.wss).await? } else { None },
        })
    }

    pub fn addresses(&self) -> Addresses {
        let a = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
        Addresses {
            mqtt: a(&self.mqtt),
            ws: a(&self.ws),
            http: a(&self.http),
            grpc: a(&self.grpc),
            mqtts: a(&self.mqtts),
            wss: a(&self.wss),
        }
    }
}

/// The host part others use for an address bound to `a`: the machine's
/// hostname when bound to every interface.
fn advertised(configured: &str, bound: Option<SocketAddr>) -> String {
    if !configured.is_empty() {
        return configured.to_string();
    }
    match bound {
        Some(a) if a.ip().is_unspecified() => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "localhost".into());
            format!("{host}:{}", a.port())
        }
        Some(a) => a.to_string(),
        None => String::new(),
    }
}

/// Runs a node until `shutdown` resolves.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.node.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.node.data_dir.display()))?;
    let addrs = listeners.addresses();
    let c = &config.cluster;
    let advertise = NodeInfo {
        grpc: advertised(&c.advertise_grpc, addrs.grpc),
        mqtt: advertised(&c.advertise_mqtt, addrs.mqtt),
        http: advertised(&c.advertise_http, addrs.http),
    };
    let cluster_config = ClusterConfig {
        node_id: starling_broker::ids::NodeId(config.node.id),
        data_dir: config.node.data_dir.clone(),
        advertise,
        join: (!c.join.is_empty()).then(|| c.join.clone()),
        bootstrap: c.bootstrap,
        heartbeat: Duration::from_millis(c.heartbeat_ms),
        election_timeout: Duration::from_millis(c.election_timeout_ms),
        node_down_after: Duration::from_secs(c.node_down_after_secs),
        snapshot_every: c.snapshot_every,
        write_timeout: Duration::from_millis(c.write_timeout_ms),
        bulk_nice: c.bulk_nice,
    };
    let grpc = listeners.grpc.context("the gRPC listener (cluster.grpc) is required")?;
    let auth = Arc::new(AuthService::new(AuthSettings {
        allow_anonymous: config.auth.allow_anonymous,
        failure_threshold: config.auth.failure_threshold,
        failure_delay: Duration::from_millis(config.auth.failure_delay_ms),
        use_identity_as_username: config.auth.use_identity_as_username,
    }));
    let file_users = load_auth_files(&config, &auth)?;
    let acceptor = if config.tls.enabled() { Some(crate::tls::acceptor(&config.tls)?) } else { None };
    let (stop_tx, stop_rx) = watch::channel(false);
    let (grpc_stop_tx, grpc_stop_rx) = watch::channel(false);
    let node = ClusterNode::start(
        cluster_config,
        config.mqtt.clone(),
        Arc::new(Metrics::default()),
        auth.clone(),
        grpc,
        grpc_stop_rx,
    )
    .await?;
    node.set_file_users(file_users);
    tokio::spawn(reload_on_sighup(config.clone(), auth.clone(), node.clone(), stop_rx.clone()));
    let broker = node.broker.clone();

    let show = |a: Option<SocketAddr>| a.map_or_else(|| "off".to_string(), |a| a.to_string());
    tracing::info!(
        node = config.node.id,
        mqtt = %show(addrs.mqtt),
        ws = %show(addrs.ws),
        http = %show(addrs.http),
        grpc = %show(addrs.grpc),
        mqtts = %show(addrs.mqtts),
        wss = %show(addrs.wss),
        "starling listening"
    );

    let limit = Arc::new(Semaphore::new(config.listeners.max_connections));
    let mut tasks = Vec::new();
    if let Some(l) = listeners.mqtt {
        tasks.push(tokio::spawn(accept_loop(
            l,
            Transport::Tcp,
            broker.clone(),
            limit.clone(),
            stop_rx.clone(),
        )));
    }
    if let Some(l) = listeners.ws {
        let t = Transport::WebSocket { path: config.listeners.ws_path.clone() };
        tasks.push(tokio::spawn(accept_loop(l, t, broker.clone(), limit.clone(), stop_rx.clone())));
    }
    if let (Some(l), Some(a)) = (listeners.mqtts, acceptor.clone()) {
        let t = Transport::Tls { acceptor: a };
        tasks.push(tokio::spawn(accept_loop(l, t, broker.clone(), limit.clone(), stop_rx.clone())));
    }
    if let (Some(l), Some(a)) = (listeners.wss, acceptor) {
        let t = Transport::SecureWebSocket { acceptor: a, path: config.listeners.ws_path.clone() };
        tasks.push(tokio::spawn(accept_loop(l, t, broker.clone(), limit.clone(), stop_rx.clone())));
    }
    let chat = config.listeners.chat.then(|| crate::http::ChatSettings {
        ws_port: addrs.ws.map(|a| a.port()),
        wss_port: addrs.wss.map(|a| a.port()),
        ws_path: config.listeners.ws_path.clone(),
    });
    let http = listeners.http.map(|l| {
        let mut stop = stop_rx.clone();
        let node = node.clone();
        tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.changed().await;
            };
            if let Err(e) = crate::http::serve(l, node, chat, stopped).await {
                tracing::error!(error = %e, "HTTP listener failed");
            }
        })
    });
    if config.mqtt.sys_interval_secs > 0 {
        let interval = Duration::from_secs(config.mqtt.sys_interval_secs);
        tokio::spawn(starling_broker::sys::run_sys_publisher(broker.clone(), interval));
    }

    let failed = tokio::select! {
        _ = shutdown => None,
        why = node.core_failed() => {
            tracing::error!(
                error = %why,
                "the Raft core stopped (a storage error such as a full disk, or a fault): shutting down so that the node is restarted"
            );
            Some(why)
        }
    };
    tracing::info!("shutting down: closing listeners and connections");
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    broker.shutdown();
    let grace = Duration::from_secs(config.listeners.shutdown_grace_secs);
    if tokio::time::timeout(grace, broker.wait_idle()).await.is_err() {
        tracing::warn!(left = broker.live_connections(), "connections still open after the grace period");
    }
    if let Some(h) = http {
        let _ = h.await;
    }
    // gRPC before Raft: a Raft core must not be shut down under live RPCs.
    let _ = grpc_stop_tx.send(true);
    tokio::time::sleep(Duration::from_millis(100)).await;
    node.shutdown().await;
    tracing::info!("stopped");
    if let Some(why) = failed {
        anyhow::bail!(
            "stopped because the Raft core failed: {why}. Free or fix the disk under the data directory and start \
             the node again: it rejoins with its data"
        );
    }
    Ok(())
}

/// Loads the password and ACL files into `auth`; returns the file's user
/// names. Errors name the setting.
fn load_auth_files(config: &Config, auth: &AuthService) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    if !config.auth.password_file.is_empty() {
        let f = PasswordFile::load(std::path::Path::new(&config.auth.password_file))
            .map_err(|e| anyhow::anyhow!("`auth.password_file`: {e}"))?;
        names = f.users.keys().cloned().collect();
        auth.set_file_users(f.users);
    }
    if !config.auth.acl_file.is_empty() {
        let path = &config.auth.acl_file;
        let text =
            std::fs::read_to_string(path).with_context(|| format!("`auth.acl_file`: cannot read {path}"))?;
        let rules = acl::parse_rules(&text).map_err(|e| anyhow::anyhow!("`auth.acl_file` {path}: {e}"))?;
        auth.set_file_rules(rules);
    }
    Ok(names)
}

/// SIGHUP reloads the password and ACL files; a file that fails to load
/// leaves the previous contents in force.
async fn reload_on_sighup(
    config: Config,
    auth: Arc<AuthService>,
    node: Arc<ClusterNode>,
    mut stop: watch::Receiver<bool>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
    loop {
        tokio::select! {
            _ = hup.recv() => {}
            _ = stop.changed() => return,
        }
        match load_auth_files(&config, &auth) {
            Ok(names) => {
                tracing::info!(
                    users = names.len(),
                    rules = auth.rules().len(),
                    "SIGHUP: password and ACL files reloaded"
                );
                node.set_file_users(names);
            }
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: reload failed; keeping the previous users and rules")
            }
        }
    }
}
