//! Messages between nodes on the data plane: a published message (with
//! its 5.0 properties and remaining expiry) to and from `ForwardedMessage`.
//!
//! Encoding is total. Decoding checks everything a client's PUBLISH would
//! be checked for — UTF-8 without U+0000 in topic and strings, a QoS of
//! 0, 1 or 2, a payload format indicator that fits a byte — and refuses
//! anything else as corrupt: input from a peer is never coerced.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use starling_broker::forward::SharedTarget;
use starling_broker::ids::ClientId;
use starling_broker::message::{Delivery, Message, MessageProperties};
use starling_codec::{MqttStr, QoS};

use crate::pb::peer as pb;

/// A forwarded message that cannot be trusted.
#[derive(Debug, Clone, thiserror::Error)]
#[error("corrupt forwarded message: {0}")]
pub struct Corrupt(pub &'static str);

fn mqtt_str(b: Bytes, what: &'static str) -> Result<MqttStr, Corrupt> {
    MqttStr::from_bytes(b).map_err(|_| Corrupt(what))
}

fn string(s: String, what: &'static str) -> Result<MqttStr, Corrupt> {
    mqtt_str(Bytes::from(s.into_bytes()), what)
}

fn qos(v: u32) -> Result<QoS, Corrupt> {
    u8::try_from(v).ok().and_then(QoS::from_u8).ok_or(Corrupt("QoS other than 0, 1 or 2"))
}

fn encode_properties(p: &MessageProperties) -> Option<pb::MessageProperties> {
    if p.is_empty() {
        return None;
    }
    Some(pb::MessageProperties {
        payload_format_indicator: p.payload_format_indicator.map(u32::from),
        content_type: p.content_type.as_ref().map(|s| s.to_string()),
        response_topic: p.response_topic.as_ref().map(|s| s.to_string()),
        correlation_data: p.correlation_data.clone(),
        user_properties: p
            .user_properties
            .iter()
            .map(|(k, v)| pb::UserProperty { key: k.to_string(), value: v.to_string() })
            .collect(),
    })
}

fn decode_properties(p: pb::MessageProperties) -> Result<MessageProperties, Corrupt> {
    let payload_format_indicator = match p.payload_format_indicator {
        Some(v) => Some(u8::try_from(v).map_err(|_| Corrupt("payload format indicator over 255"))?),
        None => None,
    };
    let user_properties = p
        .user_properties
        .into_iter()
        .map(|u| Ok((string(u.key, "user property")?, string(u.value, "user property")?)))
        .collect::<Result<_, Corrupt>>()?;
    Ok(MessageProperties {
        payload_format_indicator,
        content_type: p.content_type.map(|s| string(s, "content type")).transpose()?,
        response_topic: p.response_topic.map(|s| string(s, "response topic")).transpose()?,
        correlation_data: p.correlation_data,
        user_properties,
    })
}

/// `msg` for the wire; its expiry as the time left at `now`.
pub fn encode_message(msg: &Message, now: Instant) -> pb::ForwardedMessage {
    pb::ForwardedMessage {
        topic: msg.topic.as_bytes().clone(),
        payload: msg.payload.clone(),
        qos: u32::from(msg.qos.as_u8()),
        retain: msg.retain,
        properties: encode_properties(&msg.properties),
        publisher: msg
            .publisher
            .as_ref()
            .map(|c| Bytes::copy_from_slice(c.as_str().as_bytes()))
            .unwrap_or_default(),
        expiry_ms: msg.expires_at.map_or(0, |t| t.saturating_duration_since(now).as_millis().max(1) as u64),
        deliver_normal: false,
        shared_targets: Vec::new(),
        only_client: String::new(),
        subscription_ids: Vec::new(),
    }
}

/// The message a peer sent; its expiry counted from `now`.
pub fn decode_message(m: &pb::ForwardedMessage, now: Instant) -> Result<Arc<Message>, Corrupt> {
    let topic = mqtt_str(m.topic.clone(), "topic not UTF-8")?;
    if topic.is_empty() {
        return Err(Corrupt("empty topic"));
    }
    let mut msg = Message::new(topic, m.payload.clone(), qos(m.qos)?, m.retain);
    if let Some(p) = m.properties.clone() {
        msg.properties = decode_properties(p)?;
    }
    if !m.publisher.is_empty() {
        let publisher = mqtt_str(m.publisher.clone(), "publisher not UTF-8")?;
        msg.publisher = Some(ClientId::new(&publisher));
    }
    if m.expiry_ms > 0 {
        msg.expires_at = Some(now + Duration::from_millis(m.expiry_ms));
    }
    Ok(Arc::new(msg))
}

/// A delivery handed from one node to another with its session.
pub fn encode_delivery(d: &Delivery, client: &ClientId, now: Instant) -> pb::ForwardedMessage {
    let mut m = encode_message(&d.message, now);
    m.qos = u32::from(d.qos.as_u8());
    m.retain = d.retain;
    m.only_client = client.to_string();
    m.subscription_ids = d.subscription_ids.clone();
    m
}

pub fn decode_delivery(m: &pb::ForwardedMessage, now: Instant) -> Result<Delivery, Corrupt> {
    Ok(Delivery {
        message: decode_message(m, now)?,
        qos: qos(m.qos)?,
        retain: m.retain,
        subscription_ids: m.subscription_ids.clone(),
        durable: None,
    })
}

pub fn encode_shared(t: &SharedTarget) -> pb::SharedTarget {
    pb::SharedTarget {
        client: t.client.to_string(),
        qos: u32::from(t.qos.as_u8()),
        subscription_id: t.subscription_id.unwrap_or(0),
    }
}

pub fn decode_shared(t: &pb::SharedTarget) -> Result<SharedTarget, Corrupt> {
    Ok(SharedTarget {
        client: ClientId::new(&t.client),
        qos: qos(t.qos)?,
        subscription_id: (t.subscription_id != 0).then_some(t.subscription_id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_properties_and_expiry() {
        let now = Instant::now();
        let mut m = Message::new("a/b".into(), Bytes::from_static(b"x"), QoS::ExactlyOnce, true);
        m.properties.content_type = Some("text/plain".into());
        m.properties.payload_format_indicator = Some(1);
        m.properties.user_properties.push(("k".into(), "v".into()));
        m.publisher = Some(ClientId::new("pub"));
        m.expires_at = Some(now + Duration::from_secs(5));
        let back = decode_message(&encode_message(&m, now), now).unwrap();
        assert_eq!(back.properties, m.properties);
        assert_eq!(back.publisher, m.publisher);
        assert_eq!((back.qos, back.retain), (QoS::ExactlyOnce, true));
        assert_eq!(back.expires_at, m.expires_at);
    }

    #[test]
    fn corrupt_input_is_refused_not_coerced() {
        let now = Instant::now();
        let good = encode_message(&Message::new("t".into(), Bytes::new(), QoS::AtMostOnce, false), now);
        let mut m = good.clone();
        m.qos = 3;
        assert!(decode_message(&m, now).is_err(), "QoS 3");
        let mut m = good.clone();
        m.topic = Bytes::from_static(b"\xff\xfe");
        assert!(decode_message(&m, now).is_err(), "topic not UTF-8");
        let mut m = good.clone();
        m.topic = Bytes::from_static(b"a\0b");
        assert!(decode_message(&m, now).is_err(), "U+0000 in the topic");
        let mut m = good.clone();
        m.properties =
            Some(pb::MessageProperties { payload_format_indicator: Some(256), ..Default::default() });
        assert!(decode_message(&m, now).is_err(), "indicator over a byte");
        let mut m = good;
        m.qos = 1 << 8;
        assert!(decode_delivery(&m, now).is_err(), "QoS truncated to 0 is not accepted");
        assert!(decode_shared(&pb::SharedTarget { client: "c".into(), qos: 7, subscription_id: 0 }).is_err());
    }
}
