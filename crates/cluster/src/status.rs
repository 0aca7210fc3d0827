//! What an operator sees of the cluster side: `starling cluster status`
//! and the Prometheus lines of `/metrics` (Raft progress, replication lag,
//! forwarding links, corrupt peer input).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::forwarder::LinkReport;
use crate::node::ClusterNode;
use crate::pb::admin::{MemberStatus, StatusResponse};
use crate::types::NodeId;

/// Counters of what peers sent.
#[derive(Debug, Default)]
pub struct PeerStats {
    /// Forwarded or handed-over messages refused as corrupt.
    pub corrupt: AtomicU64,
    /// Durable groups this node (a follower) committed through its submit
    /// stream to the leader.
    pub submit_streamed: AtomicU64,
    /// Durable groups sent as forwarded writes instead (a leader without
    /// the `Submit` RPC).
    pub submit_forwarded: AtomicU64,
}

impl ClusterNode {
    pub fn status(&self) -> StatusResponse {
        let m = self.raft.metrics().borrow().clone();
        let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
        let down = self.sm.with_state(|s| s.down().clone());
        let last = m.last_log_index.unwrap_or(0);
        let replication = m.replication.clone().unwrap_or_default();
        let members = self
            .membership
            .members()
            .into_iter()
            .map(|(id, n)| {
                let role = if Some(id) == m.current_leader {
                    "leader"
                } else if voters.contains(&id) {
                    "voter"
                } else {
                    "learner"
                };
                let matched = if id == self.node_id {
                    Some(last)
                } else {
                    replication.get(&id).map(|l| l.map_or(0, |l| l.index))
                };
                MemberStatus {
                    id: id.0,
                    grpc_addr: n.grpc,
                    mqtt_addr: n.mqtt,
                    http_addr: n.http,
                    role: role.into(),
                    matched_index: matched.unwrap_or(0),
                    alive: !down.contains(&id),
                    lag: matched.map_or(0, |x| last.saturating_sub(x)),
                }
            })
            .collect();
        let g = self.broker.gauges();
        let q = self.queues.raft.metrics().borrow().clone();
        StatusResponse {
            node_id: self.node_id.0,
            cluster_id: self.peers.cluster_id().get().to_string(),
            leader_id: m.current_leader.map_or(0, |l| l.0),
            has_leader: m.current_leader.is_some(),
            term: m.current_term,
            commit_index: self.committed.load(Ordering::Relaxed),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            members,
            sessions: g.sessions,
            subscriptions: g.subscriptions,
            retained: g.retained,
            ready: self.is_ready(),
            queue_leader_id: q.current_leader.map_or(0, |l| l.0),
            queue_voters: q.membership_config.membership().voter_ids().count() as u64,
            queue_commit_index: self.queues.committed.load(Ordering::Relaxed),
            queued_messages: g.durable_messages,
            removed: self.readiness.is_removed(),
        }
    }

    /// Prometheus text for the cluster side.
    pub fn render_metrics(&self) -> String {
        let st = self.status();
        let relaxed = Ordering::Relaxed;
        let mut s = String::new();
        let mut one = |name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        one("starling_raft_term", "Current Raft term.", "gauge", st.term);
        one("starling_raft_leader", "Node id of the current leader (0: none).", "gauge", st.leader_id);
        one(
            "starling_raft_is_leader",
            "1 on the leader.",
            "gauge",
            u64::from(st.leader_id == self.node_id.0),
        );
        one("starling_raft_commit_index", "Highest committed log index.", "gauge", st.commit_index);
        one("starling_raft_applied_index", "Highest applied log index.", "gauge", st.applied_index);
        one("starling_ready", "1 when the node accepts clients.", "gauge", u64::from(st.ready));
        one(
            "starling_removed",
            "1 once a member said this node was removed from the cluster (stop it).",
            "gauge",
            u64::from(st.removed),
        );
        one(
            "starling_raft_applied_entries_total",
            "Log entries applied to the state machine.",
            "counter",
            self.sm.applied_entries.load(relaxed),
        );
        one(
            "starling_peer_corrupt_total",
            "Messages from peers refused as corrupt (forwarded or handed over).",
            "counter",
            self.stats.corrupt.load(relaxed),
        );
        one(
            "starling_durable_submit_streamed_total",
            "Groups of durable messages this node committed through its ordered submit stream to the leader.",
            "counter",
            self.stats.submit_streamed.load(relaxed),
        );
        one(
            "starling_durable_submit_forwarded_total",
            "Groups of durable messages sent to a leader without the submit stream, one at a time.",
            "counter",
            self.stats.submit_forwarded.load(relaxed),
        );
        one(
            "starling_queue_group_leader",
            "Node id of the durable queues' group's leader (0: none).",
            "gauge",
            st.queue_leader_id,
        );
        one(
            "starling_queue_group_voters",
            "Voters of the durable queues' group (follows the cluster's voters).",
            "gauge",
            st.queue_voters,
        );
        one(
            "starling_queue_group_commit_index",
            "Highest committed index of the durable queues' group's log.",
            "gauge",
            st.queue_commit_index,
        );
        one(
            "starling_queue_group_applied_index",
            "Highest applied index of the durable queues' group's log.",
            "gauge",
            self.queues.sm.applied_index(),
        );
        let _ = writeln!(
            s,
            "# HELP starling_raft_apply_seconds_total Time spent applying entries (divide by entries for the mean apply latency).\n# TYPE starling_raft_apply_seconds_total counter\nstarling_raft_apply_seconds_total {:.6}",
            self.sm.apply_nanos.load(relaxed) as f64 / 1e9
        );
        let _ = writeln!(
            s,
            "# HELP starling_queue_group_apply_seconds_total Time spent applying the durable queues' group's entries.\n# TYPE starling_queue_group_apply_seconds_total counter\nstarling_queue_group_apply_seconds_total {:.6}",
            self.queues.sm.apply_nanos.load(relaxed) as f64 / 1e9
        );
        let lags: Vec<(String, u64)> = st.members.iter().map(|m| (m.id.to_string(), m.lag)).collect();
        labelled(
            &mut s,
            "starling_raft_replication_lag",
            "Entries a member is behind (leader's view).",
            "node",
            &lags,
        );
        self.render_links(&mut s);
        s
    }

    fn render_links(&self, s: &mut String) {
        type Read = fn(&LinkReport) -> u64;
        let links = self.forwarder.report();
        let series: [(&str, &str, Read); 5] = [
            ("starling_forward_messages_total", "Messages forwarded to a peer.", |r| r.messages),
            ("starling_forward_bytes_total", "Payload bytes forwarded to a peer.", |r| r.bytes),
            (
                "starling_forward_dropped_total",
                "Messages for a peer dropped (queue full or peer down).",
                |r| r.dropped,
            ),
            ("starling_forward_queue_depth", "Messages waiting for a peer's stream.", |r| r.queued as u64),
            ("starling_forward_connected", "1 while the stream to a peer is open.", |r| {
                u64::from(r.connected)
            }),
        ];
        for (name, help, read) in series {
            let values: Vec<(String, u64)> = links.iter().map(|r| (r.node.to_string(), read(r))).collect();
            labelled(s, name, help, "peer", &values);
        }
    }
}

/// One metric with a value per label value.
fn labelled(s: &mut String, name: &str, help: &str, label: &str, values: &[(String, u64)]) {
    let kind = if name.ends_with("_total") { "counter" } else { "gauge" };
    let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (v, n) in values {
        let _ = writeln!(s, "{name}{{{label}=\"{v}\"}} {n}");
    }
}
