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

fn event(offset: u64, epoch: &str) -> Arc<Event> {
    codec::decode_at(
        Topic::Tasks,
        br#"{"event":"e"}"#,
        1024,
        Instant::now(),
        Some((offset, Arc::from(epoch))),
    )
    .unwrap()
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
            Step::Gap(_) => None,
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
        prop_assert!(!out.iter().any(|s| matches!(s, Step::Gap(_))), "no gap: {:?}", out);
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
