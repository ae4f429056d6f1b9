use super::*;
use crate::{
    testutil::Issuer,
    trust::tests::{NOW, World},
};
use std::sync::atomic::AtomicUsize;
use wegweiser_shared::{
    command::{CommandPayload, DEFAULT_LIFETIME_SECS, PAYLOAD_TYPE, VERSION, new_id},
    dsse::{Envelope, generate_key, key_id},
    trust::KeyStatus,
};

/// Records the ids it is asked to execute.
#[derive(Debug, Default, Clone)]
struct Recorder {
    seen: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn ids(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Executor for Recorder {
    async fn execute(&self, cmd: &VerifiedCommand) -> Execution {
        self.seen.lock().unwrap().push(cmd.id().to_owned());
        Execution::ok(json!({"kind": cmd.command().kind()}))
    }
}

/// Serves whatever bundle the test put in, and counts the fetches.
#[derive(Debug, Default, Clone)]
struct FakeTrust {
    bundle: Arc<Mutex<Option<Vec<u8>>>>,
    fetches: Arc<AtomicUsize>,
}

impl FakeTrust {
    fn serve(&self, b: &TrustBundle) {
        *self.bundle.lock().unwrap() = Some(b.to_vec());
    }
    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl TrustSource for FakeTrust {
    async fn fetch(&self) -> Result<Vec<u8>, String> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        self.bundle
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| "no responders".to_owned())
    }
}

struct Rig {
    _tmp: tempfile::TempDir,
    paths: Paths,
    issuer: Issuer,
    subject: String,
    commands: Commands<FakeTrust, Recorder>,
    executor: Recorder,
    source: FakeTrust,
    stats: Arc<CommandStats>,
    reporter: Arc<Reporter>,
}

impl Rig {
    /// A device that pinned `trust` (if any), accepting `allowed`.
    async fn new(trust: Option<&TrustState>, allowed: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let paths = Paths::in_dir(tmp.path());
        let issuer = Issuer::new();
        if let Some(t) = trust {
            crate::trust::save(&paths, t).unwrap();
        }
        let status = StatusFile::start(paths.status_file(), issuer.device.as_str(), None);
        let reporter = Reporter::open(
            &paths.spool_dir(),
            issuer.account.clone(),
            issuer.device.clone(),
            status.clone(),
        )
        .await
        .unwrap();
        let (subject, _, _) = subjects(&issuer.account, &issuer.device);
        let stats = Arc::new(CommandStats::default());
        let (executor, source) = (Recorder::default(), FakeTrust::default());
        let commands = Commands::open(
            Setup {
                paths: paths.clone(),
                expected: Expected {
                    tenant: issuer.tenant.clone(),
                    device: issuer.device.clone(),
                    subject: subject.clone(),
                },
                allowed: allowed.iter().map(|s| (*s).to_owned()).collect(),
                reporter: reporter.clone(),
                status,
                stats: stats.clone(),
                restart: Arc::new(Notify::new()),
            },
            source.clone(),
            executor.clone(),
        )
        .await;
        Self {
            _tmp: tmp,
            paths,
            issuer,
            subject,
            commands,
            executor,
            source,
            stats,
            reporter,
        }
    }

    fn payload(&self, command: Command) -> CommandPayload {
        CommandPayload {
            v: VERSION,
            id: new_id(),
            iss: "wegweiser".into(),
            tenant: self.issuer.tenant.clone(),
            device: self.issuer.device.clone(),
            subject: self.subject.clone(),
            iat: NOW,
            nbf: NOW,
            exp: NOW + DEFAULT_LIFETIME_SECS,
            keyset: 1,
            command,
            by: "alice".into(),
        }
    }

    async fn send(&mut self, env: &Envelope) {
        self.commands.on_command(&env.to_vec(), NOW).await;
        self.commands.settle().await;
    }

    /// Reports spooled so far, as (kind token, JSON).
    fn reports(&self) -> Vec<(String, Value)> {
        self.reporter
            .spooled()
            .into_iter()
            .map(|r| {
                let kind = r.subject.rsplit('.').next().unwrap().to_owned();
                (kind, serde_json::from_slice(&r.payload).unwrap())
            })
            .collect()
    }

    fn events(&self, name: &str) -> Vec<Value> {
        self.reports()
            .into_iter()
            .filter(|(k, v)| k == "evt" && v["event"] == name)
            .map(|(_, v)| v)
            .collect()
    }

