//! Identifiers. Every id that can appear in a subject is restricted to subject-safe characters.

use serde::{Deserialize, Serialize};
use std::fmt;

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::fill(&mut buf[..]);
    hex::encode(buf)
}

/// Characters allowed in ids that become subject tokens and directory names.
pub fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("is empty")]
    Empty,
    #[error("is longer than {max} characters")]
    TooLong { max: usize },
    #[error("contains `{found}`; only letters, digits, `_` and `-` are allowed")]
    BadChar { found: char },
}

/// Checks a string that becomes a subject token or a directory name: 1 to `max` characters,
/// letters, digits, `_` and `-`.
pub fn check_token(s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.chars().count() > max {
        return Err(IdError::TooLong { max });
    }
    if let Some(found) = s.chars().find(|c| !is_token_char(*c)) {
        return Err(IdError::BadChar { found });
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// A run: `<UTC yyyymmddThhmmssZ>-<6 hex>`, also the name of the run directory.
    RunId
);
string_id!(
    /// A task, as named by the scenario or the plan: `[A-Za-z0-9_-]{1,64}`.
    TaskId
);
string_id!(
    /// A message: 32 hex characters, unique per message.
    MessageId
);
string_id!(
    /// A W3C trace id: 32 lowercase hex characters; one run is one trace.
    TraceId
);
string_id!(
    /// A W3C span (parent) id: 16 lowercase hex characters.
    SpanId
);

impl TaskId {
    pub const MAX_LEN: usize = 64;

    /// Checks a user-supplied task id.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        check_token(s, Self::MAX_LEN)?;
        Ok(Self(s.to_owned()))
    }

    /// Builds an id without checking it; for ids that are already known to be valid
    /// (tests, values read back from the store).
    pub fn new_unchecked(s: impl Into<String>) -> Self {
        Self(s.into())
    }
}

impl RunId {
    /// A new run id from a timestamp and 6 random hex characters.
    pub fn generate(at: crate::Timestamp) -> Self {
        Self(format!("{}-{}", at.compact(), random_hex(3)))
    }

    pub fn parse(s: &str) -> Result<Self, IdError> {
        check_token(s, 80)?;
        Ok(Self(s.to_owned()))
    }

    pub fn new_unchecked(s: impl Into<String>) -> Self {
        Self(s.into())
    }
}

impl MessageId {
    pub fn generate() -> Self {
        Self(random_hex(16))
    }

    pub fn new_unchecked(s: impl Into<String>) -> Self {
        Self(s.into())
    }
}

impl TraceId {
    pub fn generate() -> Self {
        Self(random_hex(16))
    }

    pub fn new_unchecked(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// True if this is a valid W3C trace id (32 lowercase hex, not all zero).
    pub fn is_valid(&self) -> bool {
        self.0.len() == 32
            && self.0.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && self.0.bytes().any(|b| b != b'0')
    }
}

impl SpanId {
    pub fn generate() -> Self {
        Self(random_hex(8))
    }

    pub fn new_unchecked(s: impl Into<String>) -> Self {
        Self(s.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids() {
        let check = |s: &str, ok: bool| assert_eq!(TaskId::parse(s).is_ok(), ok, "{s:?}");
        check("build", true);
        check("a-b_c9", true);
        check("", false);
        check("a.b", false);
        check("a b", false);
        check("ü", false);
        check(&"x".repeat(64), true);
        check(&"x".repeat(65), false);
    }

    #[test]
    fn generated_ids_are_well_formed() {
        assert!(TraceId::generate().is_valid());
        assert_eq!(SpanId::generate().as_str().len(), 16);
        assert_eq!(MessageId::generate().as_str().len(), 32);
        let run = RunId::generate(crate::Timestamp::from_millis(0));
        assert!(run.as_str().starts_with("19700101T000000Z-"), "{run}");
        assert!(RunId::parse(run.as_str()).is_ok());
    }
}
