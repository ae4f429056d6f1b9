//! Authentication of the HTTPS API against a real nats-server and the real HTTPS server: login
//! and cookies, CSRF, security headers, session expiry and revocation, API tokens, brute-force
//! protection, and an unreachable session store.
#![allow(clippy::unwrap_used)]

use std::time::Duration;
use wegweiser_cp::{
    rbac::{Binding, Role, Scope},
    sessions::NewApiToken,
    users::{AuthConfig, Password},
};
use wegweiser_shared::{ids::UserName, secret::SecretString};
use wegweiser_tests::{HttpResponse, Platform, PlatformOptions};

const PASSWORD: &str = "correct horse battery staple";

/// Cheap hashes (the cost is the benchmark's business) and generous login limits.
fn cfg() -> AuthConfig {
    AuthConfig {
        argon2_memory_kib: 1024,
        argon2_iterations: 1,
        login_rate_per_minute: 600,
        login_burst: 100,
        account_rate_per_minute: 600,
        account_burst: 100,
        ..AuthConfig::default()
    }
}

async fn setup(auth: AuthConfig) -> (Platform, wegweiser_cp::cli::ServiceTasks) {
    let p = Platform::start_with(PlatformOptions {
        auth: Some(auth),
        ..Default::default()
    })
    .await
    .unwrap();
    let tasks = p.serve().await.unwrap();
    (p, tasks)
}

/// A platform with these failure limits (per address, per account) and the user alice.
async fn with_alice(
    login_max_failures: u32,
    account_max_failures: u32,
) -> (Platform, wegweiser_cp::cli::ServiceTasks) {
    let (p, tasks) = setup(AuthConfig {
        login_max_failures,
        account_max_failures,
        ..cfg()
    })
    .await;
    user(&p, "alice", vec![viewer_of("acme")]).await;
    (p, tasks)
}

fn name(s: &str) -> UserName {
    s.parse().unwrap()
}

async fn user(p: &Platform, n: &str, bindings: Vec<Binding>) {
    p.auth
        .create_user(
            &name(n),
            &Password::new(SecretString::new(PASSWORD.into())).unwrap(),
            bindings,
            "test",
        )
        .await
        .unwrap();
}

fn viewer_of(tenant: &str) -> Binding {
    Binding {
        role: Role::Viewer,
        scope: Scope::Tenant {
            tenant: tenant.parse().unwrap(),
        },
    }
}

async fn login_raw(p: &Platform, user: &str, password: &str) -> HttpResponse {
    let body = serde_json::to_vec(&serde_json::json!({"user": user, "password": password}));
    p.request("POST", "/v1/auth/login", &[], Some(body.unwrap()))
        .await
        .unwrap()
}

/// An API token of alice with all her bindings, for an hour.
async fn alice_token(p: &Platform) -> SecretString {
    p.auth
        .create_api_token(
            NewApiToken {
                owner: name("alice"),
                label: String::new(),
                bindings: None,
                ttl_secs: 3600,
            },
            "test",
        )
        .await
        .unwrap()
        .0
}

/// A logged-in session: the cookie header value and the CSRF token.
struct Session {
    cookie: String,
    csrf: String,
}

async fn login(p: &Platform, user: &str, password: &str) -> Session {
    let r = login_raw(p, user, password).await;
    assert_eq!(r.status, 200, "{r:?}");
    let set = r.header("set-cookie").unwrap();
    let cookie = set.split(';').next().unwrap().to_owned();
    Session {
        cookie,
        csrf: r.body["csrf_token"].as_str().unwrap().to_owned(),
    }
}

async fn get(p: &Platform, path: &str, s: &Session) -> HttpResponse {
    p.request("GET", path, &[("cookie", &s.cookie)], None)
        .await
        .unwrap()
}

async fn post(
    p: &Platform,
    path: &str,
    s: &Session,
    csrf: Option<&str>,
    body: &str,
) -> HttpResponse {
    let mut h = vec![("cookie", s.cookie.as_str())];
    if let Some(c) = csrf {
        h.push(("x-csrf-token", c));
    }
    p.request("POST", path, &h, Some(body.as_bytes().to_vec()))
        .await
        .unwrap()
}

async fn bearer(p: &Platform, method: &str, path: &str, token: &str) -> HttpResponse {
    let auth = format!("Bearer {token}");
    p.request(method, path, &[("authorization", &auth)], None)
        .await
        .unwrap()
}

