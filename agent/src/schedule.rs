//! When to retry and when to renew: pure functions of their inputs and a random source, so
//! thousands of agents coming back after an outage spread out instead of arriving together.

use rand::Rng;
use std::time::Duration;

/// First reconnect delay ceiling.
pub const RECONNECT_BASE: Duration = Duration::from_millis(250);
/// Largest reconnect delay.
pub const RECONNECT_CAP: Duration = Duration::from_secs(30);
/// First renewal retry delay ceiling.
pub const RENEW_RETRY_BASE: Duration = Duration::from_secs(1);
/// Largest renewal retry delay.
pub const RENEW_RETRY_CAP: Duration = Duration::from_secs(300);

/// "Full jitter" exponential backoff: a uniformly random delay between zero and
/// `min(cap, base · 2^exponent)`.
pub fn full_jitter<R: Rng + ?Sized>(
    exponent: u32,
    base: Duration,
    cap: Duration,
    rng: &mut R,
) -> Duration {
    let factor = 1u32.checked_shl(exponent.min(31)).unwrap_or(u32::MAX);
    let ceiling = base.saturating_mul(factor).min(cap);
    let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rng.gen_range(0..=ceiling_ms))
}

/// The delay before reconnect attempt `attempt` (async-nats counts from 1 and also asks before
/// the very first connection): full jitter with base 250 ms and cap 30 s.
pub fn reconnect_delay<R: Rng + ?Sized>(attempt: usize, rng: &mut R) -> Duration {
    let exponent = u32::try_from(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
    full_jitter(exponent, RECONNECT_BASE, RECONNECT_CAP, rng)
}

/// The delay before renewal retry `attempt` (from 0): full jitter, base 1 s, cap 5 min.
pub fn renew_retry_delay<R: Rng + ?Sized>(attempt: u32, rng: &mut R) -> Duration {
    full_jitter(attempt, RENEW_RETRY_BASE, RENEW_RETRY_CAP, rng)
}

/// When to renew a JWT issued at `iat` that expires at `exp` (unix seconds), at `now`: after
/// half of the remaining lifetime, ±10 % jitter. The remaining lifetime counts from `iat` when
/// `iat` is later than `now` (a clock running behind the issuer's). Expired or nonsensical
/// tokens are renewed at once (`now`). The result is never before `now` nor after `exp`.
pub fn renew_at<R: Rng + ?Sized>(iat: i64, exp: i64, now: i64, rng: &mut R) -> i64 {
    let start = now.max(iat);
    let remaining = exp.saturating_sub(start);
    if remaining <= 0 || exp <= iat {
        return now;
    }
    let fraction = 0.5 * rng.gen_range(0.9..=1.1);
    // Lifetimes are far below 2^52 seconds, so the float round trip is exact enough.
    let delay = (remaining as f64 * fraction) as i64;
    now.saturating_add(delay.clamp(0, exp.saturating_sub(now).max(0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::StdRng};

    #[test]
    fn reconnect_delays_grow_and_stay_within_bounds() {
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 0..200usize {
            let ceiling = if attempt <= 1 {
                RECONNECT_BASE
            } else {
                RECONNECT_BASE
                    .saturating_mul(1u32.checked_shl(attempt as u32 - 1).unwrap_or(u32::MAX))
                    .min(RECONNECT_CAP)
            };
            for _ in 0..50 {
                let d = reconnect_delay(attempt, &mut rng);
                assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
                assert!(d <= RECONNECT_CAP);
            }
        }
        // Late attempts spread over the whole window, not just its low end.
        let late: Vec<_> = (0..500).map(|_| reconnect_delay(1000, &mut rng)).collect();
        assert!(late.iter().any(|d| *d > Duration::from_secs(20)));
        assert!(late.iter().any(|d| *d < Duration::from_secs(10)));
        assert!(reconnect_delay(usize::MAX, &mut rng) <= RECONNECT_CAP);
    }

    #[test]
    fn full_jitter_never_overflows() {
        let mut rng = StdRng::seed_from_u64(1);
        for e in [0, 1, 31, 32, 64, u32::MAX] {
            assert!(full_jitter(e, Duration::MAX, RECONNECT_CAP, &mut rng) <= RECONNECT_CAP);
            assert!(renew_retry_delay(e, &mut rng) <= RENEW_RETRY_CAP);
        }
        assert_eq!(
            full_jitter(5, Duration::ZERO, RECONNECT_CAP, &mut rng),
            Duration::ZERO
        );
    }

    #[test]
    fn renewal_is_near_half_of_the_remaining_lifetime() {
        let mut rng = StdRng::seed_from_u64(42);
        let day = 86_400;
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        for _ in 0..10_000 {
            // Fresh token.
            let t = renew_at(1000, 1000 + day, 1000, &mut rng);
            assert!(
                (1000 + day * 45 / 100..=1000 + day * 55 / 100).contains(&t),
                "{t}"
            );
            lo = lo.min(t);
            hi = hi.max(t);
            // Agent started late: half of what remains.
            let now = 1000 + day * 3 / 4;
            let t = renew_at(1000, 1000 + day, now, &mut rng);
            let rem = day / 4;
            assert!(
                (now + rem * 45 / 100..=now + rem * 55 / 100).contains(&t),
                "{t}"
            );
        }
        // The jitter really spreads renewals (about ±10 %, i.e. ±4320 s on a day).
        assert!(hi - lo > 6000, "{lo}..{hi}");
    }

    #[test]
    fn expired_odd_and_skewed_tokens() {
        let mut rng = StdRng::seed_from_u64(3);
        // Expired: now.
        assert_eq!(renew_at(0, 100, 200, &mut rng), 200);
        assert_eq!(renew_at(0, 100, 100, &mut rng), 100);
        // exp before iat: now.
        assert_eq!(renew_at(500, 100, 50, &mut rng), 50);
        // Clock behind the issuer: remaining counts from iat, never beyond exp.
        for _ in 0..1000 {
            let t = renew_at(10_000, 10_100, 9_000, &mut rng);
            assert!((9_000 + 45..=9_000 + 55).contains(&t), "{t}");
            let t = renew_at(0, 3, 0, &mut rng);
            assert!((0..=3).contains(&t));
        }
        // Extreme values do not overflow.
        let t = renew_at(i64::MIN, i64::MAX, 0, &mut rng);
        assert!(t >= 0);
    }
}
