//! Packets from the client after CONNECT.

use std::sync::Arc;
use std::time::Instant as StdInstant;

use starling_codec::{
    decode, Ack, AckKind, Disconnect, Packet, Properties, Publish, QoS, ReasonCode, SubAck, Subscribe,
    SubscriptionOptions, UnsubAck, Unsubscribe,
};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Close, Conn, Held, PendingAck};
use crate::auth::Action;
use crate::durable::Stored;
use crate::message::{Message, MessageProperties};
use crate::ops::SubscribeRequest;
use crate::port::PortError;
use crate::session::{PubRecOutcome, Qos2Begin};
use crate::topic::{validate_topic_name, TopicFilter};

/// A packet whose handling waits for the state port.
pub(super) enum Deferred {
    Subscribe(Subscribe),
    Unsubscribe(Unsubscribe),
    /// A retained PUBLISH: store, then route and acknowledge.
    Retain(Arc<Message>, u16),
}

fn port_close(e: PortError) -> Close {
    match e {
        PortError::NotOwner => Close::Kicked(ReasonCode::SESSION_TAKEN_OVER),
        PortError::Unavailable(why) | PortError::Unknown(why) => {
            Close::Protocol(ReasonCode::SERVER_UNAVAILABLE, format!("replicated state unavailable: {why}"))
        }
    }
}

