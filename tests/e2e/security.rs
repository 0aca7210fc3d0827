//! TLS, authentication and ACLs as clients see them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use starling_broker::auth::password::hash_password;
use starling_codec::{Packet, ProtocolVersion, QoS, ReasonCode, Will};
use starling_tests::connect_packet;
use tokio_rustls::TlsConnector;

use crate::{RawClient, TestServer, V311, V5};

/// A throw-away CA with a server certificate for 127.0.0.1/localhost and
/// a client certificate, written as PEM files.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    pub fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "Starling test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_pem = ca.pem();
        std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
        let pki = Pki { dir, ca_pem, ca, ca_key };
        let (cert, key) = pki.issue("localhost", &["localhost", "127.0.0.1"]);
        std::fs::write(pki.path("server.pem"), cert).unwrap();
        std::fs::write(pki.path("server.key"), key).unwrap();
        pki
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// A certificate signed by the CA: (PEM cert, PEM key).
    pub fn issue(&self, cn: &str, sans: &[&str]) -> (String, String) {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A TLS client trusting the CA, optionally presenting a certificate.
    pub fn connector(&self, client: Option<(&str, &str)>) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile_certs(&self.ca_pem) {
            roots.add(c).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let b = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        use rustls::pki_types::pem::PemObject;
        let config = match client {
            Some((cert, key)) => b
                .with_client_auth_cert(
                    rustls_pemfile_certs(cert),
                    rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => b.with_no_client_auth(),
        };
        TlsConnector::from(Arc::new(config))
    }
}

fn rustls_pemfile_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).map(|c| c.unwrap()).collect()
}

async fn tls_client(
    addr: std::net::SocketAddr,
    connector: &TlsConnector,
    version: ProtocolVersion,
) -> std::io::Result<RawClient<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await?;
    Ok(RawClient::new(tls, version))
}

async fn tls_server(pki: &Pki, tweak: impl FnOnce(&mut starling_server::Config)) -> TestServer {
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    TestServer::with(move |c| {
        c.tls.cert = cert;
        c.tls.key = key;
        tweak(c);
    })
    .await
}

#[tokio::test]
async fn mqtt_over_tls_interoperates_with_tcp() {
    let pki = Pki::new();
    let server = tls_server(&pki, |_| {}).await;
    let mut s = tls_client(server.mqtts.unwrap(), &pki.connector(None), V5).await.unwrap();
    assert_eq!(s.handshake(connect_packet(V5, "tls-sub", true)).await.code, 0);
    s.subscribe(1, "secure/#", QoS::AtLeastOnce).await;
    let (mut p, _) = RawClient::connect(server.mqtt, V311, "tcp-pub", true).await;
    p.publish("secure/x", b"over tls", QoS::AtLeastOnce, false, 1).await;
    assert_eq!(&s.recv_publish().await.payload[..], b"over tls");
    // A client that does not trust the CA fails the handshake.
    let other = Pki::new();
    assert!(tls_client(server.mqtts.unwrap(), &other.connector(None), V5).await.is_err());
}

#[tokio::test]
async fn client_certificates_and_identity_as_user_name() {
    let pki = Pki::new();
    let rules = pki.path("acl.toml");
    std::fs::write(
        &rules,
        "[[rule]]\naccess = \"allow\"\naction = \"readwrite\"\ntopic = \"devices/%u/#\"\n",
    )
    .unwrap();
    let ca = pki.path("ca.pem");
    let server = tls_server(&pki, |c| {
        c.tls.client_ca = ca;
        c.tls.require_client_cert = true;
        c.auth.use_identity_as_username = true;
        c.auth.allow_anonymous = false;
        c.auth.acl_file = rules;
    })
    .await;
    let (cert, key) = pki.issue("sensor-9", &[]);
    let connector = pki.connector(Some((&cert, &key)));
    let mut c = tls_client(server.mqtts.unwrap(), &connector, V5).await.unwrap();
    assert_eq!(c.handshake(connect_packet(V5, "any-id", true)).await.code, 0);
    // The certificate's CN is the user name the ACL sees.
    c.publish("devices/sensor-9/temp", b"21", QoS::AtLeastOnce, false, 1).await;
    assert!(matches!(c.recv().await, Some(Packet::Ack(a)) if !a.reason.is_error()));
    c.publish("devices/sensor-8/temp", b"21", QoS::AtLeastOnce, false, 2).await;
    assert!(matches!(c.recv().await, Some(Packet::Ack(a)) if a.reason == ReasonCode::NOT_AUTHORIZED));
    // Without a client certificate, or with one from a CA the server does
    // not trust, the TLS handshake (or, in TLS 1.3, the first read) fails:
    // closed, never answered, never left hanging.
    let foreign = Pki::new();
    let (fcert, fkey) = foreign.issue("sensor-9", &[]);
    for (what, connector) in [
        ("no certificate", pki.connector(None)),
        ("a foreign CA's", foreign.connector(Some((&fcert, &fkey)))),
    ] {
        assert!(refused_at_tls(server.mqtts.unwrap(), &connector).await, "{what}: not refused");
    }
}

