//! `starling-faults`: randomized, seeded fault schedules against a real
//! three-node Starling cluster (local processes in network namespaces,
//! HAProxy in front), a recorded workload of real MQTT clients, and a
//! checker over the recorded history. See docs/reliability.md.
//!
//! Needs root (network namespaces, iptables, tmpfs mounts) and touches only
//! its own namespaces, the 10.213.0.0/24 bridge it creates and 127.0.0.1.

mod check;
mod client;
mod history;
mod net;
mod nodes;
mod rng;
mod run;
mod schedule;
mod workload;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;

use crate::schedule::Fault;

#[derive(Parser)]
#[command(
    name = "starling-faults",
    version,
    about = "Seeded fault schedules against a Starling cluster, checked"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run schedules: seed, seed+1, ... each for `--duration` seconds of
    /// faults, until `--count` runs or `--minutes` have passed.
    Run {
        /// The first seed (a run's seed reproduces its schedule).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Seconds of faults per run (warm-up, heal and checks come on top).
        #[arg(long, default_value_t = 60)]
        duration: u64,
        /// Number of runs.
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Exactly these seeds (comma-separated; overrides --seed/--count).
        #[arg(long, value_delimiter = ',')]
        seeds: Vec<u64>,
        /// Keep starting runs until this many minutes have passed (overrides --count).
        #[arg(long)]
        minutes: Option<u64>,
        /// Only these fault kinds (comma-separated; default all).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// The `starling` binary.
        #[arg(long, default_value = "target/debug/starling")]
        bin: PathBuf,
        /// Where histories, node logs and results go.
        #[arg(long, default_value = "target/faults")]
        out: PathBuf,
        /// Keep the history and logs of runs that passed too.
        #[arg(long)]
        keep: bool,
    },
    /// Check a recorded history again.
    Check { history: PathBuf },
    /// A Markdown table of a results file (`<out>/results.jsonl`): one row
    /// per run, then the totals.
    Summary { results: PathBuf },
    /// Print the schedule of a seed.
    Schedule {
        #[arg(long)]
        seed: u64,
        #[arg(long, default_value_t = 60)]
        duration: u64,
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
}

fn parse_only(only: &[String]) -> Result<Vec<Fault>> {
    only.iter()
        .map(|name| {
            Fault::ALL.iter().copied().find(|f| f.name() == name).with_context(|| {
                format!("unknown fault {name:?}; one of {}", Fault::ALL.map(|f| f.name()).join(", "))
            })
        })
        .collect()
}

/// One row per run and a total: seed, fault seconds, faults by kind,
/// operations checked, anomalies.
fn summary(runs: &[serde_json::Value]) -> String {
    use std::collections::BTreeMap;
    use std::fmt::Write;
    let mut out = String::from(
        "| seed | faults (s) | faults injected | acknowledged publishes | deliveries checked | anomalies |\n| --- | --- | --- | --- | --- | --- |\n",
    );
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    let (mut secs, mut acked, mut checked, mut anomalies) = (0, 0, 0, 0);
    let count = |v: &serde_json::Value| -> BTreeMap<String, u64> {
        v.as_object()
            .map(|o| o.iter().map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0))).collect())
            .unwrap_or_default()
    };
    for r in runs {
        let faults = count(&r["faults"]);
        let stats = count(&r["stats"]);
        let anom = count(&r["anomalies"]);
        let ok = stats.get("publish_ok").copied().unwrap_or(0);
        let chk = stats.get("checked_persistent_messages").copied().unwrap_or(0)
            + stats.get("checked_clean_messages").copied().unwrap_or(0)
            + stats.get("probes_delivered").copied().unwrap_or(0);
        let n_anom: u64 = anom.values().sum();
        for (k, n) in &faults {
            *kinds.entry(k.clone()).or_default() += n;
        }
        secs += r["fault_seconds"].as_u64().unwrap_or(0);
        acked += ok;
        checked += chk;
        anomalies += n_anom;
        let f = faults.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ");
        let a = if anom.is_empty() {
            "0".to_string()
        } else {
            anom.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
        };
        let _ = writeln!(out, "| {} | {} | {f} | {ok} | {chk} | {a} |", r["seed"], r["fault_seconds"]);
    }
    let f = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ");
    let _ = writeln!(
        out,
        "| **{} runs** | **{secs}** | {f} | **{acked}** | **{checked}** | **{anomalies}** |",
        runs.len()
    );
    out
}

