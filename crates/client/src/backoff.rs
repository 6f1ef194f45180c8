//! Reconnect delays: exponential backoff with full jitter, never shorter than what the
//! server advised.
//!
//! Full jitter (a uniform delay in `[0, min(max, base * 2^attempt)]`) spreads clients that
//! lost the same node over the whole window instead of bunching them at each step, and
//! the server's `reconnect_after_ms` is a floor, so a node shedding load is not hammered.

use std::time::Duration;

use rand::Rng;

/// Backoff settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first delay.
    pub base: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { base: Duration::from_millis(200), max: Duration::from_secs(20) }
    }
}

impl Backoff {
    /// The ceiling of the delay before reconnect attempt `attempt` (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The delay before attempt `attempt`: uniform in `[0, ceiling]`, raised to the
    /// server's advice when it gave one.
    pub fn delay(&self, attempt: u32, advised: Option<Duration>, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt);
        let jittered = Duration::from_millis(rng.random_range(0..=ceiling.as_millis() as u64));
        advised.map_or(jittered, |advised| jittered.max(advised))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn ceilings_grow_exponentially_up_to_max() {
        let backoff = Backoff { base: Duration::from_millis(100), max: Duration::from_secs(2) };
        let ceilings: Vec<u64> = (0..7).map(|a| backoff.ceiling(a).as_millis() as u64).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(backoff.ceiling(1000), Duration::from_secs(2));
    }

    #[test]
    fn delays_are_jittered_within_the_ceiling_and_honour_advice() {
        let backoff = Backoff { base: Duration::from_millis(100), max: Duration::from_secs(2) };
        let mut rng = StdRng::seed_from_u64(7);
        let delays: Vec<Duration> = (0..1000).map(|_| backoff.delay(3, None, &mut rng)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(800)));
        let spread = delays.iter().max().copied().unwrap_or_default()
            - delays.iter().min().copied().unwrap_or_default();
        assert!(spread > Duration::from_millis(600), "full jitter spreads delays: {spread:?}");
        let advised = Duration::from_millis(1500);
        assert!((0..100).all(|_| backoff.delay(0, Some(advised), &mut rng) >= advised));
    }
}
