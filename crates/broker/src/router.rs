//! The publish path: match a message against the route table and hand one
//! `Delivery` per matching session to that session's queue. The message is
//! shared (`Arc`), never copied per subscriber. Overlapping subscriptions
//! of one session yield a single delivery at the highest granted QoS with
//! every subscription identifier (MQTT-3.3.4-2 / 5.0 §3.3.4); each matching
//! shared group delivers to one of its members. QoS 1/2 deliveries to
//! persistent sessions, on any node, are not queued here: they become
//! `DurableTarget`s of one replicated `Enqueue` (durable.rs), delivered by
//! each session's owner once it is stored.

use std::sync::Arc;
use std::time::Instant;

use starling_codec::QoS;

use crate::broker::Broker;
use crate::forward::{AckWaiter, RemotePlan, SharedTarget};
use crate::ids::NodeId;
use crate::message::{Delivery, Message};
use crate::replicated::DurableTarget;
use crate::routes::{Matched, Route, RouteTable, RouteTarget};
use crate::session::{Enqueued, Session};

struct Candidate {
    session: Arc<Session>,
    qos: QoS,
    retain: bool,
    subscription_ids: Vec<u32>,
}

/// Where a message goes, decided before anything is delivered: a message
/// that must first be stored for persistent sessions is delivered to the
/// others only once it is (a refused message reaches no one).
#[derive(Default)]
pub struct RoutePlan {
    normal: Vec<Candidate>,
    shared: Vec<Candidate>,
    remote: Vec<RemotePlan>,
    /// Persistent sessions (anywhere) to store the message for.
    pub durable: Vec<DurableTarget>,
}

impl RoutePlan {
    /// Whether any subscriber matched.
    pub fn matched(&self) -> bool {
        !(self.normal.is_empty()
            && self.shared.is_empty()
            && self.remote.is_empty()
            && self.durable.is_empty())
    }
}

/// What happened to a published message on this node.
#[derive(Debug, Default)]
pub struct PublishOutcome {
    /// Deliveries queued to local sessions.
    pub delivered: usize,
    /// Other nodes the message was forwarded to.
    pub remote_nodes: Vec<NodeId>,
    /// For QoS 1/2 with remote subscribers: completes when the peers
    /// acknowledged; the publisher's PUBACK/PUBREC waits for it.
    pub ack: Option<AckWaiter>,
    /// Persistent sessions (anywhere) the message must be stored for
    /// before the publisher is acknowledged.
    pub durable: Vec<DurableTarget>,
}

impl PublishOutcome {
    pub fn matched(&self) -> bool {
        self.delivered > 0 || !self.remote_nodes.is_empty() || !self.durable.is_empty()
    }
}

/// The durable target for `route`, when the delivery is QoS 1/2 to a
/// persistent session.
fn durable_target(route: &Route, msg: &Message) -> Option<DurableTarget> {
    let qos = msg.qos.min(route.options.qos);
    let incarnation = route.durable.filter(|_| qos != QoS::AtMostOnce)?;
    Some(DurableTarget {
        client: route.client.clone(),
        incarnation,
        qos,
        retain: route.options.retain_as_published && msg.retain,
        subscription_ids: route.subscription_id.into_iter().collect(),
    })
}

/// One target per session: overlapping subscriptions merge (highest QoS,
/// every subscription identifier).
fn merge_durable(targets: &mut Vec<DurableTarget>) {
    if targets.len() < 2 {
        return;
    }
    targets.sort_by(|a, b| a.client.cmp(&b.client));
    let mut out: Vec<DurableTarget> = Vec::with_capacity(targets.len());
    for t in targets.drain(..) {
        match out.last_mut() {
            Some(last) if last.client == t.client => {
                last.qos = last.qos.max(t.qos);
                last.retain |= t.retain;
                last.subscription_ids.extend(t.subscription_ids);
            }
            _ => out.push(t),
        }
    }
    *targets = out;
}

fn plan_for(plans: &mut Vec<RemotePlan>, node: NodeId) -> &mut RemotePlan {
    let i = match plans.iter().position(|p| p.node == node) {
        Some(i) => i,
        None => {
            plans.push(RemotePlan { node, deliver_normal: false, shared: Vec::new() });
            plans.len() - 1
        }
    };
    &mut plans[i]
}

fn candidate(route: &Route, session: &Arc<Session>, msg: &Message) -> Candidate {
    Candidate {
        session: session.clone(),
        qos: msg.qos.min(route.options.qos),
        retain: route.options.retain_as_published && msg.retain,
        subscription_ids: route.subscription_id.into_iter().collect(),
    }
}

impl Broker {
    /// Delivers `msg` to every matching local session and forwards it to
    /// the other nodes that have matching subscribers; persistent sessions'
    /// targets are returned in `durable` (the caller stores them).
    pub fn route(&self, msg: &Arc<Message>) -> PublishOutcome {
        let plan = self.plan_route(msg);
        self.execute_route(msg, plan)
    }

