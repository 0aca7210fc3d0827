//! The test network: a bridge in the host's namespace and one network
//! namespace per node slot, joined by veth pairs. Faults are iptables rules
//! and token-bucket qdiscs inside the nodes' namespaces, so they only ever
//! touch this harness's own namespaces and addresses (10.213.0.0/24).
//!
//! Nothing here is left behind: `Net::drop` deletes the namespaces, the
//! bridge and the one FORWARD rule it added, and `Net::create` first removes
//! what an earlier run that was killed may have left.

use std::process::Command;

use anyhow::{bail, Context, Result};

pub const BRIDGE: &str = "stfbr0";
pub const HOST_IP: &str = "10.213.0.1";
/// Node slots 1..=MAX_SLOTS (three founders plus room for added nodes).
pub const MAX_SLOTS: usize = 5;

pub fn ns_name(slot: usize) -> String {
    format!("stf-n{slot}")
}

pub fn slot_ip(slot: usize) -> String {
    format!("10.213.0.{}", 10 + slot)
}

/// Runs a command; an error names it and carries its stderr.
pub fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("run {}", args[0]))?;
    if !out.status.success() {
        bail!("`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like `sh` inside a node's namespace.
pub fn in_ns(slot: usize, args: &[&str]) -> Result<String> {
    let ns = ns_name(slot);
    let mut all = vec!["ip", "netns", "exec", ns.as_str()];
    all.extend_from_slice(args);
    sh(&all)
}

#[derive(Debug)]
pub struct Net {
    forward_rule: bool,
}

const FORWARD_RULE: [&str; 6] = ["-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"];

impl Net {
    pub fn create() -> Result<Net> {
        if !std::path::Path::new("/proc/self/ns/net").exists() {
            bail!("network namespaces are not available");
        }
        cleanup();
        sh(&["ip", "link", "add", BRIDGE, "type", "bridge"]).context("create the bridge (needs root)")?;
        sh(&["ip", "addr", "add", &format!("{HOST_IP}/24"), "dev", BRIDGE])?;
        sh(&["ip", "link", "set", BRIDGE, "up"])?;
        // Docker sets the FORWARD policy to DROP and bridged traffic passes
        // through iptables: let this bridge's own traffic through.
        let mut rule = vec!["iptables", "-I", "FORWARD"];
        rule.extend_from_slice(&FORWARD_RULE);
        let forward_rule = sh(&rule).is_ok();
        for slot in 1..=MAX_SLOTS {
            let ns = ns_name(slot);
            let host_if = format!("stf{slot}h");
            let node_if = format!("stf{slot}n");
            sh(&["ip", "netns", "add", &ns])?;
            sh(&["ip", "link", "add", &host_if, "type", "veth", "peer", "name", &node_if])?;
            sh(&["ip", "link", "set", &node_if, "netns", &ns])?;
            sh(&["ip", "link", "set", &host_if, "master", BRIDGE])?;
            sh(&["ip", "link", "set", &host_if, "up"])?;
            in_ns(slot, &["ip", "link", "set", "lo", "up"])?;
            in_ns(slot, &["ip", "link", "set", &node_if, "name", "eth0"])?;
            in_ns(slot, &["ip", "addr", "add", &format!("{}/24", slot_ip(slot)), "dev", "eth0"])?;
            in_ns(slot, &["ip", "link", "set", "eth0", "up"])?;
        }
        Ok(Net { forward_rule })
    }

    /// Drops every packet from `from` to `to` (one direction).
    pub fn block(&self, from: usize, to: usize) -> Result<()> {
        in_ns(from, &["iptables", "-A", "OUTPUT", "-d", &slot_ip(to), "-j", "DROP"]).map(|_| ())
    }

    /// Drops a random share `p` of the packets from `from` to `to`.
    pub fn lossy(&self, from: usize, to: usize, p: f64) -> Result<()> {
        let p = format!("{p:.2}");
        in_ns(
            from,
            &[
                "iptables",
                "-A",
                "OUTPUT",
                "-d",
                &slot_ip(to),
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &p,
                "-j",
                "DROP",
            ],
        )
        .map(|_| ())
    }

    /// Limits everything the node sends to `kbit` kbit/s (a token bucket with
    /// a queue of up to 500 ms: a slow link, delays under load).
    pub fn slow(&self, slot: usize, kbit: u32) -> Result<()> {
        let rate = format!("{kbit}kbit");
        in_ns(
            slot,
            &[
                "tc", "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", &rate, "burst", "16kb",
                "latency", "500ms",
            ],
        )
        .map(|_| ())
    }

    /// Removes every rule and qdisc from the node's namespace.
    pub fn heal(&self, slot: usize) -> Result<()> {
        in_ns(slot, &["iptables", "-F", "OUTPUT"])?;
        let _ = in_ns(slot, &["tc", "qdisc", "del", "dev", "eth0", "root"]);
        Ok(())
    }

    pub fn heal_all(&self) -> Result<()> {
        for slot in 1..=MAX_SLOTS {
            self.heal(slot)?;
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if self.forward_rule {
            let mut rule = vec!["iptables", "-D", "FORWARD"];
            rule.extend_from_slice(&FORWARD_RULE);
            let _ = sh(&rule);
        }
        cleanup();
    }
}

/// Removes this harness's namespaces and bridge, wherever they came from.
fn cleanup() {
    for slot in 1..=MAX_SLOTS {
        let _ = sh(&["ip", "netns", "del", &ns_name(slot)]);
        let _ = sh(&["ip", "link", "del", &format!("stf{slot}h")]);
    }
    let _ = sh(&["ip", "link", "del", BRIDGE]);
}
