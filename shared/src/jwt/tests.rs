use super::*;
use nkeys::KeyPair;

struct Chain {
    op: KeyPair,
    op_sk: KeyPair,
    acc: KeyPair,
    acc_sk: KeyPair,
    operator: Claims<OperatorNats>,
    account: Claims<AccountNats>,
}

fn chain() -> Chain {
    let op = KeyPair::new_operator();
    let op_sk = KeyPair::new_operator();
    let acc = KeyPair::new_account();
    let acc_sk = KeyPair::new_account();
    let sys = KeyPair::new_account();
    let operator = Claims::new(
        op.public_key(),
        "op",
        OperatorNats::new(vec![op_sk.public_key()], sys.public_key()),
    );
    let token = operator.clone().encode(&op).unwrap();
    let operator = verify_operator(&token, &[&op.public_key()], time::now()).unwrap();
    let mut an = AccountNats::new(OperatorLimits::unlimited());
    an.signing_keys.push(SigningKey::Scoped(Box::new(UserScope {
        kind: ScopeKind::UserScope,
        key: acc_sk.public_key(),
        role: "device".into(),
        template: UserPermissionLimits::default(),
        description: String::new(),
    })));
    let token = Claims::new(acc.public_key(), "acme", an)
        .encode(&op_sk)
        .unwrap();
    let account = verify_account(&token, &operator, time::now()).unwrap();
    Chain {
        op,
        op_sk,
        acc,
        acc_sk,
        operator,
        account,
    }
}

use crate::time;

fn user_token(c: &Chain, user: &KeyPair, ttl: i64) -> String {
    let mut n = UserNats::scoped();
    n.issuer_account = Some(c.acc.public_key());
    Claims::new(user.public_key(), "dev-1", n)
        .expires_in(ttl)
        .encode(&c.acc_sk)
        .unwrap()
}

#[test]
fn round_trip_keeps_every_field() {
    let c = chain();
    let u = KeyPair::new_user();
    let token = user_token(&c, &u, 60);
    let back = verify_user(&token, &c.account, true, time::now()).unwrap();
    assert_eq!(back.sub, u.public_key());
    assert_eq!(back.iss, c.acc_sk.public_key());
    assert_eq!(back.name, "dev-1");
    assert_eq!(back.exp, Some(back.iat + 60));
    assert!(back.nats.limits.is_empty());
    assert_eq!(back.jti.len(), 32);
    // Header is exactly the NATS one.
    let h = token.split('.').next().unwrap();
    assert_eq!(B64.decode(h).unwrap(), HEADER_JSON.as_bytes());
}

#[test]
fn limits_are_written_literally_and_unlimited_is_minus_one() {
    let json = serde_json::to_value(OperatorLimits::unlimited()).unwrap();
    assert_eq!(json["conn"], -1);
    assert_eq!(json["subs"], -1);
    assert_eq!(json["disk_storage"], -1);
    assert_eq!(json["wildcards"], true);
    let mut zero_js = OperatorLimits::unlimited();
    zero_js.jetstream = JetStreamLimits::default();
    let json = serde_json::to_value(zero_js).unwrap();
    assert!(
        json.get("disk_storage").is_none(),
        "0 is omitted, meaning JetStream off"
    );
    // A scoped user carries no permissions and no limits at all.
    let json = serde_json::to_value(UserNats::scoped()).unwrap();
    assert_eq!(json, serde_json::json!({"type": "user", "version": 2}));
}

#[test]
fn tampered_tokens_are_refused() {
    let c = chain();
    let u = KeyPair::new_user();
    let token = user_token(&c, &u, 60);
    let parts: Vec<&str> = token.split('.').collect();
    // Swap in claims naming another subject, keep the old signature.
    let mut claims: serde_json::Value =
        serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    claims["sub"] = KeyPair::new_user().public_key().into();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        B64.encode(serde_json::to_vec(&claims).unwrap()),
        parts[2]
    );
    assert_eq!(
        decode::<UserNats>(&forged, time::now()).unwrap_err(),
        JwtError::BadSignature
    );
    // Flip one signature byte.
    let mut sig = B64.decode(parts[2]).unwrap();
    sig[0] ^= 1;
    let flipped = format!("{}.{}.{}", parts[0], parts[1], B64.encode(sig));
    assert_eq!(
        decode::<UserNats>(&flipped, time::now()).unwrap_err(),
        JwtError::BadSignature
    );
}

