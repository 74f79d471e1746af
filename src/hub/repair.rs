//! Gap repair: the history reads a channel's `Flow` asks for (after a hole in the offsets or
//! a broker reconnect), run as tasks, and their results fed back under the channel's lock.
//!
//! May use: broker (trait), the Hub's flow and deliver.  Never: hold a lock across `.await`.

use std::time::Duration;

use super::{
    flow::{Outcome, Repair, MAX_ATTEMPTS},
    Hub,
};
use crate::broker::ChannelKey;

/// Pause before reporting a failed history read (the flow retries, then gives up).
const RETRY_PAUSE: Duration = Duration::from_millis(200);

impl Hub {
    /// Runs one history read for `channel` and hands the result to its flow.
    pub(super) fn spawn_repair(&self, channel: ChannelKey, repair: Repair) {
        let me = self.me.clone();
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        rt.spawn(async move {
            let Some(hub) = me.upgrade() else { return };
            let read = hub.broker.history(&channel, Some(repair.after), hub.repair_limit).await;
            let page = match read {
                Ok(Some(page)) => Some(page),
                Ok(None) | Err(_) => {
                    drop(hub);
                    tokio::time::sleep(RETRY_PAUSE).await;
                    None
                }
            };
            if let Some(hub) = me.upgrade() {
                hub.finish_repair(channel, repair, page);
            }
        });
    }

    fn finish_repair(
        &self,
        channel: ChannelKey,
        repair: Repair,
        page: Option<crate::broker::HistoryPage>,
    ) {
        let Some(ch) = self.channels.get(&channel).map(|c| c.clone()) else { return };
        let mut subs = ch.subs.lock();
        let (mut steps, mut outcome) = (Vec::new(), Outcome::default());
        let more = subs.flow.repaired(repair.generation, page, &mut steps, &mut outcome);
        self.apply(&channel, &subs, steps);
        drop(subs);
        self.metrics.gaps_repaired.inc_by(outcome.repaired);
        self.metrics.gaps_unrepaired.inc_by(outcome.unrepaired);
        if let Some(r) = more {
            self.spawn_repair(channel, r);
        }
    }

    /// A rollback was found under `at`: a new epoch for the channel, so offsets never repeat
    /// (its next event then reaches the subscribers with a gap).
    pub(super) fn spawn_new_epoch(&self, channel: ChannelKey, at: crate::broker::Position) {
        self.metrics.history_rollbacks.inc();
        tracing::warn!(%channel, offset = at.offset, "history rolled back under delivered events; starting a new epoch");
        let me = self.me.clone();
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        rt.spawn(async move {
            for _ in 0..MAX_ATTEMPTS {
                let Some(hub) = me.upgrade() else { return };
                if hub.broker.new_epoch(&channel, &at.epoch).await.is_ok() {
                    return;
                }
                drop(hub);
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        });
    }

    /// After a broker reconnect: every channel with a known position reads what it missed.
    pub(super) fn repair_all(&self) {
        let channels: Vec<_> =
            self.channels.iter().map(|c| (c.key().clone(), c.value().clone())).collect();
        for (key, ch) in channels {
            let repair = ch.subs.lock().flow.on_reconnect();
            if let Some(r) = repair {
                self.spawn_repair(key, r);
            }
        }
    }
}
