//! Outputs derived from running states: an arrangement whose differences
//! are states that only ever grow by addition (a running `max`, the first
//! k rows so far) is read, key by key and time by time, as the change
//! from the state before to the state after, and a caller turns each
//! change into output rows.
//!
//! differential's `count_total` does the same but emits the whole old
//! state retracted and the whole new state inserted at every change, even
//! where they are equal; a derived output of many rows per state (a
//! partition's first k rows) would then retract and insert all of them
//! for each input row. Here the caller sees both states at once and emits
//! only what differs. This module owns that operator and nothing about
//! what the states mean.

use differential_dataflow::difference::Semigroup;
use differential_dataflow::lattice::Lattice;
use differential_dataflow::operators::arrange::Arranged;
use differential_dataflow::trace::{BatchCursor, Cursor, Navigable, TraceReader};
use differential_dataflow::{AsCollection, ExchangeData, VecCollection};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Operator;
use timely::order::TotalOrder;
use timely::progress::{Antichain, Timestamp};

use crate::Diff;

/// A running state that can tell, more cheaply than adding, that adding
/// a difference leaves it unchanged (a full top-k and rows after its
/// last): the operator then neither copies nor adds.
pub(crate) trait Absorbs {
    fn absorbs(&self, _diff: &Self) -> bool {
        false
    }
}

impl Absorbs for Diff {}

/// For each key and time at which `arranged` changes, call `derive` with
/// the key, the accumulated state before (`None` where there was none, or
/// it was zero) and after, and a buffer for the output rows and their
/// multiplicity changes at that time.
pub(crate) fn derive_changes<'s, K, S, Tr, D, F>(
    arranged: Arranged<'s, Tr>,
    name: &str,
    mut derive: F,
) -> VecCollection<'s, Tr::Time, D, Diff>
where
    Tr: TraceReader<Batch: Navigable, Time: TotalOrder + Lattice + Timestamp> + Clone + 'static,
    for<'a> BatchCursor<Tr>:
        Cursor<Key<'a> = &'a K, Val<'a> = &'a (), Time = Tr::Time, Diff = S, DiffGat<'a> = &'a S>,
    K: ExchangeData,
    S: ExchangeData + Semigroup + Absorbs,
    D: Clone + 'static,
    F: FnMut(&K, Option<&S>, &S, &mut Vec<(D, Diff)>) + 'static,
{
    let mut trace = arranged.trace.clone();
    arranged
        .stream
        .unary_frontier(Pipeline, name, move |_, _| {
            // The times already read: batches arrive in order, each from
            // the previous one's upper bound.
            let mut lower = Antichain::from_elem(Tr::Time::minimum());
            let mut upper = Antichain::from_elem(Tr::Time::minimum());
            let mut rows = Vec::new();
            move |(input, _frontier), output| {
                lower.clone_from(&upper);
                let mut batches = Vec::new();
                let mut caps = timely::dataflow::operators::CapabilitySet::new();
                input.for_each(|cap, data| {
                    for cap in cap.retain_stamp(0).iter() {
                        caps.insert(cap.clone());
                    }
                    for batch in data.drain(..) {
                        upper.clone_from(batch.upper());
                        batches.push(batch);
                    }
                });
                if !caps.is_empty() {
                    let mut session = output.session(&caps);
                    let (mut new, new_storage) = differential_dataflow::trace::cursor::cursor_list(
                        batches.into_iter().filter_map(|b| b.inner).collect(),
                    );
                    let (mut old, old_storage) = differential_dataflow::trace::cursor::cursor_list(
                        trace
                            .batches_through(lower.borrow())
                            .expect("the trace holds the read times"),
                    );
                    while let Some(key) = new.get_key(&new_storage) {
                        let mut state: Option<S> = None;
                        old.seek_key(&old_storage, key);
                        if old.get_key(&old_storage) == Some(key) {
                            old.map_times(&old_storage, |_, diff| match state.as_mut() {
                                Some(s) => s.plus_equals(diff),
                                None => state = Some(diff.clone()),
                            });
                        }
                        new.map_times(&new_storage, |time, diff| {
                            let before = state.as_ref().filter(|s| !s.is_zero());
                            if before.is_some_and(|s| s.absorbs(diff)) {
                                return;
                            }
                            let before = before.cloned();
                            match state.as_mut() {
                                Some(s) => s.plus_equals(diff),
                                None => state = Some(diff.clone()),
                            }
                            let after = state.as_ref().expect("a state was just added");
                            derive(key, before.as_ref(), after, &mut rows);
                            let time = <BatchCursor<Tr> as Cursor>::owned_time(time);
                            for (row, diff) in rows.drain(..) {
                                session.give((row, time.clone(), diff));
                            }
                        });
                        new.step_key(&new_storage);
                    }
                }
                // Only the newest state of each key is read again.
                trace.advance_upper(&mut upper);
                trace.set_logical_compaction(upper.borrow());
                trace.set_physical_compaction(upper.borrow());
            }
        })
        .as_collection()
}
