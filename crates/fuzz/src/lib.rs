//! What the fuzz targets share: the meaning of an input's control byte.

use starling_codec::ProtocolVersion;

/// The protocol version a control byte chooses (its value mod 3); the
/// targets use the other bits for their own choices.
pub fn version(control: u8) -> ProtocolVersion {
    match control % 3 {
        0 => ProtocolVersion::V31,
        1 => ProtocolVersion::V311,
        _ => ProtocolVersion::V5,
    }
}
