//! Rate limits: token buckets per client IP (every request) and per account owner (signed
//! orders, counted after the signature verifies so that nobody can spend another's budget).
//! Bounded memory: idle buckets are forgotten when the table grows.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// A token-bucket table keyed by `K`.
pub struct Buckets<K: Ord> {
    per_second: u64,
    burst: u64,
    table: Mutex<BTreeMap<K, (u64, u64)>>,
}

/// Most buckets kept before idle ones are dropped.
const MAX_BUCKETS: usize = 100_000;

impl<K: Ord + Clone> Buckets<K> {
    /// `per_second` sustained, `burst` at once.
    pub fn new(per_second: u64, burst: u64) -> Self {
        Self {
            per_second,
            burst,
            table: Mutex::new(BTreeMap::new()),
        }
    }

    /// Takes one token for `key` at `now_ms`; false when the bucket is empty.
    pub fn take(&self, key: &K, now_ms: u64) -> bool {
        let Ok(mut table) = self.table.lock() else {
            return false;
        };
        if table.len() >= MAX_BUCKETS {
            // Buckets idle long enough to be full again carry no information.
            let full_after = self.burst * 1_000 / self.per_second.max(1);
            table.retain(|_, (_, last)| now_ms.saturating_sub(*last) < full_after);
        }
        // Tokens in thousandths, refilled by elapsed time.
        let (tokens, last) = table
            .entry(key.clone())
            .or_insert((self.burst * 1_000, now_ms));
        let refill = now_ms.saturating_sub(*last) * self.per_second;
        *tokens = (*tokens + refill).min(self.burst * 1_000);
        *last = now_ms;
        if *tokens >= 1_000 {
            *tokens -= 1_000;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills() {
        let b = Buckets::new(10, 5);
        assert_eq!((0..8).filter(|_| b.take(&1u32, 0)).count(), 5);
        assert!(!b.take(&1, 50));
        assert!(b.take(&1, 100));
        assert!(b.take(&2, 100), "buckets are per key");
    }
}
