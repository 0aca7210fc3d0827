//! Snapshots on real processes (`cluster.snapshot_every` lowered to its
//! minimum, 100): a node added after the log was purged gets the whole
//! state — sessions with their durable queues, subscriptions, retained
//! messages, users and ACL rules — from a snapshot; a node killed and
//! restarted comes back from its snapshot plus the log after it; a node
//! that could not write the snapshot the leader sent it comes back.

use starling_codec::{QoS, ReasonCode};
use starling_tests::connect_packet;

use crate::{Cluster, RawClient, V5};

fn login(id: &str, user: &str, pw: &str) -> starling_codec::Connect {
    let mut p = connect_packet(V5, id, true);
    p.username = Some(user.into());
    p.password = Some(bytes::Bytes::copy_from_slice(pw.as_bytes()));
    p
}

/// Retained messages under `filter` as a new subscriber on `node` sees them
/// (each acknowledged, so that more than the inflight window can come).
async fn retained(c: &Cluster, node: u64, filter: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    let (mut s, _) = RawClient::connect(c.node(node).mqtt, V5, &format!("look-{node}-{filter}"), true).await;
    s.subscribe(1, filter, QoS::AtLeastOnce).await;
    let mut got = Vec::new();
    for _ in 0..n {
        let m = s.recv_publish().await;
        assert!(m.retain);
        s.puback(m.packet_id).await;
        got.push((m.topic.to_string(), m.payload.to_vec()));
    }
    got.sort();
    got
}