    fn results(&self) -> Vec<Value> {
        self.reports()
            .into_iter()
            .filter(|(k, _)| k == "res")
            .map(|(_, v)| v)
            .collect()
    }
}

/// An envelope of `payload` signed with `key`, with its `keyid` replaced when given.
fn signed(payload: &CommandPayload, key: &ed25519_dalek::SigningKey) -> Envelope {
    payload.sign(key)
}

#[tokio::test]
async fn rejected_commands_never_reach_the_executor_and_every_reason_is_counted() {
    let mut w = World::new();
    let retired = generate_key();
    let revoked = generate_key();
    w.keys = vec![
        (retired.clone(), KeyStatus::Retired),
        (revoked.clone(), KeyStatus::Revoked),
        (generate_key(), KeyStatus::Active),
    ];
    let mut rig = Rig::new(Some(&w.state()), &crate::config::DEFAULT_ALLOWED_COMMANDS).await;
    rig.source.serve(&w.bundle()); // A refetch changes nothing.
    let key = w.key().clone();
    let ping = || Command::Ping {};

    let mut cases: Vec<(Reject, Vec<u8>)> = Vec::new();
    cases.push((Reject::Oversized, vec![b' '; 70 * 1024]));
    cases.push((Reject::Malformed, b"{not an envelope".to_vec()));
    let body = serde_json::to_vec(&rig.payload(ping())).unwrap();
    cases.push((
        Reject::WrongType,
        Envelope::sign("text/plain", &body, &[&key]).to_vec(),
    ));
    cases.push((
        Reject::UnknownKey,
        signed(&rig.payload(ping()), &generate_key()).to_vec(),
    ));
    let mut lying = signed(&rig.payload(ping()), &generate_key());
    lying.signatures[0].keyid = key_id(&key.verifying_key());
    cases.push((Reject::BadSignature, lying.to_vec()));
    cases.push((
        Reject::RetiredKey,
        signed(&rig.payload(ping()), &retired).to_vec(),
    ));
    cases.push((
        Reject::RevokedKey,
        signed(&rig.payload(ping()), &revoked).to_vec(),
    ));
    let mut p = rig.payload(ping());
    p.v = 2;
    cases.push((Reject::UnsupportedVersion, signed(&p, &key).to_vec()));
    let mut p = rig.payload(ping());
    p.tenant = "other-msp".parse().unwrap();
    cases.push((Reject::WrongTenant, signed(&p, &key).to_vec()));
    let mut p = rig.payload(ping());
    p.device = wegweiser_shared::ids::DeviceId::generate();
    cases.push((Reject::WrongDevice, signed(&p, &key).to_vec()));
    let mut p = rig.payload(ping());
    p.subject = format!("{}x", rig.subject);
    cases.push((Reject::WrongSubject, signed(&p, &key).to_vec()));
    let mut p = rig.payload(ping());
    (p.iat, p.nbf, p.exp) = (NOW - 900, NOW - 900, NOW - 2 * MAX_SKEW);
    cases.push((Reject::Expired, signed(&p, &key).to_vec()));
    let mut p = rig.payload(ping());
    (p.iat, p.nbf, p.exp) = (NOW + 600, NOW + 600, NOW + 900);
    cases.push((Reject::NotYetValid, signed(&p, &key).to_vec()));
    let mut p = rig.payload(ping());
    p.exp = NOW + 3600;
    cases.push((Reject::LifetimeTooLong, signed(&p, &key).to_vec()));
    let p = rig.payload(Command::Processes { limit: 0 });
    cases.push((Reject::BadArguments, signed(&p, &key).to_vec()));
    let p = rig.payload(Command::Run {
        script: "echo pwned".into(),
        timeout_secs: 5,
    });
    cases.push((Reject::NotAllowed, signed(&p, &key).to_vec()));

    let good = rig.payload(ping());
    let good_env = signed(&good, &key);
    rig.send(&good_env).await;
    cases.push((Reject::Replay, good_env.to_vec()));

    for (reason, bytes) in &cases {
        rig.commands.on_command(bytes, NOW).await;
        rig.commands.settle().await;
        assert_eq!(rig.stats.rejected_for(reason.code()), 1, "{reason}");
    }
    // Only the good command ran, once.
    assert_eq!(rig.executor.ids(), vec![good.id.clone()]);
    assert_eq!(rig.stats.executed(), 1);
    assert_eq!(rig.stats.rejected(), cases.len() as u64);
    let status = crate::status::read(&rig.paths.status_file()).unwrap();
    assert_eq!(
        (status.commands_executed, status.commands_rejected),
        (1, cases.len() as u64)
    );

    // One event per refusal; verified ones name the command and are answered.
    let events = rig.events("command_rejected");
    assert_eq!(events.len(), cases.len());
    let answered: Vec<&str> = events
        .iter()
        .filter(|e| e.get("command_id").is_some())
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    for code in [
        "unsupported_version",
        "wrong_tenant",
        "wrong_device",
        "wrong_subject",
        "expired",
        "not_yet_valid",
        "lifetime_too_long",
        "bad_arguments",
        "not_allowed",
        "replay",
    ] {
        assert!(answered.contains(&code), "{code}: {answered:?}");
    }
    for code in [
        "oversized",
        "malformed",
        "wrong_type",
        "unknown_key",
        "bad_signature",
    ] {
        assert!(!answered.contains(&code), "{code}");
    }
    let results = rig.results();
    let rejected: Vec<&Value> = results
        .iter()
        .filter(|r| r["outcome"] == "rejected")
        .collect();
    assert_eq!(rejected.len(), answered.len());
    let replay = rejected
        .iter()
        .find(|r| r["error"] == "replay")
        .expect("the replay is answered");
    assert_eq!(replay["id"], good.id.as_str());
    assert_eq!(replay["kind"], "ping");
    let ok: Vec<&Value> = results.iter().filter(|r| r["outcome"] == "ok").collect();
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0]["id"], good.id.as_str());
    // Untrusted input is not echoed.
    let malformed = events.iter().find(|e| e["reason"] == "malformed").unwrap();
    assert!(!malformed["detail"].as_str().unwrap().contains("envelope"));
}

