//! Wire primitives: big-endian integers, variable byte integers, strings and
//! binary data, read from a `Bytes` cursor (zero-copy) and written to a
//! `BytesMut`.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::types::MqttStr;

/// Largest value a variable byte integer can carry (4 bytes).
pub const VARINT_MAX: usize = 268_435_455;

/// A cursor over one packet's body. Every read checks the remaining length
/// first, so a short packet is a `Malformed` error, never a panic.
pub struct Reader {
    buf: Bytes,
}

impl Reader {
    pub fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.remaining()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.buf.remaining() < 1 {
            return Err(DecodeError::Malformed("packet shorter than its fields"));
        }
        Ok(self.buf.get_u8())
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.buf.remaining() < 2 {
            return Err(DecodeError::Malformed("packet shorter than its fields"));
        }
        Ok(self.buf.get_u16())
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        if self.buf.remaining() < 4 {
            return Err(DecodeError::Malformed("packet shorter than its fields"));
        }
        Ok(self.buf.get_u32())
    }

    pub fn varint(&mut self) -> Result<u32, DecodeError> {
        let mut value: u32 = 0;
        for i in 0..4 {
            let byte = self.u8()?;
            value |= u32::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::Malformed("variable byte integer longer than 4 bytes"))
    }

    pub fn bytes(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        if self.buf.remaining() < len {
            return Err(DecodeError::Malformed("packet shorter than its fields"));
        }
        Ok(self.buf.split_to(len))
    }

    /// Binary data: two-byte length then the bytes.
    pub fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()? as usize;
        self.bytes(len)
    }

    /// A UTF-8 encoded string: two-byte length, then validated UTF-8.
    pub fn string(&mut self) -> Result<MqttStr, DecodeError> {
        let b = self.binary()?;
        MqttStr::from_bytes(b)
    }

    /// Everything left (a PUBLISH payload, say).
    pub fn rest(&mut self) -> Bytes {
        let n = self.buf.remaining();
        self.buf.split_to(n)
    }
}

/// Number of bytes a variable byte integer takes.
pub fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub fn put_varint(out: &mut BytesMut, mut v: usize) -> Result<(), EncodeError> {
    if v > VARINT_MAX {
        return Err(EncodeError::TooLarge(v));
    }
    loop {
        let mut byte = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if v == 0 {
            return Ok(());
        }
    }
}

pub fn put_binary(out: &mut BytesMut, b: &[u8]) -> Result<(), EncodeError> {
    if b.len() > u16::MAX as usize {
        return Err(EncodeError::FieldTooLong(b.len()));
    }
    out.put_u16(b.len() as u16);
    out.put_slice(b);
    Ok(())
}

pub fn put_str(out: &mut BytesMut, s: &str) -> Result<(), EncodeError> {
    put_binary(out, s.as_bytes())
}

/// Encoded size of a string or binary field.
pub fn field_len(b: &[u8]) -> usize {
    2 + b.len()
}

/// Writes the fixed header: first byte and remaining length.
pub fn put_fixed_header(out: &mut BytesMut, first: u8, remaining: usize) -> Result<(), EncodeError> {
    out.reserve(1 + varint_len(remaining) + remaining);
    out.put_u8(first);
    put_varint(out, remaining)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trip_at_boundaries() {
        for v in [0usize, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, VARINT_MAX] {
            let mut out = BytesMut::new();
            put_varint(&mut out, v).unwrap();
            assert_eq!(out.len(), varint_len(v));
            let mut r = Reader::new(out.freeze());
            assert_eq!(r.varint().unwrap() as usize, v);
        }
    }

    #[test]
    fn varint_rejects_five_bytes_and_oversize() {
        let mut r = Reader::new(Bytes::from_static(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]));
        assert!(matches!(r.varint(), Err(DecodeError::Malformed(_))));
        let mut out = BytesMut::new();
        assert!(put_varint(&mut out, VARINT_MAX + 1).is_err());
    }

    #[test]
    fn strings_reject_bad_utf8_and_nul() {
        let mut r = Reader::new(Bytes::from_static(&[0, 2, 0xC3, 0x28]));
        assert!(r.string().is_err());
        let mut r = Reader::new(Bytes::from_static(&[0, 3, b'a', 0, b'b']));
        assert!(r.string().is_err());
        let mut r = Reader::new(Bytes::from_static(&[0, 5, b'a']));
        assert!(r.string().is_err());
        let mut r = Reader::new(Bytes::from_static(&[0, 2, b'o', b'k']));
        assert_eq!(r.string().unwrap().as_str(), "ok");
    }
}
