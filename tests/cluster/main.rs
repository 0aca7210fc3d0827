//! Cluster semantics on real three-node clusters: separate `starling`
//! processes on 127.0.0.1, driven with raw MQTT clients and the admin CLI.
//! Each test is one numbered promise of the cluster issue (and DESIGN §1).

mod failures;
mod membership;
mod semantics;

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