const MAX_SKEW: i64 = wegweiser_shared::command::MAX_SKEW_SECS;

#[tokio::test]
async fn run_is_refused_by_default_policy_and_not_retried() {
    let w = World::new();
    let mut rig = Rig::new(Some(&w.state()), &crate::config::DEFAULT_ALLOWED_COMMANDS).await;
    let p = rig.payload(Command::Run {
        script: "touch /tmp/should-not-exist".into(),
        timeout_secs: 5,
    });
    let env = signed(&p, w.key());
    rig.send(&env).await;
    rig.send(&env).await;
    assert!(rig.executor.ids().is_empty());
    assert_eq!(rig.stats.rejected_for("not_allowed"), 1);
    // The id was recorded before the policy check: the second delivery is a replay.
    assert_eq!(rig.stats.rejected_for("replay"), 1);
    let results = rig.results();
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(|r| r["outcome"] == "rejected"));
    assert_eq!(results[0]["error"], "not_allowed");
    assert_eq!(results[0]["kind"], "run");

    // With `run` allowed, the same kind goes through.
    let mut rig = Rig::new(Some(&w.state()), &["run"]).await;
    let p = rig.payload(Command::Run {
        script: "true".into(),
        timeout_secs: 5,
    });
    rig.send(&signed(&p, w.key())).await;
    assert_eq!(rig.executor.ids(), vec![p.id]);
}

#[tokio::test]
async fn a_replay_after_a_restart_is_refused() {
    let w = World::new();
    let mut rig = Rig::new(Some(&w.state()), &["ping"]).await;
    let env = signed(&rig.payload(Command::Ping {}), w.key());
    rig.send(&env).await;
    assert_eq!(rig.executor.ids().len(), 1);
    // A new pipeline on the same files (the agent restarted).
    let Rig {
        _tmp,
        paths,
        issuer,
        subject,
        reporter,
        commands,
        ..
    } = rig;
    drop(commands);
    drop(reporter);
    let status = StatusFile::start(paths.status_file(), issuer.device.as_str(), None);
    let reporter = Reporter::open(
        &paths.spool_dir(),
        issuer.account.clone(),
        issuer.device.clone(),
        status.clone(),
    )
    .await
    .unwrap();
    let stats = Arc::new(CommandStats::default());
    let executor = Recorder::default();
    let mut commands = Commands::open(
        Setup {
            paths: paths.clone(),
            expected: Expected {
                tenant: issuer.tenant.clone(),
                device: issuer.device.clone(),
                subject,
            },
            allowed: vec!["ping".into()],
            reporter,
            status,
            stats: stats.clone(),
            restart: Arc::new(Notify::new()),
        },
        FakeTrust::default(),
        executor.clone(),
    )
    .await;
    assert_eq!(commands.trust().unwrap().keyset_version(), 1);
    commands.on_command(&env.to_vec(), NOW + 1).await;
    commands.settle().await;
    assert!(executor.ids().is_empty());
    assert_eq!(stats.rejected_for("replay"), 1);
}

