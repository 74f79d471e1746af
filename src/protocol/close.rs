//! `CloseCode`: every WebSocket close the server initiates, with its code and reason (SPEC §4).
//!
//! Owns: the close-code table.  May use: nothing.  Never: I/O.
//! Invariants: every session exit path yields exactly one `CloseCode`.

/// Why the server closes a WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    Normal,
    GoingAway,
    MessageTooBig,
    AuthFailed,
    AuthTimeout,
    KeyRevoked,
    HeartbeatTimeout,
    RateLimited,
    SlowConsumer,
    TooManyConnections,
    /// The broker could not subscribe the session's channels (a Redis outage); retry later.
    TryAgainLater,
    /// The client broke the WebSocket protocol (RFC 6455 §7.4.1: 1002).
    ProtocolError,
    /// A text message that is not valid UTF-8 (1007).
    InvalidPayload,
}

impl CloseCode {
    pub const ALL: [CloseCode; 13] = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::MessageTooBig,
        CloseCode::AuthFailed,
        CloseCode::AuthTimeout,
        CloseCode::KeyRevoked,
        CloseCode::HeartbeatTimeout,
        CloseCode::RateLimited,
        CloseCode::SlowConsumer,
        CloseCode::TooManyConnections,
        CloseCode::TryAgainLater,
        CloseCode::ProtocolError,
        CloseCode::InvalidPayload,
    ];

    /// The numeric code sent in the close frame.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::MessageTooBig => 1009,
            CloseCode::AuthFailed => 4001,
            CloseCode::AuthTimeout => 4002,
            CloseCode::KeyRevoked => 4003,
            CloseCode::HeartbeatTimeout => 4004,
            CloseCode::RateLimited => 4008,
            CloseCode::SlowConsumer => 4009,
            CloseCode::TooManyConnections => 4029,
            CloseCode::TryAgainLater => 1013,
            CloseCode::ProtocolError => 1002,
            CloseCode::InvalidPayload => 1007,
        }
    }

    /// The short reason text sent with the code (well under the 123-byte limit).
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal close",
            CloseCode::GoingAway => "server shutting down",
            CloseCode::MessageTooBig => "message too big",
            CloseCode::AuthFailed => "authentication failed",
            CloseCode::AuthTimeout => "authentication timeout",
            CloseCode::KeyRevoked => "key revoked or expired",
            CloseCode::HeartbeatTimeout => "heartbeat timeout",
            CloseCode::RateLimited => "client message rate exceeded",
            CloseCode::SlowConsumer => "slow consumer",
            CloseCode::TooManyConnections => "too many connections",
            CloseCode::TryAgainLater => "broker unavailable, try again later",
            CloseCode::ProtocolError => "protocol error",
            CloseCode::InvalidPayload => "invalid UTF-8",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_reasons_fit_a_close_frame() {
        let mut codes: Vec<u16> = CloseCode::ALL.iter().map(|c| c.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(
            codes,
            vec![1000, 1001, 1002, 1007, 1009, 1013, 4001, 4002, 4003, 4004, 4008, 4009, 4029]
        );
        assert!(CloseCode::ALL.iter().all(|c| c.reason().len() <= 123));
    }
}
