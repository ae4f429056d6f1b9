//! The hash-chained audit trail against a real nats-server: entries appended concurrently by
//! two control-plane processes form one chain that `audit verify` accepts; a copy of the data
//! with an entry changed, removed, reordered or re-hashed is named at the first bad entry;
//! tenant-scoped queries page through a tenant's entries only.
#![allow(clippy::unwrap_used)]

use async_nats::jetstream;
use std::sync::atomic::Ordering;
use wegweiser_cp::{
    audit::{
        AUDIT_STREAM, AuditEntry, AuditQuery, GENESIS, Problem, chain_entry, verify_chain,
        verify_stream,
    },
    authority::Authority,
};
use wegweiser_tests::Platform;

/// Every raw message of the audit stream, `(stream sequence, payload)`.
async fn raw(js: &jetstream::Context, stream: &str) -> Vec<(u64, Vec<u8>)> {
    let mut s = js.get_stream(stream).await.unwrap();
    let last = s.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = s.get_raw_message(seq).await {
            out.push((seq, m.payload.to_vec()));
        }
    }
    out
}

fn entry(i: usize, tenant: Option<&str>) -> AuditEntry {
    let mut e = AuditEntry::new(
        if i.is_multiple_of(2) {
            "enroll"
        } else {
            "token.create"
        },
        "test",
        "ok",
    );
    e.tenant = tenant.map(str::to_owned);
    e.detail = serde_json::json!({"i": i});
    e
}

