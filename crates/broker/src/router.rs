//! The publish path: match a message against the route table and hand one
//! `Delivery` per matching session to that session's queue. The message is
//! shared (`Arc`), never copied per subscriber. Overlapping subscriptions
//! of one session yield a single delivery at the highest granted QoS with
//! every subscription identifier (MQTT-3.3.4-2 / 5.0 §3.3.4); each matching
//! shared group delivers to one of its members.

use std::sync::Arc;
use std::time::Instant;

use starling_codec::QoS;

use crate::broker::Broker;
use crate::ids::NodeId;
use crate::message::{Delivery, Message};
use crate::port::PortError;
use crate::routes::{Matched, Route, RouteTarget};
use crate::session::{Enqueued, Session};
use crate::will::WillSpec;

struct Candidate {
    session: Arc<Session>,
    qos: QoS,
    retain: bool,
    subscription_ids: Vec<u32>,
}

/// What happened to a published message on this node.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PublishOutcome {
    /// Deliveries queued to local sessions.
    pub delivered: usize,
    /// Other nodes with matching subscribers.
    pub remote_nodes: Vec<NodeId>,
}

impl PublishOutcome {
    pub fn matched(&self) -> bool {
        self.delivered > 0 || !self.remote_nodes.is_empty()
    }
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
    /// Delivers `msg` to every matching local session and reports which
    /// remote nodes have subscribers (the cluster forwards to them).
    pub fn route(&self, msg: &Arc<Message>) -> PublishOutcome {
        let mut normal: Vec<Candidate> = Vec::new();
        let mut shared: Vec<Candidate> = Vec::new();
        let mut remote: Vec<NodeId> = Vec::new();
        let publisher = msg.publisher.as_ref();
        self.inner.views.routes.for_each_match(&msg.topic, |m| match m {
            Matched::Route(r) => {
                if r.options.no_local && publisher == Some(&r.client) {
                    return;
                }
                match &r.target {
                    RouteTarget::Local(s) => normal.push(candidate(r, s, msg)),
                    RouteTarget::Remote(n) => remote.push(*n),
                }
            }
            Matched::Shared(g) => {
                if let Some(r) = g.pick() {
                    match &r.target {
                        RouteTarget::Local(s) => shared.push(candidate(r, s, msg)),
                        RouteTarget::Remote(n) => remote.push(*n),
                    }
                }
            }
        });
        merge_overlapping(&mut normal);
        let mut outcome = PublishOutcome::default();
        for c in normal.into_iter().chain(shared) {
            let d = Delivery {
                message: msg.clone(),
                qos: c.qos,
                retain: c.retain,
                subscription_ids: c.subscription_ids,
            };
            if c.session.enqueue(d) == Enqueued::Queued {
                outcome.delivered += 1;
            }
        }
        remote.sort_unstable();
        remote.dedup();
        outcome.remote_nodes = remote;
        outcome
    }

    /// Stores the retained state of a PUBLISH with RETAIN set (an empty
    /// payload clears the topic) through the state port.
    pub async fn retain(&self, msg: &Arc<Message>) -> Result<(), PortError> {
        let stored = if msg.payload.is_empty() { None } else { Some(msg.clone()) };
        self.inner.port.set_retained(&msg.topic, stored).await
    }

    /// Publishes a node-local `$SYS` message: retained on this node only.
    pub(crate) fn publish_sys(&self, msg: Arc<Message>) {
        self.inner.sys_retained.set(&msg.topic, Some(msg.clone()));
        self.route(&msg);
    }

    /// Publishes as a client would: retained state first, then routing.
    pub async fn publish(&self, msg: Arc<Message>) -> Result<PublishOutcome, PortError> {
        if msg.retain {
            self.retain(&msg).await?;
        }
        Ok(self.route(&msg))
    }

    /// Publishes a will on behalf of `client`.
    pub(crate) async fn publish_will(&self, client: &crate::ids::ClientId, will: &WillSpec) {
        let msg = will.to_message(client, Instant::now());
        self.inner.metrics.wills_published.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(client = %client, topic = %msg.topic, "publishing will");
        if let Err(e) = self.publish(msg).await {
            tracing::warn!(client = %client, error = %e, "will not published");
        }
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
