//! Codec micro-benchmarks: decoding and encoding a 64-byte PUBLISH (QoS 0
//! and 1, MQTT 3.1.1 and 5.0).

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use starling_codec::{decode, Packet, ProtocolVersion, Publish, QoS};

fn publish(qos: QoS) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: "sensors/building-7/floor-3/temperature".into(),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { 4711 },
        properties: Default::default(),
        payload: Bytes::from(vec![0x5Au8; 64]),
    })
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("publish_64B");
    g.throughput(Throughput::Elements(1));
    for (name, v, qos) in [
        ("v311_qos0", ProtocolVersion::V311, QoS::AtMostOnce),
        ("v311_qos1", ProtocolVersion::V311, QoS::AtLeastOnce),
        ("v5_qos1", ProtocolVersion::V5, QoS::AtLeastOnce),
    ] {
        let p = publish(qos);
        let mut wire = BytesMut::new();
        p.encode(v, &mut wire).unwrap();
        let wire = wire.freeze();
        g.bench_function(format!("decode_{name}"), |b| {
            b.iter(|| {
                let mut buf = BytesMut::from(&wire[..]);
                black_box(decode(&mut buf, v, 1 << 20).unwrap());
            })
        });
        let mut out = BytesMut::with_capacity(1 << 16);
        g.bench_function(format!("encode_{name}"), |b| {
            b.iter(|| {
                out.clear();
                black_box(&p).encode(v, &mut out).unwrap();
            })
        });
    }
    // Decoding a buffer of many packets, as a busy socket delivers them.
    let mut burst = BytesMut::new();
    for _ in 0..1000 {
        publish(QoS::AtMostOnce).encode(ProtocolVersion::V311, &mut burst).unwrap();
    }
    let burst = burst.freeze();
    g.throughput(Throughput::Elements(1000));
    g.bench_function("decode_burst_1000_v311_qos0", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&burst[..]);
            while let Some(p) = decode(&mut buf, ProtocolVersion::V311, 1 << 20).unwrap() {
                black_box(p);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
