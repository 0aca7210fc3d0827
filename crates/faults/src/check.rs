//! The checker: reads a history and reports every anomaly against the
//! promises of shared/DESIGN.md §1, each with the operations that show it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write;

use serde_json::Value;

/// Time an old connection may stay open after its client id was taken over
/// elsewhere, counted from the takeover or from the end of a fault on the
/// old connection's node (the claim needs a majority; the node must apply it).
const TAKEOVER_GRACE_MS: f64 = 10_000.0;

#[derive(Debug, Default)]
pub struct Report {
    /// kind → examples (every one, the text names the operations).
    pub anomalies: BTreeMap<String, Vec<String>>,
    /// Counters shown with the result.
    pub stats: BTreeMap<String, u64>,
    pub faults: BTreeMap<String, u64>,
}

impl Report {
    fn anomaly(&mut self, kind: &str, what: String) {
        self.anomalies.entry(kind.into()).or_default().push(what);
    }
    fn count(&mut self, key: &str, n: u64) {
        *self.stats.entry(key.into()).or_default() += n;
    }
    pub fn anomaly_count(&self) -> usize {
        self.anomalies.values().map(Vec::len).sum()
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "faults injected: {}", fmt_map(&self.faults));
        let _ = writeln!(s, "operations: {}", fmt_map(&self.stats));
        if self.anomalies.is_empty() {
            let _ = writeln!(s, "anomalies: none");
        }
        for (kind, list) in &self.anomalies {
            let _ = writeln!(s, "ANOMALY {kind}: {} case(s)", list.len());
            for a in list.iter().take(8) {
                let _ = writeln!(s, "    {a}");
            }
            if list.len() > 8 {
                let _ = writeln!(s, "    … {} more", list.len() - 8);
            }
        }
        s
    }
}

fn fmt_map(m: &BTreeMap<String, u64>) -> String {
    m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Ok(f64),
    Fail,
    Info,
    Pending,
}

#[derive(Debug, Clone)]
struct Pub {
    t: f64,
    topic: String,
    qos: u64,
    outcome: Outcome,
}

#[derive(Debug, Clone, Default)]
struct Epoch {
    connected: Option<f64>,
    via: String,
    /// filter → SUBACK time.
    suback: HashMap<String, f64>,
    /// How it ended: "lost", "bye", "offline"; and when.
    end: Option<(String, f64)>,
}

#[derive(Debug, Clone)]
struct Recv {
    t: f64,
    ep: u64,
    topic: String,
    m: String,
    dup: bool,
    fresh: bool,
}

#[derive(Debug, Clone)]
struct Fault {
    kind: String,
    slots: Vec<u64>,
    start: f64,
    end: f64,
}

fn s(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(x) => x.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}
fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}
fn t(v: &Value) -> f64 {
    v["t"].as_f64().unwrap_or(0.0)
}

/// A message: (publisher, its connection epoch, sequence number).
type MsgKey = (String, u64, u64);

/// A message's key from its payload `publisher/epoch/seq`.
fn key_of(m: &str) -> Option<MsgKey> {
    let mut it = m.rsplitn(3, '/');
    let seq = it.next()?.parse().ok()?;
    let ep = it.next()?.parse().ok()?;
    Some((it.next()?.to_string(), ep, seq))
}

