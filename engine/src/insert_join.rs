//! An inner join of two inputs that only insert ([`crate::render::monotonic`]),
//! each side's rows kept by key in a hash table rather than arranged.
//!
//! An arrangement sorts each batch of updates and merges its batches again
//! and again as its spine compacts, so every row is copied and compared many
//! times over its life: arranging Nexmark q4's two join inputs was 46% of
//! its CPU (stop 38). Rows that are never taken back need none of that. Each
//! arriving row is matched against the other side's rows so far, then kept
//! for the other side's rows still to come (a symmetric hash join). Each
//! pair of updates meets exactly once, when the second of them arrives, at
//! the later of their times (their join, in the lattice) with the product of
//! their multiplicities: differential's join, for any updates. Only inserts
//! keep the tables small, since nothing in them ever cancels.
//!
//! This module owns that operator and its tables; what a match becomes is
//! [`MatchMap`]'s, and which joins come here is [`crate::render`]'s choice.

use std::cell::RefCell;
use std::hash::BuildHasher;
use std::rc::Rc;

use differential_dataflow::{AsCollection, Hashable};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::{OkErr, Operator};

use crate::Diff;
use crate::join_matches::{Match, MatchMap, matched};
use crate::render::{Coll, Errs, Keyed, RenderTime};
use crate::row::Row;
use crate::sizes::Size;
use crate::slots::{chunked, chunked_len, chunked_mut};

/// Bytes per chunk of a side's arena.
const ARENA_CHUNK: usize = 1 << 20;

/// Records per chunk of a side's records.
const RECORDS: usize = 8 * 1024;

/// No next record.
const END: u32 = u32::MAX;

/// Where bytes are in an [`Arena`].
#[derive(Clone, Copy)]
struct Span {
    chunk: u32,
    offset: u32,
    len: u32,
}

/// Bytes end to end in chunks that never move, so that a side's rows are
/// copied once, as they arrive.
#[derive(Default)]
struct Arena {
    chunks: Vec<Vec<u8>>,
}

impl Arena {
    fn push(&mut self, bytes: &[u8]) -> Span {
        let fits = self
            .chunks
            .last()
            .is_some_and(|c| c.capacity() - c.len() >= bytes.len());
        if !fits {
            self.chunks.push(Vec::with_capacity(ARENA_CHUNK.max(bytes.len())));
        }
        let chunk = self.chunks.len() - 1;
        let c = &mut self.chunks[chunk];
        let offset = c.len();
        c.extend_from_slice(bytes);
        Span {
            chunk: chunk as u32,
            offset: offset as u32,
            len: bytes.len() as u32,
        }
    }

    fn get(&self, at: Span) -> &[u8] {
        &self.chunks[at.chunk as usize][at.offset as usize..][..at.len as usize]
    }
}

/// One row of a side, with its time and multiplicity, and the next row of
/// its key.
struct Record<T> {
    row: Span,
    next: u32,
    time: T,
    diff: Diff,
}

/// A key of a side: its hash and bytes, and its first and last records.
struct Key {
    hash: u64,
    key: Span,
    first: u32,
    last: u32,
}

/// One side's rows so far, chained by key in the order they came.
struct Side<T> {
    keys: hashbrown::HashTable<Key>,
    /// Record `i` is `records[i / RECORDS][i % RECORDS]`.
    records: Vec<Vec<Record<T>>>,
    bytes: Arena,
}

impl<T> Default for Side<T> {
    fn default() -> Self {
        Side {
            keys: hashbrown::HashTable::new(),
            records: Vec::new(),
            bytes: Arena::default(),
        }
    }
}

impl<T> Side<T> {
    /// Rows kept.
    fn len(&self) -> usize {
        chunked_len(&self.records, RECORDS)
    }

    fn record(&self, i: u32) -> &Record<T> {
        chunked(&self.records, RECORDS, i)
    }