/// Unmounts what an interrupted run left mounted under `dir`.
fn unmount_under(dir: &std::path::Path) {
    let Ok(dir) = std::fs::canonicalize(dir) else { return };
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for m in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)) {
        if std::path::Path::new(m).starts_with(&dir) {
            let _ = std::process::Command::new("umount").arg(m).status();
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { history } => {
            let report = check::check(&history::load(&history)?);
            print!("{}", report.render());
            if report.anomaly_count() > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Summary { results } => {
            print!("{}", summary(&history::load(&results)?));
            Ok(())
        }
        Command::Schedule { seed, duration, only } => {
            for step in schedule::generate(seed, duration * 1000, &parse_only(&only)?) {
                println!("{step}");
            }
            Ok(())
        }
        Command::Run { seed, duration, count, minutes, only, bin, out, keep, seeds } => {
            let only = parse_only(&only)?;
            let bin = std::fs::canonicalize(&bin)
                .with_context(|| format!("{} (build it: cargo build --bin starling)", bin.display()))?;
            std::fs::create_dir_all(&out)?;
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            let started = Instant::now();
            let mut failed = Vec::new();
            let mut runs = 0u64;
            let mut next = seed;
            loop {
                let more = match minutes {
                    Some(m) => started.elapsed().as_secs() < m * 60,
                    None if !seeds.is_empty() => (runs as usize) < seeds.len(),
                    None => runs < count,
                };
                if !more {
                    break;
                }
                let s = if seeds.is_empty() { next } else { seeds[runs as usize % seeds.len()] };
                runs += 1;
                next += 1;
                let steps = schedule::generate(s, duration * 1000, &only);
                let dir = out.join(format!("seed-{s}"));
                unmount_under(&dir);
                let _ = std::fs::remove_dir_all(&dir);
                println!("== seed {s}: {} faults over {duration} s", steps.len());
                let opts = run::RunOptions {
                    seed: s,
                    bin: bin.clone(),
                    out: dir.clone(),
                    steps,
                    fault_ms: duration * 1000,
                };
                let t0 = Instant::now();
                // Interrupted (Ctrl-C, SIGTERM): the run is dropped, which
                // stops the nodes and removes the namespaces and mounts.
                let hist = rt.block_on(async {
                    use tokio::signal::unix::{signal, SignalKind};
                    let mut term = signal(SignalKind::terminate())?;
                    tokio::select! {
                        r = run::run(opts) => r,
                        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
                        _ = term.recv() => bail!("terminated"),
                    }
                })?;
                let report = check::check(&history::load(&hist)?);
                let text = report.render();
                print!("{text}");
                std::fs::write(dir.join("report.txt"), &text)?;
                let result = json!({
                    "seed": s, "fault_seconds": duration, "wall_seconds": t0.elapsed().as_secs(),
                    "faults": report.faults, "stats": report.stats,
                    "anomalies": report.anomalies.iter().map(|(k, v)| (k.clone(), v.len())).collect::<std::collections::BTreeMap<_, _>>(),
                });
                let mut f =
                    std::fs::OpenOptions::new().create(true).append(true).open(out.join("results.jsonl"))?;
                use std::io::Write;
                writeln!(f, "{result}")?;
                if report.anomaly_count() > 0 {
                    println!("   seed {s} FAILED: history and node logs kept in {}", dir.display());
                    failed.push(s);
                } else if !keep {
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
            if !failed.is_empty() {
                bail!("anomalies in the runs of seeds {failed:?} (histories in {})", out.display());
            }
            println!("== {runs} run(s) without anomalies");
            Ok(())
        }
    }
}
