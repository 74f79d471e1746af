//! The WebSocket data path: the pre-upgrade checks and the 101 (`upgrade`), and one
//! connection's life after it (`session`, with its writer/reader pump in `conn`).
//!
//! May use: state, auth, hub, outbox, protocol.  Never: spawn a task per message.

pub mod conn;
#[cfg(feature = "conformance")]
pub mod echo;
mod lone_frame;
pub mod session;
pub mod upgrade;