    /// Keep `row` of `key` (whose hash is `hash`) at `time` with `diff`.
    fn insert(&mut self, hash: u64, key: &[u8], row: &[u8], time: T, diff: Diff) {
        let len = self.len();
        let at = u32::try_from(len).expect("under 2^32 rows per worker and side");
        if len.is_multiple_of(RECORDS) {
            self.records.push(Vec::with_capacity(RECORDS));
        }
        let row = self.bytes.push(row);
        self.records.last_mut().expect("a chunk with room").push(Record {
            row,
            next: END,
            time,
            diff,
        });
        let Side { keys, bytes, .. } = self;
        match keys.find_mut(hash, |k| k.hash == hash && bytes.get(k.key) == key) {
            Some(k) => {
                let last = std::mem::replace(&mut k.last, at);
                chunked_mut(&mut self.records, RECORDS, last).next = at;
            }
            None => {
                let key = bytes.push(key);
                keys.insert_unique(
                    hash,
                    Key {
                        hash,
                        key,
                        first: at,
                        last: at,
                    },
                    |k| k.hash,
                );
            }
        }
    }

    /// Call `each` with every row of `key` (whose hash is `hash`), its time
    /// and multiplicity, in the order they came.
    fn matches(&self, hash: u64, key: &[u8], mut each: impl FnMut(&[u8], &T, Diff)) {
        let Some(k) = self
            .keys
            .find(hash, |k| k.hash == hash && self.bytes.get(k.key) == key)
        else {
            return;
        };
        let mut at = k.first;
        while at != END {
            let r = self.record(at);
            each(self.bytes.get(r.row), &r.time, r.diff);
            at = r.next;
        }
    }

    fn size(&self) -> Size {
        let record = std::mem::size_of::<Record<T>>();
        let key = std::mem::size_of::<Key>();
        let (used, allocated) = self
            .bytes
            .chunks
            .iter()
            .fold((0, 0), |(u, a), c| (u + c.len(), a + c.capacity()));
        Size {
            batches: 1,
            records: self.len(),
            bytes: self.len() * record + self.keys.len() * key + used,
            capacity: self.records.len() * RECORDS * record + self.keys.capacity() * key + allocated,
        }
    }
}

/// The hash a side files a key under: fixed, and not the exchange's, so
/// that the keys one worker receives still spread over its whole table.
fn key_hash(key: &[u8]) -> u64 {
    foldhash::fast::FixedState::with_seed(1).hash_one(key)
}

/// The inner join of `left` and `right`, keyed rows that only insert, each
/// match made into its output row by `map`; the errors of matches whose
/// rows do not walk as the joined schema (never expected). Each side's
/// table is measured as `State: JoinInsertsLeft` / `Right` (see
/// [`crate::sizes`]).
pub(crate) fn join_inserts<'s, T: RenderTime>(
    left: Keyed<'s, T>,
    right: Keyed<'s, T>,
    map: MatchMap,
) -> (Coll<'s, T>, Errs<'s, T>) {
    let sides: Rc<RefCell<(Side<T>, Side<T>)>> = Rc::default();
    let dataflow = left.inner.scope().addr()[0];
    let registrations = [("Left", false), ("Right", true)].map(|(name, right)| {
        let sides = Rc::downgrade(&sides);
        crate::sizes::register(dataflow, &format!("State: JoinInserts{name}"), move || {
            sides
                .upgrade()
                .map(|s| {
                    let s = s.borrow();
                    if right { s.1.size() } else { s.0.size() }
                })
                .unwrap_or_default()
        })
    });
    let route = || Exchange::new(|((k, _), _, _): &((Row, Row), T, Diff)| k.hashed());
    let mixed = left
        .inner
        .binary::<_, CapacityContainerBuilder<Vec<Match<T>>>, _, _, _, _>(
            right.inner,
            route(),
            route(),
            "JoinInserts",
            move |_, _| {
                let mut scratch = (Vec::new(), Vec::new());
                let mut out = Vec::new();
                move |input1, input2, output| {
                    // Owned by the operator: the registrations go with it.
                    let _owned = &registrations;
                    let (l, r) = &mut *sides.borrow_mut();
                    // Left rows meet the right rows so far, then right rows
                    // meet every left row so far: each pair meets once.
                    input1.for_each(|cap, data| {
                        meet(data, l, r, true, &map, &mut scratch, &mut out);
                        output.session(&cap).give_container(&mut out);
                    });
                    input2.for_each(|cap, data| {
                        meet(data, r, l, false, &map, &mut scratch, &mut out);
                        output.session(&cap).give_container(&mut out);
                    });
                }
            },
        );
    let (ok, err) = mixed.ok_err(|r| r);
    (ok.as_collection(), err.as_collection())
}

