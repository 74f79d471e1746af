//! miteos-stream: the real-time event gateway of the Miteos API platform.
//!
//! # Layout
//! Layers: L0 pure → L1 adapters → L2 domain → L3 edges → L4 wiring. A module uses lower
//! layers, its own children and same-layer modules, with no import cycle; only `node` and
//! `cli` name concrete backends; below L3 nothing returns `ApiError` (the domain's errors
//! become API errors in `http::domain_errors`). `tests/it/module_graph` checks this against
//! docs/ARCHITECTURE.md §4 and every module's "May use:" line.
//!
//! | module | layer | holds |
//! |---|---|---|
//! | `config` | L0 | settings, defaults, layering, validation |
//! | `ids`, `scope`, `token`, `error` | L0 | ids, scopes/topics, the `mt_*_sk_` format, `ApiError` |
//! | `protocol` (`close`, `filter`) | L0 | WebSocket messages, close codes, event-name globs |
//! | `broker::codec` | L0 | channel names, producer events → pre-serialised frames |
//! | `metrics`, `telemetry`, `shutdown`, `outbox` | L1 | counters, logging/redaction, drain, per-connection queue |
//! | `budget` | L1 | capped per-key counters; `ConnPermit`, the shares a connection holds |
//! | `redis_link` | L1 | the shared Redis command connection |
//! | `keys` (`Principal`, `cache`, `embedded`, `redis`), `broker` (`memory`, `redis`) | L1 | the `KeyStore` and `Broker` seams and their impls; who is calling |
//! | `keys::service` (`KeyError`), `auth` (`AuthError`), `tickets`, `rate_limit` (`Limited`), `slots` | L2 | key lifecycle, authentication, tickets, quotas, connection caps |
//! | `hub`, `control`, `state` | L2 | fan-out registry, control messages and revalidation, the shared handles |
//! | `server`, `conn_io`, `http`, `ws` | L3 | accept loop, the socket under hyper (JSON for its parse errors, lingering close), routes and the domain → `ApiError` mapping, WebSocket upgrade and sessions |
//! | `node`, `cli` | L4 | wiring and the command line |
//!
//! # Data path
//! 1. `server` accepts; hyper routes `GET /v1/ws` to `ws::upgrade`.
//! 2. `ws::upgrade` checks the query token (format and CRC first, then the store through
//!    `auth`), requires a `*.read` scope and valid handshake headers, returns 101 and spawns
//!    `ws::session` on the node's task tracker. Any failure is a JSON error and no upgrade.
//! 3. `ws::session` registers with the `Hub`, waits for `{"type":"auth"}` with the same
//!    credential (4001/4002), queues `auth.success` and subscribes the key's readable topics
//!    for its own account and environment (the first local subscriber subscribes the broker).
//! 4. A producer publishes (admin `POST /internal/v1/publish` in embedded mode); the broker
//!    decodes and validates it once into an `Event` holding the client frame, and calls the
//!    Hub's synchronous `Deliver`.
//! 5. The Hub pushes the shared frame (a refcount bump) into each matching `Outbox`; a full
//!    Outbox closes its connection with 4009. Nothing on this path awaits a socket.
//! 6. `ws::conn` (one per socket, one task) moves queued frames into the socket, many per
//!    write, one flush; it also reads client messages and runs the heartbeat (4004).
//! 7. Teardown: every exit yields one close code; a guard removes the session from the Hub.
//!    Revocation travels as a broker control message to every node's Hub (4003); shutdown
//!    closes every socket with 1001 and waits up to `shutdown_grace`.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, clippy::unwrap_used)]

pub mod auth;
pub mod broker;
pub mod budget;
pub mod cli;
pub mod config;
pub mod conn_io;
pub mod control;
pub mod error;
pub mod http;
pub mod hub;
pub mod ids;
pub mod keys;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod protocol;
pub mod rate_limit;
pub mod redis_link;
pub mod refusals;
pub mod scope;
pub mod server;
pub mod shutdown;
pub mod slots;
pub mod state;
pub mod telemetry;
pub mod tickets;
pub mod token;
pub mod ws;

pub use config::Config;
pub use node::Node;