/// Whether the server refuses this TLS client: the handshake fails, or the
/// connection is closed before any MQTT answer. A server that accepts the
/// client (CONNACK) or leaves it hanging is not refusing.
async fn refused_at_tls(addr: std::net::SocketAddr, connector: &TlsConnector) -> bool {
    match tls_client(addr, connector, V5).await {
        Err(_) => true,
        Ok(mut c) => {
            let _ = c
                .try_send_bytes(&{
                    let mut b = bytes::BytesMut::new();
                    Packet::Connect(Box::new(connect_packet(V5, "x", true))).encode(V5, &mut b).unwrap();
                    b
                })
                .await;
            match c.recv_within(Duration::from_secs(5)).await {
                Ok(None) => true,
                Ok(Some(p)) => panic!("answered instead of refused: {p:?}"),
                Err(_) => panic!("neither refused nor answered within 5 s"),
            }
        }
    }
}

#[tokio::test]
async fn optional_client_certificates() {
    // client_ca set, require_client_cert off: a client without a
    // certificate connects (with a password); one with a certificate the CA
    // did not sign is still refused.
    let pki = Pki::new();
    let ca = pki.path("ca.pem");
    let server = tls_server(&pki, |c| {
        c.tls.client_ca = ca;
        c.tls.require_client_cert = false;
    })
    .await;
    let mut c = tls_client(server.mqtts.unwrap(), &pki.connector(None), V5).await.unwrap();
    assert_eq!(c.handshake(connect_packet(V5, "no-cert", true)).await.code, 0);
    let (cert, key) = pki.issue("dev-1", &[]);
    let mut c = tls_client(server.mqtts.unwrap(), &pki.connector(Some((&cert, &key))), V5).await.unwrap();
    assert_eq!(c.handshake(connect_packet(V5, "with-cert", true)).await.code, 0);
    let foreign = Pki::new();
    let (fcert, fkey) = foreign.issue("dev-1", &[]);
    assert!(refused_at_tls(server.mqtts.unwrap(), &foreign.connector(Some((&fcert, &fkey)))).await);
}

fn mosquitto_style_hash(password: &str) -> String {
    use base64::Engine;
    let salt = b"0123456789ab";
    let mut key = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password.as_bytes(), salt, 101, &mut key);
    let b64 = base64::engine::general_purpose::STANDARD;
    format!("$7$101${}${}", b64.encode(salt), b64.encode(key))
}