#[tokio::test]
async fn a_full_replay_cache_refuses() {
    let w = World::new();
    let mut rig = Rig::new(Some(&w.state()), &["ping"]).await;
    rig.commands.replay =
        Ok(ReplayCache::open_with_limit(&rig.paths.replay_file(), NOW, 1).unwrap());
    let first = rig.payload(Command::Ping {});
    rig.send(&signed(&first, w.key())).await;
    rig.send(&signed(&rig.payload(Command::Ping {}), w.key()))
        .await;
    assert_eq!(rig.executor.ids(), vec![first.id]);
    assert_eq!(rig.stats.rejected_for("replay_cache_full"), 1);
}

#[tokio::test]
async fn an_unknown_key_fetches_trust_once_and_verifies_again() {
    let mut w = World::new();
    let mut rig = Rig::new(Some(&w.state()), &["ping"]).await;
    // The control plane rotated its command key; this device has not heard yet.
    w.add_key();
    rig.source.serve(&w.bundle());
    let p = rig.payload(Command::Ping {});
    rig.send(&signed(&p, w.key())).await;
    assert_eq!(rig.source.fetches(), 1);
    assert_eq!(rig.executor.ids(), vec![p.id]);
    assert_eq!(rig.commands.trust().unwrap().keyset_version(), 2);
    assert_eq!(rig.stats.keyset_version(), Some(2));
    // Saved, reported, shown.
    let saved = crate::trust::load(&rig.paths).unwrap().unwrap();
    assert_eq!(saved.keyset_version(), 2);
    let updated = rig.events("trust_updated");
    assert_eq!(updated.len(), 1);
    assert_eq!(updated[0]["keyset_version"], 2);
    let status = crate::status::read(&rig.paths.status_file()).unwrap();
    assert_eq!(
        (status.keyset_version, status.root_version),
        (Some(2), Some(1))
    );

    // Forged commands do not make the agent fetch more than once per interval.
    rig.commands.refetch_min = Duration::from_secs(3600);
    rig.commands.last_fetch = None;
    for _ in 0..3 {
        rig.send(&signed(&rig.payload(Command::Ping {}), &generate_key()))
            .await;
    }
    assert_eq!(rig.source.fetches(), 2);
    assert_eq!(rig.stats.rejected_for("unknown_key"), 3);
    assert_eq!(rig.executor.ids().len(), 1);
}

#[tokio::test]
async fn an_expired_keyset_waits_for_a_fresh_one() {
    let mut w = World::new();
    let mut rig = Rig::new(Some(&w.state()), &["ping"]).await;
    let later = w.expires_at + 10;
    let mut p = rig.payload(Command::Ping {});
    (p.iat, p.nbf, p.exp) = (later, later, later + 60);
    // The control plane has nothing newer: refused.
    rig.source.serve(&w.bundle());
    rig.commands
        .on_command(&signed(&p, w.key()).to_vec(), later)
        .await;
    rig.commands.settle().await;
    assert_eq!(rig.stats.rejected_for("keyset_expired"), 1);
    assert!(rig.executor.ids().is_empty());
    // A fresh keyset arrives: the same command now runs.
    w.keyset_version += 1;
    w.expires_at = later + 86_400;
    rig.source.serve(&w.bundle());
    rig.commands.last_fetch = None;
    rig.commands
        .on_command(&signed(&p, w.key()).to_vec(), later)
        .await;
    rig.commands.settle().await;
    assert_eq!(rig.executor.ids(), vec![p.id]);
}

