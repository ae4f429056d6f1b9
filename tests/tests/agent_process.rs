//! The real `wegweiser-agent` binary against the real control plane and nats-server: enroll,
//! run, heartbeats seen by the control plane, renewal with short lifetimes across a control-plane
//! restart, an agent restart keeping its identity, and revocation.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};
use wegweiser_tests::agent::{
    Running, agent, configure, enroll_agent, fast_heartbeats, heartbeats, next_heartbeat, setup,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolled_agent_reports_and_keeps_its_identity_across_restarts() {
    let (p, tenant, _tasks) = setup(None).await;
    let state = p.dir.path().join("agent");
    let device = enroll_agent(&p, &tenant, &state).await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.join("device.nk"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "the device seed must be owner-only");
    }
    // The seed never left the device: the control plane holds only the public key.
    let (rec, _) = p
        .auth
        .device_entry(&tenant, &device)
        .await
        .unwrap()
        .unwrap();
    let seed = std::fs::read_to_string(state.join("device.nk")).unwrap();
    assert_eq!(
        nkeys::KeyPair::from_seed(seed.trim()).unwrap().public_key(),
        rec.public_key.as_str()
    );
    fast_heartbeats(&state);

    let account = p.auth.tenant(&tenant).await.unwrap().account;
    let mut hb = heartbeats(&p, &account, &device).await;
    let run = Running::start(&state);
    let first = next_heartbeat(&mut hb, Duration::from_secs(15))
        .await
        .expect("no heartbeat from the agent");
    assert!(first["seq"].as_u64().is_some(), "{first}");
    assert_eq!(first["v"], 1, "{first}");
    // The control plane stored it and keeps it as the device's latest heartbeat.
    let deadline = Instant::now() + Duration::from_secs(10);
    while p
        .auth
        .latest(
            &tenant,
            &device,
            wegweiser_shared::telemetry::Kind::Heartbeat,
        )
        .await
        .unwrap()
        .is_none()
    {
        assert!(Instant::now() < deadline, "no latest heartbeat indexed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Inventory at start and metrics every second arrive and are kept as the latest.
    use wegweiser_shared::telemetry::Kind;
    let deadline = Instant::now() + Duration::from_secs(15);
    let (inv, met) = loop {
        let inv = p
            .auth
            .latest(&tenant, &device, Kind::Inventory)
            .await
            .unwrap();
        let met = p
            .auth
            .latest(&tenant, &device, Kind::Metrics)
            .await
            .unwrap();
        if let (Some(i), Some(m)) = (inv, met) {
            break (i.report, m.report);
        }
        assert!(Instant::now() < deadline, "inventory or metrics missing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let inv: wegweiser_shared::telemetry::Inventory = serde_json::from_value(inv).unwrap();
    assert!(
        !inv.hostname.is_empty() && inv.cpu_cores > 0 && inv.memory_total > 0,
        "{inv:?}"
    );
    assert!(!inv.disks.is_empty(), "{inv:?}");
    let met: wegweiser_shared::telemetry::Metrics = serde_json::from_value(met).unwrap();
    assert!(met.process_count > 0 && met.memory_used > 0, "{met:?}");
    // `status` shows the enrollment and the live connection.
    let out = agent(&state).args(["--json", "status"]).output().unwrap();
    let status = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(status.contains(device.as_str()), "{status}");
    assert!(status.contains("connected"), "{status}");
    assert_eq!(run.terminate(), Some(0), "graceful stop exits 0");

    // A restart keeps the same identity.
    let _run = Running::start(&state);
    next_heartbeat(&mut hb, Duration::from_secs(15))
        .await
        .expect("no heartbeat after restart");
    assert_eq!(p.auth.devices(&tenant).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_credentials_renew_across_a_control_plane_restart() {
    let (p, tenant, tasks) = setup(Some(12)).await;
    let state = p.dir.path().join("agent");
    let device = enroll_agent(&p, &tenant, &state).await;
    configure(&state, true);
    let enrolled_key = p
        .auth
        .device_entry(&tenant, &device)
        .await
        .unwrap()
        .unwrap()
        .0
        .public_key;
    let account = p.auth.tenant(&tenant).await.unwrap().account;
    let mut hb = heartbeats(&p, &account, &device).await;
    let mut run = Running::start(&state);
    next_heartbeat(&mut hb, Duration::from_secs(15))
        .await
        .expect("no heartbeat");
    // Restart the control plane's service (renewal responder, HTTPS) with a fresh authority.
    wegweiser_cp::cli::stop_service(tasks).await;
    let auth2 = wegweiser_cp::authority::Authority::open(&p.data_dir())
        .await
        .unwrap();
    let _tasks2 = wegweiser_cp::cli::start_service(&auth2, &p.root_dir())
        .await
        .unwrap();
    // Run well past two lifetimes: heartbeats keep coming without a gap longer than the reconnect.
    let started = Instant::now();
    let mut last = Instant::now();
    let mut longest_gap = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(28) {
        assert!(run.0.try_wait().unwrap().is_none(), "the agent exited");
        if next_heartbeat(&mut hb, Duration::from_secs(5))
            .await
            .is_some()
        {
            longest_gap = longest_gap.max(last.elapsed());
            last = Instant::now();
        } else {
            panic!(
                "no heartbeat for 5 s; agent log:\n{}",
                std::fs::read_to_string(state.join("agent.log")).unwrap_or_default()
            );
        }
    }
    let (rec, _) = auth2.device_entry(&tenant, &device).await.unwrap().unwrap();
    assert!(rec.renewed_at.is_some(), "the agent never renewed");
    assert_ne!(
        rec.public_key, enrolled_key,
        "the agent never rotated its key"
    );
    // The key on disk is the one the control plane knows.
    let seed = std::fs::read_to_string(state.join("device.nk")).unwrap();
    drop(run);
    let seed_now = std::fs::read_to_string(state.join("device.nk")).unwrap_or(seed);
    let on_disk = nkeys::KeyPair::from_seed(seed_now.trim())
        .unwrap()
        .public_key();
    let (rec, _) = auth2.device_entry(&tenant, &device).await.unwrap().unwrap();
    assert_eq!(on_disk, rec.public_key.as_str());
    let log = std::fs::read_to_string(state.join("agent.log")).unwrap_or_default();
    assert!(
        !log.to_lowercase().contains("authorization violation"),
        "{log}"
    );
    assert!(
        longest_gap < Duration::from_secs(4),
        "heartbeats stalled for {longest_gap:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_agent_is_dropped_and_stops_asking_for_a_new_token() {
    let (p, tenant, _tasks) = setup(None).await;
    let state = p.dir.path().join("agent");
    let device = enroll_agent(&p, &tenant, &state).await;
    fast_heartbeats(&state);
    let account = p.auth.tenant(&tenant).await.unwrap().account;
    let mut hb = heartbeats(&p, &account, &device).await;
    let mut run = Running::start(&state);
    next_heartbeat(&mut hb, Duration::from_secs(15))
        .await
        .expect("no heartbeat");
    let started = Instant::now();
    p.auth.revoke_device(&tenant, &device).await.unwrap();
    // Disconnected within a second: the server lists no connection for the tenant any more.
    loop {
        let by = p.auth.connections_by_signer(&account).await.unwrap();
        if by.values().sum::<usize>() == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "still connected: {by:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The agent learns it was revoked and exits asking for a new enrollment.
    let code = tokio::task::spawn_blocking(move || run.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(
        code,
        Some(78),
        "agent log:\n{}",
        std::fs::read_to_string(state.join("agent.log")).unwrap_or_default()
    );
    let out = agent(&state).args(["status"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        text.contains("revoked") || text.contains("enroll"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_made_while_offline_are_delivered_in_order_after_restarts() {
    let (mut p, tenant, _tasks) = setup(None).await;
    let state = p.dir.path().join("agent");
    let device = enroll_agent(&p, &tenant, &state).await;
    fast_heartbeats(&state);
    let account = p.auth.tenant(&tenant).await.unwrap().account;
    let run = Running::start(&state);
    // Online: the start event is acknowledged (the spool drains to zero).
    let js = async_nats::jetstream::new(p.auth.cp_client().clone());
    let stream_msgs = |js: async_nats::jetstream::Context| async move {
        let mut s = js
            .get_stream(wegweiser_cp::ingest::TELEMETRY_STREAM)
            .await
            .unwrap();
        s.info().await.unwrap().state.messages
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while stream_msgs(js.clone()).await == 0 {
        assert!(Instant::now() < deadline, "nothing stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Outage: nats-server goes away; the agent is stopped and started again while it is down.
    p.stop_server().await;
    assert_eq!(run.terminate(), Some(0));
    let run = Running::start(&state);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = agent(&state).args(["status"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("waiting"), "spool depth not shown: {text}");
    p.start_server().await.unwrap();
    // Everything made offline arrives: agent_stop, then agent_start, in order, once each.
    let subject = format!("wg.{account}.up.{device}.tel.evt");
    let deadline = Instant::now() + Duration::from_secs(30);
    let events = loop {
        let js = async_nats::jetstream::new(p.auth.cp_client().clone());
        let mut stream = js.get_stream(wegweiser_cp::ingest::TELEMETRY_STREAM).await;
        let mut events = Vec::new();
        if let Ok(s) = stream.as_mut() {
            let last = s.info().await.map(|i| i.state.last_sequence).unwrap_or(0);
            for seq in 1..=last {
                if let Ok(m) = s.get_raw_message(seq).await
                    && m.subject.as_str() == subject
                {
                    let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
                    let kind = v["event"].as_str().unwrap().to_owned();
                    if kind.starts_with("agent_") {
                        events.push((v["seq"].as_u64().unwrap(), kind));
                    }
                }
            }
        }
        if events.len() >= 3 || Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let kinds: Vec<&str> = events.iter().map(|(_, e)| e.as_str()).collect();
    assert_eq!(
        kinds,
        ["agent_start", "agent_stop", "agent_start"],
        "{events:?}"
    );
    assert!(
        events.windows(2).all(|w| w[0].0 < w[1].0),
        "out of order: {events:?}"
    );
    drop(run);
}
