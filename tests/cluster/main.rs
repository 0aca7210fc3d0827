//! Tests against real `starling` processes on 127.0.0.1: the cluster
//! semantics on three-node clusters (each numbered promise of DESIGN §1),
//! membership through the admin CLI, and hostile clients against a node
//! whose memory is measured.

mod clock;
mod damaged;
mod durable;
mod failures;
mod hostile;
mod membership;
mod semantics;
mod snapshot;

use starling_codec::{Packet, ProtocolVersion, ReasonCode};

pub use starling_tests::cluster::Cluster;
pub use starling_tests::RawClient;

pub const V311: ProtocolVersion = ProtocolVersion::V311;
pub const V5: ProtocolVersion = ProtocolVersion::V5;

pub fn disconnect_reason(packets: &[Packet]) -> Option<ReasonCode> {
    packets.iter().find_map(|p| match p {
        Packet::Disconnect(d) => Some(d.reason),
        _ => None,
    })
}
