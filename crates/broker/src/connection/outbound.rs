//! Packets to the client: deliveries from the session queue (with topic
//! aliases, subscription identifiers, message expiry and the client's
//! maximum packet size applied), acknowledgements and resends.

use std::time::Instant as StdInstant;

use starling_codec::{Packet, Publish, PublishProperties, QoS};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Close, Conn, DRAIN_BATCH, WRITE_HIGH_WATER};
use crate::auth::Action;
use crate::message::Delivery;
use crate::metrics::DropReason;
use crate::session::Outgoing;

impl<S> Conn<S>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    pub(super) fn write_packet(&mut self, p: &Packet) {
        // Encoding fails only for fields over the protocol maximum, which
        // the broker never builds; such a packet is skipped.
        if let Err(e) = p.encode(self.neg.version, &mut self.wbuf) {
            tracing::warn!(client = %self.session.client_id(), error = %e, packet = p.name(), "packet not encodable");
        }
    }

    /// Moves deliveries from the session queue into the write buffer.
    pub(super) fn drain(&mut self) -> Result<(), Close> {
        let mut batch = Vec::with_capacity(DRAIN_BATCH);
        while self.wbuf.len() < WRITE_HIGH_WATER {
            batch.clear();
            let now = StdInstant::now();
            if self
                .session
                .take_outgoing(self.epoch, usize::from(self.neg.window), DRAIN_BATCH, now, &mut batch)
                .is_none()
            {
                return Err(Close::Kicked(starling_codec::ReasonCode::SESSION_TAKEN_OVER));
            }
            let n = batch.len();
            for o in batch.drain(..) {
                self.send_outgoing(o, now);
            }
            if n < DRAIN_BATCH {
                self.want_drain = false;
                return Ok(());
            }
        }
        Ok(())
    }

    /// Drops an inflight message that will never be sent (a durable one
    /// leaves its queue too).
    fn discard(&mut self, packet_id: u16) {
        if let Some(seq) = self.session.discard_inflight(packet_id) {
            self.broker.durable().trim(&self.session, seq);
        }
        self.want_drain = true;
    }

    /// Resends what a resumed session left unacknowledged.
    pub(super) fn resend(&mut self, items: Vec<Outgoing>) {
        let now = StdInstant::now();
        for o in items {
            self.send_outgoing(o, now);
        }
    }

    fn send_outgoing(&mut self, o: Outgoing, now: StdInstant) {
        match o {
            Outgoing::PubRel { packet_id } => self.write_packet(&Packet::Ack(starling_codec::Ack::new(
                starling_codec::AckKind::PubRel,
                packet_id,
            ))),
            Outgoing::Publish { delivery, packet_id, dup } => {
                self.send_publish(&delivery, packet_id, dup, now)
            }
            Outgoing::Expired { seq } => self.broker.durable().trim(&self.session, seq),
        }
    }

    fn send_publish(&mut self, d: &Delivery, packet_id: u16, dup: bool, now: StdInstant) {
        let m = &d.message;
        let denied = {
            let acl = self.acl();
            !acl.is_open() && !acl.check(Action::Read, &m.topic)
        };
        if denied {
            // Never deliver what the subscriber may not read, whatever
            // brought it here (wildcard subscription, retained, will).
            self.broker.metrics().dropped(DropReason::NotAuthorized, d.qos);
            if d.qos != QoS::AtMostOnce {
                self.discard(packet_id);
            }
            return;
        }
        let v5 = self.neg.version.is_v5();
        let mut p = Publish {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic: m.topic.clone(),
            packet_id,
            properties: PublishProperties::default(),
            payload: m.payload.clone(),
        };
        let mut new_alias = None;
        if v5 {
            let props = &mut p.properties;
            props.message_expiry_interval = m.remaining_expiry(now);
            props.subscription_identifiers = d.subscription_ids.clone();
            if !m.properties.is_empty() {
                props.payload_format_indicator = m.properties.payload_format_indicator;
                props.content_type = m.properties.content_type.clone();
                props.response_topic = m.properties.response_topic.clone();
                props.correlation_data = m.properties.correlation_data.clone();
                props.user_properties = m.properties.user_properties.clone();
            }
            if self.neg.client_alias_max > 0 {
                let aliases = self.aliases.get_or_insert_with(Default::default);
                match aliases.outbound.get(&m.topic) {
                    Some(&a) => {
                        props.topic_alias = Some(a);
                        p.topic = Default::default();
                    }
                    None => {
                        let next = aliases.outbound.len() as u16 + 1;
                        if next <= self.neg.client_alias_max {
                            props.topic_alias = Some(next);
                            new_alias = Some(next);
                        }
                    }
                }
            }
        }
        if p.encoded_len(self.neg.version) > self.neg.client_max_packet as usize {
            // The client cannot receive it: discard as if delivered
            // (MQTT-3.1.2-25) and count it.
            self.broker.metrics().dropped(DropReason::TooLarge, d.qos);
            if d.qos != QoS::AtMostOnce {
                self.discard(packet_id);
            }
            return;
        }
        if let Some(a) = new_alias {
            self.aliases.get_or_insert_with(Default::default).outbound.insert(m.topic.clone(), a);
        }
        self.write_packet(&Packet::Publish(p));
        self.broker.metrics().sent(d.qos, m.payload.len());
    }
}
