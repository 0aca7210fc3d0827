//! MQTT over WebSocket at /mqtt: subprotocols, packets split across and
//! packed into frames, interop with TCP clients.

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use starling_codec::{decode, Packet, QoS};
use starling_tests::{connect_packet, http_get};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::{RawClient, TestServer, V311, V5};

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(
    addr: std::net::SocketAddr,
    path: &str,
    proto: Option<&str>,
) -> Result<(Ws, Option<String>), String> {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    if let Some(p) = proto {
        req.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_str(p).unwrap());
    }
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.map_err(|e| e.to_string())?;
    let chosen = resp.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap().to_string());
    Ok((ws, chosen))
}

fn encode(p: &Packet, v: starling_codec::ProtocolVersion) -> Vec<u8> {
    let mut b = BytesMut::new();
    p.encode(v, &mut b).unwrap();
    b.to_vec()
}

/// Reads frames until one whole packet is decoded.
async fn next_packet(ws: &mut Ws, buf: &mut BytesMut, v: starling_codec::ProtocolVersion) -> Packet {
    loop {
        if let Some(p) = decode(buf, v, usize::MAX).unwrap() {
            return p;
        }
        match tokio::time::timeout(starling_tests::WAIT, ws.next()).await.expect("ws timeout") {
            Some(Ok(Message::Binary(b))) => buf.extend_from_slice(&b),
            Some(Ok(_)) => {}
            other => panic!("websocket ended: {other:?}"),
        }
    }
}

#[tokio::test]
async fn mqtt_over_websocket_with_both_subprotocols() {
    let server = TestServer::start().await;
    for (proto, v) in [("mqtt", V5), ("mqttv3.1", V311)] {
        let (mut ws, chosen) = ws_connect(server.ws, "/mqtt", Some(proto)).await.unwrap();
        assert_eq!(chosen.as_deref(), Some(proto));
        let mut buf = BytesMut::new();
        // CONNECT split into one-byte frames.
        for b in encode(&Packet::Connect(Box::new(connect_packet(v, &format!("ws-{proto}"), true))), v) {
            ws.send(Message::Binary(vec![b])).await.unwrap();
        }
        assert!(matches!(next_packet(&mut ws, &mut buf, v).await, Packet::ConnAck(a) if a.code == 0));
        // SUBSCRIBE and PINGREQ packed into one frame.
        let mut frame = encode(
            &Packet::Subscribe(starling_codec::Subscribe {
                packet_id: 1,
                properties: Default::default(),
                filters: vec![("ws/t".into(), starling_codec::SubscriptionOptions::new(QoS::AtLeastOnce))],
            }),
            v,
        );
        frame.extend(encode(&Packet::PingReq, v));
        ws.send(Message::Binary(frame)).await.unwrap();
        assert!(matches!(next_packet(&mut ws, &mut buf, v).await, Packet::SubAck(_)));
        assert_eq!(next_packet(&mut ws, &mut buf, v).await, Packet::PingResp);
        // A TCP client publishes; the WebSocket client receives.
        let (mut p, _) = RawClient::connect(server.mqtt, V311, "ws-tcp-pub", true).await;
        p.publish("ws/t", b"across transports", QoS::AtMostOnce, false, 0).await;
        match next_packet(&mut ws, &mut buf, v).await {
            Packet::Publish(m) => assert_eq!(&m.payload[..], b"across transports"),
            other => panic!("{other:?}"),
        }
        p.disconnect().await;
    }
}

#[tokio::test]
async fn wrong_path_and_wrong_subprotocol_are_refused() {
    let server = TestServer::start().await;
    let e = ws_connect(server.ws, "/other", Some("mqtt")).await.unwrap_err();
    assert!(e.contains("404"), "{e}");
    let e = ws_connect(server.ws, "/mqtt", Some("chat")).await.unwrap_err();
    assert!(e.contains("400"), "{e}");
    // A plain GET is not a WebSocket upgrade: refused (closed, no 101).
    let (status, _) = http_get(server.ws, "/mqtt").await;
    assert!(status == 0 || status >= 400, "{status}");
}
