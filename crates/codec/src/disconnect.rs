//! DISCONNECT and AUTH (5.0 only for AUTH and for DISCONNECT's body).

use bytes::{BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::properties::{Properties, PropertyContext};
use crate::reason::ReasonCode;
use crate::types::ProtocolVersion;
use crate::wire::{put_fixed_header, Reader};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    pub reason: ReasonCode,
    pub properties: Properties,
}

impl Disconnect {
    pub fn new(reason: ReasonCode) -> Disconnect {
        Disconnect { reason, properties: Properties::default() }
    }

    pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<Disconnect, DecodeError> {
        let mut d = Disconnect::default();
        if version.is_v5() {
            if !r.is_empty() {
                d.reason = ReasonCode(r.u8()?);
            }
            if !r.is_empty() {
                d.properties = Properties::decode(&mut r, PropertyContext::Disconnect)?;
            }
        }
        if !r.is_empty() {
            return Err(DecodeError::Malformed("bytes after DISCONNECT"));
        }
        Ok(d)
    }

    pub(crate) fn encode(&self, version: ProtocolVersion, out: &mut BytesMut) -> Result<(), EncodeError> {
        if !version.is_v5() {
            put_fixed_header(out, 0xE0, 0)?;
            return Ok(());
        }
        if self.reason == ReasonCode::SUCCESS && self.properties.is_empty() {
            put_fixed_header(out, 0xE0, 0)?;
            return Ok(());
        }
        put_fixed_header(out, 0xE0, 1 + self.properties.encoded_len())?;
        out.put_u8(self.reason.0);
        self.properties.encode(out)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    pub reason: ReasonCode,
    pub properties: Properties,
}

impl Auth {
    pub(crate) fn decode(mut r: Reader) -> Result<Auth, DecodeError> {
        let mut a = Auth::default();
        if !r.is_empty() {
            a.reason = ReasonCode(r.u8()?);
        }
        if !r.is_empty() {
            a.properties = Properties::decode(&mut r, PropertyContext::Auth)?;
        }
        if !r.is_empty() {
            return Err(DecodeError::Malformed("bytes after AUTH"));
        }
        Ok(a)
    }

    pub(crate) fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        if self.reason == ReasonCode::SUCCESS && self.properties.is_empty() {
            put_fixed_header(out, 0xF0, 0)?;
            return Ok(());
        }
        put_fixed_header(out, 0xF0, 1 + self.properties.encoded_len())?;
        out.put_u8(self.reason.0);
        self.properties.encode(out)
    }
}