async fn metrics(p: &Platform) -> String {
    let r = p.request("GET", "/metrics", &[], None).await.unwrap();
    assert_eq!(r.status, 200);
    r.body.as_str().unwrap().to_owned()
}

async fn last_audit(p: &Platform, kind: &str) -> serde_json::Value {
    let js = async_nats::jetstream::new(p.auth.cp_client().clone());
    let audit = js
        .get_stream(wegweiser_cp::audit::AUDIT_STREAM)
        .await
        .unwrap();
    let m = audit
        .get_last_raw_message_by_subject(&format!("wgcp.audit._.{}", kind.replace('.', "_")))
        .await
        .unwrap();
    serde_json::from_slice(&m.payload).unwrap()
}

#[tokio::test]
async fn the_first_admin_logs_in_with_a_strict_cookie() {
    let (p, _tasks) = setup(cfg()).await;
    // The first serve creates the operator; the generated password is in an owner-only file.
    let made = p
        .auth
        .bootstrap_admin(&p.data_dir())
        .await
        .unwrap()
        .unwrap();
    let file = made.password_file.unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(
        p.auth
            .bootstrap_admin(&p.data_dir())
            .await
            .unwrap()
            .is_none()
    );
    let password = std::fs::read_to_string(&file).unwrap().trim().to_owned();

    // Not logged in: 401 on every /v1 route, existing or not.
    for path in ["/v1/auth/me", "/v1/tenants", "/v1/no-such-thing"] {
        let r = p.request("GET", path, &[], None).await.unwrap();
        assert_eq!((r.status, r.code()), (401, "unauthenticated"), "{path}");
    }

    let r = login_raw(&p, "admin", &password).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["user"], "admin");
    assert!(r.body["expires_at"].as_i64().unwrap() > wegweiser_shared::time::now());
    let cookie = r.header("set-cookie").unwrap();
    assert!(cookie.starts_with("wg_session="), "{cookie}");
    for flag in ["; Secure", "; HttpOnly", "; SameSite=Strict", "; Path=/"] {
        assert!(cookie.contains(flag), "{flag} missing: {cookie}");
    }
    let s = login(&p, "admin", &password).await;
    let me = get(&p, "/v1/auth/me", &s).await;
    assert_eq!(me.status, 200, "{me:?}");
    assert_eq!(me.body["user"], "admin");
    assert_eq!(me.body["auth"], "session");
    assert_eq!(me.body["csrf_token"], s.csrf.as_str());
    assert_eq!(
        me.body["bindings"],
        serde_json::json!([{"role": "admin", "scope": "global"}])
    );

    // A wrong password and an unknown user get the same answer.
    let wrong = login_raw(&p, "admin", "not the password at all").await;
    let unknown = login_raw(&p, "nobody", "not the password at all").await;
    let bad_name = login_raw(&p, "no body*", "not the password at all").await;
    assert_eq!((wrong.status, wrong.code()), (401, "invalid_credentials"));
    assert_eq!(wrong.body, unknown.body);
    assert_eq!(wrong.body, bad_name.body);
    assert_eq!(last_audit(&p, "login").await["actor"], "admin");
    let text = metrics(&p).await;
    assert!(text.contains("wegweiser_logins_total 2"), "{text}");
    assert!(
        text.contains("wegweiser_logins_failed_total{reason=\"unknown_user\"} 2"),
        "{text}"
    );
}

