//! Per-address rate limiting and blocking for the enrollment endpoint.
//!
//! - allow list: never limited or blocked; deny list: always refused;
//! - rate limit: a token bucket per address, in this process (each replica limits on its own);
//! - blocking: failures per address are counted in KV (`wg_blocks`), so every replica sees them;
//!   `max_failures` within `failure_window_secs` block the address for `block_secs`.

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

/// The enrollment gate.
#[derive(Debug)]
pub struct IpBlocker {
    cfg: EnrollmentConfig,
    kv: kv::Store,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
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

impl IpBlocker {
    /// A gate with this policy, its shared state in `kv`.
    pub fn new(cfg: EnrollmentConfig, kv: kv::Store) -> Self {
        Self {
            cfg,
            kv,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn allowed(&self, ip: &IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.cfg.allow.iter().any(|n| n.contains(&ip))
    }

    /// Checks a request from `ip` (and takes one token from its bucket).
    pub async fn check(&self, ip: IpAddr, now: i64) -> Result<Gate, AuthorityError> {
        if self.allowed(&ip) {
            return Ok(Gate::Allowed);
        }
        if self.cfg.deny.iter().any(|n| n.contains(&ip.to_canonical())) {
            return Ok(Gate::Denied);
        }
        // The local bucket first: a flood costs no store reads.
        if !self.take_token(unit(ip)) {
            return Ok(Gate::Limited);
        }
        if let Some(e) = self.kv.entry(key(&ip)).await.map_err(store_err)?
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

    fn take_token(&self, ip: IpAddr) -> bool {
        let Ok(mut buckets) = self.buckets.lock() else {
            return true;
        };
        let now = Instant::now();
        let rate = f64::from(self.cfg.rate_per_minute) / 60.0;
        let cap = f64::from(self.cfg.burst);
        if buckets.len() > 100_000 {
            // Forget addresses that have been quiet long enough to have a full bucket again.
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < cap
            });
        }
        let (tokens, at) = buckets.entry(ip).or_insert((cap, now));
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
        let k = key(&ip);
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
            let window = self.cfg.failure_window_secs;
            rec.failures.retain(|t| *t > now - window);
            rec.failures.push(now);
            let mut blocked = None;
            if rec.failures.len() >= self.cfg.max_failures as usize && rec.blocked_until <= now {
                rec.blocked_until = now + self.cfg.block_secs;
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
                        "cannot record a failure for {ip}"
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
}
