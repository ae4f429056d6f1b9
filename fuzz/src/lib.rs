//! The fixed world the fuzz targets run against: trust material from deterministic keys (so
//! seeds and crashes reproduce), built once with the public API of `wegweiser-shared`.
//!
//! - Root version 1: keys `[1; 32]`, `[2; 32]`, `[3; 32]`, threshold 2.
//! - Keyset version 1 (expires a day after [`NOW`]): an active key `[10; 32]`, a retired key
//!   `[11; 32]` and a revoked key `[12; 32]`.
//! - For trust updates: keyset version 2, and root version 2 (keys `[4; 32]`, `[5; 32]`,
//!   threshold 1) with its keyset version 3.
//!
//! [`check_verified`] is the oracle of the command targets: what every command the verifier
//! accepts must satisfy, restated from the module docs of `wegweiser_shared::command`.

use ed25519_dalek::SigningKey;
use std::sync::OnceLock;
use wegweiser_shared::{
    command::{self, Command, CommandPayload, Expected, VerifiedCommand},
    dsse::{self, Envelope},
    trust::{
        CommandKeyEntry, KeyStatus, KeysetDoc, PublicKeyEntry, RootDoc, TrustBundle, TrustState,
    },
};

/// The device's clock in every target.
pub const NOW: i64 = 1_800_000_000;

/// The trust material and the device every target verifies against.
#[derive(Debug)]
pub struct Fixture {
    /// The device's trust state: root 1, keyset 1.
    pub state: TrustState,
    /// The bundle it was pinned from.
    pub bundle: TrustBundle,
    /// What the device expects of commands.
    pub expected: Expected,
    /// The active command key.
    pub active: SigningKey,
    /// Keys that must never yield an accepted command: retired, revoked, unknown.
    pub refused: [SigningKey; 3],
    /// Every keyset payload the fixture signed: an update may only ever install one of these.
    pub signed_keysets: Vec<Vec<u8>>,
    /// Bundles that update the state: keyset 2; root 2 with keyset 3.
    pub updates: Vec<TrustBundle>,
    /// A command signed by the active key that verifies.
    pub payload: CommandPayload,
    /// Its envelope, as it travels.
    pub envelope: Vec<u8>,
}

/// A key from a fixed seed.
pub fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

fn root_doc(version: u64, threshold: u32, keys: &[&SigningKey]) -> RootDoc {
    RootDoc {
        v: 1,
        version,
        threshold,
        keys: keys
            .iter()
            .map(|k| PublicKeyEntry::of(&k.verifying_key()))
            .collect(),
        issued_at: NOW - 100,
    }
}

fn keyset_doc(version: u64, root_version: u64) -> KeysetDoc {
    let entry = |n: u8, status| CommandKeyEntry {
        key: PublicKeyEntry::of(&key(n).verifying_key()),
        status,
    };
    KeysetDoc {
        v: 1,
        version,
        root_version,
        issued_at: NOW - 10,
        expires_at: NOW + 86_400,
        keys: vec![
            entry(10, KeyStatus::Active),
            entry(11, KeyStatus::Retired),
            entry(12, KeyStatus::Revoked),
        ],
    }
}

/// A well-formed command for the fixture's device.
pub fn payload(command: Command) -> CommandPayload {
    CommandPayload {
        v: command::VERSION,
        id: "0123456789abcdef0123456789abcdef".into(),
        iss: "wegweiser".into(),
        tenant: "acme".parse().expect("tenant id"),
        device: "dev-1".parse().expect("device id"),
        subject: "wg.AXYZ.down.dev-1.cmd".into(),
        iat: NOW,
        nbf: NOW,
        exp: NOW + command::DEFAULT_LIFETIME_SECS,
        keyset: 1,
        command,
        by: "alice".into(),
    }
}

