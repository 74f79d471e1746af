//! The API-key token format of SPEC §2: `mt_<env>_sk_` + 40 base62 CSPRNG characters + a
//! 6-character base62 CRC32 of everything before it; plus its SHA-256 lookup hash.
//! WebSocket tickets use the same shape with `_tk_` (`mt_<env>_tk_…`).
//!
//! Owns: generating, parsing and hashing secrets.  May use: scope, ids, sha2, crc32fast.
//! Never: I/O, logging a secret. Invariants: `parse` rejects a bad prefix, length, alphabet
//! or checksum without any store lookup; `Token`'s `Debug`/`Display` print only the redacted form.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{
    ids::{base62_fixed, random_base62},
    scope::Environment,
};

const BODY_LEN: usize = 40;
const CHECK_LEN: usize = 6;

/// Why a string is not a well-formed token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token does not start with mt_live_sk_ or mt_test_sk_")]
    BadPrefix,
    #[error("token has the wrong length or alphabet")]
    BadShape,
    #[error("token checksum does not match")]
    BadChecksum,
}

/// What a secret is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// An API key, `mt_<env>_sk_…`.
    ApiKey,
    /// A single-use WebSocket ticket, `mt_<env>_tk_…`.
    Ticket,
}

/// A full secret. Only ever shown once, in the response that creates it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A fresh random API key for `env`.
    pub fn generate(env: Environment) -> Self {
        Self::generate_kind(env, TokenKind::ApiKey)
    }

    /// A fresh random secret of `kind` for `env`.
    pub fn generate_kind(env: Environment, kind: TokenKind) -> Self {
        let head = format!("{}{}", prefix(env, kind), random_base62(BODY_LEN));
        let check = checksum(&head);
        Self(format!("{head}{check}"))
    }

    /// Checks an API key's format and checksum (no store lookup); returns its environment.
    pub fn parse(s: &str) -> Result<(Self, Environment), TokenError> {
        Self::parse_kind(s, TokenKind::ApiKey)
    }

    /// Checks format and checksum of a secret of `kind`; returns its environment.
    pub fn parse_kind(s: &str, kind: TokenKind) -> Result<(Self, Environment), TokenError> {
        let (env, rest) = if let Some(r) = s.strip_prefix(prefix(Environment::Live, kind)) {
            (Environment::Live, r)
        } else if let Some(r) = s.strip_prefix(prefix(Environment::Test, kind)) {
            (Environment::Test, r)
        } else {
            return Err(TokenError::BadPrefix);
        };
        if rest.len() != BODY_LEN + CHECK_LEN || !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(TokenError::BadShape);
        }
        let (head, check) = s.split_at(s.len() - CHECK_LEN);
        if checksum(head).as_bytes().ct_eq(check.as_bytes()).into() {
            Ok((Self(s.to_owned()), env))
        } else {
            Err(TokenError::BadChecksum)
        }
    }

    /// The secret itself, for the one response that shows it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }

    /// `mt_live_sk_…` + the last four characters: safe to show and log.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// The redacted form of any secret-looking string: its prefix up to `_sk_`/`_tk_`, `…`, last 4.
pub fn redact(secret: &str) -> String {
    let cut = secret.find("_sk_").or_else(|| secret.find("_tk_")).map_or(0, |i| i + 4);
    let tail: String = secret.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
    format!("{}…{}", &secret[..cut], tail)
}

fn prefix(env: Environment, kind: TokenKind) -> &'static str {
    match (env, kind) {
        (Environment::Live, TokenKind::ApiKey) => "mt_live_sk_",
        (Environment::Test, TokenKind::ApiKey) => "mt_test_sk_",
        (Environment::Live, TokenKind::Ticket) => "mt_live_tk_",
        (Environment::Test, TokenKind::Ticket) => "mt_test_tk_",
    }
}

fn checksum(head: &str) -> String {
    base62_fixed(u64::from(crc32fast::hash(head.as_bytes())), CHECK_LEN)
}

/// SHA-256 of a full secret: the only form in which secrets are stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    pub fn of(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(out))
    }

    /// Constant-time equality, for comparing a presented secret with an expected one.
    pub fn ct_eq(&self, other: &TokenHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({}…)", &self.to_hex()[..8])
    }
}

impl serde::Serialize for TokenHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for TokenHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_hex(&s).ok_or_else(|| serde::de::Error::custom("bad token hash"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_with_their_environment() {
        for env in [Environment::Live, Environment::Test] {
            let t = Token::generate(env);
            assert_eq!(t.expose().len(), 11 + 40 + 6);
            let (parsed, got) = Token::parse(t.expose()).unwrap();
            assert_eq!(got, env);
            assert_eq!(parsed.hash(), t.hash());
        }
    }

    #[test]
    fn bad_prefix_shape_and_checksum_are_rejected() {
        let t = Token::generate(Environment::Live).expose().to_owned();
        assert_eq!(Token::parse(&t.replacen("mt_live", "mt_prod", 1)), Err(TokenError::BadPrefix));
        assert_eq!(Token::parse(&t[..t.len() - 1]), Err(TokenError::BadShape));
        assert_eq!(Token::parse(&format!("{}!", &t[..t.len() - 1])), Err(TokenError::BadShape));
        // Flip one body character: the checksum no longer matches.
        let mut bytes = t.clone().into_bytes();
        bytes[15] = if bytes[15] == b'a' { b'b' } else { b'a' };
        let flipped = String::from_utf8(bytes).unwrap();
        assert_eq!(Token::parse(&flipped), Err(TokenError::BadChecksum));
        // A test prefix on a live body fails the checksum too (the prefix is covered).
        assert_eq!(
            Token::parse(&t.replacen("mt_live", "mt_test", 1)),
            Err(TokenError::BadChecksum)
        );
    }

    #[test]
    fn tickets_and_keys_are_not_interchangeable() {
        let t = Token::generate_kind(Environment::Live, TokenKind::Ticket);
        assert!(t.expose().starts_with("mt_live_tk_"));
        assert_eq!(Token::parse_kind(t.expose(), TokenKind::Ticket).unwrap().1, Environment::Live);
        assert_eq!(Token::parse(t.expose()), Err(TokenError::BadPrefix));
        let k = Token::generate(Environment::Test);
        assert_eq!(Token::parse_kind(k.expose(), TokenKind::Ticket), Err(TokenError::BadPrefix));
    }

    #[test]
    fn debug_and_display_never_show_the_secret() {
        let t = Token::generate(Environment::Test);
        let tail = &t.expose()[t.expose().len() - 4..];
        assert_eq!(format!("{t}"), format!("mt_test_sk_…{tail}"));
        assert_eq!(format!("{t:?}"), format!("{t}"));
    }

    #[test]
    fn hash_hex_round_trips_and_compares() {
        let h = TokenHash::of("x");
        assert_eq!(TokenHash::from_hex(&h.to_hex()), Some(h));
        assert!(h.ct_eq(&TokenHash::of("x")) && !h.ct_eq(&TokenHash::of("y")));
        assert_eq!(TokenHash::from_hex("zz"), None);
    }
}