/// Appends `n` entries from each of two control-plane processes, 16 tasks each.
async fn write_concurrently(a: &Authority, b: &Authority, n: usize) {
    let mut tasks = Vec::new();
    for (w, auth) in [a, b].into_iter().enumerate() {
        for t in 0..16 {
            let auth = auth.clone();
            tasks.push(tokio::spawn(async move {
                for i in (t..n).step_by(16) {
                    let tenant = if i.is_multiple_of(3) {
                        None
                    } else {
                        Some(["acme", "bolt"][w])
                    };
                    auth.audit().append(&entry(i, tenant)).await.unwrap();
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn concurrent_appends_from_two_replicas_form_one_chain() {
    let p = Platform::start().await.unwrap();
    let replica = Authority::open(&p.data_dir()).await.unwrap();
    write_concurrently(&p.auth, &replica, 150).await;
    // `record` never fails loudly; it appends the same way.
    p.auth.audit().record(entry(9999, Some("acme"))).await;

    let report = p.auth.audit_verify(|_, _| {}).await.unwrap().unwrap();
    assert_eq!(report.entries, 301);
    assert_eq!(report.unchained, 0);
    assert_eq!(report.last_stream_seq, 301);
    let js = jetstream::new(p.auth.cp_client().clone());
    let msgs = raw(&js, AUDIT_STREAM).await;
    let last: serde_json::Value = serde_json::from_slice(&msgs.last().unwrap().1).unwrap();
    assert_eq!(last["hash"], report.head.as_str());
    let first: serde_json::Value = serde_json::from_slice(&msgs[0].1).unwrap();
    assert_eq!(
        (first["seq"].as_u64(), first["prev"].as_str()),
        (Some(1), Some(GENESIS))
    );
    let m = p.auth.metrics();
    let appended = m.audit_appended.load(Ordering::Relaxed)
        + replica.metrics().audit_appended.load(Ordering::Relaxed);
    assert_eq!(appended, 301);
    assert_eq!(m.audit_append_failed.load(Ordering::Relaxed), 0);
    // Two writers raced for the head at least once; the loser chained after the winner.
    let conflicts = m.audit_append_conflicts.load(Ordering::Relaxed)
        + replica
            .metrics()
            .audit_append_conflicts
            .load(Ordering::Relaxed);
    assert!(conflicts > 0, "no conflict between the two replicas");
    assert!(
        p.auth
            .metrics()
            .render()
            .contains("wegweiser_audit_appended_total")
    );
    replica.close().await;
}

#[tokio::test]
async fn tampering_with_a_copy_is_named() {
    let p = Platform::start().await.unwrap();
    let replica = Authority::open(&p.data_dir()).await.unwrap();
    write_concurrently(&p.auth, &replica, 40).await;
    let js = jetstream::new(p.auth.cp_client().clone());
    let msgs = raw(&js, AUDIT_STREAM).await;
    assert_eq!(msgs.len(), 80);
    verify_chain(msgs.clone(), Some(80)).unwrap();
    let value = |i: usize| serde_json::from_slice::<serde_json::Value>(&msgs[i].1).unwrap();

    // A changed field: the entry's own hash no longer recomputes.
    let mut changed = msgs.clone();
    let mut v = value(10);
    v["outcome"] = "refused".into();
    changed[10].1 = serde_json::to_vec(&v).unwrap();
    let f = verify_chain(changed.clone(), Some(80)).unwrap_err();
    assert_eq!((f.stream_seq, f.seq), (11, Some(11)));
    assert_eq!(f.kind.as_deref(), v["kind"].as_str());
    assert!(matches!(f.problem, Problem::HashMismatch { .. }), "{f}");

    // A removed entry: a gap in the stream sequences.
    let mut removed = msgs.clone();
    removed.remove(20);
    let f = verify_chain(removed, Some(80)).unwrap_err();
    assert_eq!(f.problem, Problem::Gap { from: 21, to: 21 });

    // Reordered entries: seq no longer follows stream order.
    let mut reordered = msgs.clone();
    let (a, b) = (reordered[30].1.clone(), reordered[31].1.clone());
    reordered[30].1 = b;
    reordered[31].1 = a;
    let f = verify_chain(reordered, Some(80)).unwrap_err();
    assert_eq!((f.stream_seq, f.seq), (31, Some(32)));
    assert_eq!(
        f.problem,
        Problem::SeqMismatch {
            expected: 31,
            found: 32
        }
    );

    // A forged hash that matches the changed entry but not the next entry's prev.
    let mut forged = msgs.clone();
    let mut v = value(40);
    v["actor"] = "someone-else".into();
    let serde_json::Value::Object(o) = &mut v else {
        panic!()
    };
    o.insert("hash".into(), wegweiser_cp::audit::entry_hash(o).into());
    forged[40].1 = serde_json::to_vec(&v).unwrap();
    let f = verify_chain(forged.clone(), Some(80)).unwrap_err();
    assert_eq!((f.stream_seq, f.seq), (42, Some(42)));
    assert!(matches!(f.problem, Problem::PrevMismatch { .. }), "{f}");

    // The same checks on a real stream holding a tampered copy, read the way `audit verify`
    // reads WG_AUDIT. The copy stream allows deleting, so a removal is a real gap.
    let admin = p
        .connect_cp_user("audit-copy", &[">".into()], &[">".into()])
        .await
        .unwrap();
    let cjs = jetstream::new(admin.client.clone());
    let copy = |name: &'static str, subject: &'static str, body: Vec<(u64, Vec<u8>)>| {
        let cjs = cjs.clone();
        async move {
            cjs.create_stream(jetstream::stream::Config {
                name: name.into(),
                subjects: vec![format!("{subject}.>")],
                ..Default::default()
            })
            .await
            .unwrap();
            for (_, b) in body {
                cjs.publish(format!("{subject}.x"), b.into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        }
    };
    copy("COPY_OK", "copy.ok", msgs.clone()).await;
    let r = verify_stream(&cjs, "COPY_OK", |_, _| {})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r, verify_chain(msgs.clone(), Some(80)).unwrap());

    copy("COPY_CHANGED", "copy.changed", changed).await;
    let f = verify_stream(&cjs, "COPY_CHANGED", |_, _| {})
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!((f.stream_seq, f.seq), (11, Some(11)));
    assert!(
        f.to_string().contains("stream sequence 11, seq 11, kind"),
        "{f}"
    );

    copy("COPY_FORGED", "copy.forged", forged).await;
    let f = verify_stream(&cjs, "COPY_FORGED", |_, _| {})
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(f.problem, Problem::PrevMismatch { .. }), "{f}");

    copy("COPY_GAP", "copy.gap", msgs.clone()).await;
    let gap = cjs.get_stream("COPY_GAP").await.unwrap();
    assert!(gap.delete_message(5).await.unwrap());
    let f = verify_stream(&cjs, "COPY_GAP", |_, _| {})
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        (f.stream_seq, f.problem),
        (6, Problem::Gap { from: 5, to: 5 })
    );

    copy("COPY_TAIL", "copy.tail", msgs.clone()).await;
    let tail = cjs.get_stream("COPY_TAIL").await.unwrap();
    assert!(tail.delete_message(80).await.unwrap());
    let f = verify_stream(&cjs, "COPY_TAIL", |_, _| {})
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        f.problem,
        Problem::Truncated {
            expected: 80,
            found: 79
        }
    );

    // The real stream refuses both ways of removing an entry.
    let audit = js.get_stream(AUDIT_STREAM).await.unwrap();
    assert!(audit.delete_message(3).await.is_err());
    assert!(audit.purge().await.is_err());
    p.auth.audit_verify(|_, _| {}).await.unwrap().unwrap();
    replica.close().await;
}

#[tokio::test]
async fn entries_from_before_the_chain_are_an_unprotected_prefix() {
    let p = Platform::start().await.unwrap();
    let admin = p
        .connect_cp_user("legacy", &[">".into()], &[">".into()])
        .await
        .unwrap();
    let cjs = jetstream::new(admin.client.clone());
    let old =
        serde_json::json!({"ts": 1, "kind": "enroll", "outcome": "ok", "actor": "enrollment"});
    for _ in 0..2 {
        cjs.publish("wgcp.audit.enroll", old.to_string().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // A fresh process chains after the unchained entries.
    let auth = Authority::open(&p.data_dir()).await.unwrap();
    assert_eq!(auth.audit().append(&entry(1, None)).await.unwrap(), (1, 3));
    assert_eq!(auth.audit().append(&entry(2, None)).await.unwrap(), (2, 4));
    let r = auth.audit_verify(|_, _| {}).await.unwrap().unwrap();
    assert_eq!((r.entries, r.unchained, r.last_stream_seq), (2, 2, 4));
    // An entry published without the chain after it began is named.
    cjs.publish("wgcp.audit.enroll", old.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let f = auth.audit_verify(|_, _| {}).await.unwrap().unwrap_err();
    assert_eq!((f.stream_seq, f.problem), (5, Problem::Unchained));
    auth.close().await;
}

#[tokio::test]
async fn queries_page_through_one_tenants_entries() {
    let p = Platform::start().await.unwrap();
    let a = &p.auth;
    for i in 0..25 {
        a.audit().append(&entry(i, Some("acme"))).await.unwrap();
        a.audit().append(&entry(i, Some("bolt"))).await.unwrap();
        a.audit().append(&entry(i, None)).await.unwrap();
    }
    // A forged entry on acme's subject naming another tenant is not acme's.
    let c = chain_entry(&entry(0, Some("bolt")), 99, GENESIS).unwrap();
    let admin = p
        .connect_cp_user("forger", &[">".into()], &[">".into()])
        .await
        .unwrap();
    jetstream::new(admin.client.clone())
        .publish("wgcp.audit.acme.enroll", c.bytes.into())
        .await
        .unwrap()
        .await
        .unwrap();

    let mut q = AuditQuery::tenant("acme".parse().unwrap());
    q.limit = 10;
    let mut all = Vec::new();
    let mut pages = 0;
    loop {
        let page = a.audit_query(&q).await.unwrap();
        pages += 1;
        assert!(page.entries.len() <= 10);
        all.extend(page.entries);
        match page.next {
            Some(n) => q.start = n,
            None => break,
        }
    }
    assert_eq!(all.len(), 25);
    assert!(pages <= 4, "{pages} pages");
    assert!(all.iter().all(|e| e.tenant.as_deref() == Some("acme")));
    let is: Vec<_> = all
        .iter()
        .map(|e| e.detail["i"].as_u64().unwrap())
        .collect();
    assert_eq!(is, (0..25).collect::<Vec<_>>());

    // By kind (exact), and since a time.
    let mut q = AuditQuery::tenant("bolt".parse().unwrap());
    q.kind = Some("token.create".into());
    let page = a.audit_query(&q).await.unwrap();
    assert_eq!(page.entries.len(), 12);
    assert!(page.entries.iter().all(|e| e.kind == "token.create"));
    assert_eq!(page.next, None);
    q.kind = None;
    q.since = Some(wegweiser_shared::time::now() + 3600);
    assert!(a.audit_query(&q).await.unwrap().entries.is_empty());
    q.since = Some(wegweiser_shared::time::now() - 3600);
    assert_eq!(a.audit_query(&q).await.unwrap().entries.len(), 25);

    // An unknown tenant has nothing.
    let q = AuditQuery::tenant("nobody".parse().unwrap());
    let page = a.audit_query(&q).await.unwrap();
    assert!(page.entries.is_empty() && page.next.is_none());
}
