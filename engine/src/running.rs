//! Outputs derived from accumulated states: updates whose differences are
//! states (a running `max`, the first k rows so far, a value's counts)
//! are added up per key, time by time, and each change is read as the
//! state before and the state after, which a caller turns into output
//! rows.
//!
//! differential's `count_total` does the same over an arrangement but
//! emits the whole old state retracted and the whole new state inserted
//! at every change, even where they are equal; a derived output of many
//! rows per state (a partition's first k rows) would then retract and
//! insert all of them for each input row. Here the caller sees both
//! states at once and emits only what differs.
//!
//! Only a key's newest state is ever read, so the states are a hash map
//! per worker ([`crate::slots::SlotMap`], whose entries never move as it
//! grows), updated in place, rather than an arrangement, which keeps
//! a state per key and time in batches that its spine merges, cloning
//! each state, again and again (Nexmark q18, one state per bidder and
//! auction: 15-25% less CPU). Where keys are many and each changes
//! rarely, an arrangement's sorted merges find them faster than a hash
//! map's scattered probes, so counts and sums stay arranged (see
//! `render_reduce`). This module owns that operator and nothing about
//! what the states mean.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hash::Hash;
use std::rc::Rc;

use differential_dataflow::difference::Semigroup;
use differential_dataflow::{AsCollection, ExchangeData, Hashable, VecCollection};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::{CapabilitySet, Operator};

use crate::sizes::Element;
use crate::slots::{Pool, SlotMap};
use crate::{Diff, Time};

/// How many emptied per-time maps an operator keeps for reuse.
const SPARE_MAPS: usize = 4;

/// About how many output rows one activation emits before it yields
/// (and asks to be scheduled again), so that the operators downstream
/// take each piece before the next is made. A Nexmark load step is one
/// time of ~730,000 bids per worker: emitted at once, q18's 1.4 M changes
/// each sat in memory as a row of its own until the view's sink ran,
/// most of them in fresh pages. Keys that change nothing do not count:
/// pieces of 64 Ki keys and rows ran q15 (whose reduction downstream
/// sorts each piece it receives) 8-17% slower.
const FUEL: usize = 256 * 1024;

/// Arriving updates asked whether their key's state absorbs them, per
/// sample (see [`Absorbing`]).
const SAMPLE: u32 = 1024;

/// Arriving updates not asked after a sample in which under an eighth
/// were absorbed, before the next sample.
const UNASKED: u32 = 64 * 1024;

/// Whether to ask an arriving update's state whether it absorbs the
/// update. Asking is a lookup of the key among all states, and what it
/// saves (merging into the time's pending map) only pays where many are
/// absorbed: a top 10 by price (Nexmark q19) absorbs most bids once its
/// auction has ten, but the newest bid of each bidder and auction (q18)
/// absorbs none, and asking was a lookup of each bid in millions of
/// states for nothing. The answer is sampled as updates arrive; not
/// asking is always safe, as a state is asked again before it is added
/// to.
#[derive(Default)]
struct Absorbing {
    asked: u32,
    absorbed: u32,
    /// Arriving updates still to pass unasked.
    unasked: u32,
}

impl Absorbing {
    /// Whether to ask about the next arriving update.
    fn ask(&mut self) -> bool {
        if self.unasked > 0 {
            self.unasked -= 1;
            return false;
        }
        true
    }

    /// The answer to the last question asked.
    fn answered(&mut self, absorbed: bool) {
        self.asked += 1;
        self.absorbed += u32::from(absorbed);
        if self.asked == SAMPLE {
            if self.absorbed < SAMPLE / 8 {
                self.unasked = UNASKED;
            }
            (self.asked, self.absorbed) = (0, 0);
        }
    }
}

/// A running state as this operator adds to it. It may tell, more
/// cheaply than adding, that adding a difference leaves it unchanged (a
/// full top-k and rows after its last): the operator then neither copies
/// nor adds. A state that absorbs a difference must absorb it still after
/// anything else is added to it (a top-k only fills up): the operator
/// may skip an update its key's state absorbs as it arrives, before the
/// updates of earlier times are added (where enough do, see
/// [`Absorbing`]). Differences are added owned, so a
/// state may move their parts in rather than copy them.
pub(crate) trait RunningState: Semigroup {
    /// Whether `absorbs` can ever say yes: where it cannot, the operator
    /// does not look the state up to ask.
    const ABSORBS: bool = false;

