//! `Flow` against a model channel: events 1..=N published in order, each delivered live or
//! lost, history reads answered at any later moment from a window of the last `keep`
//! events (or failing). Whatever the interleaving, the node delivers offsets in increasing order with no
//! duplicate, every hole is announced by a gap first, and with a window that covers the
//! losses there is no hole and no gap at all.

use std::{collections::VecDeque, sync::Arc, time::Instant};

use proptest::prelude::*;

use super::*;
use crate::{broker::codec, scope::Topic};

const EPOCH: &str = "e1";

/// Event `offset` of `epoch`, with the id a store would keep for it (so the frame read back
/// from history is the frame delivered live, as with the real stores).
fn event(offset: u64, epoch: &str) -> Arc<Event> {
    let payload = format!(
        r#"{{"event":"e","id":"evt_{epoch}_{offset}","created_at":"2026-12-03T10:00:00.000Z"}}"#
    );
    event_with(offset, epoch, &payload)
}

fn event_with(offset: u64, epoch: &str, payload: &str) -> Arc<Event> {
    let at = Some((offset, Arc::from(epoch)));
    codec::decode_at(Topic::Tasks, payload.as_bytes(), 1024, Instant::now(), at).unwrap()
}

/// The history a read sees: the last `keep` of the `published` events.
fn page(after: u64, published: u64, keep: u64) -> HistoryPage {
    let first = published.saturating_sub(keep) + 1;
    let events = (after.max(first - 1) + 1..=published).map(|o| event(o, EPOCH)).collect();
    HistoryPage { events, head: Position::new(published, EPOCH), first }
}

#[derive(Debug, Clone)]
enum Action {
    /// Publish the next event; it reaches the node live unless `lost`.
    Publish {
        lost: bool,
    },
    /// Answer the oldest pending history read now.
    Answer,
    /// Answer the oldest pending read with a failure.
    Fail,
    Reconnect,
}

/// `fail` weights failed history reads (three in a row give a repair up, with a gap).
fn action(fail: u32) -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => any::<bool>().prop_map(|l| Action::Publish { lost: l }),
        3 => Just(Action::Answer),
        fail => Just(Action::Fail),
        1 => Just(Action::Reconnect),
    ]
}

/// Runs the actions, then publishes nothing more, reconnects once and answers every read.
fn run(actions: &[Action], keep: u64) -> (Vec<Step>, u64) {
    let mut flow = Flow::default();
    flow.start_at(Position::new(0, EPOCH));
    let (mut out, mut outcome) = (Vec::new(), Outcome::default());
    let mut pending: VecDeque<Repair> = VecDeque::new();
    let mut published = 0u64;
    let mut answer = |flow: &mut Flow, r: Repair, ok: bool, published: u64, out: &mut Vec<Step>| {
        let p = ok.then(|| page(r.after, published, keep));
        flow.repaired(r.generation, p, out, &mut outcome)
    };
    for a in actions {
        let more = match a {
            Action::Publish { lost } => {
                published += 1;
                if *lost {
                    None
                } else {
                    flow.on_event(event(published, EPOCH), &mut out)
                }
            }
            Action::Answer => {
                pending.pop_front().and_then(|r| answer(&mut flow, r, true, published, &mut out))
            }
            Action::Fail => {
                pending.pop_front().and_then(|r| answer(&mut flow, r, false, published, &mut out))
            }
            Action::Reconnect => flow.on_reconnect(),
        };
        pending.extend(more);
    }
    pending.extend(flow.on_reconnect());
    while let Some(r) = pending.pop_front() {
        pending.extend(answer(&mut flow, r, true, published, &mut out));
    }
    (out, published)
}

