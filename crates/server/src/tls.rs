//! TLS for the mqtts and wss listeners (rustls, ring provider): the
//! server certificate, optional client-certificate verification against a
//! CA, and the client certificate's common name for
//! `auth.use_identity_as_username`.

use std::io::BufReader;
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsSection;

fn certs(path: &str, key: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {path} (`{key}`)"))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut BufReader::new(f))
        .collect::<Result<_, _>>()
        .with_context(|| format!("{path} (`{key}`) is not a PEM certificate file"))?;
    if certs.is_empty() {
        bail!("{path} (`{key}`) holds no certificate");
    }
    Ok(certs)
}

fn private_key(path: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {path} (`tls.key`)"))?;
    rustls_pemfile::private_key(&mut BufReader::new(f))
        .with_context(|| format!("{path} (`tls.key`) is not a PEM private key"))?
        .with_context(|| format!("{path} (`tls.key`) holds no private key"))
}

/// The acceptor for the TLS listeners, from the `[tls]` settings.
pub fn acceptor(t: &TlsSection) -> anyhow::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = if t.client_ca.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for c in certs(&t.client_ca, "tls.client_ca")? {
            roots.add(c).context("invalid CA certificate in `tls.client_ca`")?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let verifier = if t.require_client_cert { verifier } else { verifier.allow_unauthenticated() };
        builder.with_client_cert_verifier(verifier.build().context("client certificate verifier")?)
    };
    let mut config = builder
        .with_single_cert(certs(&t.cert, "tls.cert")?, private_key(&t.key)?)
        .context("`tls.cert` and `tls.key` do not form a valid pair")?;
    config.alpn_protocols = vec![b"mqtt".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The subject common name of the verified client certificate, if any.
pub fn peer_common_name(conn: &rustls::ServerConnection) -> Option<String> {
    let cert = conn.peer_certificates()?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}
