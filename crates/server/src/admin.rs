//! `starling cluster ...`: the admin CLI, a gRPC client of a node's admin
//! service.

use std::time::Duration;

use anyhow::Context;
use starling_broker::auth::password::{hash_password, PasswordFile};
use starling_cluster::pb::admin::admin_client::AdminClient;
use starling_cluster::pb::admin::{
    AclAddRequest, AclListRequest, AclRemoveRequest, AclRule, AddNodeRequest, LeaveRequest,
    RemoveNodeRequest, StatusRequest, StatusResponse, UserListRequest, UserRemoveRequest, UserSetRequest,
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
    let state = match (s.ready, s.removed) {
        (_, true) => "REMOVED from the cluster: stop it; to bring it back, start it with an empty data directory and --join",
        (true, false) => "ready",
        (false, false) => "NOT READY",
    };
    let _ = writeln!(out, "node      {} ({state})", s.node_id);
    let _ = writeln!(out, "leader    {leader}    term {}", s.term);
    let _ = writeln!(out, "log       commit {}  applied {}", s.commit_index, s.applied_index);
    let queue_leader = if s.queue_leader_id != 0 { s.queue_leader_id.to_string() } else { "none".into() };
    let _ = writeln!(
        out,
        "queues    leader {queue_leader}  voters {}  commit {}  {} messages queued",
        s.queue_voters, s.queue_commit_index, s.queued_messages
    );
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
        "removed": s.removed,
        "leader": if s.has_leader { Some(s.leader_id) } else { None },
        "term": s.term,
        "commit_index": s.commit_index,
        "applied_index": s.applied_index,
        "sessions": s.sessions,
        "subscriptions": s.subscriptions,
        "retained": s.retained,
        "queue_group": {
            "leader": if s.queue_leader_id != 0 { Some(s.queue_leader_id) } else { None },
            "voters": s.queue_voters,
            "commit_index": s.queue_commit_index,
            "queued_messages": s.queued_messages,
        },
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

/// Reads a password: twice from a terminal without echo, or one line
/// from standard input when it is not a terminal.
pub fn read_password(user: &str) -> anyhow::Result<String> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        let a = rpassword::prompt_password(format!("Password for {user}: "))?;
        let b = rpassword::prompt_password("Reenter password: ")?;
        if a != b {
            anyhow::bail!("passwords do not match");
        }
        if a.is_empty() {
            anyhow::bail!("empty password");
        }
        Ok(a)
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        let p = line.trim_end_matches(['\n', '\r']).to_string();
        if p.is_empty() {
            anyhow::bail!("empty password on standard input");
        }
        Ok(p)
    }
}

/// `starling passwd FILE USER`: add/update (argon2id) or delete a user.
pub fn passwd(
    file: &std::path::Path,
    user: &str,
    password: Option<String>,
    delete: bool,
) -> anyhow::Result<()> {
    if user.is_empty() || user.contains(':') {
        anyhow::bail!("a user name must be non-empty and must not contain ':'");
    }
    let mut f = if file.exists() {
        PasswordFile::load(file).map_err(|e| anyhow::anyhow!(e))?
    } else {
        PasswordFile::default()
    };
    if delete {
        if f.users.remove(user).is_none() {
            anyhow::bail!("user {user} is not in {}", file.display());
        }
    } else {
        let password = match password {
            Some(p) if !p.is_empty() => p,
            Some(_) => anyhow::bail!("empty password"),
            None => read_password(user)?,
        };
        f.users.insert(user.to_string(), hash_password(&password).map_err(|e| anyhow::anyhow!(e))?);
    }
    f.save(file).with_context(|| format!("cannot write {}", file.display()))?;
    Ok(())
}

pub async fn user_add(server: &str, name: &str, password: &str) -> anyhow::Result<()> {
    let mut c = connect(server).await?;
    c.user_set(UserSetRequest { name: name.into(), password: password.into() })
        .await
        .map_err(status_error)?;
    println!("user {name} set on every node");
    Ok(())
}

pub async fn user_remove(server: &str, name: &str) -> anyhow::Result<()> {
    let mut c = connect(server).await?;
    let r = c.user_remove(UserRemoveRequest { name: name.into() }).await.map_err(status_error)?.into_inner();
    if !r.existed {
        anyhow::bail!("no replicated user {name}");
    }
    println!("user {name} removed");
    Ok(())
}

pub async fn user_list(server: &str) -> anyhow::Result<()> {
    let mut c = connect(server).await?;
    let r = c.user_list(UserListRequest {}).await.map_err(status_error)?.into_inner();
    for n in r.names {
        println!("{n}");
    }
    for n in r.file_names {
        println!("{n}\t(password file)");
    }
    Ok(())
}

pub async fn acl_add(
    server: &str,
    access: &str,
    action: &str,
    topic: &str,
    user: Option<String>,
    client: Option<String>,
    position: Option<u32>,
) -> anyhow::Result<()> {
    let mut c = connect(server).await?;
    let rule = AclRule {
        access: access.into(),
        action: action.into(),
        topic: topic.into(),
        user: user.unwrap_or_default(),
        client: client.unwrap_or_default(),
    };
    c.acl_add(AclAddRequest {
        rule: Some(rule),
        has_position: position.is_some(),
        position: position.unwrap_or(0),
    })
    .await
    .map_err(status_error)?;
    println!("rule added");
    Ok(())
}

pub async fn acl_remove(server: &str, index: u32) -> anyhow::Result<()> {
    let mut c = connect(server).await?;
    let r = c.acl_remove(AclRemoveRequest { index }).await.map_err(status_error)?.into_inner();
    if !r.existed {
        anyhow::bail!("no replicated rule at index {index}");
    }
    println!("rule {index} removed");
    Ok(())
}

fn rule_line(r: &AclRule) -> String {
    let who = if !r.user.is_empty() {
        format!("user {}", r.user)
    } else if !r.client.is_empty() {
        format!("client {}", r.client)
    } else {
        "all".into()
    };
    format!("{:<5} {:<9} {:<30} {who}", r.access, r.action, r.topic)
}

pub async fn acl_list(server: &str) -> anyhow::Result<()> {
    let mut c = connect(server).await?;
    let r = c.acl_list(AclListRequest {}).await.map_err(status_error)?.into_inner();
    for (i, rule) in r.replicated.iter().enumerate() {
        println!("{i:>3}  {}", rule_line(rule));
    }
    for rule in &r.from_file {
        println!("file {}", rule_line(rule));
    }
    Ok(())
}
