//! Identifier newtypes (`AccountId`, `KeyId`, `ConnId`, `EventId`) and their generators.
//!
//! Owns: the textual form of every id the server hands out.  May use: std, rand, serde.
//! Never: I/O. Invariants: an `AccountId` only holds `[A-Za-z0-9_-]{1,64}`, so it can sit
//! inside a broker channel name (`mt:{env}:{account}:{topic}`) without escaping.

use std::{fmt, sync::Arc};

use rand::{distr::Alphanumeric, Rng};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `n` random base62 characters from the thread-local CSPRNG.
pub fn random_base62(n: usize) -> String {
    rand::rng().sample_iter(&Alphanumeric).take(n).map(char::from).collect()
}

/// `n` encoded as exactly `width` base62 digits (`0-9A-Za-z`), most significant first.
/// Digits beyond `width` are dropped, so `width` must cover the value's range.
pub fn base62_fixed(mut n: u64, width: usize) -> String {
    const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut buf = vec![b'0'; width];
    for slot in buf.iter_mut().rev() {
        *slot = DIGITS[(n % 62) as usize];
        n /= 62;
    }
    buf.into_iter().map(char::from).collect()
}

/// The tenant that owns keys and events, e.g. `acct_local`. Shared text: a clone is a
/// reference-count bump (every session and channel key holds one).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(Arc<str>);

/// Why a string is not an account id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("account id must be 1-64 characters of A-Z a-z 0-9 _ -")]
pub struct InvalidAccountId;

impl AccountId {
    pub fn parse(s: &str) -> Result<Self, InvalidAccountId> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(Arc::from(s)))
        } else {
            Err(InvalidAccountId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for AccountId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for AccountId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An API key's record id, `key_` + 24 base62 characters. Not a secret. Shared text, like
/// `AccountId`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(Arc<str>);

impl KeyId {
    pub fn generate() -> Self {
        Self(Arc::from(format!("key_{}", random_base62(24))))
    }

    /// Wraps an id read from our own storage.
    pub fn from_string(s: String) -> Self {
        Self(Arc::from(s))
    }

    /// A caller-supplied id (URL, CLI): `key_` + 24 base62 characters, else `None`, so no
    /// other text ever reaches a store lookup.
    pub fn parse(s: &str) -> Option<Self> {
        let body = s.strip_prefix("key_")?;
        (body.len() == 24 && body.bytes().all(|b| b.is_ascii_alphanumeric()))
            .then(|| Self(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Serialize for KeyId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::from_string)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One WebSocket connection on this node. A random `u64` keeps registries compact;
/// it is shown to clients as `conn_` + base62.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId(u64);

impl ConnId {
    pub fn generate() -> Self {
        Self(rand::rng().random())
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn_{}", base62_fixed(self.0, 11))
    }
}

/// A new event id, `evt_` + 24 base62 characters.
pub fn new_event_id() -> String {
    format!("evt_{}", random_base62(24))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_id_charset_is_enforced() {
        assert!(AccountId::parse("acct_7Hq2-x").is_ok());
        assert_eq!(AccountId::parse(""), Err(InvalidAccountId));
        assert_eq!(AccountId::parse("acct:evil"), Err(InvalidAccountId));
        assert_eq!(AccountId::parse(&"a".repeat(65)), Err(InvalidAccountId));
        let err = serde_json::from_str::<AccountId>("\"a b\"");
        assert!(err.is_err());
    }

    #[test]
    fn generated_ids_have_their_prefix_and_length() {
        let k = KeyId::generate();
        assert!(k.as_str().starts_with("key_") && k.as_str().len() == 28);
        assert_ne!(k, KeyId::generate());
        assert_eq!(KeyId::parse(k.as_str()), Some(k.clone()));
        for bad in
            ["key_short", "key_AAAAAAAAAAAAAAAAAAAAAAAA:used", "kex_AAAAAAAAAAAAAAAAAAAAAAAA", ""]
        {
            assert_eq!(KeyId::parse(bad), None, "{bad}");
        }
        let c = ConnId::generate().to_string();
        assert!(c.starts_with("conn_") && c.len() == 16, "{c}");
        assert!(new_event_id().starts_with("evt_"));
    }
}
