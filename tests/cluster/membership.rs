//! Live membership: adding a fourth node with the CLI, leaving, removing a
//! dead node, and bootstrap safety.

use std::time::Duration;

use starling_codec::{Packet, QoS, ReasonCode};

use crate::{disconnect_reason, Cluster, RawClient, V311, V5};

#[tokio::test(flavor = "multi_thread")]
async fn add_a_node_with_the_cli_use_it_then_leave() {
    let mut c = Cluster::start(3).await;
    // Node 4 starts empty and waits to be added.
    c.add_node(4, vec!["--no-bootstrap".into()]);
    c.launch(4, None);
    // Alive (serving HTTP) but not ready: it has no cluster yet. (Not
    // ready alone would also pass for a node that never started.)
    let live = async {
        for _ in 0..100 {
            if starling_tests::http_get_within(c.node(4).http, "/health/live", Duration::from_secs(1)).await.0
                == 200
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(live.await, "node 4 is running and answers /health/live");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(c.node_mut(4).running(), "node 4 still running");
    assert!(!c.ready(4).await, "not ready before it is added");
    let grpc4 = c.node(4).grpc.to_string();
    let (ok, out, err) = c.cli(2, &["add", "4", &grpc4]);
    assert!(ok, "add failed: {out}{err}");
    c.wait_ready(4).await;
    c.wait_members(4).await;
    // Node 4 is a full member without any restart: publishes through it
    // reach node 1, and publishes elsewhere reach its subscribers.
    let (mut s1, _) = RawClient::connect(c.node(1).mqtt, V311, "s1", true).await;
    s1.subscribe(1, "grow/#", QoS::AtLeastOnce).await;
    let (mut s4, _) = RawClient::connect(c.node(4).mqtt, V5, "s4", true).await;
    s4.subscribe(1, "grow/#", QoS::AtLeastOnce).await;
    let (mut p4, _) = RawClient::connect(c.node(4).mqtt, V311, "p4", true).await;
    p4.publish("grow/a", b"via 4", QoS::AtLeastOnce, false, 1).await;
    assert_eq!(&s1.recv_publish().await.payload[..], b"via 4");
    assert_eq!(&s4.recv_publish().await.payload[..], b"via 4");
    let (mut p2, _) = RawClient::connect(c.node(2).mqtt, V311, "p2", true).await;
    p2.publish("grow/b", b"via 2", QoS::AtLeastOnce, false, 1).await;
    assert_eq!(&s4.recv_publish().await.payload[..], b"via 2");

    // Leave: node 4's clients are told to use another server, and the
    // cluster is back to three.
    let (ok, out, err) = c.cli(4, &["leave"]);
    assert!(ok, "leave failed: {out}{err}");
    assert_eq!(disconnect_reason(&s4.expect_closed().await), Some(ReasonCode::USE_ANOTHER_SERVER));
    c.wait_members(3).await;
    let s = c.status(1);
    assert!(s["members"].as_array().unwrap().iter().all(|m| m["id"] != 4), "{s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn remove_a_dead_node_with_force() {
    let mut c = Cluster::start(3).await;
    let (mut s1, _) = RawClient::connect(c.node(1).mqtt, V311, "survivor", true).await;
    s1.subscribe(1, "after/#", QoS::AtMostOnce).await;
    // A live node is not removed without --force.
    let (ok, _, err) = c.cli(1, &["remove", "3"]);
    assert!(!ok && err.contains("alive"), "{err}");
    c.kill9(3);
    let (ok, out, err) = c.cli(1, &["remove", "3", "--force"]);
    assert!(ok, "remove failed: {out}{err}");
    c.wait_members(2).await;
    // The two remaining nodes still form a working cluster.
    let (mut p2, _) = RawClient::connect(c.node(2).mqtt, V311, "p2", true).await;
    p2.publish("after/x", b"two nodes", QoS::AtLeastOnce, false, 1).await;
    assert!(matches!(p2.recv().await, Some(Packet::Ack(_))));
    assert_eq!(&s1.recv_publish().await.payload[..], b"two nodes");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_never_joins_a_second_cluster_by_accident() {
    // A member of cluster A restarted with --join pointing at cluster B
    // refuses to start.
    let mut a = Cluster::start(1).await;
    let b = Cluster::start(1).await;
    a.stop(1);
    a.launch(1, Some(b.node(1).grpc));
    assert_eq!(a.wait_exit_at(0, Duration::from_secs(15)).await, Some(1));
    let log = std::fs::read_to_string(&a.node(1).log).unwrap();
    assert!(log.contains("belongs to cluster"), "{log}");

    // A wiped node (empty data directory) reusing the id of a member is
    // refused: it must come back under a new id.
    let mut c = Cluster::start(2).await;
    c.add_node(2, Vec::new());
    let join = c.node(1).grpc;
    c.launch_at(2, Some(join));
    assert_eq!(c.wait_exit_at(2, Duration::from_secs(15)).await, Some(1));
    let log = std::fs::read_to_string(&c.nodes[2].log).unwrap();
    assert!(log.contains("already a member"), "{log}");
}

/// Users and ACL rules changed through one node apply on all nodes.
#[tokio::test(flavor = "multi_thread")]
async fn replicated_users_and_acl_rules() {
    let mut c = Cluster::start(0).await;
    for id in 1..=3u64 {
        c.add_node(id, vec!["--set".into(), "auth.allow_anonymous=false".into()]);
        let join = if id == 1 { None } else { Some(c.node(1).grpc) };
        c.launch(id, join);
        c.wait_ready(id).await;
    }
    c.wait_members(3).await;
    let login = |id: &str, user: &str, pw: &str| {
        let mut p = starling_tests::connect_packet(V5, id, true);
        p.username = Some(user.into());
        p.password = Some(bytes::Bytes::copy_from_slice(pw.as_bytes()));
        p
    };
    // Unknown user everywhere.
    let mut x = RawClient::tcp(c.node(3).mqtt, V5).await;
    assert_eq!(x.handshake(login("a0", "alice", "pw1")).await.code, ReasonCode::BAD_USER_NAME_OR_PASSWORD.0);
    // Added on node 1, valid on node 3.
    let (ok, out, err) = c.cli_cmd(1, &["user", "add", "alice", "--password", "pw1"]);
    assert!(ok, "{out}{err}\n{}", c.logs());
    let (mut alice, _) = RawClient::connect_with(c.node(3).mqtt, login("a1", "alice", "pw1")).await;
    let (ok, out, _) = c.cli_cmd(2, &["user", "list"]);
    assert!(ok && out.lines().any(|l| l == "alice"), "{out}");
    // A rule added on node 2 applies on node 3 at once.
    let (ok, out, err) = c.cli_cmd(2, &["acl", "add", "--allow", "--readwrite", "--user", "alice", "team/#"]);
    assert!(ok, "{out}{err}");
    alice.publish("team/x", b"ok", QoS::AtLeastOnce, false, 1).await;
    assert!(matches!(alice.recv().await, Some(Packet::Ack(a)) if !a.reason.is_error()));
    alice.publish("other", b"no", QoS::AtLeastOnce, false, 2).await;
    assert!(matches!(alice.recv().await, Some(Packet::Ack(a)) if a.reason == ReasonCode::NOT_AUTHORIZED));
    let (ok, out, _) = c.cli_cmd(1, &["acl", "list"]);
    assert!(ok && out.contains("team/#") && out.contains("user alice"), "{out}");
    // A rule added while alice is subscribed applies to her next deliveries
    // (each delivery is checked), on her node, whoever publishes where.
    let (ok, out, err) = c.cli_cmd(1, &["user", "add", "bob", "--password", "pw2"]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = c.cli_cmd(1, &["acl", "add", "--allow", "--readwrite", "--user", "bob", "team/#"]);
    assert!(ok, "{out}{err}");
    let (mut bob, _) = RawClient::connect_with(c.node(1).mqtt, login("b1", "bob", "pw2")).await;
    alice.subscribe(3, "team/#", QoS::AtLeastOnce).await;
    async fn say(bob: &mut RawClient, topic: &'static str, id: u16) {
        bob.publish(topic, topic.as_bytes(), QoS::AtLeastOnce, false, id).await;
        assert!(matches!(bob.recv().await, Some(Packet::Ack(a)) if !a.reason.is_error()));
    }
    say(&mut bob, "team/before", 1).await;
    assert_eq!(&alice.recv_publish().await.payload[..], b"team/before");
    let (ok, out, err) = c
        .cli_cmd(2, &["acl", "add", "--deny", "--read", "--user", "alice", "team/secret", "--position", "0"]);
    assert!(ok, "{out}{err}");
    say(&mut bob, "team/secret", 2).await;
    say(&mut bob, "team/after", 3).await;
    let m = alice.recv_publish().await;
    assert_eq!(&m.payload[..], b"team/after", "team/secret is not delivered to alice any more");
    // Removing the user: new logins fail everywhere.
    let (ok, _, err) = c.cli_cmd(3, &["user", "remove", "alice"]);
    assert!(ok, "{err}");
    let mut y = RawClient::tcp(c.node(2).mqtt, V5).await;
    assert_eq!(y.handshake(login("a2", "alice", "pw1")).await.code, ReasonCode::BAD_USER_NAME_OR_PASSWORD.0);
}

/// A node removed with `--force` while it could not answer (frozen here,
/// as a node cut off by a partition) learns its removal when it is back:
/// it says so, takes no clients and stops campaigning (Raft never tells a
/// removed node; before, it started an election every few seconds until
/// stopped). The remaining members keep their leader and term.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_removed_while_unreachable_learns_it_and_stops_campaigning() {
    let c = Cluster::start(3).await;
    c.freeze(3);
    let (ok, out, err) = c.cli(1, &["remove", "3", "--force"]);
    assert!(ok, "remove failed: {out}{err}");
    c.wait_members(2).await;
    let leader_term = c.metric(1, "starling_raft_term").await;
    let leader = c.metric(1, "starling_raft_leader").await;
    c.thaw(3);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    c.wait_metric(3, "starling_removed", 1.0, deadline).await;
    assert!(!c.ready(3).await, "a removed node takes no clients");
    let s = c.status(3);
    assert_eq!(s["removed"], true, "{s}");
    let (ok, table, _) = c.cli(3, &["status"]);
    assert!(ok && table.contains("REMOVED from the cluster"), "{table}");
    let log = std::fs::read_to_string(&c.node(3).log).unwrap();
    assert!(log.contains("this node was removed from the cluster"), "{log}");
    // No more elections: its term stays where it is (openraft's election
    // timeout is well under these 8 seconds; before, the term rose by one
    // every few seconds).
    let term = c.metric(3, "starling_raft_term").await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(c.metric(3, "starling_raft_term").await, term, "node 3 still campaigns");
    // The cluster went on undisturbed.
    assert_eq!(c.metric(1, "starling_raft_term").await, leader_term);
    assert_eq!(c.metric(1, "starling_raft_leader").await, leader);
    let (mut p2, _) = RawClient::connect(c.node(2).mqtt, V311, "p2", true).await;
    p2.publish("after/x", b"two nodes", QoS::AtLeastOnce, false, 1).await;
    assert!(matches!(p2.recv().await, Some(Packet::Ack(_))));
}
