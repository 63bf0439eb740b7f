//! Rate-limited log lines: at most one line per interval per reason, with the count of the lines
//! held back since the last one.
//!
//! A hostile peer can make a proxy fail thousands of times per second (refused connections, accept
//! errors); one log line per failure would turn the attack into a disk-filling one. Callers ask
//! [`LogLimiter::admit`] before logging and add the returned count to their line.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Decides which log lines are written. Keys must come from a bounded set (an enum of reasons,
/// perhaps with a direction): the limiter keeps one slot per key for its whole life.
#[derive(Debug)]
pub struct LogLimiter<K> {
    interval: Duration,
    slots: Mutex<HashMap<K, Slot>>,
}

#[derive(Debug)]
struct Slot {
    /// When a line for this key was last written.
    written: Instant,
    /// Lines held back since then.
    suppressed: u64,
}

impl<K: Hash + Eq> LogLimiter<K> {
    /// At most one line per `interval` per key.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(suppressed)` if a line for `key` may be written now (`suppressed`: the lines held back
    /// since the last one); `None` if it must be held back (it is counted).
    pub fn admit(&self, key: K) -> Option<u64> {
        self.admit_at(key, Instant::now())
    }

    /// [`LogLimiter::admit`] at time `now`.
    pub fn admit_at(&self, key: K, now: Instant) -> Option<u64> {
        // A poisoned lock only means another thread panicked mid-update of two integers.
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match slots.get_mut(&key) {
            Some(slot) if now.saturating_duration_since(slot.written) < self.interval => {
                slot.suppressed += 1;
                None
            }
            Some(slot) => {
                let suppressed = std::mem::take(&mut slot.suppressed);
                slot.written = now;
                Some(suppressed)
            }
            None => {
                slots.insert(
                    key,
                    Slot {
                        written: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_per_key_with_the_count_held_back() {
        let limiter = LogLimiter::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(limiter.admit_at("emfile", t0), Some(0));
        for i in 1..=1000 {
            let now = t0 + Duration::from_micros(i * 100);
            assert_eq!(limiter.admit_at("emfile", now), None);
        }
        // Another reason has its own budget.
        assert_eq!(limiter.admit_at("budget", t0), Some(0));
        assert_eq!(
            limiter.admit_at("emfile", t0 + Duration::from_secs(1)),
            Some(1000)
        );
        assert_eq!(
            limiter.admit_at("emfile", t0 + Duration::from_millis(1500)),
            None
        );
        assert_eq!(
            limiter.admit_at("emfile", t0 + Duration::from_secs(2)),
            Some(1)
        );
    }

    #[test]
    fn a_clock_going_backwards_holds_lines_back_rather_than_flooding() {
        let limiter = LogLimiter::new(Duration::from_secs(1));
        let t0 = Instant::now() + Duration::from_secs(10);
        assert_eq!(limiter.admit_at(1, t0), Some(0));
        assert_eq!(limiter.admit_at(1, t0 - Duration::from_secs(5)), None);
    }
}
