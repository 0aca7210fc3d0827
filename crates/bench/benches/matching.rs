//! Topic matching against a route table of 1,000,000 subscriptions, most
//! of them with wildcards (the shape of a large chat or IoT deployment:
//! per-user and per-device filters plus fleet-wide wildcards).

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use starling_broker::ids::{ClientId, NodeId};
use starling_broker::routes::{Matched, Route, RouteTable, RouteTarget};
use starling_broker::topic::{TopicFilter, TopicLimits};
use starling_codec::{QoS, SubscriptionOptions};

fn table() -> Arc<RouteTable> {
    let t = RouteTable::new();
    let limits = TopicLimits::default();
    let add = |filter: String, client: String| {
        let f = TopicFilter::parse(&filter, &limits).unwrap();
        t.insert(
            &f,
            Route {
                client: ClientId::new(&client),
                options: SubscriptionOptions::new(QoS::AtLeastOnce),
                subscription_id: None,
                target: RouteTarget::Remote(NodeId(2)),
                durable: None,
            },
        );
    };
    // 400k users, each on their own inbox with a wildcard: users/<u>/#
    for u in 0..400_000 {
        add(format!("users/{u}/#"), format!("u{u}"));
    }
    // 400k devices: fleet/<site>/+/<device>/telemetry
    for d in 0..400_000 {
        add(format!("fleet/site-{}/+/dev-{d}/telemetry", d % 100), format!("d{d}"));
    }
    // 199,990 chat rooms, exact topics
    for r in 0..199_990 {
        add(format!("chat/room-{r}"), format!("r{r}"));
    }
    // 10 broad wildcard subscribers (monitoring)
    for m in 0..10 {
        add("fleet/+/+/+/telemetry".into(), format!("mon{m}"));
    }
    assert_eq!(t.len(), 1_000_000);
    Arc::new(t)
}

fn count(t: &RouteTable, topic: &str) -> usize {
    let mut n = 0;
    t.for_each_match(topic, |m| {
        if let Matched::Route(_) = m {
            n += 1;
        }
    });
    n
}

fn bench(c: &mut Criterion) {
    let t = table();
    let mut g = c.benchmark_group("match_1M_subscriptions");
    g.throughput(Throughput::Elements(1));
    let cases = [
        ("user_inbox", "users/123456/inbox/msg", 1),
        ("device_telemetry", "fleet/site-42/rack-7/dev-142/telemetry", 11),
        ("chat_room", "chat/room-99999", 1),
        ("no_match", "nothing/here/at/all", 0),
    ];
    for (name, topic, want) in cases {
        assert_eq!(count(&t, topic), want, "{name}");
        g.bench_function(name, |b| b.iter(|| black_box(count(&t, black_box(topic)))));
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = bench
}
criterion_main!(benches);
