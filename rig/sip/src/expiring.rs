//! A map whose entries live for a fixed time after they were inserted, with
//! a bound on how many it holds: the registrar's nonces and the endpoint's
//! server transactions are both that.
//!
//! Lookups and inserts are O(1) (amortised) however many entries are live: a
//! hash map by key, and a queue in insertion order, which is also expiry
//! order, so expired entries are dropped from its front as new ones come in.
//! Past `max` entries the oldest are forgotten early.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

pub(crate) struct ExpiringMap<K, V> {
    lifetime: Duration,
    max: usize,
    /// Key → (when it was inserted, value).
    entries: HashMap<K, (Instant, V)>,
    /// `(inserted, key)` in insertion order.
    by_age: VecDeque<(Instant, K)>,
}

impl<K: Eq + Hash + Clone, V> ExpiringMap<K, V> {
    /// Entries live for `lifetime`; at most `max` (at least 1) are held.
    pub fn new(lifetime: Duration, max: usize) -> Self {
        ExpiringMap {
            lifetime,
            max: max.max(1),
            entries: HashMap::new(),
            by_age: VecDeque::new(),
        }
    }

    /// The value of `key` if it was inserted less than the lifetime before `now`.
    pub fn get<Q>(&self, key: &Q, now: Instant) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let lifetime = self.lifetime;
        self.entries
            .get(key)
            .filter(|(inserted, _)| now.saturating_duration_since(*inserted) < lifetime)
            .map(|(_, value)| value)
    }

    /// As [`get`](Self::get), for changing the value in place (its lifetime stays).
    pub fn get_mut(&mut self, key: &K, now: Instant) -> Option<&mut V> {
        let lifetime = self.lifetime;
        self.entries
            .get_mut(key)
            .filter(|(inserted, _)| now.saturating_duration_since(*inserted) < lifetime)
            .map(|(_, value)| value)
    }

    /// Inserts (or replaces, with a fresh lifetime) `key` at `now`.
    pub fn insert(&mut self, key: K, value: V, now: Instant) {
        self.forget_expired(now);
        while self.entries.len() >= self.max {
            let Some((inserted, oldest)) = self.by_age.pop_front() else {
                break;
            };
            self.remove_if_inserted_at(&oldest, inserted);
        }
        self.by_age.push_back((now, key.clone()));
        self.entries.insert(key, (now, value));
    }

    /// Entries held (live, or expired but not yet dropped).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    fn forget_expired(&mut self, now: Instant) {
        while let Some((inserted, _)) = self.by_age.front() {
            if now.saturating_duration_since(*inserted) < self.lifetime {
                break;
            }
            let Some((inserted, key)) = self.by_age.pop_front() else {
                break;
            };
            self.remove_if_inserted_at(&key, inserted);
        }
    }

    /// Removes `key` only if its entry is the one queued at `inserted` (a key
    /// inserted again since has a later queue entry of its own).
    fn remove_if_inserted_at(&mut self, key: &K, inserted: Instant) {
        if self.entries.get(key).is_some_and(|(at, _)| *at == inserted) {
            self.entries.remove(key);
        }
    }
}