#[tokio::test]
async fn cookie_requests_that_change_state_need_the_csrf_token() {
    let (p, _tasks) = setup(cfg()).await;
    user(&p, "alice", vec![viewer_of("acme")]).await;
    let s = login(&p, "alice", PASSWORD).await;

    // Missing or wrong: 403, before any handler (a POST to no route is refused the same).
    for path in ["/v1/auth/logout", "/v1/tenants"] {
        let r = post(&p, path, &s, None, "{}").await;
        assert_eq!((r.status, r.code()), (403, "csrf"), "{path}: {r:?}");
        let r = post(&p, path, &s, Some("wrong"), "{}").await;
        assert_eq!((r.status, r.code()), (403, "csrf"), "{path}: {r:?}");
    }
    // Reads need none.
    assert_eq!(get(&p, "/v1/auth/me", &s).await.status, 200);
    // Right: past the check (no such route: 404).
    let r = post(&p, "/v1/no-such-route", &s, Some(&s.csrf), "{}").await;
    assert_eq!((r.status, r.code()), (404, "not_found"), "{r:?}");
    // Bearer tokens are exempt.
    let token = alice_token(&p).await;
    let r = bearer(&p, "POST", "/v1/no-such-route", token.expose()).await;
    assert_eq!((r.status, r.code()), (404, "not_found"), "{r:?}");
    // Logout with the token: ends the session, clears the cookie.
    let r = post(&p, "/v1/auth/logout", &s, Some(&s.csrf), "").await;
    assert_eq!(r.status, 204, "{r:?}");
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(get(&p, "/v1/auth/me", &s).await.status, 401);
    let text = metrics(&p).await;
    assert!(
        text.contains("wegweiser_api_auth_refused_total{reason=\"csrf\"} 4"),
        "{text}"
    );
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let (p, _tasks) = setup(cfg()).await;
    user(&p, "alice", vec![viewer_of("acme")]).await;
    let s = login(&p, "alice", PASSWORD).await;
    let big = vec![b' '; 100 * 1024];
    let cases: Vec<(u16, HttpResponse)> = vec![
        (200, p.request("GET", "/healthz", &[], None).await.unwrap()),
        (200, get(&p, "/v1/auth/me", &s).await),
        (
            401,
            p.request("GET", "/v1/auth/me", &[], None).await.unwrap(),
        ),
        (403, post(&p, "/v1/auth/logout", &s, None, "").await),
        (404, p.request("GET", "/nope", &[], None).await.unwrap()),
        (404, get(&p, "/v1/nope", &s).await),
        (
            413,
            p.request("POST", "/v1/auth/login", &[], Some(big))
                .await
                .unwrap(),
        ),
        (400, p.post_enroll_raw(b"not json".to_vec()).await),
        (401, login_raw(&p, "alice", "wrong wrong wrong").await),
    ];
    for (status, r) in cases {
        assert_eq!(r.status, status, "{r:?}");
        for (h, v) in [
            (
                "content-security-policy",
                "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
            ),
            ("x-frame-options", "DENY"),
            ("x-content-type-options", "nosniff"),
            (
                "strict-transport-security",
                "max-age=31536000; includeSubDomains",
            ),
            ("referrer-policy", "no-referrer"),
        ] {
            assert_eq!(r.header(h), Some(v), "{h} on {status}: {r:?}");
        }
    }
}

#[tokio::test]
async fn sessions_end_when_idle_and_after_the_absolute_timeout() {
    // Times are whole seconds: margins of one second either way.
    let (p, _tasks) = setup(AuthConfig {
        session_idle_secs: 3,
        session_absolute_secs: 6,
        session_refresh_secs: 0,
        ..cfg()
    })
    .await;
    user(&p, "alice", vec![viewer_of("acme")]).await;
    let idle = login(&p, "alice", PASSWORD).await;
    let busy = login(&p, "alice", PASSWORD).await;
    // Used every second, a session lives past the idle timeout ...
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(get(&p, "/v1/auth/me", &busy).await.status, 200);
    }
    // ... the unused one does not.
    let r = get(&p, "/v1/auth/me", &idle).await;
    assert_eq!((r.status, r.code()), (401, "unauthenticated"), "{r:?}");
    // Past the absolute timeout, use does not help.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        get(&p, "/v1/auth/me", &busy).await;
    }
    let r = get(&p, "/v1/auth/me", &busy).await;
    assert_eq!((r.status, r.code()), (401, "unauthenticated"), "{r:?}");
}

#[tokio::test]
async fn requests_a_page_makes_on_its_own_do_not_keep_a_session_alive() {
    // Times are whole seconds: margins of one second either way.
    let (p, _tasks) = setup(AuthConfig {
        session_idle_secs: 4,
        session_refresh_secs: 0,
        ..cfg()
    })
    .await;
    user(&p, "alice", vec![viewer_of("acme")]).await;
    let s = login(&p, "alice", PASSWORD).await;
    let background = |path: &'static str| {
        let cookie = s.cookie.clone();
        let p = &p;
        async move {
            p.request(
                "GET",
                path,
                &[("cookie", &cookie), ("x-wegweiser-background", "1")],
                None,
            )
            .await
            .unwrap()
        }
    };
    // A dashboard left open refreshes itself: answered, but not counted as use ...
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(background("/v1/auth/me").await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(3000)).await;
    // ... so the session ends at the idle timeout after the last real use (the login).
    let r = get(&p, "/v1/auth/me", &s).await;
    assert_eq!((r.status, r.code()), (401, "unauthenticated"), "{r:?}");
}

