//! `starling-bench`: a load generator for MQTT brokers. Runs one scenario
//! against one or more broker addresses and reports throughput, loss,
//! duplicates, end-to-end latency (from a timestamp in each payload) and,
//! given broker PIDs, the brokers' CPU time and memory.

mod client;
mod scenario;
mod stats;

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use starling_codec::{ProtocolVersion, QoS};

use crate::client::Transport;
use crate::scenario::{Params, Report, Scenario};

#[derive(Parser)]
#[command(name = "starling-bench", version, about = "Load generator for MQTT brokers")]
struct Cli {
    /// What to measure.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Broker address(es); clients are spread over them round robin.
    #[arg(short, long = "target", default_value = "127.0.0.1:1883")]
    targets: Vec<String>,
    /// Addresses for publishers only (default: --target).
    #[arg(long = "pub-target")]
    pub_targets: Vec<String>,
    /// Addresses for subscribers only (default: --target).
    #[arg(long = "sub-target")]
    sub_targets: Vec<String>,
    #[arg(long, value_enum, default_value = "tcp")]
    transport: Transport,
    /// MQTT version: 3.1.1 or 5.
    #[arg(long = "mqtt", default_value = "3.1.1")]
    mqtt_version: String,
    #[arg(short, long, default_value_t = 0)]
    qos: u8,
    /// Payload bytes (at least 20: timestamp, publisher, sequence).
    #[arg(short, long, default_value_t = 64)]
    payload: usize,
    /// Messages per second per publisher; 0 = as fast as possible.
    #[arg(short, long, default_value_t = 0)]
    rate: u64,
    /// Seconds to publish (idle: seconds to hold the connections).
    #[arg(short, long, default_value_t = 10.0)]
    duration: f64,
    /// Publishers (p2p: pairs; fanin, shared: publishers).
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Subscribers (fanout, shared, retained).
    #[arg(long, default_value_t = 1)]
    subscribers: usize,
    /// Subscribers keep a persistent session (3.1.1 clean session 0, 5.0
    /// session expiry 300 s), which a cluster stores durably for QoS 1/2;
    /// the sessions are ended after the run.
    #[arg(long)]
    persistent: bool,
    /// QoS 1/2 messages each publisher keeps unacknowledged.
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// conn-storm and idle: connections to open.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// conn-storm and idle: connections opened concurrently.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// retained: retained messages to store and fetch.
    #[arg(long, default_value_t = 10_000)]
    retained: usize,
    /// PID(s) of the broker process(es), for CPU time and RSS.
    #[arg(long = "broker-pid")]
    broker_pids: Vec<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// No per-second progress lines.
    #[arg(long)]
    quiet: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

fn resolve(list: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    list.iter()
        .map(|s| {
            s.to_socket_addrs()
                .with_context(|| format!("bad address {s}"))?
                .next()
                .with_context(|| format!("{s} resolves to nothing"))
        })
        .collect()
}

fn print_table(r: &Report) {
    println!("scenario        {} over {}, MQTT {}", r.scenario, r.transport, r.version);
    if r.connections > 0 {
        println!("connections     {}", r.connections);
        if r.connect_rate > 0.0 {
            println!("connect rate    {:.0}/s", r.connect_rate);
            let l = r.connect_latency;
            println!(
                "connect latency p50 {:.0} µs  p99 {:.0} µs  max {:.0} µs",
                l.p50_us, l.p99_us, l.max_us
            );
        }
        if r.rss_per_connection_bytes > 0.0 {
            println!("broker RSS      {:.0} bytes per connection", r.rss_per_connection_bytes);
        }
    } else {
        println!(
            "qos {}  payload {} B  publishers {}  subscribers {}",
            r.qos, r.payload, r.publishers, r.subscribers
        );
        println!("sent            {} ({:.0}/s)", r.sent, r.send_rate);
        println!("received        {} of {} ({:.0}/s)", r.received, r.expected, r.recv_rate);
        println!(
            "lost            {}   duplicates {}   out of order {}",
            r.lost, r.duplicates, r.out_of_order
        );
        let l = r.latency;
        println!(
            "latency         p50 {:.0} µs  p90 {:.0} µs  p99 {:.0} µs  max {:.0} µs",
            l.p50_us, l.p90_us, l.p99_us, l.max_us
        );
        if r.qos > 0 {
            let l = r.ack_latency;
            println!(
                "ack latency     p50 {:.0} µs  p90 {:.0} µs  p99 {:.0} µs  max {:.0} µs",
                l.p50_us, l.p90_us, l.p99_us, l.max_us
            );
        }
    }
    if r.broker.cpu_s > 0.0 || r.broker.peak_rss_kb > 0 {
        println!(
            "broker          {:.2} s CPU ({:.2} µs/msg), RSS {} → {} KiB, peak {} KiB",
            r.broker.cpu_s,
            r.broker.cpu_us_per_msg,
            r.broker.rss_start_kb,
            r.broker.rss_end_kb,
            r.broker.peak_rss_kb
        );
    }
    if r.bench_cpu_s > 0.0 {
        println!(
            "load generator  {:.2} s CPU ({:.0}% of one core)",
            r.bench_cpu_s,
            r.bench_cpu_share * 100.0
        );
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let version = match cli.mqtt_version.as_str() {
        "3.1.1" | "311" | "4" => ProtocolVersion::V311,
        "5" | "5.0" => ProtocolVersion::V5,
        other => anyhow::bail!("--mqtt must be 3.1.1 or 5, not {other}"),
    };
    let qos = QoS::from_u8(cli.qos).context("--qos must be 0, 1 or 2")?;
    let targets = resolve(&cli.targets)?;
    let pub_targets = if cli.pub_targets.is_empty() { targets.clone() } else { resolve(&cli.pub_targets)? };
    let sub_targets = if cli.sub_targets.is_empty() { targets.clone() } else { resolve(&cli.sub_targets)? };
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let run_id = format!("{:x}", std::process::id() ^ nanos);
    let params = Params {
        scenario: cli.scenario,
        pub_targets,
        sub_targets,
        transport: cli.transport,
        version,
        qos,
        payload: cli.payload,
        rate: cli.rate,
        duration: Duration::from_secs_f64(cli.duration),
        publishers: cli.publishers.max(1),
        subscribers: cli.subscribers.max(1),
        inflight: cli.inflight,
        persistent: cli.persistent,
        broker_pids: cli.broker_pids,
        connections: cli.connections,
        concurrency: cli.concurrency,
        retained: cli.retained,
        progress: !cli.quiet && !cli.json,
        run_id,
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(t) = cli.threads {
        rt.worker_threads(t.max(1));
    }
    let report = rt.enable_all().build()?.block_on(scenario::run(params))?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}