pub fn check(events: &[Value]) -> Report {
    let mut r = Report::default();
    let mut pubs: HashMap<MsgKey, Pub> = HashMap::new();
    let mut epochs: HashMap<String, BTreeMap<u64, Epoch>> = HashMap::new();
    let mut recvs: HashMap<String, Vec<Recv>> = HashMap::new();
    let mut session_lost: Vec<String> = Vec::new();
    let mut drained: HashSet<String> = HashSet::new();
    let mut writes: BTreeMap<String, Vec<(String, Outcome)>> = BTreeMap::new();
    let mut finals: Vec<Value> = Vec::new();
    let mut faults: Vec<Fault> = Vec::new();
    let mut open_fault: Option<Fault> = None;
    let mut end_t = 0.0f64;

    for e in events {
        let c = s(e, "c");
        let k = s(e, "k");
        end_t = end_t.max(t(e));
        let ep = n(e, "ep");
        match k.as_str() {
            "pub" => {
                pubs.insert(
                    (s(e, "p"), n(e, "e"), n(e, "s")),
                    Pub { t: t(e), topic: s(e, "topic"), qos: n(e, "q"), outcome: Outcome::Pending },
                );
            }
            "pub-ok" | "pub-fail" | "pub-info" => {
                if let Some(p) = pubs.get_mut(&(s(e, "p"), n(e, "e"), n(e, "s"))) {
                    p.outcome = match k.as_str() {
                        "pub-ok" => Outcome::Ok(t(e)),
                        "pub-fail" => Outcome::Fail,
                        _ => Outcome::Info,
                    };
                }
            }
            "connected" => {
                let ep = epochs.entry(c).or_default().entry(ep).or_default();
                ep.connected = Some(t(e));
                ep.via = s(e, "via");
            }
            "suback" => {
                epochs.entry(c).or_default().entry(ep).or_default().suback.entry(s(e, "f")).or_insert(t(e));
            }
            "lost" | "bye" | "offline" => {
                let ep = epochs.entry(c).or_default().entry(ep).or_default();
                ep.end.get_or_insert((k.clone(), t(e)));
            }
            "recv" => recvs.entry(c).or_default().push(Recv {
                t: t(e),
                ep,
                topic: s(e, "topic"),
                m: s(e, "m"),
                dup: e["dup"].as_bool().unwrap_or(false),
                fresh: e["fresh"].as_bool().unwrap_or(true),
            }),
            "session-lost" => session_lost
                .push(format!("{c} epoch {ep} at {:.1}s: CONNACK without session present", t(e) / 1e3)),
            "drained" => {
                drained.insert(c);
            }
            "write" => writes.entry(s(e, "topic")).or_default().push((s(e, "m"), Outcome::Pending)),
            "write-ok" | "write-fail" | "write-info" => {
                let m = s(e, "m");
                if let Some(w) =
                    writes.get_mut(&s(e, "topic")).and_then(|l| l.iter_mut().rev().find(|w| w.0 == m))
                {
                    w.1 = match k.as_str() {
                        "write-ok" => Outcome::Ok(t(e)),
                        "write-fail" => Outcome::Fail,
                        _ => Outcome::Info,
                    };
                }
            }
            "fault" => {
                *r.faults.entry(s(e, "f")).or_default() += 1;
                let slots = e["slots"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_u64).collect())
                    .unwrap_or_default();
                open_fault = Some(Fault { kind: s(e, "f"), slots, start: t(e), end: f64::MAX });
            }
            "heal" => {
                if let Some(mut f) = open_fault.take() {
                    f.end = t(e);
                    faults.push(f);
                }
            }
            "crash" => {
                let during = &e["during"];
                let what = format!(
                    "node slot {} (id {}) exited ({}) at {:.1}s during {}; log tail:\n{}",
                    n(e, "slot"),
                    n(e, "id"),
                    s(e, "status"),
                    t(e) / 1e3,
                    if during.is_null() { "no fault".to_string() } else { during.to_string() },
                    s(e, "log")
                );
                r.anomaly("crash", what);
                if n(e, "again_within_30s") >= 2 {
                    r.anomaly("crash-loop", format!("node slot {} exited 3 times within 30 s", n(e, "slot")));
                }
            }
            "exit-disk-full" => r.count("exits_on_full_disk", 1),
            "panic" => r.anomaly("panic", format!("node slot {}: {}", n(e, "slot"), s(e, "line"))),
            "joined" if e["ok"] == Value::Bool(false) => r.anomaly(
                "membership",
                format!("node id {} (slot {}) was not ready 30 s after joining", n(e, "id"), n(e, "slot")),
            ),
            "left" | "removed" if e["ok"] == Value::Bool(false) => {
                r.anomaly("membership", format!("{k} of node id {} failed: {}", n(e, "id"), s(e, "err")))
            }
            "recovered" => {
                if e["ok"] != Value::Bool(true) {
                    r.anomaly(
                        "no-recovery",
                        format!("the cluster did not serve again within {} ms of the heal", n(e, "bound_ms")),
                    );
                }
                r.count("recovery_ms", n(e, "ms"));
            }
            "drain-done" if n(e, "drained") < n(e, "of") => r.anomaly(
                "drain",
                format!(
                    "only {} of {} subscribers went quiet within 90 s after the heal",
                    n(e, "drained"),
                    n(e, "of")
                ),
            ),
            "final-retained" | "final-state" => finals.push(e.clone()),
            _ => {}
        }
    }
    if let Some(mut f) = open_fault.take() {
        f.end = end_t;
        faults.push(f);
    }
    for l in session_lost {
        r.anomaly("session-lost", l);
    }

    for p in pubs.values() {
        let key = match p.outcome {
            Outcome::Ok(_) => "publish_ok",
            Outcome::Fail => "publish_refused",
            Outcome::Info => "publish_indeterminate",
            Outcome::Pending => "publish_pending",
        };
        r.count(key, 1);
    }

    // Every receipt is of a message someone published, on its topic, and
    // not one the broker refused.
    for (client, list) in &recvs {
        r.count("deliveries", list.len() as u64);
        for rc in list {
            match key_of(&rc.m).and_then(|k| pubs.get(&k).map(|p| (k, p))) {
                None => r.anomaly(
                    "phantom",
                    format!(
                        "{client} received {:?} on {} at {:.1}s: never published",
                        rc.m,
                        rc.topic,
                        rc.t / 1e3
                    ),
                ),
                Some((_, p)) if p.topic != rc.topic => r.anomaly(
                    "phantom",
                    format!(
                        "{client} received {:?} on {} but it was published on {}",
                        rc.m, rc.topic, p.topic
                    ),
                ),
                Some((_, p)) if p.outcome == Outcome::Fail => r.anomaly(
                    "refused-but-delivered",
                    format!("{client} received {:?}: the broker had refused it (error reason code)", rc.m),
                ),
                _ => {}
            }
        }
    }

    check_subscribers(&mut r, &pubs, &epochs, &recvs, &drained);
    check_shared(&mut r, &epochs, &recvs);
    check_probes(&mut r, &pubs, &epochs, &recvs);
    check_takeover(&mut r, &epochs, &faults);
    check_finals(&mut r, &writes, &finals);
    r
}

