//! A token bucket for the per-connection command rate limit.
//!
//! Hand-written rather than taken from `governor`: it is a dozen lines, lives inside one
//! session task (no sharing, no atomics), and costs 24 bytes per connection, which
//! matters at tens of thousands of connections per node.

use tokio::time::Instant;

/// A token bucket refilled continuously at `rate` tokens per second up to `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_second: u32, burst: u32) -> TokenBucket {
        TokenBucket {
            tokens: f64::from(burst),
            last: Instant::now(),
            rate: f64::from(rate_per_second),
            burst: f64::from(burst),
        }
    }

    /// Takes one token; `false` when the bucket is empty.
    pub fn try_take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn allows_burst_then_refills_at_rate() {
        let mut bucket = TokenBucket::new(10, 3);
        assert!((0..3).all(|_| bucket.try_take()));
        assert!(!bucket.try_take());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(bucket.try_take());
        assert!(!bucket.try_take());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!((0..3).all(|_| bucket.try_take()));
        assert!(!bucket.try_take());
    }
}
