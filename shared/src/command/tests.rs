use super::*;
use crate::{
    dsse::generate_key,
    trust::{
        KeyStatus,
        tests::{NOW, World},
    },
};
use ed25519_dalek::SigningKey;
use proptest::prelude::*;

fn expected() -> Expected {
    Expected {
        tenant: "acme".parse().unwrap(),
        device: "dev-1".parse().unwrap(),
        subject: "wg.AXYZ.down.dev-1.cmd".into(),
    }
}

fn payload(command: Command) -> CommandPayload {
    let e = expected();
    CommandPayload {
        v: VERSION,
        id: new_id(),
        iss: "wegweiser".into(),
        tenant: e.tenant,
        device: e.device,
        subject: e.subject,
        iat: NOW,
        nbf: NOW,
        exp: NOW + DEFAULT_LIFETIME_SECS,
        keyset: 1,
        command,
        by: "alice".into(),
    }
}

fn key(w: &World) -> &SigningKey {
    &w.command_keys[0].0
}

fn check(w: &World, env: &Envelope) -> Result<VerifiedCommand, Rejection> {
    verify(&env.to_vec(), &w.state(), &expected(), NOW)
}

fn reason(w: &World, env: &Envelope) -> Reject {
    check(w, env).unwrap_err().reason
}

#[test]
fn a_good_command_verifies() {
    let w = World::new(1, 1);
    let p = payload(Command::Ping {});
    let v = check(&w, &p.sign(key(&w))).unwrap();
    assert_eq!(v.id(), p.id);
    assert_eq!(v.command(), &Command::Ping {});
    assert_eq!(v.keyid(), crate::dsse::key_id(&key(&w).verifying_key()));
    assert_eq!(v.by(), "alice");
    // The wire form: kind and args beside the other fields.
    let json: serde_json::Value = serde_json::to_value(&p).unwrap();
    assert_eq!(json["kind"], "ping");
    assert_eq!(json["args"], serde_json::json!({}));
}

#[test]
fn every_kind_round_trips() {
    let w = World::new(1, 1);
    for c in [
        Command::Ping {},
        Command::Collect {
            what: CollectWhat::Inventory,
        },
        Command::SetIntervals {
            heartbeat_secs: Some(10),
            metrics_secs: None,
        },
        Command::Renew {},
        Command::Restart {},
        Command::Run {
            script: "echo hi".into(),
            timeout_secs: 5,
        },
        Command::Processes { limit: 5 },
    ] {
        let v = check(&w, &payload(c.clone()).sign(key(&w))).unwrap();
        assert_eq!(v.command(), &c);
        assert!(Command::KINDS.contains(&c.kind()));
    }
}

#[test]
fn tampered_payload_and_type() {
    let w = World::new(1, 1);
    let mut env = payload(Command::Ping {}).sign(key(&w));
    let mut other = payload(Command::Restart {});
    other.id = "0".repeat(32);
    env.payload = other.sign(key(&w)).payload;
    assert_eq!(reason(&w, &env), Reject::BadSignature);
    let mut env = payload(Command::Ping {}).sign(key(&w));
    env.payload_type = "application/vnd.wegweiser.command.v2+json".into();
    assert_eq!(reason(&w, &env), Reject::WrongType);
}

#[test]
fn keys_outside_the_keyset() {
    let w = World::new(1, 1);
    let p = payload(Command::Ping {});
    // An unknown key.
    assert_eq!(reason(&w, &p.sign(&generate_key())), Reject::UnknownKey);
    // A root key is not a command key, even when it claims an active key's id.
    let mut env = p.sign(&w.root().1[0]);
    env.signatures[0].keyid = crate::dsse::key_id(&key(&w).verifying_key());
    assert_eq!(reason(&w, &env), Reject::BadSignature);
}

#[test]
fn retired_and_revoked_keys() {
    for (status, want) in [
        (KeyStatus::Retired, Reject::RetiredKey),
        (KeyStatus::Revoked, Reject::RevokedKey),
    ] {
        let mut w = World::new(1, 1);
        w.command_keys[0].1 = status;
        w.command_keys.push((generate_key(), KeyStatus::Active));
        let old = w.command_keys[0].0.clone();
        assert_eq!(reason(&w, &payload(Command::Ping {}).sign(&old)), want);
        // The active one still works.
        let new = w.command_keys[1].0.clone();
        assert!(check(&w, &payload(Command::Ping {}).sign(&new)).is_ok());
    }
}

#[test]
fn an_expired_keyset_freezes_commands() {
    let w = World::new(1, 1);
    let env = payload(Command::Ping {}).sign(key(&w));
    let late = NOW + 86_400 + 1;
    let e = verify(&env.to_vec(), &w.state(), &expected(), late).unwrap_err();
    assert_eq!(e.reason, Reject::KeysetExpired);
}

#[test]
fn bindings() {
    let w = World::new(1, 1);
    let mut p = payload(Command::Ping {});
    p.tenant = "other".parse().unwrap();
    let e = check(&w, &p.sign(key(&w))).unwrap_err();
    assert_eq!(e.reason, Reject::WrongTenant);
    assert_eq!(e.id.as_deref(), Some(p.id.as_str()), "verified id reported");
    let mut p = payload(Command::Ping {});
    p.device = "dev-2".parse().unwrap();
    assert_eq!(reason(&w, &p.sign(key(&w))), Reject::WrongDevice);
    let mut p = payload(Command::Ping {});
    p.subject = "wg.AXYZ.down.dev-2.cmd".into();
    assert_eq!(reason(&w, &p.sign(key(&w))), Reject::WrongSubject);
}