    fn absorbs(&self, _diff: &Self) -> bool {
        false
    }

    /// Adds `diff`, taking it.
    fn plus_owned(&mut self, diff: Self) {
        self.plus_equals(&diff);
    }

    /// Adds `diff`, leaving the state as it was in `before` (whose room
    /// is reused where it can be, and whose parts the caller may take).
    fn plus_keeping(&mut self, diff: Self, before: &mut Option<Self>) {
        keep_before(self, before);
        self.plus_owned(diff);
    }
}

/// Copies `state` into `before`, reusing its room.
pub(crate) fn keep_before<S: Clone>(state: &S, before: &mut Option<S>) {
    match before.as_mut() {
        Some(b) => b.clone_from(state),
        None => *before = Some(state.clone()),
    }
}

impl RunningState for Diff {}

/// For each key and time at which the sum of `updates`' differences
/// changes, call `derive` with the key, the state before (`None` where
/// there was none, or it was zero; `derive` may take its parts) and after, and a buffer for the output
/// rows and their multiplicity changes at that time. Updates go to the
/// worker their key hashes to; the states are measured as `name`'s (see
/// [`crate::sizes`]).
pub(crate) fn derive_changes<'s, K, S, D, F>(
    updates: VecCollection<'s, Time, K, S>,
    name: &str,
    mut derive: F,
) -> VecCollection<'s, Time, D, Diff>
where
    K: ExchangeData + Hash + Eq + Element,
    S: ExchangeData + RunningState + Element,
    D: Clone + 'static,
    F: FnMut(&K, Option<&mut S>, &S, &mut Vec<(D, Diff)>) + 'static,
{
    let states: Rc<RefCell<SlotMap<K, S>>> = Rc::default();
    let registration = {
        let states = Rc::downgrade(&states);
        let dataflow = updates.inner.scope().addr()[0];
        crate::sizes::register(dataflow, &format!("State: {name}"), move || {
            states
                .upgrade()
                .map(|s| crate::sizes::slots_size(&s.borrow()))
                .unwrap_or_default()
        })
    };
    let route = Exchange::new(|(k, _, _): &(K, Time, S)| k.hashed());
    let scope = updates.inner.scope();
    updates
        .inner
        .unary_frontier(route, name, move |_, info| {
            let activator = scope.activator_for(info.address);
            let mut caps = CapabilitySet::new();
            // Updates not yet complete, added up by time and key as they
            // come; a key's updates at one time make one change.
            let mut pending: BTreeMap<Time, SlotMap<K, S>> = BTreeMap::new();
            // Emptied maps of earlier times, kept to be filled again
            // rather than grown from nothing.
            let mut spare: Vec<SlotMap<K, S>> = Vec::new();
            // Emptied chunks of entries, shared by the per-time maps and
            // the states (see `crate::slots`).
            let mut pool = Vec::new();
            let mut before: Option<S> = None;
            let mut rows = Vec::new();
            // A complete time whose changes are being emitted, and its
            // keys not yet read (see [`FUEL`]).
            let mut emitting: Option<(Time, Pool<K, S>)> = None;
            let mut absorbing = Absorbing::default();
            move |(input, frontier), output| {
                // Owned by the operator: the registration goes with it.
                let _owned = &registration;
                let mut states = states.borrow_mut();
                input.for_each(|cap, data| {
                    if let Some(cap) = cap.retain_least(0) {
                        caps.insert(cap);
                    }
                    for (k, t, s) in data.drain(..) {
                        let hash = SlotMap::<K, S>::hash(&k);
                        if S::ABSORBS && absorbing.ask() {
                            let absorbed = states.get(hash, &k).is_some_and(|state| state.absorbs(&s));
                            absorbing.answered(absorbed);
                            if absorbed {
                                continue;
                            }
                        }
                        let changes = pending
                            .entry(t)
                            .or_insert_with(|| spare.pop().unwrap_or_default());
                        match changes.get_mut(hash, &k) {
                            Some((_, state)) => state.plus_owned(s),
                            None => {
                                changes.insert(hash, k, s, &mut pool);
                            }
                        }
                    }
                });
                let frontier = frontier.frontier();
                let mut fuel = FUEL;
                loop {
                    if emitting.is_none() {
                        match pending.first_entry() {
                            Some(entry) if !frontier.less_equal(entry.key()) => {
                                let time = *entry.key();
                                let mut changes = entry.remove();
                                emitting = Some((time, changes.take_chunks()));
                                if spare.len() < SPARE_MAPS {
                                    spare.push(changes);
                                }
                            }
                            _ => break,
                        }
                    }
                    let (time, chunks) = emitting.as_mut().expect("set above");
                    let time = *time;
                    let cap = caps.delayed(&time);
                    let mut session = output.session(&cap);
                    // Keys of one time are independent: each chunk is
                    // emptied from its end, so that it can stop anywhere.
                    while fuel > 0 {
                        let Some(chunk) = chunks.last_mut() else { break };
                        let Some((k, s)) = chunk.pop() else {
                            pool.push(chunks.pop().expect("a last chunk"));
                            continue;
                        };
                        if s.is_zero() {
                            continue;
                        }
                        let hash = SlotMap::<K, S>::hash(&k);
                        match states.get_mut(hash, &k) {
                            Some((_, state)) if state.absorbs(&s) => {}
                            Some((key, state)) => {
                                state.plus_keeping(s, &mut before);
                                derive(key, before.as_mut(), state, &mut rows);
                                if state.is_zero() {
                                    states.remove(hash, &k);
                                }
                            }
                            None => {
                                let (key, state) = states.insert(hash, k, s, &mut pool);
                                derive(key, None, state, &mut rows);
                            }
                        }
                        fuel = fuel.saturating_sub(rows.len());
                        for (row, diff) in rows.drain(..) {
                            session.give((row, time, diff));
                        }
                    }
                    if !chunks.is_empty() {
                        // Out of fuel: the rest of this time next turn.
                        activator.activate();
                        break;
                    }
                    emitting = None;
                }
                // Hold only what the time being emitted and the updates
                // still waiting need.
                let emitted = emitting.as_ref().map(|(t, _)| *t);
                match emitted.into_iter().chain(pending.keys().next().copied()).min() {
                    Some(least) => caps.downgrade([&least]),
                    None => caps = CapabilitySet::new(),
                }
            }
        })
        .as_collection()
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use differential_dataflow::input::InputSession;
    use timely::dataflow::operators::{Inspect, Probe};

    use super::{Absorbing, SAMPLE, UNASKED, derive_changes};
    use crate::row::Row;
    use crate::{Diff, Time};

    /// A change seen: (key, before, after) at a time, with its count.
    type Change = ((u8, Diff, Diff), Time, Diff);

    /// Arriving updates are asked about while a sample finds an eighth
    /// or more absorbed; after one that finds fewer, the next
    /// [`UNASKED`] pass unasked, and then a sample is taken again.
    #[test]
    fn arrivals_are_asked_while_it_pays() {
        let mut absorbing = Absorbing::default();
        for i in 0..4 * SAMPLE {
            assert!(absorbing.ask());
            absorbing.answered(i % 4 == 0);
        }
        for i in 0..SAMPLE {
            assert!(absorbing.ask());
            // Fewer than an eighth absorbed.
            absorbing.answered(i % 9 == 0);
        }
        for _ in 0..UNASKED {
            assert!(!absorbing.ask());
        }
        assert!(absorbing.ask());
    }

    /// A change of a running maximum seen: (key, before, after) at a
    /// time, with its count.
    type MostChange = ((u64, Option<u64>, u64), Time, Diff);

    /// A running maximum that absorbs any value not above it.
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
    struct Most(u64);

    impl differential_dataflow::difference::IsZero for Most {
        fn is_zero(&self) -> bool {
            false
        }
    }

    impl differential_dataflow::difference::Semigroup for Most {
        fn plus_equals(&mut self, rhs: &Self) {
            self.0 = self.0.max(rhs.0);
        }
    }

    impl super::RunningState for Most {
        const ABSORBS: bool = true;
        fn absorbs(&self, diff: &Self) -> bool {
            diff.0 <= self.0
        }
    }

    impl crate::sizes::Element for Most {
        const OWNS_HEAP: bool = false;
    }

    /// The changes `derive` reports over `steps` fed in turn, each to
    /// completion (the input advanced past its latest time) before the
    /// next, in the order seen.
    fn changes_seen<K, S, D, F>(steps: Vec<Vec<(K, Time, S)>>, derive: F) -> Vec<(D, Time, Diff)>
    where
        K: differential_dataflow::ExchangeData + std::hash::Hash + Eq + crate::sizes::Element + Sync,
        S: differential_dataflow::ExchangeData + super::RunningState + crate::sizes::Element + Sync,
        D: Clone + Send + 'static,
        F: FnMut(&K, Option<&mut S>, &S, &mut Vec<(D, Diff)>) + Send + Sync + 'static,
    {
        timely::execute_directly(move |worker| {
            let seen: Rc<RefCell<Vec<(D, Time, Diff)>>> = Rc::default();
            let mut input: InputSession<Time, K, S> = InputSession::new();
            let out = seen.clone();
            let probe = worker.dataflow(|scope| {
                derive_changes(input.to_collection(scope), "Changes", derive)
                    .inner
                    .inspect(move |update| out.borrow_mut().push(update.clone()))
                    .probe()
                    .0
            });
            for step in steps {
                let upper = step.iter().map(|(_, t, _)| t + 1).max().unwrap_or(0);
                step.into_iter().for_each(|(k, t, s)| input.update_at(k, t, s));
                input.advance_to(upper);
                input.flush();
                worker.step_while(|| probe.less_than(&upper));
            }
            seen.take()
        })
    }

    /// Once a sample finds too few arriving updates absorbed, absorbed
    /// ones arrive unasked, and still change nothing: the state is asked
    /// again before it is added to.
    #[test]
    fn unasked_arrivals_still_change_nothing() {
        let steps = vec![
            vec![(0, 1, Most(100))],
            // Keys without a state absorb nothing: asking stops.
            (1..=2 * SAMPLE as u64).map(|key| (key, 2, Most(key))).collect(),
            (1..=50)
                .map(|value| (0, 3, Most(value)))
                .chain([(0, 4, Most(150))])
                .collect(),
        ];
        let mut seen: Vec<MostChange> =
            changes_seen(steps, |key: &u64, before: Option<&mut Most>, after, rows| {
                rows.push(((*key, before.map(|b| b.0), after.0), 1))
            });
        seen.retain(|((key, _, _), _, _)| *key == 0);
        seen.sort();
        assert_eq!(seen, vec![((0, None, 100), 1, 1), ((0, Some(100), 150), 4, 1)]);
    }

    /// Updates that arrive out of time order are read in time order, one
    /// change per key and time, each seeing the state the earlier times
    /// left: counts here, with the change reported as (key, before, after).
    #[test]
    fn changes_follow_time_order() {
        let (a, b) = (Row::from(&[1u8][..]), Row::from(&[2u8][..]));
        let updates = vec![
            (a.clone(), 3, 1),
            (a.clone(), 1, 2),
            (b.clone(), 2, 1),
            (a.clone(), 2, 1),
            (a.clone(), 2, 1),
            // Cancels within its time: no change.
            (b.clone(), 3, 1),
            (b.clone(), 3, -1),
            (b.clone(), 4, -1),
        ];
        let mut seen: Vec<Change> = changes_seen(
            vec![updates],
            |key: &Row, before: Option<&mut Diff>, after, rows| {
                rows.push(((key.as_slice()[0], before.map_or(0, |b| *b), *after), 1))
            },
        );
        seen.sort();
        assert_eq!(
            seen,
            vec![
                ((1, 0, 2), 1, 1),
                ((1, 2, 4), 2, 1),
                ((1, 4, 5), 3, 1),
                ((2, 0, 1), 2, 1),
                ((2, 1, 0), 4, 1),
            ]
        );
    }
}
