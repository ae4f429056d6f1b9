//! API benchmarks; they print their figures (see docs/BENCHMARKS.md).
//!
//! `cargo bench -p wegweiser-tests --bench api` (add `-- --quick` for a short run)
//!
//! 1. Device list of a tenant with 10,000 devices (1,000 with `--quick`) in 10 groups, filtered
//!    and paginated, answered from the in-memory device index: p50/p99 per page for a tenant
//!    admin, a group-scoped technician, a host-name search and an online filter.
//! 2. The authorization check per call.
//! 3. Hierarchy operations on that tenant: the start-up migration scan, moving a group of a
//!    tenth of the devices, deleting single devices, a cascading group delete.
#![allow(clippy::unwrap_used)]

use std::{sync::Arc, time::Instant};
use wegweiser_cp::{
    api::{DeviceIndex, DeviceQuery},
    enrollment::NewToken,
    rbac::{self, Action, Binding, Place, Principal, Role, Scope, Target},
};
use wegweiser_tests::Platform;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(quick));
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn time_it(rounds: usize, mut f: impl FnMut() -> usize) -> (u64, u64, usize) {
    let mut t = Vec::with_capacity(rounds);
    let mut n = 0;
    for _ in 0..rounds {
        let start = Instant::now();
        n = f();
        t.push(start.elapsed().as_micros() as u64);
    }
    t.sort_unstable();
    (percentile(&t, 0.5), percentile(&t, 0.99), n)
}

async fn run(quick: bool) {
    let p = Arc::new(Platform::start().await.unwrap());
    let t = p.tenant("bench").await.unwrap();
    let n = if quick { 1_000 } else { 10_000 };
    let groups = 10;
    let mut tokens = Vec::new();
    for g in 0..groups {
        p.place(&t.id, "client-a", Some(&format!("g{g}")))
            .await
            .unwrap();
        let (token, _) = p
            .auth
            .create_token(NewToken {
                tenant: t.id.clone(),
                organization: Some("client-a".into()),
                group: Some(format!("g{g}")),
                ttl_secs: None,
                max_uses: Some((n / groups) as u32),
                label: "bench".into(),
            })
            .await
            .unwrap();
        tokens.push(token.expose().to_owned());
    }
    let start = Instant::now();
    wegweiser_tests::enroll_many(&p, &tokens, n, "host-")
        .await
        .unwrap();
    println!(
        "setup: {n} devices in {groups} groups enrolled in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let start = Instant::now();
    let index = DeviceIndex::start(&p.auth).await.unwrap();
    println!(
        "device_index_load: {} devices loaded in {:.0} ms",
        index.len(),
        start.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!(index.len(), n);

    let admin = Principal {
        user: "admin".into(),
        bindings: vec![Binding {
            role: Role::Admin,
            scope: Scope::Tenant {
                tenant: t.id.clone(),
            },
        }],
    };
    let tech = Principal {
        user: "tech".into(),
        bindings: vec![Binding {
            role: Role::Technician,
            scope: Scope::Group {
                tenant: t.id.clone(),
                organization: "client-a".into(),
                group: "g3".into(),
            },
        }],
    };
    let rounds = if quick { 200 } else { 1_000 };
    let page = |who: &Principal, q: DeviceQuery| index.page(who, &t.id, &q).items.len();
    let cases: [(&str, &Principal, DeviceQuery); 5] = [
        (
            "first page of 100, tenant admin",
            &admin,
            DeviceQuery::default(),
        ),
        (
            "group filter g7, tenant admin",
            &admin,
            DeviceQuery {
                group: Some("g7".into()),
                ..Default::default()
            },
        ),
        (
            "group-scoped technician (sees 1/10)",
            &tech,
            DeviceQuery::default(),
        ),
        (
            "host name search, page of 500",
            &admin,
            DeviceQuery {
                q: Some("host-0".into()),
                limit: Some(500),
                ..Default::default()
            },
        ),
        (
            "online filter (none online: scans every device)",
            &admin,
            DeviceQuery {
                online: Some(true),
                ..Default::default()
            },
        ),
    ];
    for (name, who, q) in cases {
        let (p50, p99, got) = time_it(rounds, || page(who, q.clone()));
        println!(
            "device_list: {name}: {got} items, p50 {:.2} ms, p99 {:.2} ms (target p99 <= 50 ms)",
            p50 as f64 / 1000.0,
            p99 as f64 / 1000.0
        );
    }
    // Paging through everything, 100 at a time.
    let start = Instant::now();
    let mut after = None;
    let mut seen = 0;
    loop {
        let pg = index.page(
            &admin,
            &t.id,
            &DeviceQuery {
                after: after.clone(),
                ..Default::default()
            },
        );
        seen += pg.items.len();
        match pg.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, n);
    println!(
        "device_list: all {seen} devices in pages of 100 in {:.1} ms",
        start.elapsed().as_secs_f64() * 1000.0
    );

    // The authorization check alone.
    let target = Target::Device {
        at: Place {
            tenant: t.id.clone(),
            organization: Some("client-a".into()),
            group: Some("g3".into()),
        },
        device: "dev-1".parse().unwrap(),
    };
    let k = 1_000_000;
    let start = Instant::now();
    let mut allowed = 0;
    for _ in 0..k {
        if rbac::authorize(std::hint::black_box(&tech), Action::Command, &target)
            == rbac::Decision::Allow
        {
            allowed += 1;
        }
    }
    let took = start.elapsed();
    assert_eq!(allowed, k);
    println!(
        "authorize: {:.0} ns per check ({k} checks, one binding)",
        took.as_nanos() as f64 / k as f64
    );

    // Hierarchy: every label already has its object, so this is the cost of the scan alone.
    let start = Instant::now();
    assert_eq!(p.auth.migrate_hierarchy().await.unwrap(), 0);
    println!(
        "hierarchy: start-up migration scan of {n} devices in {:.0} ms",
        start.elapsed().as_secs_f64() * 1000.0
    );
    p.place(&t.id, "client-b", None).await.unwrap();
    let start = Instant::now();
    p.auth
        .move_group(&t.id, "g3", "client-b", "bench")
        .await
        .unwrap();
    println!(
        "hierarchy: group move with {} devices in {:.0} ms",
        n / groups,
        start.elapsed().as_secs_f64() * 1000.0
    );
    let victims: Vec<_> = p
        .auth
        .devices(&t.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|d| d.group.as_deref() == Some("g5"))
        .take(20)
        .collect();
    let mut took = Vec::new();
    for d in &victims {
        let start = Instant::now();
        p.auth.delete_device(&t.id, &d.id, "bench").await.unwrap();
        took.push(start.elapsed().as_micros() as u64);
    }
    took.sort_unstable();
    println!(
        "hierarchy: device delete (revoke both keys, purge reports, remove record): p50 {:.0} ms, p99 {:.0} ms over {}",
        percentile(&took, 0.5) as f64 / 1000.0,
        percentile(&took, 0.99) as f64 / 1000.0,
        took.len()
    );
    let start = Instant::now();
    let done = p
        .auth
        .delete_group(&t.id, "g7", true, "bench")
        .await
        .unwrap();
    println!(
        "hierarchy: cascading group delete of {} devices in {:.1} s",
        done.devices,
        start.elapsed().as_secs_f64()
    );
}