impl<S> Conn<S>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    /// Decodes and handles the complete packets in the read buffer until
    /// one must wait for the state port (returned: SUBSCRIBE, UNSUBSCRIBE,
    /// a retained PUBLISH) or none is left (`None`).
    ///
    /// Synchronous on purpose: the connection loop awaits only the rare
    /// deferred packets, in a boxed future (`process_deferred`), so the
    /// state of an idle connection's task stays small.
    pub(super) fn handle_buffered(&mut self) -> Result<Option<Box<Deferred>>, Close> {
        let max_packet = self.broker.config().max_packet_size as usize;
        loop {
            // Over the publish rate: leave the rest in the buffer until the
            // limit allows more (reading stays paused meanwhile).
            if self.throttle.is_some() {
                return Ok(None);
            }
            let packet = match decode(&mut self.rbuf, self.neg.version, max_packet) {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(None),
                Err(e) => {
                    self.broker.metrics().protocol_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Err(Close::Protocol(e.reason_code(), e.to_string()));
                }
            };
            if let Some(deferred) = self.handle(packet)? {
                return Ok(Some(Box::new(deferred)));
            }
        }
    }

    fn handle(&mut self, packet: Packet) -> Result<Option<Deferred>, Close> {
        match packet {
            Packet::Publish(p) => self.on_publish(p),
            Packet::Ack(a) => self.on_ack(a).map(|()| None),
            Packet::Subscribe(s) => Ok(Some(Deferred::Subscribe(s))),
            Packet::Unsubscribe(u) => Ok(Some(Deferred::Unsubscribe(u))),
            Packet::PingReq => {
                self.write_packet(&Packet::PingResp);
                Ok(None)
            }
            Packet::Disconnect(d) => Err(self.on_disconnect(d)),
            Packet::Connect(_) => Err(self.protocol_error(ReasonCode::PROTOCOL_ERROR, "second CONNECT")),
            Packet::Auth(_) => {
                Err(self.protocol_error(ReasonCode::PROTOCOL_ERROR, "AUTH without enhanced authentication"))
            }
            other => Err(self.protocol_error(
                ReasonCode::PROTOCOL_ERROR,
                match other {
                    Packet::ConnAck(_) => "CONNACK from a client",
                    Packet::SubAck(_) => "SUBACK from a client",
                    Packet::UnsubAck(_) => "UNSUBACK from a client",
                    _ => "PINGRESP from a client",
                },
            )),
        }
    }

    /// Runs a deferred packet, then handles what is buffered behind it.
    pub(super) async fn process_deferred(&mut self, first: Box<Deferred>) -> Result<(), Close> {
        let mut next = Some(first);
        while let Some(d) = next {
            self.run_deferred(*d).await?;
            next = self.handle_buffered()?;
        }
        Ok(())
    }

    async fn run_deferred(&mut self, d: Deferred) -> Result<(), Close> {
        match d {
            Deferred::Subscribe(s) => self.on_subscribe(s).await,
            Deferred::Unsubscribe(u) => self.on_unsubscribe(u).await,
            Deferred::Retain(msg, packet_id) => {
                if let Err(e) = self.broker.retain(&msg).await {
                    // Not delivered: a resent PUBLISH must not look like a duplicate.
                    if msg.qos == QoS::ExactlyOnce {
                        self.session.inbound_qos2_release(packet_id);
                    }
                    return Err(port_close(e));
                }
                self.route_and_ack(&msg, packet_id)
            }
        }
    }

    fn protocol_error(&self, code: ReasonCode, why: &str) -> Close {
        self.broker.metrics().protocol_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Close::Protocol(code, why.to_string())
    }

    fn ack_reason(&self, kind: AckKind, packet_id: u16, reason: ReasonCode) -> Packet {
        Packet::Ack(Ack::with_reason(kind, packet_id, reason))
    }

    fn on_publish(&mut self, mut p: Publish) -> Result<Option<Deferred>, Close> {
        let v5 = self.neg.version.is_v5();
        // Topic alias (5.0): set or resolve.
        if let Some(alias) = p.properties.topic_alias.take() {
            if alias == 0 || alias > self.broker.config().topic_alias_maximum {
                return Err(self.protocol_error(ReasonCode::TOPIC_ALIAS_INVALID, "topic alias out of range"));
            }
            let aliases = self.aliases.get_or_insert_with(Default::default);
            if p.topic.is_empty() {
                match aliases.inbound.get(&alias) {
                    Some(t) => p.topic = t.clone(),
                    None => {
                        return Err(self.protocol_error(ReasonCode::PROTOCOL_ERROR, "unknown topic alias"))
                    }
                }
            } else {
                aliases.inbound.insert(alias, p.topic.clone());
            }
        }
        if let Err(e) = validate_topic_name(&p.topic, &self.broker.inner.topic_limits) {
            return Err(self.protocol_error(ReasonCode::TOPIC_NAME_INVALID, &e.to_string()));
        }
        if p.qos > self.broker.inner.max_qos {
            return Err(self.protocol_error(ReasonCode::QOS_NOT_SUPPORTED, "QoS above the server maximum"));
        }
        if p.retain && !self.broker.config().retain_available {
            return Err(self.protocol_error(ReasonCode::RETAIN_NOT_SUPPORTED, "retain is not available"));
        }
        if !p.properties.subscription_identifiers.is_empty() {
            return Err(
                self.protocol_error(ReasonCode::PROTOCOL_ERROR, "subscription identifier in a PUBLISH")
            );
        }
        self.broker.metrics().received(p.qos, p.payload.len());
        if let Some(rate) = self.rate.as_mut() {
            let wait = rate.take(p.payload.len());
            if !wait.is_zero() {
                self.throttle(wait);
            }
        }
        if !self.acl().check(Action::Write, &p.topic) {
            return self.deny_publish(&p);
        }

        if p.qos == QoS::ExactlyOnce {
            let max = usize::from(self.broker.config().receive_maximum);
            match self.session.inbound_qos2_begin(p.packet_id, max) {
                Qos2Begin::New => {}
                Qos2Begin::Duplicate => {
                    // Duplicate before PUBREL: acknowledge, do not deliver again.
                    self.write_packet(&Packet::Ack(Ack::new(AckKind::PubRec, p.packet_id)));
                    return Ok(None);
                }
                Qos2Begin::TooMany => {
                    return Err(
                        self.protocol_error(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED, "receive maximum exceeded")
                    )
                }
            }
        }

        let now = StdInstant::now();
        let mut msg = Message::new(p.topic, p.payload, p.qos, p.retain)
            .with_expiry_interval(p.properties.message_expiry_interval, now);
        if v5 {
            msg.properties = MessageProperties {
                payload_format_indicator: p.properties.payload_format_indicator,
                content_type: p.properties.content_type,
                response_topic: p.properties.response_topic,
                correlation_data: p.properties.correlation_data,
                user_properties: p.properties.user_properties,
            };
        }
        msg.publisher = Some(self.session.client_id().clone());
        let msg = Arc::new(msg);
        if msg.retain {
            return Ok(Some(Deferred::Retain(msg, p.packet_id)));
        }
        self.route_and_ack(&msg, p.packet_id)?;
        Ok(None)
    }

    /// A PUBLISH the ACL refuses: 5.0 gets PUBACK/PUBREC 0x87; 3.x has no
    /// way to say no, so the message is dropped and acknowledged as usual.
    fn deny_publish(&mut self, p: &Publish) -> Result<Option<Deferred>, Close> {
        self.broker.metrics().publish_denied.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(client = %self.session.client_id(), topic = %p.topic, "PUBLISH denied by the ACL");
        let v5 = self.neg.version.is_v5();
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let reason = if v5 { ReasonCode::NOT_AUTHORIZED } else { ReasonCode::SUCCESS };
                self.write_packet(&self.ack_reason(AckKind::PubAck, p.packet_id, reason));
            }
            QoS::ExactlyOnce if v5 => {
                // An error PUBREC ends the exchange: no PUBREL follows.
                self.write_packet(&self.ack_reason(AckKind::PubRec, p.packet_id, ReasonCode::NOT_AUTHORIZED));
            }
            QoS::ExactlyOnce => {
                let max = usize::from(self.broker.config().receive_maximum);
                if self.session.inbound_qos2_begin(p.packet_id, max) == Qos2Begin::TooMany {
                    return Err(
                        self.protocol_error(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED, "receive maximum exceeded")
                    );
                }
                self.write_packet(&Packet::Ack(Ack::new(AckKind::PubRec, p.packet_id)));
            }
        }
        Ok(None)
    }

    /// Delivers an accepted PUBLISH and acknowledges it (5.0: 0x10 when no
    /// subscriber matched).
    ///
    /// - A message that must be stored for persistent sessions reaches no
    ///   one else until it is stored (a refused message is delivered
    ///   nowhere); the messages after it from this client wait behind it,
    ///   so that everyone gets them in order.
    /// - A QoS 1/2 message that arrives while this node is not ready (cut
    ///   off from the leader: its routes may miss subscriptions made since)
    ///   is held until the node is ready again and routed then; refused
    ///   after `HOLD_WHILE_NOT_READY`. QoS 0 goes out on the routes the
    ///   node has.
    fn route_and_ack(&mut self, msg: &Arc<Message>, packet_id: u16) -> Result<(), Close> {
        let kind = match msg.qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(AckKind::PubAck),
            QoS::ExactlyOnce => Some(AckKind::PubRec),
        };
        if kind.is_some() && !self.broker.is_ready() {
            let acks = self.acks.get_or_insert_with(Default::default);
            acks.push_back(PendingAck {
                kind,
                packet_id,
                reason: ReasonCode::SUCCESS,
                wait: None,
                stored: None,
                outcome: None,
                unknown: false,
                route: Some(Held::Unplanned(msg.clone())),
            });
            // At the head, it needs a waiter now; behind others, it gets
            // one when it reaches the head.
            return if acks.len() == 1 { self.flush_ready_acks() } else { Ok(()) };
        }
        let mut plan = self.broker.plan_route(msg);
        let reason = if self.neg.version.is_v5() && !plan.matched() {
            ReasonCode::NO_MATCHING_SUBSCRIBERS
        } else {
            ReasonCode::SUCCESS
        };
        let durable = std::mem::take(&mut plan.durable);
        // Held entries are always a suffix of the queue (everything behind
        // a held one is held; routes run only at the head): look at the back.
        let held_ahead = self.acks.as_ref().and_then(|a| a.back()).is_some_and(|p| p.route.is_some());
        if durable.is_empty() && !held_ahead {
            let outcome = self.broker.execute_route(msg, plan);
            let Some(kind) = kind else { return Ok(()) };
            // Acknowledgements go out in the order the PUBLISHes came in
            // (MQTT-4.6.0-2); one waiting for other nodes holds back the rest.
            if outcome.ack.is_none() && self.acks.as_ref().is_none_or(|a| a.is_empty()) {
                self.write_packet(&self.ack_reason(kind, packet_id, reason));
            } else {
                let acks = self.acks.get_or_insert_with(Default::default);
                acks.push_back(PendingAck {
                    kind: Some(kind),
                    packet_id,
                    reason,
                    wait: outcome.ack,
                    stored: None,
                    outcome: None,
                    unknown: false,
                    route: None,
                });
            }
            return Ok(());
        }
        // QoS 1/2 for persistent sessions: stored on a majority first.
        let stored = (!durable.is_empty()).then(|| self.broker.enqueue_durable(msg, durable));
        let acks = self.acks.get_or_insert_with(Default::default);
        acks.push_back(PendingAck {
            kind,
            packet_id,
            reason,
            wait: None,
            stored,
            outcome: None,
            unknown: false,
            route: Some(Held::Planned(msg.clone(), plan)),
        });
        Ok(())
    }

    /// Sends the acknowledgements at the head of the queue whose peers
    /// have answered and whose durable copies are stored. A QoS 1/2
    /// message that could not be stored is never acknowledged as such:
    /// MQTT 5 gets the failure in its PUBACK/PUBREC, 3.x (which cannot be
    /// told) is disconnected so that it sends the message again.
    pub(super) fn flush_ready_acks(&mut self) -> Result<(), Close> {
        while let Some(a) = self.pop_ready_ack() {
            if a.unknown {
                // A QoS 2 message sent again must not be taken for one
                // already received: its first copy may not be stored.
                if a.kind == Some(AckKind::PubRec) {
                    self.session.inbound_qos2_release(a.packet_id);
                }
                return Err(Close::Kicked(ReasonCode::UNSPECIFIED_ERROR));
            }
            let Some(kind) = a.kind else { continue };
            if a.reason == ReasonCode::SERVER_UNAVAILABLE && !self.neg.version.is_v5() {
                return Err(Close::Kicked(ReasonCode::SERVER_UNAVAILABLE));
            }
            let reason = if a.reason == ReasonCode::SERVER_UNAVAILABLE {
                ReasonCode::UNSPECIFIED_ERROR
            } else {
                a.reason
            };
            if kind == AckKind::PubRec && reason.is_error() {
                // An error PUBREC ends the exchange: the id is free again.
                self.session.inbound_qos2_release(a.packet_id);
            }
            self.write_packet(&self.ack_reason(kind, a.packet_id, reason));
        }
        Ok(())
    }

    /// The entry at the head of the queue, once it can go: held until this
    /// node is ready (then planned), its durable copies stored (then it is
    /// delivered to everyone else, unless the store failed), its peers
    /// answered. Its reason is updated on the way.
    fn pop_ready_ack(&mut self) -> Option<PendingAck> {
        use tokio::sync::oneshot::error::TryRecvError;
        let v5 = self.neg.version.is_v5();
        let broker = &self.broker;
        let metrics = broker.metrics();
        let acks = self.acks.as_mut()?;
        let front = acks.front_mut()?;
        if let Some(w) = front.stored.as_mut() {
            front.outcome = Some(match w.try_recv() {
                Err(TryRecvError::Empty) => return None,
                Ok(o) => o,
                Err(TryRecvError::Closed) => Stored::Unavailable,
            });
            front.stored = None;
        }
        if let Some(outcome) = front.outcome.take() {
            match outcome {
                Stored::Yes => {}
                Stored::QuotaExceeded => {
                    metrics.durable_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if v5 {
                        // Refused: delivered to no one.
                        front.reason = ReasonCode::QUOTA_EXCEEDED;
                        front.route = None;
                    }
                }
                Stored::Unknown => {
                    // Perhaps stored, perhaps not: no answer is true, so
                    // the client gets none (its connection is closed and it
                    // publishes again); no one else gets it from here.
                    metrics.durable_unavailable.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    front.unknown = true;
                    front.route = None;
                }
                Stored::Unavailable => {
                    if matches!(front.route, Some(Held::Planned(..))) {
                        metrics.durable_unavailable.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    front.reason = ReasonCode::SERVER_UNAVAILABLE;
                    front.route = None;
                }
            }
        }
        if let Some(Held::Unplanned(msg)) = &front.route {
            if !broker.is_ready() {
                front.stored = Some(ready_waiter(broker.clone()));
                return None;
            }
            let msg = msg.clone();
            let mut plan = broker.plan_route(&msg);
            if v5 && !plan.matched() {
                front.reason = ReasonCode::NO_MATCHING_SUBSCRIBERS;
            }
            let durable = std::mem::take(&mut plan.durable);
            front.route = Some(Held::Planned(msg.clone(), plan));
            if !durable.is_empty() {
                front.stored = Some(broker.enqueue_durable(&msg, durable));
                return None;
            }
        }
        if let Some(Held::Planned(msg, plan)) = front.route.take() {
            front.wait = broker.execute_route(&msg, plan).ack;
        }
        if let Some(w) = front.wait.as_mut() {
            match w.try_recv() {
                Err(TryRecvError::Empty) => return None,
                // Acknowledged, or given up on (peer down): either way
                // this node has done what it can.
                _ => front.wait = None,
            }
        }
        acks.pop_front()
    }

    fn on_ack(&mut self, a: Ack) -> Result<(), Close> {
        match a.kind {
            AckKind::PubAck => self.completed(self.session.on_puback(a.packet_id)),
            AckKind::PubRec => match self.session.on_pubrec(a.packet_id, a.reason.is_error()) {
                PubRecOutcome::SendPubRel => {
                    self.write_packet(&Packet::Ack(Ack::new(AckKind::PubRel, a.packet_id)));
                }
                // PUBREL goes out once the release is replicated.
                PubRecOutcome::Release { seq } => self.broker.durable().release(&self.session, seq),
                PubRecOutcome::Ended { seq } => self.completed(Some(seq)),
                PubRecOutcome::Unknown => {
                    if !a.reason.is_error() {
                        let reason = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                        self.write_packet(&self.ack_reason(AckKind::PubRel, a.packet_id, reason));
                    }
                }
            },
            AckKind::PubComp => self.completed(self.session.on_pubcomp(a.packet_id)),
            AckKind::PubRel => {
                let reason = if self.session.inbound_qos2_release(a.packet_id) {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
                };
                self.write_packet(&self.ack_reason(AckKind::PubComp, a.packet_id, reason));
            }
        }
        Ok(())
    }

    /// An outbound exchange ended (`None`: the id was unknown): room in
    /// the window; a durable message leaves its queue.
    fn completed(&mut self, done: Option<Option<u64>>) {
        let Some(durable) = done else { return };
        if let Some(seq) = durable {
            self.broker.durable().trim(&self.session, seq);
        }
        self.want_drain = true;
    }

    async fn on_subscribe(&mut self, s: Subscribe) -> Result<(), Close> {
        let v5 = self.neg.version.is_v5();
        // A refused filter: the 5.0 reason, or 0x80 "failure" for 3.1.1.
        let failure = |code: ReasonCode| if v5 { code } else { ReasonCode::UNSPECIFIED_ERROR };
        let limits = self.broker.inner.topic_limits;
        let max_qos = self.broker.inner.max_qos;
        let mut codes: Vec<ReasonCode> = Vec::with_capacity(s.filters.len());
        let mut requests: Vec<(usize, SubscribeRequest)> = Vec::new();
        let sub_id = s.properties.subscription_identifier;
        let max_subs = self.broker.config().max_subscriptions_per_client;
        let mut held: std::collections::HashSet<String> = if max_subs > 0 {
            self.broker
                .subscription_filters(self.session.client_id())
                .iter()
                .map(|f| f.as_str().to_string())
                .collect()
        } else {
            Default::default()
        };
        for (i, (raw, opts)) in s.filters.iter().enumerate() {
            match TopicFilter::parse(raw, &limits) {
                Ok(filter) => {
                    if filter.is_shared() && opts.no_local {
                        return Err(self.protocol_error(
                            ReasonCode::PROTOCOL_ERROR,
                            "no-local on a shared subscription",
                        ));
                    }
                    if !self.acl().check_subscribe(filter.filter()) {
                        self.broker
                            .metrics()
                            .subscribe_denied
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        codes.push(failure(ReasonCode::NOT_AUTHORIZED));
                        continue;
                    }
                    if max_subs > 0 && !held.contains(filter.as_str()) {
                        if held.len() >= max_subs {
                            self.broker
                                .metrics()
                                .subscribe_quota
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            codes.push(failure(ReasonCode::QUOTA_EXCEEDED));
                            continue;
                        }
                        held.insert(filter.as_str().to_string());
                    }
                    let granted = opts.qos.min(max_qos);
                    codes.push(ReasonCode(granted.as_u8()));
                    let options = SubscriptionOptions { qos: granted, ..*opts };
                    requests.push((i, SubscribeRequest { filter, options, subscription_id: sub_id }));
                }
                Err(_) => codes.push(failure(ReasonCode::TOPIC_FILTER_INVALID)),
            }
        }
        if !requests.is_empty() {
            let reqs: Vec<SubscribeRequest> = requests.iter().map(|(_, r)| r.clone()).collect();
            let client = self.session.client_id().clone();
            self.broker.subscribe_here(&self.session, &reqs);
            match self.broker.subscribe(&client, self.epoch, reqs.clone()).await {
                Ok(_) => {}
                Err(PortError::Unavailable(why) | PortError::Unknown(why)) => {
                    self.broker.take_back(&client, &reqs);
                    tracing::info!(%client, %why, "subscription not committed");
                    for (i, _) in &requests {
                        codes[*i] = failure(ReasonCode::UNSPECIFIED_ERROR);
                    }
                }
                Err(e) => {
                    self.broker.take_back(&client, &reqs);
                    return Err(port_close(e));
                }
            }
        }
        self.write_packet(&Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            properties: Properties::default(),
            reason_codes: codes,
        }));
        self.want_drain = true;
        Ok(())
    }

    async fn on_unsubscribe(&mut self, u: Unsubscribe) -> Result<(), Close> {
        let limits = self.broker.inner.topic_limits;
        let mut codes = vec![ReasonCode::SUCCESS; u.filters.len()];
        let mut valid: Vec<(usize, TopicFilter)> = Vec::new();
        for (i, raw) in u.filters.iter().enumerate() {
            match TopicFilter::parse(raw, &limits) {
                Ok(f) => valid.push((i, f)),
                Err(_) => codes[i] = ReasonCode::TOPIC_FILTER_INVALID,
            }
        }
        if !valid.is_empty() {
            let filters = valid.iter().map(|(_, f)| f.clone()).collect();
            let existed = self
                .broker
                .unsubscribe(self.session.client_id(), self.epoch, filters)
                .await
                .map_err(port_close)?;
            for ((i, _), ex) in valid.iter().zip(existed) {
                if !ex {
                    codes[*i] = ReasonCode::NO_SUBSCRIPTION_EXISTED;
                }
            }
        }
        let reason_codes = if self.neg.version.is_v5() { codes } else { Vec::new() };
        self.write_packet(&Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            properties: Properties::default(),
            reason_codes,
        }));
        Ok(())
    }

    fn on_disconnect(&mut self, d: Disconnect) -> Close {
        if let Some(new) = d.properties.session_expiry_interval {
            if self.neg.session_expiry == 0 && new != 0 {
                return self.protocol_error(
                    ReasonCode::PROTOCOL_ERROR,
                    "session expiry set after connecting with 0",
                );
            }
            self.neg.session_expiry = new.min(self.broker.config().max_session_expiry_secs);
        }
        if d.reason == ReasonCode::DISCONNECT_WITH_WILL {
            Close::ClientWithWill
        } else {
            Close::Client
        }
    }
}

/// How long a QoS 1/2 PUBLISH that arrived while this node was not ready
/// is held before it is refused (5.0: 0x80; 3.x: disconnected).
const HOLD_WHILE_NOT_READY: std::time::Duration = std::time::Duration::from_secs(5);

/// Answers `Stored::Yes` once the node is ready, `Stored::Unavailable`
/// after `HOLD_WHILE_NOT_READY`. One per connection at most (only the head
/// of its queue waits on it).
fn ready_waiter(broker: crate::broker::Broker) -> crate::durable::StoredWaiter {
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let until = tokio::time::Instant::now() + HOLD_WHILE_NOT_READY;
        loop {
            if broker.is_ready() {
                let _ = tx.send(Stored::Yes);
                return;
            }
            if tokio::time::Instant::now() >= until || tx.is_closed() {
                let _ = tx.send(Stored::Unavailable);
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    });
    rx
}
