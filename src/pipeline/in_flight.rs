//! The bound on batches that are produced but not yet committed.
//!
//! The scoring loop takes a slot before it produces a batch; the slot is a guard that travels
//! with the batch to the commit stage and frees itself when dropped, whether the batch was
//! committed, abandoned on an error, or dropped at shutdown. No call site has to remember to
//! give it back, and the bound is exactly the capacity: that many batches at most can be
//! repeated after a crash.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub struct InFlight {
    count: Mutex<usize>,
    changed: Condvar,
    capacity: usize,
}

/// One batch's slot; dropping it frees the slot.
#[must_use = "the slot is freed as soon as the guard is dropped"]
pub struct InFlightGuard {
    owner: Arc<InFlight>,
}

impl InFlight {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            count: Mutex::new(0),
            changed: Condvar::new(),
            capacity: capacity.max(1),
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn count(&self) -> usize {
        *self.lock()
    }

    /// Waits for a free slot, giving up (`None`) when `give_up` says so; it is asked about
    /// every `poll` while the bound is reached.
    pub fn acquire(
        self: &Arc<Self>,
        poll: Duration,
        mut give_up: impl FnMut() -> bool,
    ) -> Option<InFlightGuard> {
        let mut count = self.lock();
        while *count >= self.capacity {
            if give_up() {
                return None;
            }
            count = self
                .changed
                .wait_timeout(count, poll)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *count += 1;
        Some(InFlightGuard {
            owner: Arc::clone(self),
        })
    }

    /// Blocks until no batch is in flight or `timeout` passes; true when drained.
    pub fn wait_drained(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut count = self.lock();
        while *count > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            count = self
                .changed
                .wait_timeout(count, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    fn lock(&self) -> MutexGuard<'_, usize> {
        self.count.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut count = self.owner.lock();
        *count = count.saturating_sub(1);
        self.owner.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_the_capacity_and_a_dropped_guard_frees_its_slot() {
        let in_flight = InFlight::new(2);
        let a = in_flight
            .acquire(Duration::from_millis(1), || false)
            .unwrap();
        let _b = in_flight
            .acquire(Duration::from_millis(1), || false)
            .unwrap();
        let mut asked = 0;
        assert!(in_flight
            .acquire(Duration::from_millis(1), || {
                asked += 1;
                asked > 3
            })
            .is_none());
        assert_eq!(in_flight.count(), 2);
        drop(a);
        assert_eq!(in_flight.count(), 1);
        assert!(in_flight
            .acquire(Duration::from_millis(1), || true)
            .is_some());
    }

    #[test]
    fn draining_waits_for_guards_dropped_elsewhere() {
        let in_flight = InFlight::new(4);
        let guard = in_flight
            .acquire(Duration::from_millis(1), || false)
            .unwrap();
        assert!(!in_flight.wait_drained(Duration::from_millis(10)));
        let t = std::thread::spawn(move || drop(guard));
        assert!(in_flight.wait_drained(Duration::from_secs(10)));
        t.join().unwrap();
    }
}
