//! A hash map for the running operator's states (see [`crate::running`])
//! whose entries never move as it grows.
//!
//! A `hashbrown::HashMap` keeps its entries in its table: growing copies
//! every entry into a table twice the size, so a map of a million 64-byte
//! states touches ~256 MB of fresh memory on its way there, and the kernel
//! zeroing those pages was a tenth of Nexmark q18's CPU. Here the table
//! holds only 8-byte indexes (part of each key's hash, and its slot), and
//! the entries live in fixed-size chunks that are filled in order and
//! never copied; emptied chunks go back to a pool the next map draws
//! from, so the maps of successive times reuse the same memory.
//!
//! This module knows nothing of what the states mean.

use std::hash::{BuildHasher, Hash};

/// Entries per chunk.
const CHUNK: usize = 8 * 1024;

/// Emptied chunks, to be filled again.
pub(crate) type Pool<K, S> = Vec<Vec<(K, S)>>;

/// A map from keys to states (see the module comment), of at most 2^32
/// entries: slots are `u32`, as a worker holding more states would have
/// run out of memory long before.
pub(crate) struct SlotMap<K, S> {
    /// (tag, slot): the high half of the key's hash and where its entry is.
    index: hashbrown::HashTable<(u32, u32)>,
    /// Entry `i` is `chunks[i / CHUNK][i % CHUNK]`; every chunk but the
    /// last is full, and the last is not empty.
    chunks: Vec<Vec<(K, S)>>,
}

/// How many entries `chunks` hold, each of `per` entries but the last,
/// which is not empty (the layout of [`SlotMap`]'s entries and of
/// [`crate::insert_join`]'s records).
pub(crate) fn chunked_len<T>(chunks: &[Vec<T>], per: usize) -> usize {
    chunks
        .last()
        .map_or(0, |last| (chunks.len() - 1) * per + last.len())
}

/// Entry `i` of `chunks` of `per` entries each.
pub(crate) fn chunked<T>(chunks: &[Vec<T>], per: usize, i: u32) -> &T {
    let i = i as usize;
    &chunks[i / per][i % per]
}

/// [`chunked`], to change.
pub(crate) fn chunked_mut<T>(chunks: &mut [Vec<T>], per: usize, i: u32) -> &mut T {
    let i = i as usize;
    &mut chunks[i / per][i % per]
}

/// The key hasher: fixed, so that a key's hash is the same in every map
/// (hashbrown's default is seeded afresh for each instance).
fn hasher() -> foldhash::fast::FixedState {
    foldhash::fast::FixedState::with_seed(0)
}

