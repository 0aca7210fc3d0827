//! Measurements: per-subscriber delivery tracking (loss, duplicates,
//! latency from the timestamp in the payload) and process CPU/RSS from
//! /proc.

use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Bytes of the header every benchmark payload starts with:
/// send time (ns since the run's epoch), publisher index, sequence number.
pub const HEADER: usize = 20;

pub fn encode_header(buf: &mut [u8], epoch: Instant, publisher: u32, seq: u64) {
    let ns = epoch.elapsed().as_nanos() as u64;
    buf[0..8].copy_from_slice(&ns.to_be_bytes());
    buf[8..12].copy_from_slice(&publisher.to_be_bytes());
    buf[12..20].copy_from_slice(&seq.to_be_bytes());
}

pub fn decode_header(buf: &[u8]) -> Option<(u64, u32, u64)> {
    if buf.len() < HEADER {
        return None;
    }
    let ns = u64::from_be_bytes(buf[0..8].try_into().ok()?);
    let publisher = u32::from_be_bytes(buf[8..12].try_into().ok()?);
    let seq = u64::from_be_bytes(buf[12..20].try_into().ok()?);
    Some((ns, publisher, seq))
}

/// What one subscriber saw.
pub struct Tracker {
    pub latency: Histogram<u64>,
    pub received: u64,
    pub duplicates: u64,
    /// Per publisher, a bitset of sequence numbers seen.
    seen: Vec<Vec<u64>>,
    pub out_of_order: u64,
    last_seq: Vec<Option<u64>>,
    pub last_receive: Option<Instant>,
}

impl Tracker {
    pub fn new(publishers: usize) -> Tracker {
        Tracker {
            latency: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds"),
            received: 0,
            duplicates: 0,
            seen: vec![Vec::new(); publishers],
            out_of_order: 0,
            last_seq: vec![None; publishers],
            last_receive: None,
        }
    }

    pub fn record(&mut self, payload: &[u8], epoch: Instant, now: Instant) {
        let Some((sent_ns, publisher, seq)) = decode_header(payload) else { return };
        let now_ns = now.duration_since(epoch).as_nanos() as u64;
        let _ = self.latency.record(now_ns.saturating_sub(sent_ns).max(1));
        self.received += 1;
        self.last_receive = Some(now);
        let p = publisher as usize;
        if p >= self.seen.len() {
            return;
        }
        let bits = &mut self.seen[p];
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        if bits[word] & (1 << bit) != 0 {
            self.duplicates += 1;
        } else {
            bits[word] |= 1 << bit;
        }
        if let Some(last) = self.last_seq[p] {
            if seq < last {
                self.out_of_order += 1;
            }
        }
        self.last_seq[p] = Some(seq.max(self.last_seq[p].unwrap_or(0)));
    }

    /// Distinct messages seen from `publisher`.
    pub fn unique_from(&self, publisher: usize) -> u64 {
        self.seen.get(publisher).map_or(0, |b| b.iter().map(|w| u64::from(w.count_ones())).sum())
    }

    pub fn unique(&self) -> u64 {
        (0..self.seen.len()).map(|p| self.unique_from(p)).sum()
    }

    /// ORs another tracker's sets into this one (shared subscriptions).
    pub fn merge_union(&mut self, other: &Tracker) {
        for (mine, theirs) in self.seen.iter_mut().zip(&other.seen) {
            if mine.len() < theirs.len() {
                mine.resize(theirs.len(), 0);
            }
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a |= *b;
            }
        }
        self.received += other.received;
        let _ = self.latency.add(&other.latency);
        self.last_receive = self.last_receive.max(other.last_receive);
    }
}

#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Latency {
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

impl Latency {
    pub fn from_hist(h: &Histogram<u64>) -> Latency {
        let us = |v: u64| v as f64 / 1000.0;
        Latency {
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            max_us: us(h.max()),
        }
    }
}

/// CPU time and memory of a process, from /proc.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcSample {
    pub cpu_s: f64,
    pub rss_kb: u64,
    pub peak_rss_kb: u64,
}

pub fn proc_sample(pid: &str) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ on Linux
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| {
        status.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
    };
    Some(ProcSample { cpu_s: (utime + stime) / ticks, rss_kb: kb("VmRSS:")?, peak_rss_kb: kb("VmHWM:")? })
}

/// The broker's resource use over a run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct BrokerUsage {
    pub cpu_s: f64,
    /// Broker CPU time per message delivered.
    pub cpu_us_per_msg: f64,
    pub rss_start_kb: u64,
    pub rss_end_kb: u64,
    pub peak_rss_kb: u64,
}
