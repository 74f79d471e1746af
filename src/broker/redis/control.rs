//! The Redis broker's control connection: `mt:control` only, on a pub/sub connection of its
//! own with its own reader, so a flood on the event connection never delays a revocation.
//!
//! May use: the parent module (its `Inner`).  Never: carry events.

use std::sync::{atomic::Ordering, Weak};

use futures::StreamExt;
use redis::aio::PubSubSink;

use super::{
    backoff, open, unavailable, BrokerError, Delivery, Inner, COMMAND_TIMEOUT, CONTROL_CHANNEL,
    HEALTH_EVERY,
};

/// The control connection: `mt:control` only, read and applied inline, reconnecting with
/// the same backoff; a reconnect is a gap (a revocation may have been missed).
pub(super) async fn supervise(weak: Weak<Inner>) {
    let (mut failures, mut connected_before) = (0u32, false);
    loop {
        let Some(inner) = weak.upgrade() else { return };
        match connect_control(&inner).await {
            Ok((mut sink, mut stream)) => {
                failures = 0;
                inner.control_ready.store(true, Ordering::SeqCst);
                if connected_before {
                    inner.deliver(Delivery::ControlGap);
                }
                connected_before = true;
                let mut health = tokio::time::interval(HEALTH_EVERY);
                health.tick().await;
                loop {
                    tokio::select! {
                        msg = stream.next() => match msg {
                            Some(msg) => inner.on_control(msg.get_payload_bytes()),
                            None => break,
                        },
                        _ = health.tick() => {
                            let pong = tokio::time::timeout(COMMAND_TIMEOUT, sink.ping::<redis::Value>()).await;
                            if !matches!(pong, Ok(Ok(_))) {
                                break;
                            }
                        }
                    }
                }
                inner.control_ready.store(false, Ordering::SeqCst);
                tracing::warn!("lost the redis control connection; reconnecting");
            }
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(error = %e, "cannot reach redis for control messages; retrying");
                }
                failures = failures.saturating_add(1);
            }
        }
        drop(inner);
        tokio::time::sleep(backoff(failures)).await;
    }
}

async fn connect_control(
    inner: &Inner,
) -> Result<(PubSubSink, redis::aio::PubSubStream), BrokerError> {
    let (mut sink, stream) = open(inner).await?;
    tokio::time::timeout(COMMAND_TIMEOUT, sink.subscribe(CONTROL_CHANNEL))
        .await
        .map_err(unavailable)?
        .map_err(unavailable)?;
    Ok((sink, stream))
}