#[tokio::test]
async fn passwords_argon2id_and_mosquitto_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    std::fs::write(
        &file,
        format!("alice:{}\nbob:{}\n", hash_password("wonderland").unwrap(), mosquitto_style_hash("builder")),
    )
    .unwrap();
    let path = file.display().to_string();
    let server = TestServer::with(|c| {
        c.auth.allow_anonymous = false;
        c.auth.password_file = path;
        c.auth.failure_threshold = 3;
        c.auth.failure_delay_ms = 800;
    })
    .await;
    let login = |v, user: &str, pw: &str| {
        let mut c = connect_packet(v, &format!("{user}-{pw}"), true);
        c.username = Some(user.into());
        c.password = Some(bytes::Bytes::copy_from_slice(pw.as_bytes()));
        c
    };
    for (v, user, pw) in [(V5, "alice", "wonderland"), (V311, "bob", "builder")] {
        let mut c = RawClient::tcp(server.mqtt, v).await;
        assert_eq!(c.handshake(login(v, user, pw)).await.code, 0, "{user}");
    }
    // Bad password: 0x86 (5.0), 0x04 (3.1.1). No user name: 0x87 / 0x05.
    let mut c = RawClient::tcp(server.mqtt, V5).await;
    assert_eq!(c.handshake(login(V5, "alice", "nope")).await.code, ReasonCode::BAD_USER_NAME_OR_PASSWORD.0);
    let mut c = RawClient::tcp(server.mqtt, V311).await;
    assert_eq!(c.handshake(login(V311, "mallory", "x")).await.code, 0x04);
    let mut c = RawClient::tcp(server.mqtt, V5).await;
    assert_eq!(c.handshake(connect_packet(V5, "anon", true)).await.code, ReasonCode::NOT_AUTHORIZED.0);
    // A fourth failure from this address is answered no sooner than the delay.
    let started = Instant::now();
    let mut c = RawClient::tcp(server.mqtt, V311).await;
    assert_eq!(c.handshake(connect_packet(V311, "anon2", true)).await.code, 0x05);
    assert!(started.elapsed() >= Duration::from_millis(800), "refusal was not delayed");
    assert!(server.metric("starling_auth_failures_total").await >= 4.0);
}

#[tokio::test]
async fn acl_rules_for_publish_subscribe_and_every_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl.toml");
    std::fs::write(
        &acl,
        r#"
[[rule]]
access = "deny"
action = "read"
topic = "chat/secret"

[[rule]]
access = "allow"
action = "readwrite"
topic = "chat/#"

[[rule]]
access = "allow"
action = "write"
topic = "presence/%c"

[[rule]]
access = "allow"
action = "read"
topic = "presence/#"
user = "admin"

[[rule]]
access = "allow"
action = "read"
topic = "$SYS/#"
user = "admin"
"#,
    )
    .unwrap();
    let path = acl.display().to_string();
    let server = TestServer::with(|c| {
        c.auth.acl_file = path;
        c.mqtt.sys_interval_secs = 1;
    })
    .await;
    let user = |id: &str, name: Option<&str>| {
        let mut c = connect_packet(V5, id, true);
        c.username = name.map(Into::into);
        c
    };
    let (mut alice, _) = RawClient::connect_with(server.mqtt, user("alice", Some("alice"))).await;
    // SUBSCRIBE: covered by an allow → granted; not covered → 0x87.
    let ack = alice.subscribe(1, "chat/#", QoS::AtLeastOnce).await;
    assert_eq!(ack.reason_codes, vec![ReasonCode::GRANTED_QOS_1]);
    let ack = alice.subscribe(2, "#", QoS::AtLeastOnce).await;
    assert_eq!(ack.reason_codes, vec![ReasonCode::NOT_AUTHORIZED]);
    let ack = alice.subscribe(3, "presence/#", QoS::AtLeastOnce).await;
    assert_eq!(ack.reason_codes, vec![ReasonCode::NOT_AUTHORIZED], "presence/# is readable by admin only");
    // PUBLISH: allowed topic fine; forbidden → PUBACK 0x87, not delivered.
    let (mut bob, _) = RawClient::connect_with(server.mqtt, user("bob", Some("bob"))).await;
    bob.publish("chat/lobby", b"hi", QoS::AtLeastOnce, false, 1).await;
    assert!(matches!(bob.recv().await, Some(Packet::Ack(a)) if a.reason == ReasonCode::SUCCESS));
    assert_eq!(&alice.recv_publish().await.payload[..], b"hi");
    bob.publish("elsewhere", b"x", QoS::AtLeastOnce, false, 2).await;
    assert!(matches!(bob.recv().await, Some(Packet::Ack(a)) if a.reason == ReasonCode::NOT_AUTHORIZED));
    // A wildcard subscription never delivers a denied topic, live or retained.
    bob.publish("chat/secret", b"classified", QoS::AtLeastOnce, true, 3).await;
    assert!(matches!(bob.recv().await, Some(Packet::Ack(_))));
    alice.expect_silence(Duration::from_millis(300)).await;
    let (mut late, _) = RawClient::connect_with(server.mqtt, user("late", Some("late"))).await;
    late.subscribe(1, "chat/+", QoS::AtMostOnce).await;
    late.expect_silence(Duration::from_millis(300)).await;
    assert!(
        server.metric("starling_messages_dropped_total{reason=\"not_authorized\",qos=\"1\"}").await >= 1.0
    );
    // Wills obey the rules too: a will on presence/%c is allowed to be
    // written, but only admin may read it.
    let (mut admin, _) = RawClient::connect_with(server.mqtt, user("admin-1", Some("admin"))).await;
    admin.subscribe(1, "presence/#", QoS::AtMostOnce).await;
    let mut w = user("lamp", None);
    w.will = Some(Will {
        topic: "presence/lamp".into(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    });
    let (lamp, _) = RawClient::connect_with(server.mqtt, w).await;
    drop(lamp);
    assert_eq!(admin.recv_publish().await.topic.as_str(), "presence/lamp");
    // A will on a topic the client may not write is refused at CONNECT.
    let mut bad = user("x", None);
    bad.will = Some(Will {
        topic: "presence/someone-else".into(),
        payload: bytes::Bytes::new(),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    });
    let mut c = RawClient::tcp(server.mqtt, V5).await;
    assert_eq!(c.handshake(bad).await.code, ReasonCode::NOT_AUTHORIZED.0);
    // $SYS is readable only when a rule allows it.
    assert_eq!(
        alice.subscribe(9, "$SYS/#", QoS::AtMostOnce).await.reason_codes,
        vec![ReasonCode::NOT_AUTHORIZED]
    );
    assert_eq!(
        admin.subscribe(9, "$SYS/broker/uptime", QoS::AtMostOnce).await.reason_codes,
        vec![ReasonCode::GRANTED_QOS_0]
    );
    assert!(admin.recv_publish().await.topic.starts_with("$SYS/"));
}

