//! Per-address (and per-account) rate limiting and blocking, for enrollment and for logins.
//!
//! - allow list: never limited or blocked; deny list: always refused (`[enrollment]` `allow` and
//!   `deny`, shared by every gate);
//! - rate limit: a token bucket per address (or account), in this process (each replica limits
//!   on its own);
//! - blocking: failures per address are counted in KV (`wg_blocks`), so every replica sees them;
//!   `max_failures` within `failure_window_secs` block the address for `block_secs`. The record
//!   of an address is one for every gate: an address blocked after failed enrollments is
//!   blocked for logins too, and the other way round (each gate counts with its own policy).
//! - accounts ([`IpBlocker::check_account`], [`IpBlocker::account_failure`]): failed logins per
//!   account name are counted the same way under `acct.<name>`; a locked account is refused
//!   exactly like a wrong password by the caller.

use crate::{
    authority::{AuthorityError, store_err},
    config::EnrollmentConfig,
};
use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use std::{collections::HashMap, net::IpAddr, sync::Mutex, time::Instant};

/// What the gate says about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Go ahead.
    Allowed,
    /// Too many requests; try again later.
    Limited,
    /// Blocked after repeated failures, until this time.
    Blocked {
        /// Unix seconds.
        until: i64,
    },
    /// On the deny list.
    Denied,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct BlockRecord {
    failures: Vec<i64>,
    blocked_until: i64,
}

/// The limits of one gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Requests per minute.
    pub rate_per_minute: u32,
    /// Requests in a burst.
    pub burst: u32,
    /// Failures within `failure_window_secs` that block.
    pub max_failures: u32,
    /// Window in which failures are counted, seconds.
    pub failure_window_secs: i64,
    /// How long a block lasts, seconds.
    pub block_secs: i64,
}

impl From<&EnrollmentConfig> for Policy {
    fn from(c: &EnrollmentConfig) -> Self {
        Self {
            rate_per_minute: c.rate_per_minute,
            burst: c.burst,
            max_failures: c.max_failures,
            failure_window_secs: c.failure_window_secs,
            block_secs: c.block_secs,
        }
    }
}

/// A gate: allow and deny lists, a rate limit per address, blocks shared through KV.
#[derive(Debug)]
pub struct IpBlocker {
    policy: Policy,
    allow: Vec<ipnet::IpNet>,
    deny: Vec<ipnet::IpNet>,
    kv: kv::Store,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// The unit an address is limited and blocked as: the address itself for IPv4, its /64 for
/// IPv6 (one host can use a whole /64).
fn unit(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(
                seg[0], seg[1], seg[2], seg[3], 0, 0, 0, 0,
            ))
        }
        v4 => v4,
    }
}

fn key(ip: &IpAddr) -> String {
    format!("ip.{}", unit(*ip).to_string().replace(':', "_"))
}

/// The KV key of a device cookie id (any string: hex-encoded, bounded).
fn device_key(id: &str) -> String {
    let id: String = id.chars().take(64).collect();
    format!("dev.u{}", wegweiser_shared::enroll::hex(id.as_bytes()))
}

/// The KV key of an account name (any string: hex-encoded, bounded).
fn account_key(name: &str) -> String {
    let name: String = name.chars().take(128).collect();
    format!("acct.u{}", wegweiser_shared::enroll::hex(name.as_bytes()))
}

impl IpBlocker {
    /// The enrollment gate: the policy, allow and deny lists of `cfg`, its shared state in
    /// `kv`.
    pub fn new(cfg: EnrollmentConfig, kv: kv::Store) -> Self {
        Self::with_policy(Policy::from(&cfg), cfg.allow, cfg.deny, kv)
    }

