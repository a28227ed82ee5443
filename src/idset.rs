//! A compact set of 64-bit custom_id hashes: the one piece of state kept per request, for
//! duplicate detection and for the requests a resumed run skips. [`IdMap`] is the same set with
//! a small value beside each id (duplicate detection keeps the line that first used it, 4 bytes
//! more an id); [`IdSet`] is the map with no value, which costs nothing beside the ids.
//!
//! Eight bytes an id, plus a table for recent ids up to an eighth as many. A `HashSet<u64>`
//! keeps a little under 9 bytes an id at best, 19 at its usual load and 28 while it doubles:
//! at a million ids that was most of the run's memory. Here the ids live in one sorted vector;
//! new ids gather in a hash table that is merged into it, in place and in linear time, when it
//! fills. Ids are hashes, so they are spread evenly, and a lookup starts where the id's value
//! says it should sit in the vector and gallops from there: a handful of probes, mostly on one
//! page.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Fewest recent ids held apart before a merge; past that, an eighth of the merged ids, so
/// that merges stay a few moves per id in all however many ids there are (a fixed cap made
/// them quadratic: 0.46 µs an id at ten million), for one or two bytes an id of table.
const PENDING_MIN: usize = 4096;

/// Id hashes, each with a value.
#[derive(Debug, Clone)]
pub struct IdMap<V> {
    /// Merged ids, ascending, each once.
    sorted: Vec<u64>,
    /// The value of each id in `sorted`, at the same index.
    values: Vec<V>,
    /// Ids added since the last merge, none of them in `sorted`.
    pending: HashMap<u64, V, BuildHasherDefault<IdHasher>>,
}

/// A set of id hashes.
pub type IdSet = IdMap<()>;

impl<V> Default for IdMap<V> {
    fn default() -> Self {
        IdMap {
            sorted: Vec::new(),
            values: Vec::new(),
            pending: HashMap::default(),
        }
    }
}

impl<V: Copy + Default> IdMap<V> {
    pub fn new() -> Self {
        IdMap::default()
    }

    pub fn len(&self) -> usize {
        self.sorted.len() + self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, id: u64) -> bool {
        self.get(id).is_some()
    }

    /// The value `id` was first added with.
    pub fn get(&self, id: u64) -> Option<V> {
        match self.pending.get(&id) {
            Some(value) => Some(*value),
            None => sorted_find(&self.sorted, id).map(|index| self.values[index]),
        }
    }

    /// Adds `id` with `value`; when it was already there, keeps it and returns its value.
    pub fn try_insert(&mut self, id: u64, value: V) -> Result<(), V> {
        if let Some(first) = self.get(id) {
            return Err(first);
        }
        self.pending.insert(id, value);
        if self.pending.len() >= (self.sorted.len() / 8).max(PENDING_MIN) {
            self.merge_pending();
        }
        Ok(())
    }

    /// Moves the pending ids into the sorted vector: sorts them, then merges from the back so
    /// that no second copy of the vector is needed.
    fn merge_pending(&mut self) {
        let mut fresh: Vec<(u64, V)> = self.pending.drain().collect();
        fresh.sort_unstable_by_key(|(id, _)| *id);
        let old_len = self.sorted.len();
        self.sorted.reserve_exact(fresh.len());
        self.sorted.resize(old_len + fresh.len(), 0);
        self.values.reserve_exact(fresh.len());
        self.values.resize(old_len + fresh.len(), V::default());
        let (mut old, mut new) = (old_len, fresh.len());
        while new > 0 {
            let write = old + new - 1;
            if old > 0 && self.sorted[old - 1] > fresh[new - 1].0 {
                self.sorted[write] = self.sorted[old - 1];
                self.values[write] = self.values[old - 1];
                old -= 1;
            } else {
                (self.sorted[write], self.values[write]) = fresh[new - 1];
                new -= 1;
            }
        }
        self.pending.shrink_to(PENDING_MIN);
    }
}

impl IdSet {
    /// Adds `id`; false when it was already there.
    pub fn insert(&mut self, id: u64) -> bool {
        self.try_insert(id, ()).is_ok()
    }
}

