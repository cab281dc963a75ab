//! Each user's own message budget (a keyed token bucket): one user going over it never
//! slows another.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

pub struct UserRateLimit {
    limiter: DefaultKeyedRateLimiter<String>,
}

impl UserRateLimit {
    pub fn new(per_sec: u32, burst: u32) -> Self {
        let per_sec = NonZeroU32::new(per_sec).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(per_sec);
        Self {
            limiter: RateLimiter::keyed(Quota::per_second(per_sec).allow_burst(burst)),
        }
    }

    /// `Err(wait)` when the user must wait before their next message.
    pub fn check(&self, user_id: &str) -> Result<(), Duration> {
        self.limiter
            .check_key(&user_id.to_string())
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Forgets users whose budget is full again, so the map does not grow forever.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}