#[test]
fn malformed_and_oversized_input_is_refused_with_a_reason() {
    for bad in ["", "a", "a.b", "a.b.c.d", "!!.??.**"] {
        let e = decode::<UserNats>(bad, 0).unwrap_err();
        assert!(matches!(e, JwtError::Malformed(_)), "{bad:?}: {e}");
    }
    let huge = "a".repeat(MAX_TOKEN_LEN + 1);
    assert!(matches!(
        decode::<UserNats>(&huge, 0).unwrap_err(),
        JwtError::TooLarge { .. }
    ));
    let hs256 = format!(
        "{}.{}.{}",
        B64.encode(r#"{"typ":"JWT","alg":"HS256"}"#),
        B64.encode("{}"),
        B64.encode("x")
    );
    assert_eq!(
        decode::<UserNats>(&hs256, 0).unwrap_err(),
        JwtError::BadHeader
    );
}

#[test]
fn expired_and_not_yet_valid_are_refused() {
    let c = chain();
    let u = KeyPair::new_user();
    let mut n = UserNats::scoped();
    n.issuer_account = Some(c.acc.public_key());
    let now = time::now();
    let expired = Claims::new(u.public_key(), "d", n.clone())
        .issued_at(now - 100)
        .expires_in(10)
        .encode(&c.acc_sk)
        .unwrap();
    assert!(matches!(
        decode::<UserNats>(&expired, now).unwrap_err(),
        JwtError::Expired { .. }
    ));
    // Read back without time checks still works (for diagnostics).
    assert!(decode_untimed::<UserNats>(&expired).is_ok());
    let mut future = Claims::new(u.public_key(), "d", n);
    future.nbf = Some(now + 3600);
    let future = future.encode(&c.acc_sk).unwrap();
    assert!(matches!(
        decode::<UserNats>(&future, now).unwrap_err(),
        JwtError::NotYetValid { .. }
    ));
}

#[test]
fn wrong_issuers_and_types_are_refused() {
    let c = chain();
    let u = KeyPair::new_user();
    // Signed by an unknown account key.
    let mut n = UserNats::scoped();
    n.issuer_account = Some(c.acc.public_key());
    let rogue = Claims::new(u.public_key(), "d", n.clone())
        .encode(&KeyPair::new_account())
        .unwrap();
    assert!(matches!(
        verify_user(&rogue, &c.account, true, time::now()).unwrap_err(),
        JwtError::UntrustedIssuer { .. }
    ));
    // Signed by the account identity key under strict signing key usage.
    let by_identity = Claims::new(u.public_key(), "d", UserNats::scoped())
        .encode(&c.acc)
        .unwrap();
    assert!(verify_user(&by_identity, &c.account, true, time::now()).is_err());
    assert!(verify_user(&by_identity, &c.account, false, time::now()).is_ok());
    // Scoped key but carrying its own permissions.
    let mut with_perms = n.clone();
    with_perms.limits.subs = Some(-1);
    let t = Claims::new(u.public_key(), "d", with_perms)
        .encode(&c.acc_sk)
        .unwrap();
    assert!(verify_user(&t, &c.account, true, time::now()).is_err());
    // Missing issuer_account.
    let t = Claims::new(u.public_key(), "d", UserNats::scoped())
        .encode(&c.acc_sk)
        .unwrap();
    assert!(verify_user(&t, &c.account, true, time::now()).is_err());
    // An account signed by the operator identity key under strict mode.
    let acc = Claims::new(
        KeyPair::new_account().public_key(),
        "x",
        AccountNats::new(OperatorLimits::unlimited()),
    )
    .encode(&c.op)
    .unwrap();
    assert!(verify_account(&acc, &c.operator, time::now()).is_err());
    // An operator nobody trusts.
    let other = KeyPair::new_operator();
    let op = Claims::new(
        other.public_key(),
        "x",
        OperatorNats::new(vec![], String::new()),
    )
    .encode(&other)
    .unwrap();
    assert!(verify_operator(&op, &[&c.op.public_key()], time::now()).is_err());
    // A user token decoded as an account.
    let token = user_token(&c, &u, 60);
    assert!(matches!(
        decode::<AccountNats>(&token, time::now()).unwrap_err(),
        JwtError::WrongType { .. } | JwtError::BadClaims(_)
    ));
    let _ = &c.op_sk;
}

#[test]
fn revocations_apply_to_tokens_issued_at_or_before() {
    let mut c = chain();
    let u = KeyPair::new_user();
    let token = user_token(&c, &u, 60);
    let iat = decode::<UserNats>(&token, time::now()).unwrap().iat;
    c.account.nats.revocations.insert(u.public_key(), iat);
    assert!(matches!(
        verify_user(&token, &c.account, true, time::now()).unwrap_err(),
        JwtError::Revoked { .. }
    ));
    c.account.nats.revocations.clear();
    c.account.nats.revocations.insert("*".into(), iat - 1);
    assert!(verify_user(&token, &c.account, true, time::now()).is_ok());
}

#[test]
fn signing_keys_serialize_as_strings_or_scope_objects() {
    let mut an = AccountNats::new(OperatorLimits::unlimited());
    an.signing_keys.push(SigningKey::Plain("AAA".into()));
    an.signing_keys.push(SigningKey::Scoped(Box::new(UserScope {
        kind: ScopeKind::UserScope,
        key: "ABB".into(),
        role: "r".into(),
        template: UserPermissionLimits::default(),
        description: String::new(),
    })));
    let v = serde_json::to_value(&an).unwrap();
    assert_eq!(v["signing_keys"][0], "AAA");
    assert_eq!(v["signing_keys"][1]["kind"], "user_scope");
    let back: AccountNats = serde_json::from_value(v).unwrap();
    assert_eq!(back, an);
}

#[test]
fn unknown_fields_are_ignored() {
    let v = serde_json::json!({"type":"user","version":2,"future_field":{"x":1}});
    let n: UserNats = serde_json::from_value(v).unwrap();
    assert_eq!(n.kind, "user");
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever a user JWT says, signing then decoding gives it back unchanged.
        #[test]
        fn sign_then_verify_round_trips(
            name in "[A-Za-z0-9_-]{1,64}",
            ttl in 1i64..10_000_000,
            tags in proptest::collection::vec("[a-z]{1,8}:[a-z0-9*]{1,12}", 0..8),
            subs in proptest::option::of(-1i64..100_000),
        ) {
            let signer = KeyPair::new_account();
            let user = KeyPair::new_user();
            let mut n = UserNats::scoped();
            n.tags = tags;
            n.limits.subs = subs;
            n.issuer_account = Some(KeyPair::new_account().public_key());
            let claims = Claims::new(user.public_key(), name, n).expires_in(ttl);
            let token = claims.clone().encode(&signer).unwrap();
            let back: Claims<UserNats> = decode(&token, claims.iat).unwrap();
            prop_assert_eq!(back.nats, claims.nats);
            prop_assert_eq!(back.name, claims.name);
            prop_assert_eq!(back.exp, claims.exp);
            prop_assert_eq!(back.iss, signer.public_key());
        }

        /// Any single-byte change to a token makes it fail to decode (never panic, never pass).
        #[test]
        fn any_byte_flip_is_refused(pos in 0usize..10_000, bit in 0u8..8) {
            let signer = KeyPair::new_account();
            let token = Claims::new(KeyPair::new_user().public_key(), "d", UserNats::scoped())
                .encode(&signer)
                .unwrap();
            let mut bytes = token.into_bytes();
            let i = pos % bytes.len();
            bytes[i] ^= 1 << bit;
            if let Ok(s) = String::from_utf8(bytes) {
                prop_assert!(decode::<UserNats>(&s, time::now()).is_err());
            }
        }

        /// Arbitrary input never panics the decoder or the creds parser.
        #[test]
        fn garbage_never_panics(s in ".{0,600}") {
            let _ = decode::<UserNats>(&s, 0);
            let _ = decode::<AccountNats>(&s, 0);
            let _ = crate::creds::Creds::parse(&s);
        }
    }
}