fn is_persistent(c: &str) -> bool {
    c.starts_with("psub-")
}

fn check_subscribers(
    r: &mut Report,
    pubs: &HashMap<MsgKey, Pub>,
    epochs: &HashMap<String, BTreeMap<u64, Epoch>>,
    recvs: &HashMap<String, Vec<Recv>>,
    drained: &HashSet<String>,
) {
    let empty = Vec::new();
    let mut clients: Vec<&String> =
        epochs.keys().filter(|c| c.starts_with("psub-") || c.starts_with("csub-")).collect();
    clients.sort();
    for client in clients {
        let eps = &epochs[client];
        let list = recvs.get(client).unwrap_or(&empty);
        let persistent = is_persistent(client);
        // Order: per publisher connection, first receipts in sequence
        // order (per session: the whole life of a persistent one, each
        // connection of a clean one).
        let mut last: HashMap<(u64, String, u64), (u64, f64)> = HashMap::new();
        let mut seen: HashMap<(u64, MsgKey), usize> = HashMap::new();
        for rc in list {
            let Some(key) = key_of(&rc.m) else { continue };
            let scope = if persistent { 0 } else { rc.ep };
            let entry = seen.entry((scope, key.clone())).or_insert(0);
            *entry += 1;
            if *entry > 1 {
                let qos2 = pubs.get(&key).is_some_and(|p| p.qos == 2) && client_qos(client) == 2;
                if rc.fresh {
                    r.count("duplicates", 1);
                    if qos2 {
                        r.anomaly(
                            "qos2-duplicate",
                            format!("{client} got {} twice (QoS 2), again at {:.1}s", rc.m, rc.t / 1e3),
                        );
                    } else if !rc.dup {
                        r.anomaly(
                            "duplicate-without-dup",
                            format!("{client} got {} again at {:.1}s without the DUP flag", rc.m, rc.t / 1e3),
                        );
                    }
                }
                continue;
            }
            let stream = (scope, key.0.clone(), key.1);
            if let Some((prev, pt)) = last.get(&stream) {
                if key.2 < *prev {
                    r.anomaly(
                        "order",
                        format!(
                            "{client}: {}/{}/{} at {:.1}s after {}/{}/{} at {:.1}s",
                            key.0,
                            key.1,
                            key.2,
                            rc.t / 1e3,
                            key.0,
                            key.1,
                            prev,
                            pt / 1e3
                        ),
                    );
                }
            }
            let e = last.entry(stream).or_insert((key.2, rc.t));
            if key.2 > e.0 {
                *e = (key.2, rc.t);
            }
        }

        // Loss.
        let got: HashSet<(u64, MsgKey)> = seen.keys().cloned().collect();
        let topics_ok = |p: &Pub| p.topic.starts_with("jt/p/");
        if persistent {
            let first_suback =
                eps.values().filter_map(|e| e.suback.values().copied().reduce(f64::min)).reduce(f64::min);
            let Some(since) = first_suback else { continue };
            if !drained.contains(client) {
                r.anomaly("drain", format!("{client} never went quiet after the heal"));
            }
            let mut missing = Vec::new();
            for (k, p) in pubs {
                if matches!(p.outcome, Outcome::Ok(_))
                    && topics_ok(p)
                    && p.t > since
                    && !got.contains(&(0, k.clone()))
                {
                    missing.push((
                        p.t,
                        format!("{}/{}/{} (acknowledged, published at {:.1}s)", k.0, k.1, k.2, p.t / 1e3),
                    ));
                }
            }
            missing.sort_by(|a, b| a.0.total_cmp(&b.0));
            r.count(
                "checked_persistent_messages",
                pubs.values()
                    .filter(|p| matches!(p.outcome, Outcome::Ok(_)) && topics_ok(p) && p.t > since)
                    .count() as u64,
            );
            for (_, m) in missing {
                r.anomaly("lost-persistent", format!("{client} never received {m}"));
            }
        } else {
            for (epn, ep) in eps {
                let Some(since) = ep.suback.values().copied().reduce(f64::min) else { continue };
                // Only connections that lived until the end: a connection
                // the broker closed (node down, takeover) may miss messages.
                let Some(("bye", until)) = ep.end.as_ref().map(|(k, t)| (k.as_str(), *t)) else { continue };
                for (k, p) in pubs {
                    let Outcome::Ok(acked) = p.outcome else { continue };
                    if topics_ok(p) && p.t > since && acked < until {
                        r.count("checked_clean_messages", 1);
                        if !got.contains(&(*epn, k.clone())) {
                            r.anomaly(
                                "lost-clean",
                                format!(
                                    "{client} (connection {epn}, SUBACK at {:.1}s, open to the end) never received {}/{}/{} (acknowledged at {:.1}s)",
                                    since / 1e3,
                                    k.0,
                                    k.1,
                                    k.2,
                                    acked / 1e3
                                ),
                            );
                        }
                    }
                }
            }
        }
    }
}

