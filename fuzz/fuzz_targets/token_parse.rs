//! Fuzz the API-key and ticket parsers: no input may panic; whatever parses must re-parse.
#![no_main]
use libfuzzer_sys::fuzz_target;
use miteos_stream::token::{Token, TokenKind};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    for kind in [TokenKind::ApiKey, TokenKind::Ticket] {
        if let Ok((t, env)) = Token::parse_kind(s, kind) {
            assert_eq!(Token::parse_kind(t.expose(), kind).map(|(_, e)| e), Ok(env));
        }
    }
});