    /// A gate with its own policy and these lists, its shared state in `kv`.
    pub fn with_policy(
        policy: Policy,
        allow: Vec<ipnet::IpNet>,
        deny: Vec<ipnet::IpNet>,
        kv: kv::Store,
    ) -> Self {
        Self {
            policy,
            allow,
            deny,
            kv,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ip` is on the allow list (never limited or blocked).
    pub fn allowed(&self, ip: &IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allow.iter().any(|n| n.contains(&ip))
    }

    /// Checks a request from `ip` (and takes one token from its bucket).
    pub async fn check(&self, ip: IpAddr, now: i64) -> Result<Gate, AuthorityError> {
        if self.allowed(&ip) {
            return Ok(Gate::Allowed);
        }
        if self.deny.iter().any(|n| n.contains(&ip.to_canonical())) {
            return Ok(Gate::Denied);
        }
        // The local bucket first: a flood costs no store reads.
        if !self.take_token(key(&ip)) {
            return Ok(Gate::Limited);
        }
        self.blocked(key(&ip), now).await
    }

    async fn blocked(&self, k: String, now: i64) -> Result<Gate, AuthorityError> {
        if let Some(e) = self.kv.entry(k).await.map_err(store_err)?
            && e.operation == kv::Operation::Put
            && let Ok(r) = serde_json::from_slice::<BlockRecord>(&e.value)
            && r.blocked_until > now
        {
            return Ok(Gate::Blocked {
                until: r.blocked_until,
            });
        }
        Ok(Gate::Allowed)
    }

    /// Checks an attempt on account `name` (any string, known account or not), and takes one
    /// token from its bucket: [`Gate::Limited`] or [`Gate::Blocked`] (locked) or
    /// [`Gate::Allowed`].
    pub async fn check_account(&self, name: &str, now: i64) -> Result<Gate, AuthorityError> {
        let k = account_key(name);
        if !self.take_token(k.clone()) {
            return Ok(Gate::Limited);
        }
        self.blocked(k, now).await
    }

    /// Records a failed attempt on account `name`; returns the lock's end if this failure
    /// locked it.
    pub async fn account_failure(
        &self,
        name: &str,
        now: i64,
    ) -> Result<Option<i64>, AuthorityError> {
        self.record_failure(account_key(name), now).await
    }

    /// Forgets the failures of account `name` (after a successful login).
    pub async fn account_success(&self, name: &str) -> Result<(), AuthorityError> {
        let k = account_key(name);
        if let Some(e) = self.kv.entry(k.clone()).await.map_err(store_err)?
            && e.operation == kv::Operation::Put
        {
            let _ = self.kv.delete_expect_revision(&k, Some(e.revision)).await;
        }
        Ok(())
    }

    /// The gate of one device cookie (its id, hex), rate-limited and locked like an account
    /// but counted on its own (see [`crate::device_cookie`]).
    pub async fn check_device(&self, id: &str, now: i64) -> Result<Gate, AuthorityError> {
        let k = device_key(id);
        if !self.take_token(k.clone()) {
            return Ok(Gate::Limited);
        }
        self.blocked(k, now).await
    }

    /// Records a failed login through device cookie `id`; returns the lock's end if this
    /// failure locked the cookie.
    pub async fn device_failure(&self, id: &str, now: i64) -> Result<Option<i64>, AuthorityError> {
        self.record_failure(device_key(id), now).await
    }

    fn take_token(&self, unit: String) -> bool {
        let Ok(mut buckets) = self.buckets.lock() else {
            return true;
        };
        let now = Instant::now();
        let rate = f64::from(self.policy.rate_per_minute) / 60.0;
        let cap = f64::from(self.policy.burst);
        if buckets.len() > 100_000 {
            // Forget addresses that have been quiet long enough to have a full bucket again.
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < cap
            });
        }
        let (tokens, at) = buckets.entry(unit).or_insert((cap, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(cap);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Records a failed attempt from `ip`; returns the block's end if this failure blocked it.
    pub async fn failure(&self, ip: IpAddr, now: i64) -> Result<Option<i64>, AuthorityError> {
        if self.allowed(&ip) {
            return Ok(None);
        }
        self.record_failure(key(&ip), now).await
    }

    async fn record_failure(&self, k: String, now: i64) -> Result<Option<i64>, AuthorityError> {
        loop {
            let entry = self.kv.entry(k.clone()).await.map_err(store_err)?;
            let (mut rec, rev) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => (
                    serde_json::from_slice::<BlockRecord>(&e.value).unwrap_or_default(),
                    Some(e.revision),
                ),
                Some(e) => (BlockRecord::default(), Some(e.revision)),
                None => (BlockRecord::default(), None),
            };
            let window = self.policy.failure_window_secs;
            rec.failures.retain(|t| *t > now - window);
            rec.failures.push(now);
            let mut blocked = None;
            if rec.failures.len() >= self.policy.max_failures as usize && rec.blocked_until <= now {
                rec.blocked_until = now + self.policy.block_secs;
                rec.failures.clear();
                blocked = Some(rec.blocked_until);
            }
            let body = serde_json::to_vec(&rec).map_err(store_err)?;
            let written = match rev {
                Some(rev) => self
                    .kv
                    .update(&k, body.into(), rev)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.kind() == kv::UpdateErrorKind::WrongLastRevision),
                None => self
                    .kv
                    .create(&k, body.into())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.kind() == kv::CreateErrorKind::AlreadyExists),
            };
            match written {
                Ok(()) => return Ok(blocked),
                Err(true) => continue,
                Err(false) => {
                    return Err(AuthorityError::Store(format!(
                        "cannot record a failure for {k}"
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_is_limited_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(key(&a), key(&b));
        assert_ne!(key(&a), key(&c));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(key(&mapped), "ip.10.1.2.3");
    }

    #[test]
    fn account_keys_are_valid_kv_keys_for_any_name() {
        for name in ["admin", "a.b*>c d", "ä", ""] {
            let k = account_key(name);
            assert!(k.starts_with("acct.u"));
            assert!(k[6..].chars().all(|c| c.is_ascii_hexdigit()), "{k}");
        }
        assert_ne!(account_key("a"), account_key("b"));
    }
}