#[tokio::test]
async fn a_password_change_ends_every_session_of_the_user() {
    let (p, _tasks) = setup(cfg()).await;
    user(&p, "alice", vec![viewer_of("acme")]).await;
    user(&p, "bob", vec![viewer_of("acme")]).await;
    let a1 = login(&p, "alice", PASSWORD).await;
    let a2 = login(&p, "alice", PASSWORD).await;
    let b = login(&p, "bob", PASSWORD).await;
    const NEW: &str = "a much better passphrase";

    let r = post(
        &p,
        "/v1/auth/password",
        &a1,
        Some(&a1.csrf),
        &serde_json::json!({"current": "wrong wrong wrong", "new": NEW}).to_string(),
    )
    .await;
    assert_eq!((r.status, r.code()), (403, "wrong_password"), "{r:?}");
    let r = post(
        &p,
        "/v1/auth/password",
        &a1,
        Some(&a1.csrf),
        &serde_json::json!({"current": PASSWORD, "new": "short"}).to_string(),
    )
    .await;
    assert_eq!((r.status, r.code()), (400, "weak_password"), "{r:?}");
    assert!(!r.body.to_string().contains("short\""), "{r:?}");
    let r = post(
        &p,
        "/v1/auth/password",
        &a1,
        Some(&a1.csrf),
        &serde_json::json!({"current": PASSWORD, "new": NEW}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(get(&p, "/v1/auth/me", &a1).await.status, 401);
    assert_eq!(get(&p, "/v1/auth/me", &a2).await.status, 401);
    assert_eq!(get(&p, "/v1/auth/me", &b).await.status, 200);
    assert_eq!(login_raw(&p, "alice", PASSWORD).await.status, 401);
    login(&p, "alice", NEW).await;
    // The CLI path (library function) ends sessions too.
    let a3 = login(&p, "alice", NEW).await;
    p.auth
        .set_password(
            &name("alice"),
            &Password::new(SecretString::new(PASSWORD.into())).unwrap(),
            "test",
        )
        .await
        .unwrap();
    assert_eq!(get(&p, "/v1/auth/me", &a3).await.status, 401);
}

#[tokio::test]
async fn api_tokens_act_within_their_user_and_stop_when_revoked() {
    let (p, _tasks) = setup(cfg()).await;
    p.tenant("acme").await.unwrap();
    let manager = Binding {
        role: Role::Manager,
        scope: Scope::Tenant {
            tenant: "acme".parse().unwrap(),
        },
    };
    user(&p, "ops", vec![manager.clone()]).await;
    let new = |bindings: Option<Vec<Binding>>, ttl_secs| NewApiToken {
        owner: name("ops"),
        label: "ci".into(),
        bindings,
        ttl_secs,
    };
    // Wider than the user, too long, or without an expiry worth the name: refused.
    for bad in [
        new(
            Some(vec![Binding {
                role: Role::Admin,
                scope: manager.scope.clone(),
            }]),
            3600,
        ),
        new(Some(vec![viewer_of("other")]), 3600),
        new(None, 366 * 86_400),
        new(None, 0),
    ] {
        assert!(p.auth.create_api_token(bad, "test").await.is_err());
    }
    let (full, full_rec) = p
        .auth
        .create_api_token(new(None, 3600), "test")
        .await
        .unwrap();
    let (narrow, _) = p
        .auth
        .create_api_token(new(Some(vec![viewer_of("acme")]), 3600), "test")
        .await
        .unwrap();
    assert!(full.expose().starts_with("wgapi_"));
    let r = bearer(&p, "GET", "/v1/auth/me", full.expose()).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["auth"], "api_token");
    assert_eq!(r.body["bindings"][0]["role"], "manager");
    assert!(r.body.get("csrf_token").is_none());
    let r = bearer(&p, "GET", "/v1/auth/me", narrow.expose()).await;
    assert_eq!(r.body["bindings"][0]["role"], "viewer", "{r:?}");
    // A token cannot change the password or log out.
    let r = bearer(&p, "POST", "/v1/auth/password", full.expose()).await;
    assert_eq!((r.status, r.code()), (403, "session_required"), "{r:?}");

    // Revoked: 401 at once.
    p.auth
        .revoke_api_token(&full_rec.id, None, "test")
        .await
        .unwrap();
    let r = bearer(&p, "GET", "/v1/auth/me", full.expose()).await;
    assert_eq!((r.status, r.code()), (401, "unauthenticated"));
    // The user loses its binding: the narrow token keeps nothing.
    p.auth
        .grant(&name("ops"), viewer_of("acme"), "test")
        .await
        .unwrap();
    p.auth
        .revoke_binding(&name("ops"), &manager, "test")
        .await
        .unwrap();
    let r = bearer(&p, "GET", "/v1/auth/me", narrow.expose()).await;
    assert_eq!(r.body["bindings"][0]["role"], "viewer", "{r:?}");
    // Disabled user: its tokens stop; enabled again, they work; deleted: gone.
    p.auth
        .set_disabled(&name("ops"), true, "test")
        .await
        .unwrap();
    assert_eq!(
        bearer(&p, "GET", "/v1/auth/me", narrow.expose())
            .await
            .status,
        401
    );
    p.auth
        .set_disabled(&name("ops"), false, "test")
        .await
        .unwrap();
    assert_eq!(
        bearer(&p, "GET", "/v1/auth/me", narrow.expose())
            .await
            .status,
        200
    );
    p.auth.delete_user(&name("ops"), "test").await.unwrap();
    assert_eq!(
        bearer(&p, "GET", "/v1/auth/me", narrow.expose())
            .await
            .status,
        401
    );
    // Garbage: 401, never 500.
    for t in ["", "wgapi_", "nope", &"x".repeat(5000)] {
        assert_eq!(
            bearer(&p, "GET", "/v1/auth/me", t).await.status,
            401,
            "{t:.10}"
        );
    }
}

#[tokio::test]
async fn brute_force_blocks_the_address_for_logins_and_enrollment() {
    let (p, _tasks) = with_alice(3, 100).await;
    for _ in 0..3 {
        let r = login_raw(&p, "alice", "guess guess guess").await;
        assert_eq!((r.status, r.code()), (401, "invalid_credentials"));
    }
    // Blocked now, even with the right password, and for enrollment too (one record per address).
    let r = login_raw(&p, "alice", PASSWORD).await;
    assert_eq!((r.status, r.code()), (403, "address_blocked"), "{r:?}");
    assert!(r.header("retry-after").is_some());
    let r = p.post_enroll_raw(b"{}".to_vec()).await;
    assert_eq!((r.status, r.code()), (403, "address_blocked"), "{r:?}");

    let blocked = last_audit(&p, "ip.blocked").await;
    assert_eq!(blocked["actor"], "login");
    assert!(
        ["127.0.0.1", "::1"].contains(&blocked["ip"].as_str().unwrap()),
        "{blocked}"
    );
    let failed = last_audit(&p, "login.failed").await;
    assert_eq!(failed["outcome"], "bad_password");
    assert_eq!(failed["detail"]["user"], "alice");
    let text = metrics(&p).await;
    for line in [
        "wegweiser_logins_failed_total{reason=\"bad_password\"} 3",
        "wegweiser_ip_blocks_total 1",
        "wegweiser_login_blocked_requests_total 1",
        "wegweiser_logins_total 0",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
}

#[tokio::test]
async fn a_locked_account_answers_like_a_wrong_password() {
    let (p, _tasks) = with_alice(100, 2).await;
    let wrong = login_raw(&p, "alice", "guess guess guess").await;
    login_raw(&p, "alice", "guess guess guess").await;
    // Locked: the right password gets the wrong password's answer.
    let right = login_raw(&p, "alice", PASSWORD).await;
    assert_eq!(right.status, wrong.status);
    assert_eq!(right.body, wrong.body);
    assert_eq!(
        last_audit(&p, "account.locked").await["detail"]["user"],
        "alice"
    );
    // Unknown names lock the same way (and nothing tells them apart).
    for _ in 0..3 {
        let r = login_raw(&p, "ghost", "guess guess guess").await;
        assert_eq!(r.body, wrong.body);
    }
    let text = metrics(&p).await;
    assert!(
        text.contains("wegweiser_logins_failed_total{reason=\"locked\"} 2"),
        "{text}"
    );
    assert!(text.contains("wegweiser_account_locks_total 2"), "{text}");
}

#[tokio::test]
async fn logins_are_rate_limited_per_address() {
    let (p, _tasks) = setup(AuthConfig {
        login_rate_per_minute: 1,
        login_burst: 3,
        ..cfg()
    })
    .await;
    user(&p, "alice", vec![viewer_of("acme")]).await;
    for _ in 0..3 {
        assert_eq!(login_raw(&p, "alice", PASSWORD).await.status, 200);
    }
    let r = login_raw(&p, "alice", PASSWORD).await;
    assert_eq!((r.status, r.code()), (429, "rate_limited"), "{r:?}");
    assert!(
        metrics(&p)
            .await
            .contains("wegweiser_login_rate_limited_total 1")
    );
}

#[tokio::test]
async fn an_unreachable_session_store_is_503() {
    let (mut p, _tasks) = setup(cfg()).await;
    user(&p, "alice", vec![viewer_of("acme")]).await;
    let s = login(&p, "alice", PASSWORD).await;
    let token = alice_token(&p).await;
    p.stop_server().await;
    let mut r = get(&p, "/v1/auth/me", &s).await;
    for _ in 0..100 {
        if r.status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        r = get(&p, "/v1/auth/me", &s).await;
    }
    assert_eq!((r.status, r.code()), (503, "unavailable"), "{r:?}");
    assert!(r.header("retry-after").is_some());
    let r = bearer(&p, "GET", "/v1/auth/me", token.expose()).await;
    assert_eq!((r.status, r.code()), (503, "unavailable"), "{r:?}");
    let r = login_raw(&p, "alice", PASSWORD).await;
    assert_eq!((r.status, r.code()), (503, "unavailable"), "{r:?}");
    // Back: the same session works again (nothing was lost, nothing cached).
    p.start_server().await.unwrap();
    let mut ok = false;
    for _ in 0..100 {
        if get(&p, "/v1/auth/me", &s).await.status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_admins_taking_each_other_away_at_once_leave_one() {
    use wegweiser_cp::users::UserError;
    let (p, _tasks) = setup(cfg()).await;
    let admin = Binding {
        role: Role::Admin,
        scope: Scope::Global,
    };
    let enabled_admins = || async {
        p.auth
            .users()
            .await
            .unwrap()
            .into_iter()
            .filter(|u| !u.disabled && u.bindings.contains(&admin))
            .map(|u| u.name)
            .collect::<Vec<_>>()
    };
    let mut previous = enabled_admins().await;
    let mut refusals = 0;
    for round in 0..12 {
        let (x, y) = (name(&format!("x{round}")), name(&format!("y{round}")));
        user(&p, x.as_str(), vec![admin.clone()]).await;
        user(&p, y.as_str(), vec![admin.clone()]).await;
        // Only x and y are enabled global Admins now.
        for u in previous.drain(..) {
            p.auth.set_disabled(&u, true, "test").await.unwrap();
        }
        let drop_rec = |r: Result<wegweiser_cp::users::UserRecord, UserError>| r.map(|_| ());
        // Each takes the other away, in three ways.
        let (rx, ry) = match round % 3 {
            0 => {
                let (a, b) = tokio::join!(
                    p.auth.set_disabled(&y, true, x.as_str()),
                    p.auth.set_disabled(&x, true, y.as_str())
                );
                (drop_rec(a), drop_rec(b))
            }
            1 => {
                let (a, b) = tokio::join!(
                    p.auth.revoke_binding(&y, &admin, x.as_str()),
                    p.auth.revoke_binding(&x, &admin, y.as_str())
                );
                (drop_rec(a), drop_rec(b))
            }
            _ => {
                let (a, b) = tokio::join!(
                    p.auth.delete_user(&y, x.as_str()),
                    p.auth.set_disabled(&x, true, y.as_str())
                );
                (a, drop_rec(b))
            }
        };
        let left = enabled_admins().await;
        assert!(
            !left.is_empty(),
            "round {round}: no enabled global Admin left ({rx:?}, {ry:?})"
        );
        // One after the other: the first passes, the second finds the last Admin.
        assert!(
            rx.is_ok() != ry.is_ok(),
            "round {round}: exactly one change passes ({rx:?}, {ry:?})"
        );
        for (r, target) in [(&rx, &y), (&ry, &x)] {
            if let Err(e) = r {
                assert!(matches!(e, UserError::LastAdmin), "round {round}: {e}");
                assert!(
                    left.contains(target),
                    "round {round}: a refused change did nothing"
                );
                refusals += 1;
            }
        }
        previous = left;
    }
    assert_eq!(refusals, 12);

    // A third change at the same time: y (a disabled Admin) is disabled again by x and enabled
    // by someone else while y disables x. Whatever the order, an Admin is left.
    for round in 0..8 {
        let (x, y) = (name(&format!("p{round}")), name(&format!("q{round}")));
        user(&p, x.as_str(), vec![admin.clone()]).await;
        user(&p, y.as_str(), vec![admin.clone()]).await;
        for u in previous.drain(..) {
            p.auth.set_disabled(&u, true, "test").await.unwrap();
        }
        p.auth.set_disabled(&y, true, "test").await.unwrap();
        let (a, b, c) = tokio::join!(
            p.auth.set_disabled(&y, true, x.as_str()),
            p.auth.set_disabled(&y, false, "test"),
            p.auth.set_disabled(&x, true, y.as_str())
        );
        let left = enabled_admins().await;
        assert!(
            !left.is_empty(),
            "round {round}: no enabled global Admin left ({a:?}, {b:?}, {c:?})"
        );
        previous = left;
    }

    // A lease left behind by a holder that died lapses: the next change takes it over and
    // gives it back. The user list does not mistake the lease for a user.
    let kv = async_nats::jetstream::new(p.auth.cp_client().clone())
        .get_key_value(wegweiser_cp::users::USERS_BUCKET)
        .await
        .unwrap();
    kv.put("guard.admins", r#"{"until":0}"#.into())
        .await
        .unwrap();
    let spare = name("spare");
    user(&p, spare.as_str(), vec![admin.clone()]).await;
    assert!(enabled_admins().await.contains(&spare));
    p.auth.set_disabled(&spare, true, "test").await.unwrap();
    let mut released = false;
    for _ in 0..100 {
        let lease = kv.entry("guard.admins").await.unwrap().unwrap();
        if lease.operation != async_nats::jetstream::kv::Operation::Put {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(released, "the lease is given back");
}

/// A login presenting `cookie` (a `Cookie` header value).
async fn login_with_cookie(p: &Platform, user: &str, password: &str, cookie: &str) -> HttpResponse {
    let body = serde_json::to_vec(&serde_json::json!({"user": user, "password": password}));
    p.request(
        "POST",
        "/v1/auth/login",
        &[("cookie", cookie)],
        Some(body.unwrap()),
    )
    .await
    .unwrap()
}

/// The device cookie a login answer sets, as `name=value`.
fn device_cookie(r: &HttpResponse) -> String {
    let set = r
        .headers
        .iter()
        .find(|(n, v)| n == "set-cookie" && v.starts_with("__Secure-wg_device="))
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no device cookie: {r:?}"));
    for part in ["Path=/v1/auth", "Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(set.contains(part), "{set}");
    }
    set.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn a_browser_that_logged_in_before_gets_past_a_locked_account() {
    let (p, _tasks) = with_alice(100, 2).await;
    user(&p, "bob", vec![viewer_of("acme")]).await;
    let first = login_raw(&p, "alice", PASSWORD).await;
    assert_eq!(first.status, 200, "{first:?}");
    let alice_browser = device_cookie(&first);
    let bob_browser = device_cookie(&login_raw(&p, "bob", PASSWORD).await);

    // Somebody guesses at alice's password until the account locks.
    let wrong = login_raw(&p, "alice", "guess guess guess").await;
    login_raw(&p, "alice", "guess guess guess").await;
    assert_eq!(
        last_audit(&p, "account.locked").await["detail"]["user"],
        "alice"
    );
    let right = login_raw(&p, "alice", PASSWORD).await;
    assert_eq!((right.status, &right.body), (wrong.status, &wrong.body));

    // Alice's browser still gets in, and is told it did so through its device cookie.
    let r = login_with_cookie(&p, "alice", PASSWORD, &alice_browser).await;
    assert_eq!(r.status, 200, "{r:?}");
    let renewed = device_cookie(&r);
    assert_ne!(
        renewed, alice_browser,
        "every login sets a new device cookie"
    );
    let login = last_audit(&p, "login").await;
    assert_eq!(
        (
            login["actor"].as_str(),
            login["detail"]["device_cookie"].as_bool()
        ),
        (Some("alice"), Some(true)),
        "{login}"
    );
    // The account stays locked for everybody else.
    let r = login_raw(&p, "alice", PASSWORD).await;
    assert_eq!((r.status, &r.body), (wrong.status, &wrong.body));

    // Bob's cookie, a tampered cookie, or a cookie for another name do not help.
    let mut tampered = alice_browser.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    for c in [
        bob_browser.as_str(),
        tampered.as_str(),
        "__Secure-wg_device=v1.AAAA",
        "__Secure-wg_device=",
    ] {
        let r = login_with_cookie(&p, "alice", PASSWORD, c).await;
        assert_eq!((r.status, &r.body), (wrong.status, &wrong.body), "{c}");
    }

    // Guessing through alice's cookie locks that cookie, and then it is worth nothing.
    for _ in 0..2 {
        let r = login_with_cookie(&p, "alice", "guess guess guess", &alice_browser).await;
        assert_eq!(r.status, wrong.status);
    }
    assert_eq!(
        last_audit(&p, "device_cookie.locked").await["detail"]["user"],
        "alice"
    );
    let r = login_with_cookie(&p, "alice", PASSWORD, &alice_browser).await;
    assert_eq!((r.status, &r.body), (wrong.status, &wrong.body));
    // Her other cookie (from the last login) is counted on its own, and a junk cookie of the
    // same name planted before it does not hide it.
    let planted = format!("__Secure-wg_device=v1.junk; {renewed}");
    let r = login_with_cookie(&p, "alice", PASSWORD, &planted).await;
    assert_eq!(r.status, 200, "{r:?}");
    let newest = device_cookie(&r);
    assert!(
        metrics(&p)
            .await
            .contains("wegweiser_device_cookie_locks_total 1")
    );

    // A password change ends every device cookie of the user.
    p.auth
        .set_password(
            &name("alice"),
            &Password::new(SecretString::new("a brand new passphrase".into())).unwrap(),
            "test",
        )
        .await
        .unwrap();
    let r = login_with_cookie(&p, "alice", "a brand new passphrase", &newest).await;
    assert_eq!((r.status, &r.body), (wrong.status, &wrong.body));

    // Nor does a new user made under a deleted user's name inherit the old one's cookies.
    let bob_again = login_with_cookie(&p, "bob", PASSWORD, &bob_browser).await;
    assert_eq!(bob_again.status, 200, "{bob_again:?}");
    let bobs = device_cookie(&bob_again);
    p.auth.delete_user(&name("bob"), "test").await.unwrap();
    user(&p, "bob", vec![viewer_of("acme")]).await;
    for _ in 0..2 {
        login_raw(&p, "bob", "guess guess guess").await;
    }
    let r = login_with_cookie(&p, "bob", PASSWORD, &bobs).await;
    assert_eq!((r.status, &r.body), (wrong.status, &wrong.body));
}

#[tokio::test]
async fn failures_through_a_device_cookie_do_not_count_against_the_account() {
    let (p, _tasks) = with_alice(100, 2).await;
    let browser = device_cookie(&login_raw(&p, "alice", PASSWORD).await);
    let r = login_with_cookie(&p, "alice", "guess guess guess", &browser).await;
    assert_eq!(r.status, 401);
    let r = login_raw(&p, "alice", "guess guess guess").await;
    assert_eq!(r.status, 401);
    // One failure on the account (the other was the cookie's): not locked.
    let r = login_raw(&p, "alice", PASSWORD).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        metrics(&p)
            .await
            .contains("wegweiser_account_locks_total 0")
    );
}

#[tokio::test]
async fn a_user_made_again_under_an_old_name_inherits_no_session_or_token() {
    let (p, _tasks) = setup(cfg()).await;
    user(&p, "alice", vec![viewer_of("acme")]).await;
    let s = login(&p, "alice", PASSWORD).await;
    let token = alice_token(&p).await;
    assert_eq!(
        bearer(&p, "GET", "/v1/auth/me", token.expose())
            .await
            .status,
        200
    );
    // The record goes, but (as after a failed clean-up) its session and token stay stored.
    let kv = async_nats::jetstream::new(p.auth.cp_client().clone())
        .get_key_value(wegweiser_cp::users::USERS_BUCKET)
        .await
        .unwrap();
    kv.purge("alice").await.unwrap();
    // A new alice with other rights, at once.
    user(&p, "alice", vec![viewer_of("other")]).await;
    let r = bearer(&p, "GET", "/v1/auth/me", token.expose()).await;
    assert_eq!((r.status, r.code()), (401, "unauthenticated"), "{r:?}");
    let r = get(&p, "/v1/auth/me", &s).await;
    assert_eq!((r.status, r.code()), (401, "unauthenticated"), "{r:?}");
    // The new alice herself is fine.
    let fresh = login(&p, "alice", PASSWORD).await;
    assert_eq!(get(&p, "/v1/auth/me", &fresh).await.status, 200);
}
