//! The connection driver and the session / QoS state machines behind it,
//! driven by arbitrary packet sequences: a client connects (a persistent
//! session), a second client on the same broker subscribes to everything
//! so that publishes are delivered somewhere, then the fuzz input is the
//! rest of the first client's byte stream; afterwards the first client
//! comes back and resumes its session (resends, inflight state). Never a
//! panic, never a hang.
#![no_main]

use std::time::Duration;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use starling_broker::{Broker, ConnectionInfo, MqttConfig};
use starling_codec::{Connect, Packet, Properties, ProtocolVersion, QoS, Subscribe, SubscriptionOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

fn connect(version: ProtocolVersion, id: &str, clean: bool) -> Vec<u8> {
    let mut properties = Properties::default();
    if version.is_v5() && !clean {
        properties.session_expiry_interval = Some(60);
    }
    let c = Connect {
        version,
        clean_start: clean,
        keep_alive: 0,
        properties,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
    };
    let mut b = BytesMut::new();
    Packet::Connect(Box::new(c)).encode(version, &mut b).unwrap();
    b.to_vec()
}

/// Opens a connection to `broker`; the broker side runs on its own task.
fn open(broker: &Broker) -> DuplexStream {
    let (client, server) = tokio::io::duplex(256 * 1024);
    tokio::spawn(starling_broker::serve(
        broker.clone(),
        server,
        ConnectionInfo::new("127.0.0.1:1".into(), "tcp"),
        (),
    ));
    client
}

/// Writes `bytes`, closes the write side, and reads until the broker
/// closes (draining what it sends so that it never blocks on us).
async fn session(mut s: DuplexStream, bytes: &[u8]) {
    let (mut r, mut w) = tokio::io::split(&mut s);
    let write = async {
        let _ = w.write_all(bytes).await;
        let _ = w.shutdown().await;
    };
    let read = async {
        let mut sink = vec![0u8; 64 * 1024];
        while let Ok(n) = r.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::join!(write, read);
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else { return };
    let version = starling_fuzz::version(control);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    rt.block_on(async {
        let config = MqttConfig { max_packet_size: 64 * 1024, sys_interval_secs: 0, ..MqttConfig::default() };
        let broker = Broker::in_memory(config);
        // A subscriber to everything, at QoS 2, that never reads.
        let mut watcher = open(&broker);
        let mut sub = connect(ProtocolVersion::V5, "watcher", true);
        let s = Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![("#".into(), SubscriptionOptions::new(QoS::ExactlyOnce))],
        };
        let mut b = BytesMut::new();
        Packet::Subscribe(s).encode(ProtocolVersion::V5, &mut b).unwrap();
        sub.extend_from_slice(&b);
        watcher.write_all(&sub).await.unwrap();

        let mut first = connect(version, "fuzzed", false);
        first.extend_from_slice(rest);
        let run = async {
            session(open(&broker), &first).await;
            // Back again: the session (and whatever the input left in it)
            // resumes.
            session(open(&broker), &connect(version, "fuzzed", false)).await;
        };
        // Paused time: timers (keep alive, lingering, retries) advance
        // instantly once everything waits; a real hang still ends here.
        if tokio::time::timeout(Duration::from_secs(3600), run).await.is_err() {
            panic!("a connection did not finish");
        }
        drop(watcher);
    });
});
