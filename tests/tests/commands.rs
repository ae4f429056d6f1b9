//! Signed commands from the control plane's side, against a real nats-server, with simulated
//! devices that verify every command with the shared verifier: sending and results, the
//! command log, command key rotation under load, revocation, and root rotations walked by a
//! device that was offline.
#![allow(clippy::unwrap_used)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};
use wegweiser_cp::{
    authority::{Authority, AuthorityError},
    commands::{COMMANDS_STREAM, CommandRequest, Target},
    trust::Phase,
};
use wegweiser_shared::{
    command::{Command, MAX_SKEW_SECS, Outcome},
    ids::TenantId,
    time::now,
    trust::KeyStatus,
};
use wegweiser_tests::{Platform, sim::SimDevice};

fn ping(tenant: &TenantId, target: Target) -> CommandRequest {
    CommandRequest {
        tenant: tenant.clone(),
        target,
        command: Command::Ping {},
        by: "test".into(),
        timeout: Duration::from_secs(10),
    }
}

async fn wait_until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

async fn serve(p: &Platform, d: &SimDevice) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    d.spawn_serve(p).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reach_devices_signed_for_each_and_results_come_back() {
    let p = Platform::start().await.unwrap();
    let t = p.tenant("acme").await.unwrap();
    let _tasks = p.serve().await.unwrap();
    let d1 = SimDevice::enroll(&p, &t.id, "m1").await.unwrap();
    let d2 = SimDevice::enroll(&p, &t.id, "m2").await.unwrap();
    let (_s1, _s2) = (serve(&p, &d1).await, serve(&p, &d2).await);

    let r = p
        .auth
        .send_command(ping(&t.id, Target::Device(d1.id.clone())))
        .await
        .unwrap();
    assert_eq!(r.devices.len(), 1);
    let o = &r.devices[0];
    assert_eq!(o.status(), "ok", "{o:?}");
    assert_eq!(o.result.as_ref().unwrap().id, o.id);
    assert!(o.latency_us.is_some());
    assert_eq!(d1.seen().executed, vec![o.id.clone()]);
    assert!(d2.seen().executed.is_empty(), "only the target runs it");

    let r = p.auth.send_command(ping(&t.id, Target::All)).await.unwrap();
    assert_eq!(r.devices.len(), 2);
    assert!(r.devices.iter().all(|d| d.status() == "ok"), "{r:?}");
    assert_ne!(r.devices[0].id, r.devices[1].id, "one id per device");
    assert!(d1.seen().rejected.is_empty() && d2.seen().rejected.is_empty());

    // An empty target is an error, never "every device".
    let e = p
        .auth
        .send_command(ping(&t.id, Target::Group("nobody".into())))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no active device"), "{e}");
    // Another tenant's device is not reachable through this tenant.
    let other = p.tenant("other").await.unwrap();
    let e = p
        .auth
        .send_command(ping(&other.id, Target::Device(d1.id.clone())))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no active device"), "{e}");
    // Bad arguments are refused before anything is signed.
    let mut bad = ping(&t.id, Target::All);
    bad.command = Command::Run {
        script: String::new(),
        timeout_secs: 0,
    };
    assert!(matches!(
        p.auth.send_command(bad).await.unwrap_err(),
        AuthorityError::Command(_)
    ));

    // The command log holds a request and a result entry per device and command.
    let js = async_nats::jetstream::new(p.auth.cp_client().clone());
    let mut log = js.get_stream(COMMANDS_STREAM).await.unwrap();
    assert_eq!(log.info().await.unwrap().state.messages, 6);

    // A device that does not answer times out, and says so.
    let d3 = SimDevice::enroll(&p, &t.id, "m3").await.unwrap();
    let mut req = ping(&t.id, Target::Device(d3.id.clone()));
    req.timeout = Duration::from_millis(300);
    let r = p.auth.send_command(req).await.unwrap();
    assert_eq!(r.devices[0].status(), "timeout");
}

