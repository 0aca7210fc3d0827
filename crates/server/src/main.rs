//! The `starling` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use starling_server::config::{self, Config, DEFAULT_TOML};
use starling_server::{admin, run, Listeners};
use tracing_subscriber::EnvFilter;

/// mimalloc rather than glibc's malloc: under durable load (messages held
/// in replicated queues, freed in FIFO order while new ones arrive) glibc's
/// heap fragmented run after run, and its allocator's cost per message
/// doubled within a minute (docs/bench/notes.md, 2026-12-04); mimalloc
/// stays flat. Built with `no_thp`, so that it does not ask the kernel for
/// transparent huge pages: while the heap grew, every fresh page faulted in a
/// 2 MiB huge page that the kernel zeroed on the spot, and durable trials
/// on the three-node bench stalled 50-120 ms at a time (p99 45-94 ms
/// against 8-23 ms without, alternating runs).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "starling", version, about = "Starling: a clustered MQTT broker")]
struct Cli {
    /// More logging: -v debug, -vv trace (RUST_LOG overrides).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Defaults to `serve` with no flags.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Serve(ServeArgs),
    /// Print the default configuration file, with comments.
    GenerateConfig,
    /// Exit 0 if the node's HTTP readiness check passes, 1 otherwise (for
    /// container health checks).
    Healthcheck {
        /// The node's HTTP address.
        #[arg(long, default_value = "127.0.0.1:8080", env = "STARLING_HEALTHCHECK_HTTP")]
        http: String,
        /// Check liveness instead of readiness.
        #[arg(long)]
        live: bool,
    },
    /// Add or update a user in a password file (`-D`: delete), like
    /// mosquitto_passwd. The password is prompted for unless given.
    Passwd {
        /// The password file (created if missing).
        file: PathBuf,
        user: String,
        /// The password (otherwise prompted for, or read from stdin).
        #[arg(long, conflicts_with = "delete")]
        password: Option<String>,
        /// Delete the user.
        #[arg(short = 'D', long = "delete")]
        delete: bool,
    },
    /// Replicated users (`--server`: any node's gRPC address).
    User {
        #[arg(long, global = true, default_value = "127.0.0.1:7000", env = "STARLING_ADMIN_SERVER")]
        server: String,
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Replicated ACL rules, evaluated before the ACL file's, first match wins.
    Acl {
        #[arg(long, global = true, default_value = "127.0.0.1:7000", env = "STARLING_ADMIN_SERVER")]
        server: String,
        #[command(subcommand)]
        command: AclCommand,
    },
    /// Chat in a terminal with the rooms, presence and direct messages of
    /// the chat web app (docs/chat.md). The password comes from
    /// STARLING_CHAT_PASSWORD, or is prompted for.
    Chat {
        /// A node's (or the load balancer's) MQTT address, host:port.
        #[arg(long, default_value = "127.0.0.1:1883", env = "STARLING_CHAT_SERVER")]
        server: String,
        /// Your user name (as created with `starling user add`).
        #[arg(long, short)]
        user: String,
        /// The room to start in.
        #[arg(long, short, default_value = "general")]
        room: String,
        /// Connect with TLS (e.g. to port 8883).
        #[arg(long)]
        tls: bool,
        /// CA certificate (PEM) to trust for --tls; default the system's.
        #[arg(long, requires = "tls")]
        ca: Option<String>,
        /// Send no password (a node that allows anonymous clients).
        #[arg(long)]
        no_password: bool,
    },
    /// Cluster administration: status and membership.
    Cluster {
        /// A node's gRPC address.
        #[arg(long, global = true, default_value = "127.0.0.1:7000", env = "STARLING_ADMIN_SERVER")]
        server: String,
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add or update a user (password prompted for unless given).
    Add {
        name: String,
        #[arg(long)]
        password: Option<String>,
    },
    Remove {
        name: String,
    },
    List,
}

#[derive(Subcommand)]
enum AclCommand {
    /// Add a rule, e.g. `acl add --allow --readwrite --user alice 'chat/#'`.
    Add {
        /// Topic filter; %u and %c stand for the user name and client id.
        topic: String,
        #[arg(long, conflicts_with = "deny", required_unless_present = "deny")]
        allow: bool,
        #[arg(long)]
        deny: bool,
        #[arg(long, conflicts_with_all = ["write", "readwrite"])]
        read: bool,
        #[arg(long, conflicts_with = "readwrite")]
        write: bool,
        #[arg(long)]
        readwrite: bool,
        /// Only for this user.
        #[arg(long, conflicts_with = "client")]
        user: Option<String>,
        /// Only for this client id.
        #[arg(long)]
        client: Option<String>,
        /// Insert at this position (0 = first); default: last.
        #[arg(long)]
        position: Option<u32>,
    },
    /// Remove the rule at INDEX (as listed).
    Remove {
        index: u32,
    },
    List,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Members, roles, leader, term, commit/applied index, lag, liveness.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Add a running node (started with `cluster.bootstrap = false`): it
    /// becomes a learner, catches up, then a voter.
    Add {
        /// The new node's id (`node.id`).
        node_id: u64,
        /// The new node's gRPC address.
        grpc: String,
    },
    /// Drain the node given by --server (its clients are sent to other
    /// nodes) and take it out of the cluster.
    Leave,
    /// Remove a node from the cluster.
    Remove {
        node_id: u64,
        /// Remove even though the node still answers (use for dead nodes;
        /// a live node should `leave`).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args, Default)]
struct ServeArgs {
    /// Configuration file (TOML); see `starling generate-config`.
    #[arg(short, long, env = "STARLING_CONFIG")]
    config: Option<PathBuf>,
    /// MQTT over TCP listen address, or "off" (listeners.mqtt).
    #[arg(long)]
    mqtt_listen: Option<String>,
    /// MQTT over WebSocket listen address, or "off" (listeners.ws).
    #[arg(long)]
    ws_listen: Option<String>,
    /// HTTP listen address for health and metrics, or "off" (listeners.http).
    #[arg(long)]
    http_listen: Option<String>,
    /// Data directory (node.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// This node's id (node.id).
    #[arg(long)]
    node_id: Option<u64>,
    /// gRPC listen address for peers and the admin CLI (cluster.grpc).
    #[arg(long)]
    grpc_listen: Option<String>,
    /// Join the cluster of this member's gRPC address (cluster.join).
    #[arg(long)]
    join: Option<String>,
    /// Do not start a new cluster on an empty data directory; wait to be
    /// added with `starling cluster add` (cluster.bootstrap = false).
    #[arg(long, conflicts_with = "bootstrap")]
    no_bootstrap: bool,
    /// Start a new one-member cluster on an empty data directory (the
    /// default; cluster.bootstrap = true).
    #[arg(long)]
    bootstrap: bool,
    /// Any setting, as table.key=value (repeatable), e.g. --set mqtt.max_inflight=64.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

impl ServeArgs {
    fn overrides(&self) -> Result<Vec<(String, String)>, String> {
        let mut o = Vec::new();
        let quote = |s: &str| format!("{s:?}");
        if let Some(v) = &self.mqtt_listen {
            o.push(("listeners.mqtt".into(), quote(v)));
        }
        if let Some(v) = &self.ws_listen {
            o.push(("listeners.ws".into(), quote(v)));
        }
        if let Some(v) = &self.http_listen {
            o.push(("listeners.http".into(), quote(v)));
        }
        if let Some(v) = &self.data_dir {
            o.push(("node.data_dir".into(), quote(&v.to_string_lossy())));
        }
        if let Some(v) = self.node_id {
            o.push(("node.id".into(), v.to_string()));
        }
        if let Some(v) = &self.grpc_listen {
            o.push(("cluster.grpc".into(), quote(v)));
        }
        if let Some(v) = &self.join {
            o.push(("cluster.join".into(), quote(v)));
        }
        if self.no_bootstrap {
            o.push(("cluster.bootstrap".into(), "false".into()));
        }
        if self.bootstrap {
            o.push(("cluster.bootstrap".into(), "true".into()));
        }
        for s in &self.set {
            let (k, v) = s.split_once('=').ok_or_else(|| format!("--set {s}: expected table.key=value"))?;
            o.push((k.trim().to_string(), v.trim().to_string()));
        }
        Ok(o)
    }
}

/// The log filter: `RUST_LOG` if set, else `-v` (debug) / `-vv` (trace),
/// else `log.level`. openraft's own state dumps stay at warn unless the
/// filter names openraft or asks for trace (`-vv`); `-v` shows its info.
fn log_filter(verbose: u8, level: &str) -> String {
    match verbose {
        0 if level.contains("openraft") => level.to_string(),
        0 => format!("{level},openraft=warn"),
        1 => "debug,openraft=info".to_string(),
        _ => "trace".to_string(),
    }
}

fn init_logging(verbose: u8, default_level: &str) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::new(v),
        _ => EnvFilter::new(log_filter(verbose, default_level)),
    };
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}

fn serve(args: ServeArgs, verbose: u8) -> ExitCode {
    let overrides = match args.overrides() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("starling: {e}");
            return ExitCode::from(2);
        }
    };
    let env = |k: &str| std::env::var(k).ok();
    let config: Config = match config::load(args.config.as_deref(), &env, &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("starling: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(verbose, &config.log.level);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("starling: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let listeners = Listeners::bind(&config).await?;
        run(config, listeners, shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("starling: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn cluster(server: &str, command: ClusterCommand) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("starling: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match command {
            ClusterCommand::Status { json } => admin::status(server, json).await,
            ClusterCommand::Add { node_id, grpc } => admin::add(server, node_id, &grpc).await,
            ClusterCommand::Leave => admin::leave(server).await,
            ClusterCommand::Remove { node_id, force } => admin::remove(server, node_id, force).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("starling: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A minimal HTTP GET: success on a 200 answer within two seconds.
fn healthcheck(addr: &str, path: &str) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let timeout = std::time::Duration::from_secs(2);
    let sock = addr.to_socket_addrs()?.next().ok_or_else(|| anyhow::anyhow!("{addr} resolves to nothing"))?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    match out.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        other => anyhow::bail!("{path}: {}", other.unwrap_or("no answer")),
    }
}

fn finish(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("starling: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn block_on(f: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => finish(rt.block_on(f)),
        Err(e) => finish(Err(e.into())),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => serve(args, cli.verbose),
        Command::GenerateConfig => {
            print!("{DEFAULT_TOML}");
            ExitCode::SUCCESS
        }
        Command::Cluster { server, command } => cluster(&server, command),
        Command::Chat { server, user, room, tls, ca, no_password } => {
            let password = match std::env::var("STARLING_CHAT_PASSWORD") {
                Ok(p) => Some(p),
                Err(_) if no_password => None,
                Err(_) => match rpassword::prompt_password(format!("Password for {user}: ")) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        eprintln!("starling: cannot read the password ({e}); set STARLING_CHAT_PASSWORD or --no-password");
                        return ExitCode::FAILURE;
                    }
                },
            };
            let opts = starling_server::chat::ChatOptions { server, user, password, room, tls, ca };
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => {
                    let result = rt.block_on(starling_server::chat::run(opts));
                    // The stdin reader may still sit in a blocking read.
                    rt.shutdown_background();
                    finish(result)
                }
                Err(e) => finish(Err(e.into())),
            }
        }
        Command::Healthcheck { http, live } => {
            let path = if live { "/health/live" } else { "/health/ready" };
            match healthcheck(&http, path) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("starling: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Passwd { file, user, password, delete } => {
            finish(admin::passwd(&file, &user, password, delete))
        }
        Command::User { server, command } => block_on(async move {
            match command {
                UserCommand::Add { name, password } => {
                    let password = match password {
                        Some(p) => p,
                        None => admin::read_password(&name)?,
                    };
                    admin::user_add(&server, &name, &password).await
                }
                UserCommand::Remove { name } => admin::user_remove(&server, &name).await,
                UserCommand::List => admin::user_list(&server).await,
            }
        }),
        Command::Acl { server, command } => block_on(async move {
            match command {
                AclCommand::Add { topic, allow, deny: _, read, write, readwrite, user, client, position } => {
                    let action = if read {
                        "read"
                    } else if write {
                        "write"
                    } else if readwrite {
                        "readwrite"
                    } else {
                        anyhow::bail!("give one of --read, --write or --readwrite")
                    };
                    let access = if allow { "allow" } else { "deny" };
                    admin::acl_add(&server, access, action, &topic, user, client, position).await
                }
                AclCommand::Remove { index } => admin::acl_remove(&server, index).await,
                AclCommand::List => admin::acl_list(&server).await,
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn openraft_stays_quiet_unless_asked() {
        assert_eq!(log_filter(0, "info"), "info,openraft=warn");
        assert_eq!(log_filter(0, "info,openraft=debug"), "info,openraft=debug");
        assert_eq!(log_filter(1, "info"), "debug,openraft=info");
        assert_eq!(log_filter(2, "info"), "trace");
    }
}