/// The hash the table files a tag under: spread over all 64 bits, since
/// the table takes its control byte from the top and its bucket from the
/// bottom. A function of the tag alone, so the table can grow without
/// reading a single entry.
fn spread(tag: u32) -> u64 {
    (tag as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The tag of a key's hash.
fn tag(hash: u64) -> u32 {
    (hash >> 32) as u32
}

impl<K: Hash + Eq, S> Default for SlotMap<K, S> {
    fn default() -> Self {
        SlotMap {
            index: hashbrown::HashTable::new(),
            chunks: Vec::new(),
        }
    }
}

impl<K: Hash + Eq, S> SlotMap<K, S> {
    /// The hash to look `key` up by.
    pub fn hash(key: &K) -> u64 {
        hasher().hash_one(key)
    }

    pub fn len(&self) -> usize {
        chunked_len(&self.chunks, CHUNK)
    }

    /// Room for this many entries without growing: in the chunks held,
    /// and in the table.
    pub fn capacity(&self) -> (usize, usize) {
        (self.chunks.len() * CHUNK, self.index.capacity())
    }

    fn entry(&self, slot: u32) -> &(K, S) {
        chunked(&self.chunks, CHUNK, slot)
    }

    fn slot(&self, hash: u64, key: &K) -> Option<u32> {
        let tag = tag(hash);
        self.index
            .find(spread(tag), |&(t, s)| t == tag && self.entry(s).0 == *key)
            .map(|&(_, s)| s)
    }

    /// The state of `key`, whose hash is `hash`.
    pub fn get(&self, hash: u64, key: &K) -> Option<&S> {
        self.slot(hash, key).map(|s| &self.entry(s).1)
    }

    /// The key and state of `key`, whose hash is `hash`, to change.
    pub fn get_mut(&mut self, hash: u64, key: &K) -> Option<(&K, &mut S)> {
        let slot = self.slot(hash, key)?;
        let (k, s) = chunked_mut(&mut self.chunks, CHUNK, slot);
        Some((k, s))
    }

    /// Add `key` (absent, with hash `hash`) with `state`, taking a chunk
    /// from `pool` where the last is full.
    pub fn insert(&mut self, hash: u64, key: K, state: S, pool: &mut Pool<K, S>) -> (&K, &mut S) {
        let slot = self.len();
        if slot.is_multiple_of(CHUNK) {
            self.chunks
                .push(pool.pop().unwrap_or_else(|| Vec::with_capacity(CHUNK)));
        }
        let chunk = self.chunks.last_mut().expect("a chunk with room");
        chunk.push((key, state));
        let tag = tag(hash);
        self.index
            .insert_unique(spread(tag), (tag, slot as u32), |&(t, _)| spread(t));
        let (k, s) = chunk.last_mut().expect("just pushed");
        (k, s)
    }

    /// Remove `key` (present, with hash `hash`): the last entry moves
    /// into its slot, so the chunks stay full.
    pub fn remove(&mut self, hash: u64, key: &K) -> Option<(K, S)> {
        let slot = self.slot(hash, key)?;
        let removed = tag(hash);
        self.index
            .find_entry(spread(removed), |&(t, s)| t == removed && s == slot)
            .ok()?
            .remove();
        let last = (self.len() - 1) as u32;
        let moved = self
            .chunks
            .last_mut()
            .and_then(|c| c.pop())
            .expect("a last entry");
        if self.chunks.last().is_some_and(|c| c.is_empty()) {
            self.chunks.pop();
        }
        if slot == last {
            return Some(moved);
        }
        let moved_tag = tag(Self::hash(&moved.0));
        if let Some(record) = self
            .index
            .find_mut(spread(moved_tag), |&(t, s)| t == moved_tag && s == last)
        {
            record.1 = slot;
        }
        Some(std::mem::replace(
            chunked_mut(&mut self.chunks, CHUNK, slot),
            moved,
        ))
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &(K, S)> {
        self.chunks.iter().flatten()
    }

    /// Empty the map (its table keeps its room), handing back its chunks,
    /// full, in the order filled: the caller drains them and returns them
    /// to a pool.
    pub fn take_chunks(&mut self) -> Vec<Vec<(K, S)>> {
        self.index.clear();
        std::mem::take(&mut self.chunks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inserting, finding, changing and removing agree with a std map,
    /// across many chunks and removals from the middle and the end.
    #[test]
    fn agrees_with_a_hash_map() {
        let mut map: SlotMap<u64, u64> = SlotMap::default();
        let mut pool = Vec::new();
        let mut expect = std::collections::HashMap::new();
        let n = 3 * CHUNK as u64 + 17;
        for k in 0..n {
            let h = SlotMap::<u64, u64>::hash(&k);
            assert!(map.get(h, &k).is_none());
            map.insert(h, k, k * 10, &mut pool);
            expect.insert(k, k * 10);
        }
        for k in (0..n).step_by(3) {
            let h = SlotMap::<u64, u64>::hash(&k);
            *map.get_mut(h, &k).unwrap().1 += 1;
            *expect.get_mut(&k).unwrap() += 1;
        }
        for k in (0..n).filter(|k| k % 5 == 0).chain([n - 1]) {
            let h = SlotMap::<u64, u64>::hash(&k);
            assert_eq!(map.remove(h, &k), expect.remove_entry(&k));
            assert!(map.get(h, &k).is_none());
        }
        assert_eq!(map.len(), expect.len());
        for (k, v) in &expect {
            assert_eq!(map.get(SlotMap::<u64, u64>::hash(k), k), Some(v));
        }
        let mut all: Vec<(u64, u64)> = map.iter().copied().collect();
        all.sort();
        let mut want: Vec<(u64, u64)> = expect.into_iter().collect();
        want.sort();
        assert_eq!(all, want);
        // Taken and drained, the chunks fill the next map.
        let chunks = map.take_chunks();
        assert_eq!(map.len(), 0);
        assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), want.len());
        pool.extend(chunks.into_iter().map(|mut c| {
            c.clear();
            c
        }));
        let before = pool.len();
        let h = SlotMap::<u64, u64>::hash(&7);
        map.insert(h, 7, 70, &mut pool);
        assert_eq!(pool.len(), before - 1, "a pooled chunk was reused");
        assert_eq!(map.get(h, &7), Some(&70));
    }
}
