//! The path index of one host bucket, and the hash map the host buckets live in.
//!
//! A bucket maps keys (a prefix path, the literal start of a regex path, or `""`) to candidate
//! lists in rank order. Keys are kept sorted, and each key links to its parent: the longest
//! other key that is a prefix of it. For a request path, the keys that are prefixes of it are
//! found with one binary search (the greatest key `<=` the path) and a walk up the parent
//! links: the longest key that is a prefix of the path is a prefix of that greatest key (any
//! string sorted between a prefix of the path and the path itself starts with that prefix), so
//! it is on its parent chain, and so are all shorter ones.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// The rank no candidate has: worse than all of them.
pub(super) const NO_CANDIDATE: u32 = u32::MAX;
/// No parent key.
const NO_PARENT: u32 = u32::MAX;

/// A map keyed by host names or host patterns, with a fast hash: the keys come from the
/// configuration, so a request cannot make them collide (lookups only).
pub(super) type FxMap<V> = HashMap<Box<str>, V, BuildHasherDefault<FxHasher>>;

/// The candidates of one host bucket, by path key.
#[derive(Default)]
pub(super) struct Bucket {
    /// Sorted, distinct.
    keys: Box<[Box<str>]>,
    /// For each key, its first 16 bytes as a big-endian number (zero-padded): the binary
    /// search compares these (one contiguous array) and reads keys only among equal ones.
    words: Box<[u128]>,
    /// For each key, the index of its parent key, or [`NO_PARENT`].
    parents: Box<[u32]>,
    /// For each key, its candidates by rank (best first).
    lists: Box<[Box<[u32]>]>,
    /// The best rank of the bucket: a search that already has better skips the bucket.
    best: u32,
}

/// A bucket being built.
#[derive(Default)]
pub(super) struct BucketBuilder {
    lists: HashMap<String, Vec<u32>>,
}

/// The keys of a bucket that are prefixes of a path, longest first: the key's length and its
/// candidates.
pub(super) struct Chain<'b> {
    bucket: &'b Bucket,
    next: u32,
}

/// The lengths of a map's keys, to skip hashing strings of a length no key has.
#[derive(Default, Clone, Copy)]
pub(super) struct Lengths([u64; 4]);

/// Rustc's FxHash: a multiply-rotate hash, several times faster than SipHash on short keys.
#[derive(Default, Clone, Copy)]
pub(super) struct FxHasher(u64);

// === impl BucketBuilder ===

impl BucketBuilder {
    /// Files candidate `rank` under `key`.
    pub(super) fn add(&mut self, key: &str, rank: u32) {
        match self.lists.get_mut(key) {
            Some(list) => list.push(rank),
            None => {
                self.lists.insert(key.to_owned(), vec![rank]);
            }
        }
    }

    pub(super) fn build(self) -> Bucket {
        let mut entries: Vec<(String, Vec<u32>)> = self.lists.into_iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut keys: Vec<Box<str>> = Vec::with_capacity(entries.len());
        let mut lists = Vec::with_capacity(entries.len());
        let mut parents = Vec::with_capacity(entries.len());
        // The chain of keys that are prefixes of the previous key: in sorted order every
        // prefix of a key comes before it, so the parent of a key is on this stack.
        let mut stack: Vec<usize> = Vec::new();
        for (index, (key, mut list)) in entries.into_iter().enumerate() {
            while let Some(&top) = stack.last() {
                let top_key = keys.get(top).map_or("", |k| &**k);
                if key.starts_with(top_key) {
                    break;
                }
                stack.pop();
            }
            parents.push(
                stack
                    .last()
                    .and_then(|&p| u32::try_from(p).ok())
                    .unwrap_or(NO_PARENT),
            );
            stack.push(index);
            list.sort_unstable();
            list.dedup();
            keys.push(key.into_boxed_str());
            lists.push(list.into_boxed_slice());
        }
        Bucket {
            best: lists
                .iter()
                .filter_map(|list| list.first().copied())
                .min()
                .unwrap_or(NO_CANDIDATE),
            words: keys.iter().map(|k| word(k)).collect(),
            keys: keys.into(),
            parents: parents.into(),
            lists: lists.into(),
        }
    }
}

// === impl Bucket ===

impl Bucket {
    /// The keys that are prefixes of `path`, longest first.
    pub(super) fn chain(&self, path: &str) -> Chain<'_> {
        // Keys hold no NUL byte (route paths are RFC 3986 text), so comparing the zero-padded
        // words orders a key and a path as comparing the strings does, or finds them equal.
        let target = word(path);
        let low = self.words.partition_point(|w| *w < target);
        let high = low
            + self
                .words
                .get(low..)
                .map_or(0, |w| w.partition_point(|w| *w == target));
        let greatest = low
            + self
                .keys
                .get(low..high)
                .map_or(0, |ties| ties.partition_point(|key| **key <= *path));
        let mut next = greatest
            .checked_sub(1)
            .and_then(|i| u32::try_from(i).ok())
            .unwrap_or(NO_PARENT);
        // Up to the longest key that is a prefix of the path.
        while let Some(key) = self.keys.get(next as usize) {
            if path.starts_with(&**key) {
                break;
            }
            next = self.parent(next);
        }
        Chain { bucket: self, next }
    }

    /// The best rank of any candidate in the bucket.
    pub(super) fn best(&self) -> u32 {
        self.best
    }

    fn parent(&self, index: u32) -> u32 {
        self.parents
            .get(index as usize)
            .copied()
            .unwrap_or(NO_PARENT)
    }

    /// How many keys the bucket has.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }
}

impl<'b> Iterator for Chain<'b> {
    type Item = (usize, &'b [u32]);

    fn next(&mut self) -> Option<Self::Item> {
        let index = self.next as usize;
        let key = self.bucket.keys.get(index)?;
        let list = self.bucket.lists.get(index)?;
        self.next = self.bucket.parent(self.next);
        Some((key.len(), list))
    }
}

/// The first 16 bytes of `s`, big-endian, zero-padded.
fn word(s: &str) -> u128 {
    let mut bytes = [0u8; 16];
    for (to, from) in bytes.iter_mut().zip(s.as_bytes()) {
        *to = *from;
    }
    u128::from_be_bytes(bytes)
}

// === impl Lengths ===

impl Lengths {
    /// The lengths of the keys of `map`.
    pub(super) fn of<V>(map: &FxMap<V>) -> Self {
        let mut lengths = Self::default();
        for key in map.keys() {
            // Longer keys are always looked up (see `may_have`).
            if let Some(bits) = lengths.0.get_mut(key.len() / 64) {
                *bits |= 1 << (key.len() % 64);
            }
        }
        lengths
    }

    /// Whether some key may have length `len`.
    pub(super) fn may_have(&self, len: usize) -> bool {
        self.0
            .get(len / 64)
            .is_none_or(|bits| bits & (1 << (len % 64)) != 0)
    }
}

// === impl FxHasher ===

impl FxHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            for (to, from) in word.iter_mut().zip(rest) {
                *to = *from;
            }
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
