//! Wall-clock time as NATS JWTs count it: whole seconds since the Unix epoch.

/// Seconds since the Unix epoch, now. A clock before 1970 counts as 0.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