#[tokio::test]
async fn publish_rate_limit_pushes_back_and_subscription_quota() {
    let server = TestServer::with(|c| {
        c.mqtt.publish_rate = 20;
        c.mqtt.max_subscriptions_per_client = 2;
    })
    .await;
    let (mut s, _) = RawClient::connect(server.mqtt, V5, "quota", true).await;
    let o = starling_codec::SubscriptionOptions::new(QoS::AtMostOnce);
    let ack = s.subscribe_with(1, vec![("a", o), ("b", o), ("c", o)], Default::default()).await;
    assert_eq!(
        ack.reason_codes,
        vec![ReasonCode::GRANTED_QOS_0, ReasonCode::GRANTED_QOS_0, ReasonCode::QUOTA_EXCEEDED]
    );
    // Re-subscribing to a held filter does not count twice.
    assert_eq!(s.subscribe(2, "a", QoS::AtMostOnce).await.reason_codes, vec![ReasonCode::GRANTED_QOS_0]);
    // 60 QoS 1 messages at 20/s: the broker reads no faster than that,
    // so the last PUBACK cannot come before about two seconds (one
    // second of burst is allowed). Nothing is dropped.
    let (mut p, _) = RawClient::connect(server.mqtt, V311, "fast", true).await;
    let started = Instant::now();
    for i in 0..60u16 {
        p.publish("a", &[1], QoS::AtLeastOnce, false, i + 1).await;
    }
    for _ in 0..60 {
        assert!(matches!(p.recv_within(Duration::from_secs(10)).await, Ok(Some(Packet::Ack(_)))));
    }
    assert!(started.elapsed() >= Duration::from_millis(1900), "{:?}", started.elapsed());
    for _ in 0..60 {
        s.recv_publish().await;
    }
    assert!(server.metric("starling_rate_limited_total").await >= 1.0);
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_before_reading() {
    let server = TestServer::with(|c| c.listeners.max_connections = 2).await;
    let (_a, _) = RawClient::connect(server.mqtt, V311, "one", true).await;
    let (_b, _) = RawClient::connect(server.mqtt, V311, "two", true).await;
    let mut third = RawClient::tcp(server.mqtt, V311).await;
    let _ = third.try_send_bytes(&[0x10]).await;
    assert!(third.expect_closed().await.is_empty());
    assert!(server.metric("starling_connections_rejected_total").await >= 1.0);
}