fn client_qos(c: &str) -> u64 {
    if c == "psub-c" || c == "psub-d" {
        2
    } else {
        1
    }
}

/// A `$share` group delivers each message to one member; another member
/// may get it again only after the first one's connection was lost.
fn check_shared(
    r: &mut Report,
    epochs: &HashMap<String, BTreeMap<u64, Epoch>>,
    recvs: &HashMap<String, Vec<Recv>>,
) {
    let mut by_msg: HashMap<String, Vec<(String, u64, f64)>> = HashMap::new();
    for (client, list) in recvs.iter().filter(|(c, _)| c.starts_with("share-")) {
        for rc in list {
            by_msg.entry(rc.m.clone()).or_default().push((client.clone(), rc.ep, rc.t));
        }
    }
    r.count("shared_messages", by_msg.len() as u64);
    for (m, list) in by_msg {
        let members: HashSet<&String> = list.iter().map(|(c, _, _)| c).collect();
        if members.len() < 2 {
            continue;
        }
        let first = list.iter().min_by(|a, b| a.2.total_cmp(&b.2)).expect("non-empty");
        let lost = epochs
            .get(&first.0)
            .and_then(|e| e.get(&first.1))
            .and_then(|e| e.end.clone())
            .is_some_and(|(k, _)| k == "lost");
        if !lost {
            r.anomaly(
                "shared-duplicate",
                format!("{m} delivered to {members:?} although {} stayed connected", first.0),
            );
        }
    }
}

