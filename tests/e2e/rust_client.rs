//! A real Rust MQTT client (rumqttc) against the server, 3.1.1 and 5.0.

use std::time::Duration;

use crate::TestServer;

#[tokio::test]
async fn rumqttc_v311_pub_sub_qos1() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let server = TestServer::start().await;
    let mut opts = MqttOptions::new("rumq-sub", "127.0.0.1", server.mqtt.port());
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(opts, 10);
    client.subscribe("rumq/#", QoS::AtLeastOnce).await.unwrap();
    let mut popts = MqttOptions::new("rumq-pub", "127.0.0.1", server.mqtt.port());
    popts.set_keep_alive(Duration::from_secs(5));
    let (publisher, mut pevents) = AsyncClient::new(popts, 10);
    let mut got = Vec::new();
    let mut published = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.len() < 5 {
        tokio::select! {
            e = events.poll() => match e.unwrap() {
                Event::Incoming(Packet::SubAck(_)) if !published => {
                    for i in 0..5 {
                        publisher.publish("rumq/x", QoS::AtLeastOnce, false, vec![i]).await.unwrap();
                    }
                    published = true;
                }
                Event::Incoming(Packet::Publish(p)) => got.push(p.payload[0]),
                _ => {}
            },
            e = pevents.poll() => { e.unwrap(); }
            _ = tokio::time::sleep_until(deadline) => panic!("timed out, got {got:?}"),
        }
    }
    assert_eq!(got, vec![0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn rumqttc_v5_pub_sub_with_user_properties() {
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let server = TestServer::start().await;
    let mut opts = MqttOptions::new("rumq5-sub", "127.0.0.1", server.mqtt.port());
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(opts, 10);
    client.subscribe("rumq5/#", QoS::ExactlyOnce).await.unwrap();
    let mut popts = MqttOptions::new("rumq5-pub", "127.0.0.1", server.mqtt.port());
    popts.set_keep_alive(Duration::from_secs(5));
    let (publisher, mut pevents) = AsyncClient::new(popts, 10);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        tokio::select! {
            e = events.poll() => match e.unwrap() {
                Event::Incoming(Packet::SubAck(_)) => {
                    let props = PublishProperties {
                        user_properties: vec![("room".into(), "lobby".into())],
                        ..Default::default()
                    };
                    publisher
                        .publish_with_properties("rumq5/chat", QoS::ExactlyOnce, false, "hello", props)
                        .await
                        .unwrap();
                }
                Event::Incoming(Packet::Publish(p)) => {
                    assert_eq!(&p.payload[..], b"hello");
                    assert_eq!(p.qos, QoS::ExactlyOnce);
                    let props = p.properties.expect("properties");
                    assert_eq!(props.user_properties, vec![("room".to_string(), "lobby".to_string())]);
                    return;
                }
                _ => {}
            },
            e = pevents.poll() => { e.unwrap(); }
            _ = tokio::time::sleep_until(deadline) => panic!("timed out"),
        }
    }
}