/// Keeps sending pings to `device` until `stop`; counts results that were not `ok`.
fn load(
    auth: Authority,
    tenant: TenantId,
    device: wegweiser_shared::ids::DeviceId,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            let r = auth
                .send_command(ping(&tenant, Target::Device(device.clone())))
                .await;
            sent.fetch_add(1, Ordering::SeqCst);
            match r {
                Ok(r) if r.devices[0].status() == "ok" => {}
                other => {
                    eprintln!("failed command: {other:?}");
                    failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_key_rotation_under_load_fails_no_command() {
    let p = Platform::start().await.unwrap();
    let t = p.tenant("acme").await.unwrap();
    let _tasks = p.serve().await.unwrap();
    let d1 = SimDevice::enroll(&p, &t.id, "m1").await.unwrap();
    // A device that misses every push: it must fetch the keyset when it meets the new key.
    let mut d2 = SimDevice::enroll(&p, &t.id, "m2").await.unwrap();
    d2.ignore_pushes = true;
    let (_s1, _s2) = (serve(&p, &d1).await, serve(&p, &d2).await);
    let (before, _) = p.auth.trust_record().await.unwrap();
    let old = before.signing.clone();

    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let loads: Vec<_> = [&d1, &d2]
        .into_iter()
        .map(|d| {
            load(
                p.auth.clone(),
                t.id.clone(),
                d.id.clone(),
                stop.clone(),
                sent.clone(),
                failed.clone(),
            )
        })
        .collect();

    // Publish the next key.
    let rec = p.auth.keys_rotate(&p.root_dir(), Some(3600)).await.unwrap();
    let r = rec.rotation.clone().unwrap();
    assert_eq!((r.phase, r.old.as_str()), (Phase::Publishing, old.as_str()));
    assert_eq!(
        rec.signing, old,
        "the old key signs until devices have the new keyset"
    );
    assert_eq!(
        rec.keys
            .iter()
            .filter(|k| k.status == KeyStatus::Active)
            .count(),
        2
    );
    let published = r.published_version;
    wait_until("d1 has the pushed keyset", async || {
        d1.trust.lock().unwrap().keyset_version() == published
    })
    .await;
    // d1 reports the new keyset, d2 the old one: d2 is online and behind, so no switch.
    d1.heartbeat(1).await.unwrap();
    d2.heartbeat(1).await.unwrap();
    wait_until("both heartbeats are stored", async || {
        p.auth.devices_behind(published).await.unwrap() == 1
    })
    .await;
    p.auth.trust_tick(&p.root_dir()).await.unwrap();
    let (rec, _) = p.auth.trust_record().await.unwrap();
    assert_eq!(rec.rotation.as_ref().unwrap().phase, Phase::Publishing);
    // After the grace period it switches anyway; d2 fetches the keyset at its first command.
    let switch_at = now() + 3601;
    let switched = p
        .auth
        .trust_tick_at(&p.root_dir(), switch_at)
        .await
        .unwrap();
    assert_eq!(switched.len(), 1, "{switched:?}");
    let (rec, _) = p.auth.trust_record().await.unwrap();
    assert_eq!(rec.signing, r.next);
    let sent_at_switch = sent.load(Ordering::SeqCst);
    wait_until("commands signed by the new key ran", async || {
        sent.load(Ordering::SeqCst) > sent_at_switch + 10
    })
    .await;
    assert!(d2.seen().fetches >= 1, "d2 fetched the keyset");
    // Once every command of the old key has expired, the old key is retired.
    let lifetime = p.auth.config().trust.command_lifetime_secs;
    let retired = p
        .auth
        .trust_tick_at(&p.root_dir(), switch_at + lifetime + MAX_SKEW_SECS + 1)
        .await
        .unwrap();
    assert_eq!(retired.len(), 1, "{retired:?}");
    let (rec, _) = p.auth.trust_record().await.unwrap();
    assert!(rec.rotation.is_none());
    let status = |id: &str| rec.keys.iter().find(|k| k.keyid == id).unwrap().status;
    assert_eq!(status(&old), KeyStatus::Retired);
    assert_eq!(status(&r.next), KeyStatus::Active);
    let sent_at_retire = sent.load(Ordering::SeqCst);
    wait_until("more commands ran after the retirement", async || {
        sent.load(Ordering::SeqCst) > sent_at_retire + 10
    })
    .await;

    stop.store(true, Ordering::SeqCst);
    for l in loads {
        l.await.unwrap();
    }
    let (n, bad) = (sent.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    eprintln!("{n} commands during the rotation, {bad} failed");
    assert!(n > 30, "a continuous load ({n} commands)");
    assert_eq!(bad, 0, "no command failed during the rotation");
    assert!(d1.seen().rejected.is_empty(), "{:?}", d1.seen().rejected);
    // d2 met the new key once before fetching: that rejection was retried, not failed.
    assert!(d2.seen().rejected.is_empty(), "{:?}", d2.seen().rejected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_command_key_is_replaced_at_once() {
    let p = Platform::start().await.unwrap();
    let t = p.tenant("acme").await.unwrap();
    let _tasks = p.serve().await.unwrap();
    let d = SimDevice::enroll(&p, &t.id, "m1").await.unwrap();
    let _s = serve(&p, &d).await;
    let (before, _) = p.auth.trust_record().await.unwrap();
    let rec = p
        .auth
        .keys_revoke(&p.root_dir(), &before.signing)
        .await
        .unwrap();
    assert_ne!(rec.signing, before.signing);
    assert_eq!(rec.keyset.version, before.keyset.version + 1);
    let revoked = rec.keys.iter().find(|k| k.keyid == before.signing).unwrap();
    assert_eq!(revoked.status, KeyStatus::Revoked);
    // The device has the keyset that revokes it.
    wait_until("the device has the new keyset", async || {
        d.trust.lock().unwrap().keyset_version() == rec.keyset.version
    })
    .await;
    let keys = d.trust.lock().unwrap().command_keys().to_vec();
    assert!(
        keys.iter()
            .any(|k| k.keyid == before.signing && k.status == KeyStatus::Revoked)
    );
    let r = p
        .auth
        .send_command(ping(&t.id, Target::Device(d.id.clone())))
        .await
        .unwrap();
    assert_eq!(r.keyid, rec.signing);
    assert_eq!(r.devices[0].status(), "ok");
    // Unknown key ids are refused with a clear error.
    let e = p
        .auth
        .keys_revoke(&p.root_dir(), "0000000000000000")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("keys show"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_device_walks_two_root_rotations() {
    let p = Platform::start().await.unwrap();
    let t = p.tenant("acme").await.unwrap();
    let _tasks = p.serve().await.unwrap();
    let d = SimDevice::enroll(&p, &t.id, "m1").await.unwrap();
    assert_eq!(d.trust.lock().unwrap().root_version(), 1);
    // Offline: not serving, so it sees no push.
    p.auth.rotate_root(&p.root_dir(), 1, 1).await.unwrap();
    let rec = p.auth.rotate_root(&p.root_dir(), 2, 3).await.unwrap();
    assert_eq!(rec.root_version, 3);
    // The old root keys are gone; the current ones are there.
    let names: Vec<String> = std::fs::read_dir(p.root_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".key"))
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("root-3-")), "{names:?}");
    // Back online: it fetches, walks 1 → 2 → 3 and takes the keyset signed by root 3.
    assert!(d.fetch_trust().await.unwrap());
    {
        let s = d.trust.lock().unwrap();
        assert_eq!(s.root_version(), 3);
        assert_eq!(s.keyset_version(), rec.keyset.version);
    }
    let _s = serve(&p, &d).await;
    let r = p
        .auth
        .send_command(ping(&t.id, Target::Device(d.id.clone())))
        .await
        .unwrap();
    assert_eq!(r.devices[0].status(), "ok");
    assert_eq!(r.devices[0].result.as_ref().unwrap().outcome, Outcome::Ok);
    // Signing the keyset needs the root keys: without them, a clear error.
    let empty = tempfile::tempdir().unwrap();
    let e = p.auth.keys_resign(empty.path()).await.unwrap_err();
    assert!(e.to_string().contains("--root-keys"), "{e}");
    // With them, a new version.
    let again = p.auth.keys_resign(&p.root_dir()).await.unwrap();
    assert_eq!(again.keyset.version, rec.keyset.version + 1);
}