/// A SUBACK is never followed by a miss: each probe published after its
/// SUBACK must arrive while the subscriber's connection lives.
fn check_probes(
    r: &mut Report,
    pubs: &HashMap<MsgKey, Pub>,
    epochs: &HashMap<String, BTreeMap<u64, Epoch>>,
    recvs: &HashMap<String, Vec<Recv>>,
) {
    let empty = BTreeMap::new();
    let eps = epochs.get("probe-sub").unwrap_or(&empty);
    let got: HashSet<(u64, String)> = recvs
        .get("probe-sub")
        .map(|l| l.iter().map(|rc| (rc.ep, rc.topic.clone())).collect())
        .unwrap_or_default();
    for p in pubs.values().filter(|p| p.topic.starts_with("jt/probe/")) {
        let Outcome::Ok(acked) = p.outcome else { continue };
        let Some((epn, ep)) = eps.iter().find(|(_, e)| e.suback.contains_key(&p.topic)) else { continue };
        if got.contains(&(*epn, p.topic.clone())) {
            r.count("probes_delivered", 1);
        } else if ep.end.as_ref().is_some_and(|(k, _)| k == "lost") {
            r.count("probes_inconclusive", 1);
        } else {
            r.anomaly(
                "suback-miss",
                format!(
                    "probe-sub had its SUBACK for {} at {:.1}s on node {}; the publish was acknowledged at {:.1}s; it never arrived though the connection stayed open",
                    p.topic,
                    ep.suback[&p.topic] / 1e3,
                    ep.via,
                    acked / 1e3
                ),
            );
        }
    }
}

/// One client id, one connection: a connection whose id was taken over
/// is closed within the grace period (extended by faults on its node).
fn check_takeover(r: &mut Report, epochs: &HashMap<String, BTreeMap<u64, Epoch>>, faults: &[Fault]) {
    let Some(eps) = epochs.get("tk") else { return };
    let live: Vec<(u64, &Epoch)> =
        eps.iter().filter(|(_, e)| e.connected.is_some()).map(|(n, e)| (*n, e)).collect();
    r.count("takeovers", live.len().saturating_sub(1) as u64);
    for w in live.windows(2) {
        let (old_n, old) = w[0];
        let (new_n, new) = w[1];
        let taken = new.connected.unwrap_or(0.0);
        let slot: Option<u64> = old.via.parse().ok();
        let mut deadline = taken + TAKEOVER_GRACE_MS;
        loop {
            let mut extended = deadline;
            for f in faults {
                let touches = slot.is_some_and(|s| f.slots.contains(&s))
                    || f.kind == "kill-leader"
                    || f.kind == "replace";
                if touches && f.start < deadline && f.end + TAKEOVER_GRACE_MS > extended {
                    extended = f.end + TAKEOVER_GRACE_MS;
                }
            }
            if extended == deadline {
                break;
            }
            deadline = extended;
        }
        let closed_at = old.end.as_ref().map(|(_, t)| *t);
        let still_open = match &old.end {
            Some((k, t)) => k == "bye" || *t > deadline,
            None => true,
        };
        if still_open && closed_at.is_none_or(|c| c > deadline) {
            r.anomaly(
                "two-owners",
                format!(
                    "tk connection {old_n} (node {}) still open at {:.1}s though connection {new_n} (node {}) took the id over at {:.1}s",
                    old.via,
                    deadline / 1e3,
                    new.via,
                    taken / 1e3
                ),
            );
        }
    }
}