#[tokio::test]
async fn without_pinned_trust_the_first_fetched_bundle_is_pinned() {
    let w = World::new();
    let mut rig = Rig::new(None, &["ping"]).await;
    assert!(rig.commands.trust().is_none());
    // Nothing to fetch yet: refused, nothing runs.
    let p = rig.payload(Command::Ping {});
    rig.send(&signed(&p, w.key())).await;
    assert_eq!(rig.stats.rejected_for("unknown_key"), 1);
    assert!(rig.executor.ids().is_empty());
    // The first connect fetches and pins.
    rig.source.serve(&w.bundle());
    assert!(rig.commands.refresh_trust(false, NOW).await);
    assert_eq!(rig.commands.trust().unwrap().keyset_version(), 1);
    assert!(rig.paths.trust_file().exists());
    let p = rig.payload(Command::Ping {});
    rig.send(&signed(&p, w.key())).await;
    assert_eq!(rig.executor.ids(), vec![p.id]);
}

#[tokio::test]
async fn a_damaged_trust_file_is_reported_and_replaced() {
    let w = World::new();
    let mut rig = Rig::new(None, &["ping"]).await;
    // The agent restarts with a damaged trust.json.
    std::fs::write(rig.paths.trust_file(), b"{\"roots\":[]}").unwrap();
    rig.commands = Commands::open(
        Setup {
            paths: rig.paths.clone(),
            expected: rig.commands.expected.clone(),
            allowed: vec!["ping".into()],
            reporter: rig.reporter.clone(),
            status: StatusFile::start(rig.paths.status_file(), "d", None),
            stats: rig.stats.clone(),
            restart: Arc::new(Notify::new()),
        },
        rig.source.clone(),
        rig.executor.clone(),
    )
    .await;
    assert!(rig.commands.trust().is_none());
    let rejected = rig.events("trust_rejected");
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["reason"], "malformed");
    // The next fetch pins a good one and replaces the file.
    rig.source.serve(&w.bundle());
    assert!(rig.commands.refresh_trust(false, NOW).await);
    assert_eq!(
        crate::trust::load(&rig.paths)
            .unwrap()
            .unwrap()
            .keyset_version(),
        1
    );
}