/// Each of `arriving`, rows of the side `own`, meets the rows of `other`
/// so far, each match made by `map` into `out` (`own_left`: `own`'s rows
/// are the left of each match), then stays in `own`.
fn meet<T: RenderTime>(
    arriving: &mut Vec<((Row, Row), T, Diff)>,
    own: &mut Side<T>,
    other: &Side<T>,
    own_left: bool,
    map: &MatchMap,
    (joined, ends): &mut (Vec<u8>, Vec<usize>),
    out: &mut Vec<Match<T>>,
) {
    for ((key, row), t, d) in arriving.drain(..) {
        let hash = key_hash(&key);
        other.matches(hash, &key, |theirs, t2, d2| {
            let (l, r) = if own_left {
                (&row[..], theirs)
            } else {
                (theirs, &row[..])
            };
            if let Some(made) = map.make(l, r, joined, ends) {
                out.push(matched(made, t.join(t2), d * d2));
            }
        });
        own.insert(hash, &key, &row, t, d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows chain by key in the order they came, across chunks of
    /// records and of bytes, and keys that share a hash stay apart.
    #[test]
    fn rows_chain_by_key_in_arrival_order() {
        let mut side: Side<u64> = Side::default();
        let long = vec![7u8; ARENA_CHUNK / 3];
        let n = RECORDS as u64 + 100;
        for i in 0..n {
            let key = [(i % 3) as u8];
            let row = if i % 1000 == 0 {
                long.clone()
            } else {
                i.to_le_bytes().to_vec()
            };
            side.insert(key_hash(&key), &key, &row, i, 1 + (i % 2) as Diff);
        }
        // Two keys filed under one hash: each finds only its own rows.
        side.insert(42, b"x", b"first", 0, 1);
        side.insert(42, b"y", b"second", 0, 1);
        for k in 0..3u8 {
            let mut seen = Vec::new();
            side.matches(key_hash(&[k]), &[k], |row, t, d| {
                let want = if t % 1000 == 0 {
                    long.clone()
                } else {
                    t.to_le_bytes().to_vec()
                };
                assert_eq!(row, want.as_slice());
                assert_eq!(d, 1 + (t % 2) as Diff);
                seen.push(*t);
            });
            let want: Vec<u64> = (0..n).filter(|i| i % 3 == k as u64).collect();
            assert_eq!(seen, want);
        }
        for (key, row) in [(b"x", b"first".as_slice()), (b"y", b"second".as_slice())] {
            let mut seen = Vec::new();
            side.matches(42, key, |r, _, _| seen.push(r.to_vec()));
            assert_eq!(seen, vec![row.to_vec()]);
        }
        let mut none = 0;
        side.matches(key_hash(b"z"), b"z", |_, _, _| none += 1);
        assert_eq!(none, 0);
        let size = side.size();
        assert_eq!(size.records, n as usize + 2);
        assert!(size.bytes <= size.capacity, "{size:?}");
        assert!(side.bytes.chunks.len() > 1 && side.records.len() == 2);
    }
}