fn check_finals(r: &mut Report, writes: &BTreeMap<String, Vec<(String, Outcome)>>, finals: &[Value]) {
    let mut views: Vec<(u64, HashMap<String, String>)> = Vec::new();
    for f in finals {
        match s(f, "k").as_str() {
            "final-retained" => {
                if f.get("err").is_some_and(|e| !e.is_null()) {
                    r.anomaly(
                        "final-read",
                        format!("reading retained messages from node slot {}: {}", n(f, "slot"), s(f, "err")),
                    );
                    continue;
                }
                let vals = f["values"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|p| Some((p[0].as_str()?.to_string(), p[1].as_str()?.to_string())))
                            .collect::<HashMap<_, _>>()
                    })
                    .unwrap_or_default();
                views.push((n(f, "slot"), vals));
            }
            "final-state" if f["converged"] != Value::Bool(true) => {
                r.anomaly(
                    "not-converged",
                    format!("after 30 s the nodes still disagree on {}: {}", f["metrics"], f["nodes"]),
                );
            }
            _ => {}
        }
    }
    for (topic, list) in writes {
        let last_ok = list.iter().rposition(|w| matches!(w.1, Outcome::Ok(_)));
        let mut allowed: HashSet<Option<&str>> = HashSet::new();
        match last_ok {
            Some(i) => {
                allowed.insert(Some(list[i].0.as_str()));
            }
            None => {
                allowed.insert(None);
            }
        }
        // A write whose outcome is unknown may take effect at any time.
        for w in list.iter().filter(|w| matches!(w.1, Outcome::Info | Outcome::Pending)) {
            allowed.insert(Some(w.0.as_str()));
        }
        r.count("retained_writes", list.len() as u64);
        for (slot, vals) in &views {
            let v = vals.get(topic).map(String::as_str);
            if !allowed.contains(&v) {
                r.anomaly(
                    "retained",
                    format!(
                        "node slot {slot} holds {v:?} for {topic}; the last acknowledged write was {:?}",
                        last_ok.map(|i| &list[i].0)
                    ),
                );
            }
        }
        let distinct: HashSet<Option<&String>> = views.iter().map(|(_, v)| v.get(topic)).collect();
        if distinct.len() > 1 {
            r.anomaly("retained-diverged", format!("{topic}: nodes hold {distinct:?}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(t: f64, c: &str, k: &str, mut v: Value) -> Value {
        v["t"] = json!(t);
        v["c"] = json!(c);
        v["k"] = json!(k);
        v
    }

    /// Messages 1..=3 of `publisher` (connection 1) at QoS `qos`, each
    /// published at 10 s × n and acknowledged 1 ms later.
    fn published_and_acked(h: &mut Vec<Value>, publisher: &str, qos: u64) {
        let topic = format!("jt/p/{publisher}");
        for s in 1..=3u64 {
            let t = 10.0 * s as f64;
            h.push(ev(
                t,
                publisher,
                "pub",
                json!({"p": publisher, "e": 1, "s": s, "q": qos, "topic": topic}),
            ));
            h.push(ev(t + 1.0, publisher, "pub-ok", json!({"p": publisher, "e": 1, "s": s})));
        }
    }

    /// A history where a persistent subscriber misses one acknowledged
    /// message, a clean subscriber sees two out of order, a QoS 2 message
    /// arrives twice and a retained value goes back: each is reported.
    #[test]
    fn reports_each_kind_of_anomaly() {
        let mut h = vec![
            ev(0.0, "psub-c", "connected", json!({"ep": 1, "via": "1"})),
            ev(1.0, "psub-c", "suback", json!({"ep": 1, "f": "jt/p/+"})),
            ev(0.0, "csub-a", "connected", json!({"ep": 1, "via": "2"})),
            ev(1.0, "csub-a", "suback", json!({"ep": 1, "f": "jt/p/#"})),
        ];
        published_and_acked(&mut h, "pub-b", 2);
        let recv = |t: f64, c: &str, m: &str, fresh: bool| {
            ev(
                t,
                c,
                "recv",
                json!({"ep": 1, "topic": "jt/p/pub-b", "m": m, "q": 2, "dup": false, "fresh": fresh}),
            )
        };
        h.push(recv(40.0, "psub-c", "pub-b/1/1", true));
        h.push(recv(41.0, "psub-c", "pub-b/1/1", true));
        h.push(recv(42.0, "psub-c", "pub-b/1/3", true));
        h.push(recv(40.0, "csub-a", "pub-b/1/2", true));
        h.push(recv(41.0, "csub-a", "pub-b/1/1", true));
        h.push(recv(42.0, "csub-a", "pub-b/1/3", true));
        h.push(recv(43.0, "csub-a", "pub-b/1/9", true));
        h.push(ev(50.0, "psub-c", "drained", json!({"ep": 1})));
        h.push(ev(60.0, "csub-a", "bye", json!({"ep": 1})));
        h.push(ev(1.0, "ret", "write", json!({"topic": "jt/r/0", "m": "ret/1/1"})));
        h.push(ev(2.0, "ret", "write-ok", json!({"topic": "jt/r/0", "m": "ret/1/1"})));
        h.push(ev(3.0, "ret", "write", json!({"topic": "jt/r/0", "m": "ret/1/2"})));
        h.push(ev(4.0, "ret", "write-ok", json!({"topic": "jt/r/0", "m": "ret/1/2"})));
        h.push(ev(70.0, "nemesis", "final-retained", json!({"slot": 1, "values": [["jt/r/0", "ret/1/1"]]})));
        h.push(ev(70.0, "nemesis", "final-retained", json!({"slot": 2, "values": [["jt/r/0", "ret/1/2"]]})));
        let r = check(&h);
        let kinds: Vec<&str> = r.anomalies.keys().map(String::as_str).collect();
        assert_eq!(
            kinds,
            ["lost-persistent", "order", "phantom", "qos2-duplicate", "retained", "retained-diverged"],
            "{}",
            r.render()
        );
        assert!(r.anomalies["lost-persistent"][0].contains("pub-b/1/2"), "{}", r.render());
        assert!(r.anomalies["phantom"][0].contains("pub-b/1/9"));
        assert!(r.anomalies["retained"][0].contains("slot 1"));
    }

    /// The same run without the faults: clean.
    #[test]
    fn a_correct_history_has_no_anomalies() {
        let mut h = vec![
            ev(0.0, "psub-a", "connected", json!({"ep": 1, "via": "1"})),
            ev(1.0, "psub-a", "suback", json!({"ep": 1, "f": "jt/p/+"})),
            ev(5.0, "psub-a", "offline", json!({"ep": 1})),
        ];
        published_and_acked(&mut h, "pub-a", 1);
        h.push(ev(40.0, "psub-a", "connected", json!({"ep": 2, "via": "lb"})));
        for (i, s) in [1, 2, 2, 3].iter().enumerate() {
            let m = format!("pub-a/1/{s}");
            h.push(ev(
                41.0 + i as f64,
                "psub-a",
                "recv",
                json!({"ep": 2, "topic": "jt/p/pub-a", "m": m, "q": 1, "dup": i == 2, "fresh": true}),
            ));
        }
        h.push(ev(50.0, "psub-a", "drained", json!({"ep": 2})));
        let r = check(&h);
        assert_eq!(r.anomaly_count(), 0, "{}", r.render());
        assert_eq!(r.stats["checked_persistent_messages"], 3);
        assert_eq!(r.stats["duplicates"], 1);
    }
}