    /// Matches `msg` against the routes without delivering anything yet
    /// (each `$share` group picks its member now).
    pub fn plan_route(&self, msg: &Arc<Message>) -> RoutePlan {
        let mut plan = RoutePlan::default();
        let publisher = msg.publisher.as_ref();
        self.inner.views.routes.for_each_match(&msg.topic, |m| match m {
            Matched::Route(r) => {
                if r.options.no_local && publisher == Some(&r.client) {
                    return;
                }
                if let Some(t) = durable_target(r, msg) {
                    plan.durable.push(t);
                    return;
                }
                match &r.target {
                    RouteTarget::Local(s) => plan.normal.push(candidate(r, s, msg)),
                    RouteTarget::Remote(n) => plan_for(&mut plan.remote, *n).deliver_normal = true,
                    RouteTarget::Unowned => {}
                }
            }
            Matched::Shared(g) => {
                if let Some(r) = g.pick() {
                    if let Some(t) = durable_target(r, msg) {
                        plan.durable.push(t);
                        return;
                    }
                    match &r.target {
                        RouteTarget::Local(s) => plan.shared.push(candidate(r, s, msg)),
                        RouteTarget::Remote(n) => plan_for(&mut plan.remote, *n).shared.push(SharedTarget {
                            client: r.client.clone(),
                            qos: msg.qos.min(r.options.qos),
                            subscription_id: r.subscription_id,
                        }),
                        RouteTarget::Unowned => {}
                    }
                }
            }
        });
        merge_durable(&mut plan.durable);
        plan
    }

    /// Delivers what `plan` holds to local sessions and forwards it to
    /// other nodes; whatever durable targets are still in the plan come
    /// back in the outcome.
    pub fn execute_route(&self, msg: &Arc<Message>, plan: RoutePlan) -> PublishOutcome {
        let mut outcome = enqueue_all(msg, plan.normal, plan.shared);
        outcome.durable = plan.durable;
        if !plan.remote.is_empty() {
            outcome.remote_nodes = plan.remote.iter().map(|p| p.node).collect();
            if let Some(f) = &self.inner.forwarder {
                outcome.ack = f.forward(msg, plan.remote, msg.qos != QoS::AtMostOnce);
            }
        }
        outcome
    }

    /// Delivers a message forwarded by another node: to this node's
    /// matching plain subscribers (`deliver_normal`) and to the chosen
    /// shared members that live here. Never forwards.
    pub fn deliver_local(&self, msg: &Arc<Message>, deliver_normal: bool, shared: &[SharedTarget]) -> usize {
        let mut normal: Vec<Candidate> = Vec::new();
        if deliver_normal {
            let publisher = msg.publisher.as_ref();
            self.inner.views.routes.for_each_match(&msg.topic, |m| {
                if let Matched::Route(r) = m {
                    if r.options.no_local && publisher == Some(&r.client) {
                        return;
                    }
                    // The publishing node stored it for persistent sessions.
                    if durable_target(r, msg).is_some() {
                        return;
                    }
                    if let RouteTarget::Local(s) = &r.target {
                        normal.push(candidate(r, s, msg));
                    }
                }
            });
        }
        let mut picked = Vec::new();
        for t in shared {
            if let Some(s) = self.inner.views.registry.get(&t.client) {
                picked.push(Candidate {
                    session: s,
                    qos: t.qos,
                    retain: false,
                    subscription_ids: t.subscription_id.into_iter().collect(),
                });
            }
        }
        enqueue_all(msg, normal, picked).delivered
    }

    /// Publishes a node-local `$SYS` message: retained on this node only.
    pub(crate) fn publish_sys(&self, msg: Arc<Message>) {
        self.inner.sys_retained.set(&msg.topic, Some(msg.clone()));
        self.route(&msg);
    }

    /// Retained messages matching a plain filter (replicated and `$SYS`).
    pub(crate) fn retained_matching(&self, filter: &str) -> Vec<Arc<Message>> {
        let now = Instant::now();
        let mut v = self.inner.views.retained.matching(filter, now);
        if filter.starts_with('$') {
            v.extend(self.inner.sys_retained.matching(filter, now));
        }
        v
    }
}

/// Queues one delivery per candidate (overlapping subscriptions of a
/// session merged first).
fn enqueue_all(msg: &Arc<Message>, mut normal: Vec<Candidate>, shared: Vec<Candidate>) -> PublishOutcome {
    merge_overlapping(&mut normal);
    let mut outcome = PublishOutcome::default();
    for c in normal.into_iter().chain(shared) {
        let d = Delivery {
            message: msg.clone(),
            qos: c.qos,
            retain: c.retain,
            subscription_ids: c.subscription_ids,
            durable: None,
        };
        if c.session.enqueue(d) == Enqueued::Queued {
            outcome.delivered += 1;
        }
    }
    outcome
}

/// Delivers a message that every node publishes for itself (a will
/// released by a replicated command): to this node's plain subscribers,
/// and for each matching shared group to the member every node picks the
/// same way, if it lives here.
pub(crate) fn deliver_replicated(routes: &RouteTable, msg: &Arc<Message>) -> usize {
    let mut normal: Vec<Candidate> = Vec::new();
    let mut shared: Vec<Candidate> = Vec::new();
    routes.for_each_match(&msg.topic, |m| match m {
        Matched::Route(r) => {
            if let RouteTarget::Local(s) = &r.target {
                normal.push(candidate(r, s, msg));
            }
        }
        Matched::Shared(g) => {
            if let Some(r) = g.pick_deterministic(&msg.topic) {
                if let RouteTarget::Local(s) = &r.target {
                    shared.push(candidate(r, s, msg));
                }
            }
        }
    });
    enqueue_all(msg, normal, shared).delivered
}

/// Collapses several matching subscriptions of one session into one
/// candidate with the highest QoS and all subscription identifiers.
fn merge_overlapping(c: &mut Vec<Candidate>) {
    if c.len() < 2 {
        return;
    }
    c.sort_unstable_by_key(|x| Arc::as_ptr(&x.session) as usize);
    let mut out: Vec<Candidate> = Vec::with_capacity(c.len());
    for x in c.drain(..) {
        match out.last_mut() {
            Some(last) if Arc::ptr_eq(&last.session, &x.session) => {
                last.qos = last.qos.max(x.qos);
                last.retain |= x.retain;
                last.subscription_ids.extend(x.subscription_ids);
            }
            _ => out.push(x),
        }
    }
    *c = out;
}
