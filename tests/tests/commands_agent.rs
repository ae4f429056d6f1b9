//! Signed commands against the real `wegweiser-agent` binary: commands run once and answer;
//! forged, tampered, malformed, oversized and replayed envelopes injected by a client with
//! publish rights on the device's command subject are refused with their reason, counted, and
//! reported, and the agent keeps running; a replay is refused after an agent restart too; the
//! agent follows a command key rotation, restarts on command, and catches up with two root
//! rotations made while it was offline.
#![allow(clippy::unwrap_used)]

use futures::StreamExt;
use std::{path::Path, time::Duration};
use wegweiser_cp::commands::{CommandReport, CommandRequest, Target};
use wegweiser_shared::{
    command::{Command, Outcome},
    dsse::generate_key,
    ids::{DeviceId, TenantId},
    subject::{self, Token},
    time::now,
};
use wegweiser_tests::{
    Platform,
    agent::{Running, enroll_agent, fast_heartbeats, heartbeats, next_heartbeat, setup},
};

async fn send(p: &Platform, tenant: &TenantId, device: &DeviceId, c: Command) -> CommandReport {
    p.auth
        .send_command(CommandRequest {
            tenant: tenant.clone(),
            target: Target::Device(device.clone()),
            command: c,
            by: "test".into(),
            timeout: Duration::from_secs(15),
        })
        .await
        .unwrap()
}

fn status(state: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(state.join("status.json")).unwrap()).unwrap()
}