/// The checks both tests make on `node`: users, rules, retained messages.
async fn check_security_and_retained(c: &Cluster, node: u64, retained_topics: usize) {
    let (mut dora, _) =
        RawClient::connect_with(c.node(node).mqtt, login(&format!("dora-{node}"), "dora", "pw")).await;
    let ok = dora.publish_acked("snap/ok", b"x", false, 1).await;
    assert!(!ok.is_error(), "dora may write snap/ok: {ok:?}");
    assert_eq!(dora.publish_acked("forbidden/x", b"x", false, 2).await, ReasonCode::NOT_AUTHORIZED);
    let mut wrong = RawClient::tcp(c.node(node).mqtt, V5).await;
    assert_eq!(
        wrong.handshake(login("dora-x", "dora", "nope")).await.code,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD.0
    );
    let got = retained(c, node, "snap/r/#", retained_topics).await;
    let want: Vec<(String, Vec<u8>)> =
        (1..=retained_topics).map(|i| (format!("snap/r/{i}"), format!("r{i}").into_bytes())).collect();
    assert_eq!(got, want, "retained messages on node {node}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_added_after_the_log_was_purged_gets_everything_from_a_snapshot() {
    let extra = ["--set", "cluster.snapshot_every=100", "--set", "auth.allow_anonymous=true"];
    let mut c = Cluster::start_with(3, &extra).await;
    // Users and rules.
    for args in [
        &["user", "add", "dora", "--password", "pw"][..],
        &["acl", "add", "--deny", "--write", "--user", "dora", "forbidden/#"][..],
        &["acl", "add", "--allow", "--readwrite", "#"][..],
    ] {
        let (ok, out, err) = c.cli_cmd(1, args);
        assert!(ok, "{args:?}: {out}{err}");
    }
    // A persistent session with a subscription, away while 50 QoS 1
    // messages are queued for it (durably).
    let mut away = connect_packet(V5, "away", false);
    away.properties.session_expiry_interval = Some(3600);
    let (mut s, _) = RawClient::connect_with(c.node(1).mqtt, away.clone()).await;
    s.subscribe(1, "snap/q", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let (mut p, _) = RawClient::connect(c.node(2).mqtt, V5, "snap-pub", true).await;
    for i in 1..=3u16 {
        p.publish_acked(&format!("snap/r/{i}"), format!("r{i}").as_bytes(), true, i).await;
    }
    for i in 0..50u16 {
        p.publish_acked("snap/q", i.to_string().as_bytes(), false, 100 + i).await;
    }
    // Enough entries, one at a time, for snapshots and a purge of the log
    // before them (100 between snapshots, 100 kept behind the last).
    for i in 0..600u16 {
        p.publish_acked("snap/churn", i.to_string().as_bytes(), true, 1000 + i).await;
    }

    // Node 4 joins empty: the log it would need is gone.
    c.add_node(4, extra.iter().map(|s| s.to_string()).collect());
    let join = c.node(1).grpc;
    c.launch(4, Some(join));
    c.wait_ready(4).await;
    c.wait_members(4).await;
    let log4 = std::fs::read_to_string(&c.node(4).log).unwrap_or_default();
    assert!(
        log4.contains("installed a snapshot from the leader"),
        "node 4 did not install a snapshot:\n{log4}"
    );

    check_security_and_retained(&c, 4, 3).await;
    // The persistent session resumes on node 4 with its queue, in order.
    let (mut s4, ack) = RawClient::connect_with(c.node(4).mqtt, away.clone()).await;
    assert!(ack.session_present, "session present on node 4");
    for i in 0..50u16 {
        let m = s4.recv_publish().await;
        assert_eq!(m.payload, i.to_string().as_bytes(), "queued message {i}");
        s4.puback(m.packet_id).await;
    }
    // And its subscription routes live messages from another node to it.
    p.publish_acked("snap/q", b"live", false, 2000).await;
    assert_eq!(&s4.recv_publish().await.payload[..], b"live");

    // Node 2 killed; more happens; it restarts from its snapshot plus the
    // log after it.
    c.kill9(2);
    let (mut p3, _) = RawClient::connect(c.node(3).mqtt, V5, "snap-pub3", true).await;
    p3.publish_acked("snap/r/4", b"r4", true, 1).await;
    for i in 0..150u16 {
        p3.publish_acked("snap/churn", i.to_string().as_bytes(), true, 10 + i).await;
    }
    c.launch(2, None);
    c.wait_ready(2).await;
    let log2 = std::fs::read_to_string(&c.node(2).log).unwrap_or_default();
    assert!(log2.contains("loaded the snapshot; replaying the log after it"), "{log2}");
    check_security_and_retained(&c, 2, 4).await;
    assert_eq!(retained(&c, 2, "snap/churn", 1).await, vec![("snap/churn".into(), b"149".to_vec())]);
}

/// Fault schedule 2004: openraft purges a follower's log as soon as it
/// starts installing a snapshot from the leader, before the snapshot is
/// written. A node whose disk refused the snapshot (there: full; here: a
/// file size limit, `prlimit --fsize`, with SIGXFSZ ignored so writes fail
/// with EFBIG) stopped, and then could never start again: its log was
/// purged past the only snapshot it had ("Failed to get log entries").
/// The log now keeps those entries until the snapshot is on disk.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_could_not_write_the_leaders_snapshot_starts_again() {
    let extra = ["--set", "cluster.snapshot_every=100"];
    let mut c = Cluster::start_with(2, &extra).await;
    let n3 = c.add_node(3, extra.iter().map(|s| s.to_string()).collect());
    // Files up to 2 MiB: enough for its log and database, not for a
    // snapshot of the state below (about 4 MB).
    n3.wrap = ["bash", "-c", "trap '' XFSZ; exec prlimit --fsize=2097152 -- \"$@\"", "limited"]
        .map(String::from)
        .to_vec();
    let join = c.node(1).grpc;
    c.launch(3, Some(join));
    c.wait_ready(3).await;
    c.wait_members(3).await;

    // Node 3 paused while 1,000 retained messages of 4 KB are written: the
    // leader's log is purged past node 3's, so it will need a snapshot.
    c.freeze(3);
    let (mut p, _) = RawClient::connect(c.node(1).mqtt, V5, "big-pub", true).await;
    let payload = |i: u16| format!("{i:04}").repeat(1024).into_bytes();
    for i in 1..=1000u16 {
        let code = p.publish_acked(&format!("big/{i:04}"), &payload(i), true, i).await;
        assert!(!code.is_error(), "retained big/{i}: {code:?}");
    }
    c.thaw(3);
    let idx = c.nodes.iter().position(|n| n.id == 3).expect("node 3");
    let code = c.wait_exit_at(idx, std::time::Duration::from_secs(60)).await;
    let log3 = std::fs::read_to_string(&c.node(3).log).unwrap_or_default();
    assert!(log3.contains("File too large"), "node 3 should have failed to write the snapshot:\n{log3}");
    assert_eq!(code, Some(1), "node 3 stops on the storage error");

    // Started again without the limit: it comes back and has everything.
    c.node_mut(3).wrap.clear();
    c.launch(3, None);
    c.wait_ready(3).await;
    let got = retained(&c, 3, "big/#", 1000).await;
    for (i, (topic, body)) in got.iter().enumerate() {
        let i = i as u16 + 1;
        assert_eq!(
            (topic.as_str(), body),
            (format!("big/{i:04}").as_str(), &payload(i)),
            "retained {i} on node 3"
        );
    }
}
