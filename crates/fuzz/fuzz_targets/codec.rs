//! The MQTT decoder on arbitrary bytes, for every protocol version, fed in
//! pieces at arbitrary split points: never a panic; every packet it accepts
//! encodes and decodes back to itself; it never consumes bytes it was not
//! given.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use starling_codec::decode;

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else { return };
    let version = starling_fuzz::version(control);
    // The other bits of the control byte choose the piece size.
    let piece = usize::from(control >> 2) + 1;
    let max = 64 * 1024;
    let mut buf = BytesMut::new();
    for chunk in rest.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            match decode(&mut buf, version, max) {
                Ok(Some(p)) => {
                    assert!(buf.len() < before, "a packet consumed no bytes");
                    let mut out = BytesMut::new();
                    if p.encode(version, &mut out).is_ok() {
                        let again = decode(&mut out, version, usize::MAX)
                            .unwrap_or_else(|e| panic!("re-encoded {p:?} does not decode: {e}"));
                        assert_eq!(again.as_ref(), Some(&p), "decode(encode(p)) != p");
                        assert!(out.is_empty(), "re-encoded packet has trailing bytes");
                    }
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "bytes consumed without a packet");
                    break;
                }
                // A decode error ends the connection: start over.
                Err(_) => return,
            }
        }
    }
});
