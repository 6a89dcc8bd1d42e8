//! Bytes on the wire: JSON envelopes, version-checked.

use crate::{Envelope, PROTOCOL_VERSION};
use serde::{Serialize, de::DeserializeOwned};

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message is not valid json for this type")]
    Json(#[source] serde_json::Error),
    #[error("protocol version {found} is not supported (this build speaks {PROTOCOL_VERSION})")]
    Version { found: u32 },
}

pub fn encode<T: Serialize>(env: &Envelope<T>) -> Vec<u8> {
    // Serializing our own types into a Vec cannot fail: no maps with non-string keys, no I/O.
    serde_json::to_vec(env).expect("wire types always serialize")
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<Envelope<T>, DecodeError> {
    #[derive(serde::Deserialize)]
    struct Version {
        v: u32,
    }
    if let Ok(Version { v }) = serde_json::from_slice::<Version>(bytes)
        && v != PROTOCOL_VERSION
    {
        return Err(DecodeError::Version { found: v });
    }
    serde_json::from_slice(bytes).map_err(DecodeError::Json)
}
