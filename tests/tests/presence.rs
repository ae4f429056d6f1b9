//! Presence on a fresh installation: the device index starts before the ingest has created the
//! `wg_latest` bucket (as the first `wegweiser serve` does) and still counts devices online once
//! their heartbeats arrive.
#![allow(clippy::unwrap_used)]

use std::time::Duration;
use wegweiser_cp::{
    api::{DeviceIndex, DeviceQuery},
    rbac::{Binding, Principal, Role, Scope},
};
use wegweiser_tests::{Platform, sim::SimDevice};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_follows_presence_when_the_bucket_appears_after_it_started() {
    let p = Platform::start().await.unwrap();
    let acme = p.tenant("acme").await.unwrap().id;
    let js = async_nats::jetstream::new(p.auth.cp_client().clone());
    assert!(
        js.get_key_value(wegweiser_cp::ingest::LATEST_BUCKET)
            .await
            .is_err(),
        "the bucket must not exist yet for this test to mean anything"
    );
    let index = DeviceIndex::start(&p.auth).await.unwrap();
    let _tasks = p.serve().await.unwrap();
    let d = SimDevice::enroll(&p, &acme, "m1").await.unwrap();
    let who = Principal {
        user: "op".into(),
        bindings: vec![Binding {
            role: Role::Viewer,
            scope: Scope::Global,
        }],
    };
    let online = DeviceQuery {
        online: Some(true),
        ..Default::default()
    };
    let mut seq = 0;
    for _ in 0..100 {
        seq += 1;
        d.heartbeat(seq).await.unwrap();
        if index.page(&who, &acme, &online).items.len() == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the device never showed online in an index started before the bucket existed");
}