fn build() -> Fixture {
    let (r1, r2, r3, r4, r5) = (key(1), key(2), key(3), key(4), key(5));
    let root1 = root_doc(1, 2, &[&r1, &r2, &r3]).sign(&[&r1, &r3]);
    let root2 = root_doc(2, 1, &[&r4, &r5]).sign(&[&r1, &r2, &r5]);
    let ks1 = keyset_doc(1, 1);
    let ks2 = keyset_doc(2, 1);
    let ks3 = keyset_doc(3, 2);
    let bundle = TrustBundle {
        roots: vec![root1.clone()],
        keyset: ks1.sign(&[&r2, &r3]),
    };
    let updates = vec![
        TrustBundle {
            roots: vec![root1.clone()],
            keyset: ks2.sign(&[&r1, &r2]),
        },
        TrustBundle {
            roots: vec![root1, root2],
            keyset: ks3.sign(&[&r5]),
        },
    ];
    let signed_keysets = [ks1, ks2, ks3]
        .iter()
        .map(|d| serde_json::to_vec(d).expect("keyset JSON"))
        .collect();
    let state = TrustState::pin(&bundle, NOW).expect("the fixture's bundle pins");
    let expected = Expected {
        tenant: "acme".parse().expect("tenant id"),
        device: "dev-1".parse().expect("device id"),
        subject: "wg.AXYZ.down.dev-1.cmd".into(),
    };
    let active = key(10);
    let payload = payload(Command::Ping {});
    let envelope = payload.sign(&active).to_vec();
    let f = Fixture {
        state,
        bundle,
        expected,
        active,
        refused: [key(11), key(12), key(13)],
        signed_keysets,
        updates,
        payload,
        envelope,
    };
    // The fixture must reach the code behind the signature check, or the targets test nothing.
    let v = command::verify(&f.envelope, &f.state, &f.expected, NOW)
        .expect("the fixture's command verifies");
    assert_eq!(v.payload(), &f.payload);
    // The committed seeds come from this fixture; when the payload format changes they must be
    // written again, or `command_verify` and `trust_update` start far from the signed paths.
    assert!(
        include_bytes!("../seeds/command_verify/ping.json") == f.envelope.as_slice(),
        "fuzz/seeds are stale: cargo run --manifest-path fuzz/Cargo.toml --example seeds -- fuzz/seeds"
    );
    for u in &f.updates {
        let mut s = f.state.clone();
        assert!(
            s.update(u, NOW)
                .expect("the fixture's update applies")
                .changed()
        );
    }
    f
}

/// The fixture, built on first use.
pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(build)
}

/// Panics unless an accepted command keeps every promise of `command::verify`: signed by the
/// active key, for this tenant, device and subject, schema version 1, a command id, inside its
/// time window with a bounded lifetime, and arguments in bounds.
pub fn check_verified(v: &VerifiedCommand, f: &Fixture) {
    let p = v.payload();
    assert_eq!(v.keyid(), dsse::key_id(&f.active.verifying_key()));
    assert_eq!(p.v, command::VERSION);
    assert!(command::valid_id(v.id()), "accepted id {:?}", v.id());
    assert_eq!(p.tenant, f.expected.tenant);
    assert_eq!(p.device, f.expected.device);
    assert_eq!(p.subject, f.expected.subject);
    let lifetime = p.exp - p.nbf;
    assert!(lifetime > 0 && lifetime <= command::MAX_LIFETIME_SECS);
    assert!(p.iat <= p.nbf);
    assert!(p.nbf <= NOW + command::MAX_SKEW_SECS);
    assert!(p.exp > NOW - command::MAX_SKEW_SECS);
    assert!(p.command.problems().is_empty());
}

/// Panics if a rejection carries a command id that is not one.
pub fn check_rejected(r: &command::Rejection) {
    if let Some(id) = &r.id {
        assert!(command::valid_id(id), "rejection carries id {id:?}");
    }
}

/// The seed corpus: (target, file name, contents).
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let f = fixture();
    let mut out = Vec::new();
    let kinds = [
        ("ping", Command::Ping {}),
        (
            "collect",
            Command::Collect {
                what: command::CollectWhat::Metrics,
            },
        ),
        (
            "set_intervals",
            Command::SetIntervals {
                heartbeat_secs: Some(30),
                metrics_secs: Some(300),
            },
        ),
        ("renew", Command::Renew {}),
        ("restart", Command::Restart {}),
        (
            "run",
            Command::Run {
                script: "echo hi".into(),
                timeout_secs: 30,
            },
        ),
        ("processes", Command::Processes { limit: 20 }),
    ];
    for (name, c) in kinds {
        let p = payload(c);
        let body = serde_json::to_vec(&p).expect("payload JSON");
        out.push((
            "command_verify",
            format!("{name}.json"),
            p.sign(&f.active).to_vec(),
        ));
        out.push(("command_payload", format!("{name}.json"), body));
    }
    for (n, status) in [(11, "retired"), (12, "revoked"), (13, "unknown")] {
        out.push((
            "command_verify",
            format!("{status}-key.json"),
            f.payload.sign(&key(n)).to_vec(),
        ));
    }
    let two = Envelope::sign(
        command::PAYLOAD_TYPE,
        &serde_json::to_vec(&f.payload).expect("payload JSON"),
        &[&key(13), &f.active],
    );
    out.push(("command_verify", "two-signatures.json".into(), two.to_vec()));
    // command_mutate: an edit script; empty is the untouched envelope.
    out.push(("command_mutate", "untouched".into(), Vec::new()));
    out.push(("command_mutate", "one-edit".into(), vec![0, 0, 40, b' ']));
    out.push(("trust_update", "same.json".into(), f.bundle.to_vec()));
    out.push((
        "trust_update",
        "keyset-2.json".into(),
        f.updates[0].to_vec(),
    ));
    out.push(("trust_update", "root-2.json".into(), f.updates[1].to_vec()));
    out
}