impl Extend<u64> for IdSet {
    fn extend<T: IntoIterator<Item = u64>>(&mut self, ids: T) {
        for id in ids {
            self.insert(id);
        }
    }
}

/// Where ascending `sorted` holds `id`, searched from where an evenly spread id would sit.
fn sorted_find(sorted: &[u64], id: u64) -> Option<usize> {
    let len = sorted.len();
    if len == 0 {
        return None;
    }
    // id / 2⁶⁴ × len, always below len.
    let guess = ((u128::from(id) * len as u128) >> 64) as usize;
    // Narrow to sorted[low..high], doubling the step away from the guess.
    let (mut low, mut high) = (0, len);
    let mut step = 1;
    if sorted[guess] < id {
        low = guess + 1;
        while let Some(probe) = guess.checked_add(step).filter(|&probe| probe < len) {
            if sorted[probe] >= id {
                high = probe + 1;
                break;
            }
            low = probe + 1;
            step *= 2;
        }
    } else {
        high = guess + 1;
        while let Some(probe) = guess.checked_sub(step) {
            if sorted[probe] < id {
                low = probe + 1;
                break;
            }
            high = probe + 1;
            step *= 2;
        }
    }
    sorted[low..high]
        .binary_search(&id)
        .ok()
        .map(|found| low + found)
}

/// The ids are hashes already: hashing them again would only cost time.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    /// Ids that fill both halves of the set: enough to merge many times.
    fn spread_ids(count: u64, seed: u64) -> Vec<u64> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..count).map(|_| rng.u64(..)).collect()
    }

    #[test]
    fn agrees_with_a_hash_set_across_many_merges() {
        let mut set = IdSet::new();
        let mut model = HashSet::new();
        let ids = spread_ids(200_000, 7);
        for (index, &id) in ids.iter().enumerate() {
            assert_eq!(set.insert(id), model.insert(id));
            // Again, now that it is there, whichever half holds it.
            assert!(!set.insert(id));
            if index % 3 == 0 {
                let earlier = ids[index / 2];
                assert!(set.contains(earlier));
            }
        }
        assert_eq!(set.len(), model.len());
        assert!(set.sorted.len() > 150_000, "most ids were merged");
        assert!(set.sorted.windows(2).all(|pair| pair[0] < pair[1]));
        for id in spread_ids(50_000, 8) {
            assert_eq!(set.contains(id), model.contains(&id), "{id}");
        }
    }

    #[test]
    fn the_extremes_and_neighbours_are_told_apart() {
        let mut set = IdSet::new();
        let edges = [0, 1, 2, u64::MAX - 1, u64::MAX, 1 << 63];
        set.extend(edges);
        set.extend(spread_ids(20_000, 9));
        set.merge_pending();
        for id in edges {
            assert!(set.contains(id), "{id}");
        }
        for id in [3, u64::MAX - 2, (1 << 63) + 1, (1 << 63) - 1] {
            assert!(!set.contains(id), "{id}");
        }
    }

    #[test]
    fn a_map_keeps_the_first_value_of_each_id_across_merges() {
        let mut map: IdMap<u32> = IdMap::new();
        let ids = spread_ids(50_000, 11);
        for (line, &id) in (1u32..).zip(&ids) {
            assert_eq!(map.try_insert(id, line), Ok(()));
        }
        assert!(map.sorted.len() > 40_000, "most ids were merged");
        for (line, &id) in (1u32..).zip(&ids).step_by(7) {
            assert_eq!(map.try_insert(id, 0), Err(line));
            assert_eq!(map.get(id), Some(line));
        }
    }

    proptest! {
        /// Clustered ids (far from evenly spread) still search correctly, only slower.
        #[test]
        fn clustered_ids(base in any::<u64>(), offsets in prop::collection::vec(0u64..5000, 0..6000)) {
            let mut set = IdSet::new();
            let mut model = HashSet::new();
            for offset in &offsets {
                let id = base.wrapping_add(*offset);
                prop_assert_eq!(set.insert(id), model.insert(id));
            }
            set.merge_pending();
            for offset in 0..5000u64 {
                let id = base.wrapping_add(offset);
                prop_assert_eq!(set.contains(id), model.contains(&id));
            }
        }
    }
}
