//! End-to-end tests: the real server on port-0 listeners, driven by raw
//! sockets (byte-level protocol checks), a WebSocket client and the
//! rumqttc client crate. One test binary, one module per area.

mod bad_input;
mod connect;
mod http;
mod publish;
mod retained;
mod rust_client;
mod security;
mod session;
mod shared;
mod subscribe;
mod v5;
mod websocket;
mod will;

use starling_codec::{Packet, ProtocolVersion, ReasonCode};

pub use starling_tests::{RawClient, TestServer};

pub const V31: ProtocolVersion = ProtocolVersion::V31;
pub const V311: ProtocolVersion = ProtocolVersion::V311;
pub const V5: ProtocolVersion = ProtocolVersion::V5;

/// The reason code of the DISCONNECT among `packets`, if any.
pub fn disconnect_reason(packets: &[Packet]) -> Option<ReasonCode> {
    packets.iter().find_map(|p| match p {
        Packet::Disconnect(d) => Some(d.reason),
        _ => None,
    })
}