/// Waits until `status.json` shows `want` commands rejected.
async fn rejected_reaches(state: &Path, want: u64) {
    for _ in 0..200 {
        if status(state)["commands_rejected"].as_u64() == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("commands_rejected never reached {want}: {}", status(state));
}

/// The reasons of the `command_rejected` events seen so far.
fn reasons(events: &mut async_nats::Subscriber) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(Some(m)) = futures::FutureExt::now_or_never(events.next()) {
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        if v["event"] == "command_rejected" {
            out.push(v["reason"].as_str().unwrap().to_owned());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_runs_signed_commands_once_and_refuses_everything_else() {
    let (p, tenant, _tasks) = setup(None).await;
    let state = p.dir.path().join("agent");
    let device = enroll_agent(&p, &tenant, &state).await;
    assert!(
        state.join("trust.json").exists(),
        "the enrollment pinned the trust root"
    );
    fast_heartbeats(&state);
    let account = p.auth.tenant(&tenant).await.unwrap().account;
    let mut hb = heartbeats(&p, &account, &device).await;
    let mut events = p
        .auth
        .cp_client()
        .subscribe(format!("wg.{account}.up.{device}.tel.evt"))
        .await
        .unwrap();
    let mut run = Running::start(&state);
    let first = next_heartbeat(&mut hb, Duration::from_secs(15))
        .await
        .expect("no heartbeat");
    let (rec, _) = p.auth.trust_record().await.unwrap();
    assert_eq!(first["keyset_version"], rec.keyset.version, "{first}");

    // A client with publish rights on the device's command subject (and a tap on it).
    let cmd_subject = subject::down(&account, &device, &[Token::from_static("cmd")]);
    let intruder = p
        .connect_cp_user(
            "intruder",
            std::slice::from_ref(&cmd_subject),
            std::slice::from_ref(&cmd_subject),
        )
        .await
        .unwrap();
    let mut tap = intruder
        .client
        .subscribe(cmd_subject.clone())
        .await
        .unwrap();
    intruder.client.flush().await.unwrap();
    p.wait_subscribed(p.auth.cp_account(), std::slice::from_ref(&cmd_subject))
        .await
        .unwrap();

    // Commands run and answer.
    let r = send(&p, &tenant, &device, Command::Ping {}).await;
    let ping = &r.devices[0];
    assert_eq!(ping.status(), "ok", "{ping:?}");
    let res = ping.result.as_ref().unwrap();
    assert_eq!(res.kind, "ping");
    assert_eq!(
        res.output["agent_version"],
        env!("CARGO_PKG_VERSION"),
        "{res:?}"
    );
    let captured = tokio::time::timeout(Duration::from_secs(5), tap.next())
        .await
        .unwrap()
        .unwrap()
        .payload;
    let r = send(&p, &tenant, &device, Command::Processes { limit: 5 }).await;
    let procs = r.devices[0].result.as_ref().unwrap();
    assert_eq!(procs.outcome, Outcome::Ok, "{procs:?}");
    assert!(!procs.output.to_string().is_empty());
    // `run` is off unless the device's policy enables it: refused, and answered as refused.
    let r = send(
        &p,
        &tenant,
        &device,
        Command::Run {
            script: "touch should-not-exist".into(),
            timeout_secs: 5,
        },
    )
    .await;
    let refused = r.devices[0].result.as_ref().unwrap();
    assert_eq!(refused.outcome, Outcome::Rejected);
    assert_eq!(refused.error.as_deref(), Some("not_allowed"));
    assert!(!state.join("should-not-exist").exists());
    rejected_reaches(&state, 1).await;

    // Forgeries, all injected on the real command subject.
    let forged = wegweiser_shared::command::CommandPayload {
        v: 1,
        id: wegweiser_shared::command::new_id(),
        iss: "wegweiser".into(),
        tenant: tenant.clone(),
        device: device.clone(),
        subject: cmd_subject.clone(),
        iat: now(),
        nbf: now(),
        exp: now() + 60,
        keyset: rec.keyset.version,
        command: Command::Restart {},
        by: "intruder".into(),
    }
    .sign(&generate_key());
    let mut tampered: wegweiser_shared::dsse::Envelope = serde_json::from_slice(&captured).unwrap();
    tampered.payload = forged.payload.clone();
    let inject = [
        forged.to_vec(),               // unknown key
        tampered.to_vec(),             // a real signature over other bytes
        b"{\"payloadType\":".to_vec(), // malformed
        vec![b'x'; 70 * 1024],         // oversized
        captured.to_vec(),             // replay of the ping
    ];
    for bytes in inject {
        intruder
            .client
            .publish(cmd_subject.clone(), bytes.into())
            .await
            .unwrap();
    }
    intruder.client.flush().await.unwrap();
    rejected_reaches(&state, 6).await;
    assert!(
        run.0.try_wait().unwrap().is_none(),
        "the agent kept running"
    );
    let seen = reasons(&mut events);
    for want in [
        "not_allowed",
        "unknown_key",
        "bad_signature",
        "malformed",
        "oversized",
        "replay",
    ] {
        assert!(seen.iter().any(|r| r == want), "{want} missing in {seen:?}");
    }
    assert_eq!(status(&state)["commands_executed"], 2, "{}", status(&state));
    // The rejections are counted in the heartbeats too.
    let mut counted = false;
    for _ in 0..20 {
        let h = next_heartbeat(&mut hb, Duration::from_secs(5))
            .await
            .unwrap();
        if h["commands_rejected"] == 6 {
            counted = true;
            break;
        }
    }
    assert!(counted, "heartbeats count the rejections");

    // Restarted, the agent still refuses the replay: the seen ids survive.
    assert_eq!(run.terminate(), Some(0));
    run = Running::start(&state);
    next_heartbeat(&mut hb, Duration::from_secs(15))
        .await
        .expect("no heartbeat after the restart");
    let _ = reasons(&mut events);
    intruder
        .client
        .publish(cmd_subject.clone(), captured.clone())
        .await
        .unwrap();
    intruder.client.flush().await.unwrap();
    rejected_reaches(&state, 1).await; // counters are per run
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen.extend(reasons(&mut events));
        if !seen.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, vec!["replay".to_owned()]);
    let r = send(&p, &tenant, &device, Command::Ping {}).await;
    assert_eq!(r.devices[0].status(), "ok");
    assert!(run.0.try_wait().unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_follows_a_key_rotation_and_restarts_on_command() {
    let (p, tenant, _tasks) = setup(None).await;
    let state = p.dir.path().join("agent");
    let device = enroll_agent(&p, &tenant, &state).await;
    fast_heartbeats(&state);
    let account = p.auth.tenant(&tenant).await.unwrap().account;
    let mut hb = heartbeats(&p, &account, &device).await;
    let mut events = p
        .auth
        .cp_client()
        .subscribe(format!("wg.{account}.up.{device}.tel.evt"))
        .await
        .unwrap();
    let run = Running::start(&state);
    next_heartbeat(&mut hb, Duration::from_secs(15))
        .await
        .expect("no heartbeat");

    // Publish the next key; the agent takes the pushed keyset and reports it.
    let rec = p.auth.keys_rotate(&p.root_dir(), Some(3600)).await.unwrap();
    let published = rec.rotation.as_ref().unwrap().published_version;
    let mut reported = false;
    for _ in 0..30 {
        let h = next_heartbeat(&mut hb, Duration::from_secs(5))
            .await
            .unwrap();
        if h["keyset_version"] == published {
            reported = true;
            break;
        }
    }
    assert!(reported, "the agent reports the published keyset");
    // Every online device has it: the driver switches to the new key.
    let mut switched = false;
    for _ in 0..100 {
        p.auth.trust_tick(&p.root_dir()).await.unwrap();
        let (r, _) = p.auth.trust_record().await.unwrap();
        if r.signing == rec.rotation.as_ref().unwrap().next {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(switched, "the signing key switched");
    let r = send(&p, &tenant, &device, Command::Ping {}).await;
    assert_eq!(r.devices[0].status(), "ok");
    assert_eq!(r.keyid, rec.rotation.as_ref().unwrap().next);

    // Restart on command: answered, then the agent starts again in the same process.
    let _ = reasons(&mut events);
    let r = send(&p, &tenant, &device, Command::Restart {}).await;
    assert_eq!(r.devices[0].status(), "ok");
    let mut started = false;
    for _ in 0..100 {
        let m = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        if v["event"] == "agent_start" {
            started = true;
            break;
        }
    }
    assert!(started, "the agent started again");
    let mut run = run;
    assert!(run.0.try_wait().unwrap().is_none(), "same process");
    let r = send(&p, &tenant, &device, Command::Ping {}).await;
    assert_eq!(r.devices[0].status(), "ok");
    assert_eq!(run.terminate(), Some(0));

    // Offline across two root rotations: back, it walks the chain and runs commands again.
    p.auth.rotate_root(&p.root_dir(), 1, 1).await.unwrap();
    let rec = p.auth.rotate_root(&p.root_dir(), 2, 3).await.unwrap();
    let run = Running::start(&state);
    let mut caught_up = false;
    for _ in 0..30 {
        let h = next_heartbeat(&mut hb, Duration::from_secs(5))
            .await
            .unwrap();
        if h["keyset_version"] == rec.keyset.version {
            caught_up = true;
            break;
        }
    }
    assert!(caught_up, "the agent fetched the keyset of root 3");
    let r = send(&p, &tenant, &device, Command::Ping {}).await;
    assert_eq!(r.devices[0].status(), "ok");
    assert_eq!(status(&state)["root_version"], 3, "{}", status(&state));
    drop(run);
}
