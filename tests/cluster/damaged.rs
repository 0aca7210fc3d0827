//! A node whose data directory is damaged refuses to start, names the
//! damage and the way out; the documented recovery (remove it with
//! --force, move the directory away, start it again with --join) brings it
//! back with the cluster's whole state.

use std::time::Duration;

use starling_codec::QoS;

use crate::{Cluster, RawClient, V5};

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_snapshot_is_refused_and_the_documented_recovery_works() {
    let extra = ["--set", "cluster.snapshot_every=100"];
    let mut c = Cluster::start_with(3, &extra).await;
    let (mut p, _) = RawClient::connect(c.node(1).mqtt, V5, "writer", true).await;
    for i in 0..250u16 {
        p.publish("kept/x", i.to_string().as_bytes(), QoS::AtLeastOnce, true, i + 1).await;
        assert!(p.recv().await.is_some());
    }
    // Node 3 has a snapshot by now; stop it and damage it.
    let raft_dir = c.node(3).dir.join("raft");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let snapshot = loop {
        let found = std::fs::read_dir(&raft_dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("snapshot-")));
        if let Some(s) = found {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "node 3 made no snapshot");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(c.stop(3), Some(0));
    let len = std::fs::metadata(&snapshot).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&snapshot).unwrap().set_len(len / 2).unwrap();

    // Refused, with the damage and the way out named.
    let idx = c.nodes.iter().position(|n| n.id == 3).unwrap();
    c.launch(3, None);
    let code = c.wait_exit_at(idx, Duration::from_secs(20)).await;
    assert!(matches!(code, Some(code) if code != 0), "exit {code:?}");
    let log = std::fs::read_to_string(&c.node(3).log).unwrap();
    println!("node 3 refused to start: {}", log.lines().last().unwrap_or_default());
    assert!(
        log.contains("the data directory is damaged") && log.contains("cluster remove 3 --force"),
        "no clear message:\n{log}"
    );

    // The documented recovery.
    let (ok, out, err) = c.cli(1, &["remove", "3", "--force"]);
    assert!(ok, "{out}{err}");
    let moved = c.node(3).dir.with_extension("damaged");
    std::fs::rename(&c.node(3).dir, &moved).unwrap();
    let join = c.node(1).grpc;
    c.launch(3, Some(join));
    c.wait_ready(3).await;
    c.wait_members(3).await;
    let (mut s, _) = RawClient::connect(c.node(3).mqtt, V5, "reader", true).await;
    s.subscribe(1, "kept/#", QoS::AtLeastOnce).await;
    assert_eq!(&s.recv_publish().await.payload[..], b"249", "the state is back on node 3");
}
