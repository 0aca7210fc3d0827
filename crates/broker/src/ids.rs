//! Newtype identifiers: client ids, node ids and connection epochs.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// An MQTT client identifier. Cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(Arc<str>);

impl ClientId {
    pub fn new(s: &str) -> ClientId {
        ClientId(Arc::from(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Stored and sent as a string.
impl serde::Serialize for ClientId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ClientId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ClientId, D::Error> {
        let s = String::deserialize(d)?;
        Ok(ClientId(Arc::from(s)))
    }
}

impl std::borrow::Borrow<str> for ClientId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for ClientId {
    fn from(s: &str) -> ClientId {
        ClientId::new(s)
    }
}

/// A cluster member's identifier. A single node is node 1.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default, serde::Serialize, serde::Deserialize,
)]
pub struct NodeId(pub u64);

impl From<u64> for NodeId {
    fn from(n: u64) -> NodeId {
        NodeId(n)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Identifies one network connection's ownership of a session, unique
/// cluster-wide: the node that accepted it and a per-node sequence that
/// starts from the wall clock at boot, so it never repeats after a restart.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, serde::Serialize, serde::Deserialize)]
pub struct Epoch {
    pub node: NodeId,
    pub seq: u64,
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.node, self.seq)
    }
}

/// One life of a persistent session, from the claim that created it to
/// its end: numbered by the replicated state (1, 2, …, never reused), so
/// a durable queue names the session life it belongs to and a message
/// routed to a session that has since ended and begun again (a clean
/// start) is never queued for the new one.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct Incarnation(pub u64);

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Hands out connection epochs for one node.
#[derive(Debug)]
pub struct EpochSource {
    node: NodeId,
    next: AtomicU64,
}

impl EpochSource {
    pub fn new(node: NodeId) -> EpochSource {
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        EpochSource { node, next: AtomicU64::new(start) }
    }

    pub fn next(&self) -> Epoch {
        Epoch { node: self.node, seq: self.next.fetch_add(1, Ordering::Relaxed) }
    }
}