#[tokio::test]
async fn trust_pushes_only_move_forward() {
    let mut w = World::new();
    let v1 = w.bundle();
    w.add_key();
    let mut rig = Rig::new(Some(&w.state()), &["ping"]).await;
    assert_eq!(rig.commands.trust().unwrap().keyset_version(), 2);

    // Rollback to version 1: refused, kept.
    rig.commands.on_trust_push(&v1.to_vec(), NOW).await;
    assert_eq!(rig.commands.trust().unwrap().keyset_version(), 2);
    // A root rotation signed only by the new key: refused.
    let mut forged = World::new();
    forged.root_version = 1;
    forged.rotate_root();
    let mut bundle = forged.bundle();
    bundle.roots = vec![w.roots[0].clone(), forged.roots[1].clone()];
    rig.commands.on_trust_push(&bundle.to_vec(), NOW).await;
    // An expired keyset: refused.
    let mut stale = World {
        keys: w.keys.clone(),
        roots: w.roots.clone(),
        root: w.root.clone(),
        ..World::new()
    };
    stale.keyset_version = 3;
    stale.expires_at = NOW - 1;
    rig.commands
        .on_trust_push(&stale.bundle().to_vec(), NOW)
        .await;
    // Garbage: refused.
    rig.commands.on_trust_push(b"\xff\xfe", NOW).await;
    let codes: Vec<String> = rig
        .events("trust_rejected")
        .iter()
        .map(|e| e["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        codes,
        [
            "keyset_rollback",
            "root_signatures",
            "keyset_expired",
            "malformed"
        ]
    );
    assert_eq!(rig.commands.trust().unwrap().keyset_version(), 2);
    assert_eq!(rig.commands.trust().unwrap().root_version(), 1);

    // A genuine root rotation with a new keyset: applied and saved.
    w.rotate_root();
    w.add_key();
    rig.commands.on_trust_push(&w.bundle().to_vec(), NOW).await;
    assert_eq!(rig.stats.trust_versions(), Some((2, 3)));
    let saved = crate::trust::load(&rig.paths).unwrap().unwrap();
    assert_eq!((saved.root_version(), saved.keyset_version()), (2, 3));
    // Commands signed by the new key run.
    let p = rig.payload(Command::Ping {});
    rig.send(&signed(&p, w.key())).await;
    assert_eq!(rig.executor.ids(), vec![p.id]);
}

#[tokio::test]
async fn the_agent_executor_acts_through_its_hooks() {
    let w = World::new();
    let rig = Rig::new(Some(&w.state()), &[]).await;
    let (collect_tx, mut collect_rx) = mpsc::channel(4);
    let intervals = Arc::new(watch::Sender::new(Intervals {
        heartbeat: Duration::from_secs(30),
        metrics: Duration::from_secs(60),
    }));
    let renew = Arc::new(watch::Sender::new(0u64));
    let renew_rx = renew.subscribe();
    let ex = AgentExecutor::new(Hooks {
        collect: collect_tx,
        intervals: intervals.clone(),
        renew,
    });
    let verified = |c: Command| {
        let env = signed(&rig.payload(c), w.key());
        verify(&env.to_vec(), &w.state(), &rig.commands.expected, NOW).unwrap()
    };

    let r = ex.execute(&verified(Command::Ping {})).await;
    assert_eq!(r.outcome, Outcome::Ok);
    assert_eq!(r.output["agent_version"], env!("CARGO_PKG_VERSION"));

    let r = ex
        .execute(&verified(Command::SetIntervals {
            heartbeat_secs: Some(10),
            metrics_secs: None,
        }))
        .await;
    assert_eq!(r.output["heartbeat_secs"], 10);
    assert_eq!(r.output["metrics_secs"], 60);
    assert_eq!(intervals.borrow().heartbeat, Duration::from_secs(10));

    let r = ex.execute(&verified(Command::Renew {})).await;
    assert_eq!(r.output["renewal"], "started");
    assert!(renew_rx.has_changed().unwrap());

    let r = ex.execute(&verified(Command::Restart {})).await;
    assert_eq!((r.outcome, r.then), (Outcome::Ok, Some(After::Restart)));

    let collect = verified(Command::Collect {
        what: CollectWhat::Inventory,
    });
    let answer = tokio::spawn(async move {
        let req = collect_rx.recv().await.unwrap();
        assert_eq!(req.what, CollectWhat::Inventory);
        req.done.send(Ok(42)).unwrap();
    });
    let r = ex.execute(&collect).await;
    answer.await.unwrap();
    assert_eq!(r.output["seq"], 42);

    let r = ex.execute(&verified(Command::Processes { limit: 3 })).await;
    assert_eq!(r.outcome, Outcome::Ok);
    let list = r.output["processes"].as_array().unwrap();
    assert!(!list.is_empty() && list.len() <= 3, "{list:?}");
}

#[cfg(unix)]
#[tokio::test]
async fn scripts_report_exit_codes_and_cap_their_output() {
    let r = run_script(
        "echo out; echo err >&2; exit 3",
        Duration::from_secs(30),
        1024,
    )
    .await;
    assert_eq!(r.outcome, Outcome::Failed);
    assert_eq!(r.output["exit_code"], 3);
    assert_eq!(r.output["stdout"], "out\n");
    assert_eq!(r.output["stderr"], "err\n");
    assert_eq!(r.output["truncated"], false);
    assert_eq!(r.error.as_deref(), Some("exit code 3"));

    // 200 000 bytes on stdout, capped; the script still finishes.
    let r = run_script(
        "i=0; while [ $i -lt 2000 ]; do printf '%0100d' 0; i=$((i+1)); done",
        Duration::from_secs(60),
        OUTPUT_CAP,
    )
    .await;
    assert_eq!(r.outcome, Outcome::Ok, "{:?}", r.error);
    assert_eq!(r.output["exit_code"], 0);
    assert_eq!(r.output["truncated"], true);
    assert_eq!(r.output["stdout"].as_str().unwrap().len(), OUTPUT_CAP);
}

#[cfg(unix)]
#[tokio::test]
async fn scripts_are_killed_at_their_timeout() {
    let r = run_script("echo started; exec sleep 600", Duration::from_secs(1), 1024).await;
    assert_eq!(r.outcome, Outcome::Failed);
    assert_eq!(r.output["timed_out"], true);
    assert_eq!(r.output["exit_code"], Value::Null);
    assert_eq!(r.output["stdout"], "started\n");
    assert_eq!(r.error.as_deref(), Some("timed out after 1 s"));
}

#[test]
fn payload_type_is_the_shared_one() {
    // The pipeline relies on the verifier's exact type check.
    assert_eq!(PAYLOAD_TYPE, "application/vnd.wegweiser.command.v1+json");
}