fn delivered(out: &[Step]) -> Vec<u64> {
    out.iter()
        .filter_map(|s| match s {
            Step::Deliver(e) => e.offset,
            Step::Gap(_) | Step::Rollback(_) => None,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn with_history_covering_the_losses_every_event_arrives_once_in_order(
        actions in proptest::collection::vec(action(0), 0..200)
    ) {
        let (out, published) = run(&actions, 1_000);
        prop_assert_eq!(delivered(&out), (1..=published).collect::<Vec<_>>());
        prop_assert!(
            !out.iter().any(|s| matches!(s, Step::Gap(_) | Step::Rollback(_))),
            "no gap: {:?}",
            out
        );
    }

    #[test]
    fn with_a_short_history_order_holds_and_every_hole_is_announced(
        actions in proptest::collection::vec(action(1), 0..200),
        keep in 1u64..8,
    ) {
        let (out, published) = run(&actions, keep);
        let mut last = 0u64;
        let mut announced = 0u64;
        for s in &out {
            match s {
                Step::Gap(p) => {
                    prop_assert!(p.offset >= last, "a gap behind what was delivered: {:?}", out);
                    announced = p.offset;
                }
                Step::Deliver(e) => {
                    let o = e.offset.unwrap();
                    prop_assert!(o > last, "not increasing: {:?}", delivered(&out));
                    prop_assert!(o == last + 1 || announced == o - 1, "silent hole before {}", o);
                    last = o;
                }
                Step::Rollback(_) => prop_assert!(false, "no rollback in a store that keeps all"),
            }
        }
        prop_assert_eq!(last, published, "the newest event is delivered in the end");
    }
}

#[test]
fn an_event_of_a_new_epoch_is_announced_as_a_gap_then_delivered() {
    let mut flow = Flow::default();
    flow.start_at(Position::new(5, EPOCH));
    let mut out = Vec::new();
    assert!(flow.on_event(event(1, "e2"), &mut out).is_none());
    assert!(matches!(&out[0], Step::Gap(p) if p.offset == 0 && &*p.epoch == "e2"));
    assert!(matches!(&out[1], Step::Deliver(e) if e.offset == Some(1)));
    assert_eq!(flow.last(), Some(&Position::new(1, "e2")));
}

#[test]
fn a_repair_that_keeps_failing_gives_up_with_a_gap() {
    let mut flow = Flow::default();
    flow.start_at(Position::new(1, EPOCH));
    let (mut out, mut outcome) = (Vec::new(), Outcome::default());
    let mut r = flow.on_event(event(4, EPOCH), &mut out).expect("a hole starts a repair");
    assert_eq!(r.after, 1);
    for _ in 1..MAX_ATTEMPTS {
        r = flow.repaired(r.generation, None, &mut out, &mut outcome).expect("retried");
    }
    assert!(flow.repaired(r.generation, None, &mut out, &mut outcome).is_none());
    assert!(matches!(&out[0], Step::Gap(p) if p.offset == 3));
    assert_eq!(delivered(&out), vec![4]);
    assert_eq!(outcome.unrepaired, 1);
    assert!(!flow.repairing());
}

#[test]
fn events_without_an_offset_pass_straight_through_even_during_a_repair() {
    let mut flow = Flow::default();
    flow.start_at(Position::new(1, EPOCH));
    let mut out = Vec::new();
    let _ = flow.on_event(event(3, EPOCH), &mut out);
    assert!(flow.repairing());
    let raw = codec::decode(Topic::Tasks, br#"{"event":"raw"}"#, 1024, Instant::now()).unwrap();
    assert!(flow.on_event(raw, &mut out).is_none());
    assert_eq!(out.len(), 1);
    assert!(matches!(&out[0], Step::Deliver(e) if e.offset.is_none()));
}

/// A node that delivered 1..=5, then reconnects: the repair reads from 4.
fn delivered_five_then_reconnected() -> (Flow, Repair) {
    let mut flow = Flow::default();
    flow.start_at(Position::new(0, EPOCH));
    let mut out = Vec::new();
    for o in 1..=5 {
        assert!(flow.on_event(event(o, EPOCH), &mut out).is_none());
    }
    let r = flow.on_reconnect().expect("a repair after a reconnect");
    assert_eq!(r.after, 4, "reads the last delivered event again, to check it");
    (flow, r)
}

#[test]
fn history_behind_what_was_delivered_is_a_rollback_and_that_epoch_is_dropped() {
    let (mut flow, r) = delivered_five_then_reconnected();
    let (mut out, mut outcome) = (Vec::new(), Outcome::default());
    // The promoted replica only had 1..=3.
    let behind = HistoryPage { events: vec![], head: Position::new(3, EPOCH), first: 1 };
    assert!(flow.repaired(r.generation, Some(behind), &mut out, &mut outcome).is_none());
    assert!(matches!(&out[..], [Step::Rollback(p)] if p.offset == 5), "{out:?}");
    assert_eq!(outcome.unrepaired, 1);
    // Its new events 4, 5, 6 in the old epoch are not the ones delivered: dropped.
    out.clear();
    for o in 4..=6 {
        assert!(!flow.takes_next(&event_with(
            o,
            EPOCH,
            r#"{"event":"other","created_at":"2026-12-03T10:00:00.000Z"}"#
        )));
        let _ = flow.on_event(
            event_with(o, EPOCH, r#"{"event":"other","created_at":"2026-12-03T10:00:00.000Z"}"#),
            &mut out,
        );
    }
    assert!(out.is_empty(), "{out:?}");
    // The new epoch begins: a gap, then its events.
    let _ = flow.on_event(event(1, "e2"), &mut out);
    assert!(matches!(&out[..], [Step::Gap(_), Step::Deliver(e)] if e.offset == Some(1)));
    assert!(flow.takes_next(&event(2, "e2")), "back on the fast path");
}

#[test]
fn another_event_at_the_last_delivered_offset_is_a_rollback() {
    let (mut flow, r) = delivered_five_then_reconnected();
    let (mut out, mut outcome) = (Vec::new(), Outcome::default());
    // The store lost 4 and 5, then numbered newer events 4, 5, 6 again.
    let events = (5..=6)
        .map(|o| event_with(o, EPOCH, r#"{"event":"new","created_at":"2026-12-03T10:00:00.000Z"}"#))
        .collect();
    let page = HistoryPage { events, head: Position::new(6, EPOCH), first: 1 };
    assert!(flow.repaired(r.generation, Some(page), &mut out, &mut outcome).is_none());
    assert!(matches!(&out[..], [Step::Rollback(p)] if p.offset == 5), "{out:?}");
}

#[test]
fn the_same_event_at_the_last_offset_is_no_rollback() {
    let (mut flow, r) = delivered_five_then_reconnected();
    let (mut out, mut outcome) = (Vec::new(), Outcome::default());
    let events = (5..=7).map(|o| event(o, EPOCH)).collect();
    let page = HistoryPage { events, head: Position::new(7, EPOCH), first: 1 };
    assert!(flow.repaired(r.generation, Some(page), &mut out, &mut outcome).is_none());
    assert_eq!(delivered(&out), vec![6, 7]);
    assert_eq!(outcome.repaired, 1);
}