#[test]
fn time_window() {
    let w = World::new(1, 1);
    let mut p = payload(Command::Ping {});
    p.nbf = NOW + MAX_SKEW_SECS + 1;
    p.iat = p.nbf;
    p.exp = p.nbf + 60;
    assert_eq!(reason(&w, &p.sign(key(&w))), Reject::NotYetValid);
    let mut p = payload(Command::Ping {});
    p.iat = NOW - 400;
    p.nbf = NOW - 400;
    p.exp = NOW - MAX_SKEW_SECS;
    assert_eq!(reason(&w, &p.sign(key(&w))), Reject::Expired);
    // Within the skew both ways: accepted.
    let mut p = payload(Command::Ping {});
    p.iat = NOW + 30;
    p.nbf = NOW + 30;
    p.exp = NOW + 90;
    assert!(check(&w, &p.sign(key(&w))).is_ok());
    let mut p = payload(Command::Ping {});
    p.exp = NOW + MAX_LIFETIME_SECS + 1;
    assert_eq!(reason(&w, &p.sign(key(&w))), Reject::LifetimeTooLong);
    let mut p = payload(Command::Ping {});
    p.exp = p.nbf;
    assert_eq!(reason(&w, &p.sign(key(&w))), Reject::LifetimeTooLong);
}

#[test]
fn malformed_and_oversized() {
    let w = World::new(1, 1);
    let s = w.state();
    let e = expected();
    assert_eq!(
        verify(b"{not json", &s, &e, NOW).unwrap_err().reason,
        Reject::Malformed
    );
    let mut env = payload(Command::Ping {}).sign(key(&w));
    env.payload = "***".into();
    assert_eq!(reason(&w, &env), Reject::Malformed);
    let mut env = payload(Command::Ping {}).sign(key(&w));
    env.signatures[0].sig = "AAAA".into();
    assert_eq!(reason(&w, &env), Reject::Malformed);
    let big = vec![b' '; MAX_ENVELOPE_BYTES + 1];
    assert_eq!(
        verify(&big, &s, &e, NOW).unwrap_err().reason,
        Reject::Oversized
    );
}

#[test]
fn verified_but_unusable_payloads() {
    let w = World::new(1, 1);
    let k = key(&w);
    let sign =
        |v: serde_json::Value| Envelope::sign(PAYLOAD_TYPE, &serde_json::to_vec(&v).unwrap(), &[k]);
    let good = serde_json::to_value(payload(Command::Ping {})).unwrap();
    let mut v = good.clone();
    v["v"] = 2.into();
    let e = check(&w, &sign(v.clone())).unwrap_err();
    assert_eq!(e.reason, Reject::UnsupportedVersion);
    assert_eq!(
        e.id.as_deref(),
        good["id"].as_str(),
        "a valid id is reported"
    );
    // An id that is not well formed is never echoed back, whatever else is wrong.
    v["id"] = "0123456789abcdef0123456789abcdEf".into();
    let e = check(&w, &sign(v)).unwrap_err();
    assert_eq!(e.reason, Reject::UnsupportedVersion);
    assert_eq!(e.id, None);
    let mut v = good.clone();
    v["kind"] = "format_disk".into();
    assert_eq!(reason(&w, &sign(v)), Reject::BadArguments);
    let mut v = good.clone();
    v["id"] = "short".into();
    assert_eq!(reason(&w, &sign(v)), Reject::BadPayload);
    let mut v = serde_json::to_value(payload(Command::Run {
        script: "x".into(),
        timeout_secs: 1,
    }))
    .unwrap();
    v["args"]["timeout_secs"] = (MAX_RUN_TIMEOUT_SECS + 1).into();
    assert_eq!(reason(&w, &sign(v)), Reject::BadArguments);
    assert_eq!(
        reason(&w, &Envelope::sign(PAYLOAD_TYPE, b"[1,2]", &[k])),
        Reject::BadPayload
    );
}

#[test]
fn ids() {
    assert!(valid_id(&new_id()));
    assert_ne!(new_id(), new_id());
    assert!(!valid_id(&"A".repeat(32)));
    assert!(!valid_id("abc"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn sign_then_verify(by in "[a-z]{1,20}", secs in 5u64..3600) {
        let w = World::new(1, 1);
        let mut p = payload(Command::SetIntervals { heartbeat_secs: Some(secs), metrics_secs: None });
        p.by = by;
        let v = check(&w, &p.sign(key(&w))).unwrap();
        prop_assert_eq!(v.payload(), &p);
    }

    #[test]
    fn any_single_byte_change_is_rejected(pos in any::<prop::sample::Index>(), delta in 1u8..=255) {
        let w = World::new(1, 1);
        let mut bytes = payload(Command::Ping {}).sign(key(&w)).to_vec();
        let i = pos.index(bytes.len());
        bytes[i] = bytes[i].wrapping_add(delta);
        // Either the change breaks the envelope or the signature; it never verifies (a change
        // in the key id hint alone, or in JSON whitespace, is not a change of what is signed,
        // but the encoder writes no whitespace and the hint is checked below).
        let r = verify(&bytes, &w.state(), &expected(), NOW);
        if let Ok(v) = &r {
            // Only the key id hint may change without breaking anything.
            let env: Envelope = serde_json::from_slice(&bytes).unwrap();
            prop_assert_ne!(&env.signatures[0].keyid, v.keyid());
        }
    }

    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let w = World::new(1, 1);
        prop_assert!(verify(&bytes, &w.state(), &expected(), NOW).is_err());
    }
}
