//! Audit chain benchmarks; they print their figures (see docs/BENCHMARKS.md).
//!
//! `cargo bench -p wegweiser-tests --bench audit` (add `-- --quick` for a short run)
//!
//! 1. Appends one after another from one process (the cost of one `Audit::record`: build,
//!    hash, publish with the expected last sequence, wait for the stream's ack).
//! 2. Appends from 32 tasks of one process (they take turns behind the process's head).
//! 3. Appends from two control-plane processes, 16 tasks each (they race for the head through
//!    the stream's optimistic concurrency): throughput and conflicts per append.
//! 4. `audit verify` over everything written: entries read and checked per second.
#![allow(clippy::unwrap_used)]

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};
use wegweiser_cp::{audit::AuditEntry, authority::Authority};
use wegweiser_tests::Platform;

fn entry(i: usize) -> AuditEntry {
    let mut e = AuditEntry::new("enroll", "enrollment", "ok");
    e.tenant = Some("acme".into());
    e.device = Some(format!("dev-{i}"));
    e.ip = Some("192.0.2.1".into());
    e.detail = serde_json::json!({"token": "3f2a9c", "organization": "org", "i": i});
    e
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(if quick { 1_000 } else { 5_000 }));
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn concurrent(auths: &[Authority], tasks: usize, n: usize) -> Duration {
    let start = Instant::now();
    let mut handles = Vec::new();
    for auth in auths {
        for t in 0..tasks {
            let auth = auth.clone();
            handles.push(tokio::spawn(async move {
                for i in (t..n).step_by(tasks) {
                    auth.audit().append(&entry(i)).await.unwrap();
                }
            }));
        }
    }
    for h in handles {
        h.await.unwrap();
    }
    start.elapsed()
}

async fn run(n: usize) {
    let p = Platform::start().await.unwrap();
    // Warm up (connection, stream lookup, first head read).
    for i in 0..50 {
        p.auth.audit().append(&entry(i)).await.unwrap();
    }
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        p.auth.audit().append(&entry(i)).await.unwrap();
        lat.push(t.elapsed());
    }
    let total = start.elapsed();
    lat.sort();
    println!(
        "sequential appends: {n} in {total:.2?}: {:.0}/s, p50 {:.0?}, p99 {:.0?}",
        n as f64 / total.as_secs_f64(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );

    let took = concurrent(std::slice::from_ref(&p.auth), 32, n).await;
    println!(
        "one process, 32 tasks: {n} in {took:.2?}: {:.0}/s",
        n as f64 / took.as_secs_f64()
    );

    let replica = Authority::open(&p.data_dir()).await.unwrap();
    let before = p
        .auth
        .metrics()
        .audit_append_conflicts
        .load(Ordering::Relaxed);
    let took = concurrent(&[p.auth.clone(), replica.clone()], 16, n).await;
    let conflicts = p
        .auth
        .metrics()
        .audit_append_conflicts
        .load(Ordering::Relaxed)
        - before
        + replica
            .metrics()
            .audit_append_conflicts
            .load(Ordering::Relaxed);
    println!(
        "two processes, 16 tasks each: {} in {took:.2?}: {:.0}/s, {:.2} conflicts per append",
        2 * n,
        (2 * n) as f64 / took.as_secs_f64(),
        conflicts as f64 / (2 * n) as f64
    );

    let start = Instant::now();
    let r = p.auth.audit_verify(|_, _| {}).await.unwrap().unwrap();
    let took = start.elapsed();
    println!(
        "verify: {} entries in {took:.2?}: {:.0}/s",
        r.entries,
        r.entries as f64 / took.as_secs_f64()
    );
    replica.close().await;
}
