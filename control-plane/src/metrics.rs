//! Prometheus metrics, rendered in the text exposition format at `GET /metrics`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

/// Counters of the control plane.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Successful enrollments.
    pub enroll_ok: AtomicU64,
    /// Refused enrollments by reason code.
    pub enroll_refused: Mutex<BTreeMap<String, u64>>,
    /// Requests refused by the per-address rate limit.
    pub rate_limited: AtomicU64,
    /// Requests refused because the address is blocked or denied.
    pub blocked_requests: AtomicU64,
    /// Addresses blocked after repeated failures.
    pub blocks: AtomicU64,
    /// Successful renewals.
    pub renew_ok: AtomicU64,
    /// Refused renewals by reason code.
    pub renew_refused: Mutex<BTreeMap<String, u64>>,
    /// Keyset re-signings that failed (root keys offline or unreadable).
    pub keyset_resign_failed: AtomicU64,
    /// Signed commands sent.
    pub commands_sent: AtomicU64,
    /// Command results by outcome (`ok`, `failed`, `rejected`, `timeout`).
    pub command_results: Mutex<BTreeMap<String, u64>>,
    /// Audit entries appended to the chain.
    pub audit_appended: AtomicU64,
    /// Audit appends that lost the race for the head to another writer (and were retried).
    pub audit_append_conflicts: AtomicU64,
    /// Audit entries that could not be stored (logged instead).
    pub audit_append_failed: AtomicU64,
    /// Successful logins.
    pub logins_ok: AtomicU64,
    /// Failed logins by reason (`bad_password`, `unknown_user`, `disabled`, `locked`).
    pub logins_failed: Mutex<BTreeMap<String, u64>>,
    /// Login attempts refused by the per-address or per-account rate limit.
    pub login_rate_limited: AtomicU64,
    /// Login attempts from blocked or denied addresses.
    pub login_blocked_requests: AtomicU64,
    /// Accounts locked after repeated failed logins.
    pub account_locks: AtomicU64,
    /// Device cookies locked after repeated failed logins through them.
    pub device_cookie_locks: AtomicU64,
    /// API requests refused before their handler, by reason (`unauthenticated`, `csrf`,
    /// `unavailable`).
    pub api_auth_refused: Mutex<BTreeMap<String, u64>>,
}

impl Metrics {
    /// Counts a refusal by reason.
    pub fn refused(map: &Mutex<BTreeMap<String, u64>>, code: &str) {
        if let Ok(mut m) = map.lock() {
            *m.entry(code.to_owned()).or_default() += 1;
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let counter = |s: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let by_reason =
            |s: &mut String, name: &str, help: &str, m: &Mutex<BTreeMap<String, u64>>| {
                let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter");
                if let Ok(m) = m.lock() {
                    for (reason, v) in m.iter() {
                        let _ = writeln!(s, "{name}{{reason=\"{reason}\"}} {v}");
                    }
                }
            };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut s,
            "wegweiser_enrollments_total",
            "Successful enrollments.",
            load(&self.enroll_ok),
        );
        by_reason(
            &mut s,
            "wegweiser_enrollments_refused_total",
            "Refused enrollments by reason.",
            &self.enroll_refused,
        );
        counter(
            &mut s,
            "wegweiser_enroll_rate_limited_total",
            "Enrollment requests refused by the per-address rate limit.",
            load(&self.rate_limited),
        );
        counter(
            &mut s,
            "wegweiser_enroll_blocked_requests_total",
            "Enrollment requests from blocked or denied addresses.",
            load(&self.blocked_requests),
        );
        counter(
            &mut s,
            "wegweiser_ip_blocks_total",
            "Addresses blocked after repeated failures.",
            load(&self.blocks),
        );
        counter(
            &mut s,
            "wegweiser_renewals_total",
            "Successful credential renewals.",
            load(&self.renew_ok),
        );
        by_reason(
            &mut s,
            "wegweiser_renewals_refused_total",
            "Refused renewals by reason.",
            &self.renew_refused,
        );
        counter(
            &mut s,
            "wegweiser_keyset_resign_failed_total",
            "Keyset re-signings that failed (root keys offline or unreadable).",
            load(&self.keyset_resign_failed),
        );
        counter(
            &mut s,
            "wegweiser_commands_sent_total",
            "Signed commands sent to devices.",
            load(&self.commands_sent),
        );
        by_reason(
            &mut s,
            "wegweiser_command_results_total",
            "Command results by outcome.",
            &self.command_results,
        );
        counter(
            &mut s,
            "wegweiser_audit_appended_total",
            "Audit entries appended to the hash chain.",
            load(&self.audit_appended),
        );
        counter(
            &mut s,
            "wegweiser_audit_append_conflicts_total",
            "Audit appends retried because another writer appended first.",
            load(&self.audit_append_conflicts),
        );
        counter(
            &mut s,
            "wegweiser_audit_append_failed_total",
            "Audit entries that could not be stored (written to the log instead).",
            load(&self.audit_append_failed),
        );
        counter(
            &mut s,
            "wegweiser_logins_total",
            "Successful logins.",
            load(&self.logins_ok),
        );
        by_reason(
            &mut s,
            "wegweiser_logins_failed_total",
            "Failed logins by reason.",
            &self.logins_failed,
        );
        counter(
            &mut s,
            "wegweiser_login_rate_limited_total",
            "Login attempts refused by the per-address or per-account rate limit.",
            load(&self.login_rate_limited),
        );
        counter(
            &mut s,
            "wegweiser_login_blocked_requests_total",
            "Login attempts from blocked or denied addresses.",
            load(&self.login_blocked_requests),
        );
        counter(
            &mut s,
            "wegweiser_account_locks_total",
            "Accounts locked after repeated failed logins.",
            load(&self.account_locks),
        );
        counter(
            &mut s,
            "wegweiser_device_cookie_locks_total",
            "Device cookies locked after repeated failed logins through them.",
            load(&self.device_cookie_locks),
        );
        by_reason(
            &mut s,
            "wegweiser_api_auth_refused_total",
            "API requests refused before their handler, by reason.",
            &self.api_auth_refused,
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_reasons() {
        let m = Metrics::default();
        m.enroll_ok.fetch_add(2, Ordering::Relaxed);
        Metrics::refused(&m.enroll_refused, "token_expired");
        let text = m.render();
        assert!(text.contains("wegweiser_enrollments_total 2"), "{text}");
        assert!(
            text.contains("wegweiser_enrollments_refused_total{reason=\"token_expired\"} 1"),
            "{text}"
        );
    }
}
