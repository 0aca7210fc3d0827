//! `starling cluster ...`: the admin CLI, a gRPC client of a node's admin
//! service.

use std::time::Duration;

use anyhow::Context;
use starling_cluster::pb::admin::admin_client::AdminClient;
use starling_cluster::pb::admin::{
    AddNodeRequest, LeaveRequest, RemoveNodeRequest, StatusRequest, StatusResponse,
};
use tonic::transport::{Channel, Endpoint};

async fn connect(server: &str) -> anyhow::Result<AdminClient<Channel>> {
    let ch = Endpoint::from_shared(format!("http://{server}"))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(120))
        .connect()
        .await
        .with_context(|| format!("cannot reach the admin service at {server} (--server)"))?;
    Ok(AdminClient::new(ch))
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

pub async fn status(server: &str, json: bool) -> anyhow::Result<()> {
    let mut c = connect(server).await?;
    let s = c.status(StatusRequest {}).await.map_err(status_error)?.into_inner();
    if json {
        println!("{}", status_json(&s));
    } else {
        print!("{}", status_table(&s));
    }
    Ok(())
}

pub fn status_table(s: &StatusResponse) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let leader = if s.has_leader { s.leader_id.to_string() } else { "none".into() };
    let _ = writeln!(out, "cluster   {}", s.cluster_id);
    let _ = writeln!(out, "node      {} ({})", s.node_id, if s.ready { "ready" } else { "NOT READY" });
    let _ = writeln!(out, "leader    {leader}    term {}", s.term);
    let _ = writeln!(out, "log       commit {}  applied {}", s.commit_index, s.applied_index);
    let _ = writeln!(
        out,
        "state     {} sessions  {} subscriptions  {} retained",
        s.sessions, s.subscriptions, s.retained
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<5} {:<8} {:<6} {:>8} {:>6}  {:<22} {:<22} {:<22}",
        "ID", "ROLE", "ALIVE", "MATCHED", "LAG", "GRPC", "MQTT", "HTTP"
    );
    for m in &s.members {
        let _ = writeln!(
            out,
            "{:<5} {:<8} {:<6} {:>8} {:>6}  {:<22} {:<22} {:<22}",
            m.id,
            m.role,
            if m.alive { "yes" } else { "NO" },
            m.matched_index,
            m.lag,
            m.grpc_addr,
            m.mqtt_addr,
            m.http_addr
        );
    }
    out
}

fn status_json(s: &StatusResponse) -> String {
    let members: Vec<serde_json::Value> = s
        .members
        .iter()
        .map(|m| {
            serde_json::json!({
                "id": m.id, "role": m.role, "alive": m.alive, "matched_index": m.matched_index, "lag": m.lag,
                "grpc": m.grpc_addr, "mqtt": m.mqtt_addr, "http": m.http_addr,
            })
        })
        .collect();
    let v = serde_json::json!({
        "cluster_id": s.cluster_id,
        "node_id": s.node_id,
        "ready": s.ready,
        "leader": if s.has_leader { Some(s.leader_id) } else { None },
        "term": s.term,
        "commit_index": s.commit_index,
        "applied_index": s.applied_index,
        "sessions": s.sessions,
        "subscriptions": s.subscriptions,
        "retained": s.retained,
        "members": members,
    });
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

pub async fn add(server: &str, node_id: u64, grpc: &str) -> anyhow::Result<()> {
    let mut c = connect(server).await?;
    let r = c
        .add_node(AddNodeRequest { node_id, grpc_addr: grpc.to_string(), hops: 0 })
        .await
        .map_err(status_error)?
        .into_inner();
    println!("node {node_id} ({grpc}) is a voter of cluster {}", r.cluster_id);
    Ok(())
}

pub async fn remove(server: &str, node_id: u64, force: bool) -> anyhow::Result<()> {
    let mut c = connect(server).await?;
    c.remove_node(RemoveNodeRequest { node_id, force, hops: 0 }).await.map_err(status_error)?;
    println!("node {node_id} removed");
    Ok(())
}

pub async fn leave(server: &str) -> anyhow::Result<()> {
    let mut c = connect(server).await?;
    let r = c.leave(LeaveRequest {}).await.map_err(status_error)?.into_inner();
    println!(
        "node drained ({} clients disconnected) and removed from the cluster; it can be stopped",
        r.disconnected
    );
    Ok(())
}
