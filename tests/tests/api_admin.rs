//! The administrative API against a real nats-server and the real HTTPS server: tenants,
//! users and role bindings, the caller's API tokens, audit queries, and the real `wegweiser`
//! binary logging in, calling the API and logging out.
#![allow(clippy::unwrap_used)]

use std::{path::PathBuf, process::Output};
use wegweiser_cp::{
    audit::AuditEntry,
    rbac::{Binding, Role, Scope},
    users::AuthConfig,
};
use wegweiser_tests::user_token as token_for;
use wegweiser_tests::{HttpResponse, Platform, PlatformOptions};

const PASSWORD: &str = wegweiser_tests::TEST_PASSWORD;

async fn setup() -> (Platform, wegweiser_cp::cli::ServiceTasks) {
    let p = Platform::start_with(PlatformOptions {
        auth: Some(AuthConfig {
            argon2_memory_kib: 1024,
            argon2_iterations: 1,
            login_rate_per_minute: 600,
            login_burst: 100,
            account_rate_per_minute: 600,
            account_burst: 100,
            ..AuthConfig::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let tasks = p.serve().await.unwrap();
    (p, tasks)
}

fn global_admin() -> Binding {
    Binding {
        role: Role::Admin,
        scope: Scope::Global,
    }
}

/// How a request authenticates.
#[derive(Clone, Copy)]
enum As<'a> {
    Token(&'a str),
    Session(&'a Session),
}

struct Session {
    cookie: String,
    csrf: String,
}

async fn call(
    p: &Platform,
    who: As<'_>,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> HttpResponse {
    let auth;
    let headers: Vec<(&str, &str)> = match &who {
        As::Token(t) => {
            auth = format!("Bearer {t}");
            vec![("authorization", auth.as_str())]
        }
        As::Session(s) => vec![
            ("cookie", s.cookie.as_str()),
            ("x-csrf-token", s.csrf.as_str()),
        ],
    };
    p.request(
        method,
        path,
        &headers,
        body.map(|b| serde_json::to_vec(&b).unwrap()),
    )
    .await
    .unwrap()
}

async fn login_raw(p: &Platform, user: &str, password: &str) -> HttpResponse {
    let body = serde_json::to_vec(&serde_json::json!({"user": user, "password": password}));
    p.request("POST", "/v1/auth/login", &[], Some(body.unwrap()))
        .await
        .unwrap()
}

async fn login(p: &Platform, user: &str, password: &str) -> Session {
    let r = login_raw(p, user, password).await;
    assert_eq!(r.status, 200, "login of {user}: {r:?}");
    let cookie = r
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    Session {
        cookie,
        csrf: r.body["csrf_token"].as_str().unwrap().to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_users_bindings_and_tokens_over_the_api() {
    let (p, _tasks) = setup().await;
    let acme = p.tenant("acme").await.unwrap().id;
    let op = token_for(&p, "op", vec![global_admin()]).await;
    let op = As::Token(&op);

    // Tenants: create, list, change retention, refuse a taken id.
    let r = call(
        &p,
        op,
        "POST",
        "/v1/tenants",
        Some(serde_json::json!({"id": "newco", "name": "New Co", "retention_days": 30})),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["state"], "active");
    assert_eq!(r.body["retention_days"], 30);
    let list = call(&p, op, "GET", "/v1/tenants", None).await;
    let ids: Vec<&str> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["acme", "newco"], "{list:?}");
    let r = call(
        &p,
        op,
        "PATCH",
        "/v1/tenants/newco",
        Some(serde_json::json!({"retention_days": 10})),
    )
    .await;
    assert_eq!(
        (r.status, &r.body["retention_days"]),
        (200, &10.into()),
        "{r:?}"
    );
    let r = call(
        &p,
        op,
        "POST",
        "/v1/tenants",
        Some(serde_json::json!({"id": "newco"})),
    )
    .await;
    assert_eq!((r.status, r.code()), (409, "conflict"), "{r:?}");
    let r = call(
        &p,
        op,
        "POST",
        "/v1/tenants",
        Some(serde_json::json!({"id": "Bad Id"})),
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");

    // A user without a password: one is generated, shown once, and logs in.
    let r = call(
        &p,
        op,
        "POST",
        "/v1/users",
        Some(serde_json::json!({"name": "alice", "bindings": [
            {"role": "viewer", "scope": "tenant", "tenant": "newco"}]})),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let pw = r.body["password"].as_str().unwrap().to_owned();
    assert!(pw.len() >= 12);
    let r = call(&p, op, "GET", "/v1/users/alice", None).await;
    assert_eq!(r.status, 200);
    assert!(r.body.get("password").is_none(), "shown once: {r:?}");
    let alice = login(&p, "alice", &pw).await;
    assert_eq!(
        call(&p, As::Session(&alice), "GET", "/v1/tenants/newco", None)
            .await
            .status,
        200
    );
    let acme_path = format!("/v1/tenants/{acme}");
    assert_eq!(
        call(&p, As::Session(&alice), "GET", &acme_path, None)
            .await
            .status,
        404
    );
    // A weak password and a malformed binding are refused with what to do.
    let r = call(
        &p,
        op,
        "POST",
        "/v1/users",
        Some(serde_json::json!({"name": "bob", "password": "short"})),
    )
    .await;
    assert_eq!((r.status, r.code()), (400, "weak_password"), "{r:?}");
    let r = call(
        &p,
        op,
        "POST",
        "/v1/users/alice/bindings",
        Some(serde_json::json!({"role": "viewer", "scope": "organization", "tenant": "acme"})),
    )
    .await;
    assert_eq!((r.status, r.code()), (400, "bad_binding"), "{r:?}");
    assert!(r.body["message"].as_str().unwrap().contains("organization"));

    // Grant, then revoke (in the query string): access follows at once, in the same session.
    let r = call(
        &p,
        op,
        "POST",
        "/v1/users/alice/bindings",
        Some(serde_json::json!({"role": "viewer", "scope": "tenant", "tenant": "acme"})),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["bindings"].as_array().unwrap().len(), 2);
    assert_eq!(
        call(&p, As::Session(&alice), "GET", &acme_path, None)
            .await
            .status,
        200
    );
    let r = call(
        &p,
        op,
        "DELETE",
        "/v1/users/alice/bindings?role=viewer&scope=tenant&tenant=acme",
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        call(&p, As::Session(&alice), "GET", &acme_path, None)
            .await
            .status,
        404
    );
    // Revoking without naming the binding.
    let r = call(&p, op, "DELETE", "/v1/users/alice/bindings", None).await;
    assert_eq!((r.status, r.code()), (400, "bad_binding"), "{r:?}");
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("role and scope")
    );
    // Revoking a binding the user does not hold.
    let r = call(
        &p,
        op,
        "DELETE",
        "/v1/users/alice/bindings",
        Some(serde_json::json!({"role": "admin", "scope": "tenant", "tenant": "newco"})),
    )
    .await;
    assert_eq!((r.status, r.code()), (400, "bad_binding"), "{r:?}");

    // Alice makes an API token with her session; a token cannot make tokens.
    let r = call(
        &p,
        As::Session(&alice),
        "POST",
        "/v1/auth/tokens",
        Some(serde_json::json!({"label": "ci", "ttl_secs": 3600})),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let alice_token = r.body["token"].as_str().unwrap().to_owned();
    let token_id = r.body["id"].as_str().unwrap().to_owned();
    let me = call(&p, As::Token(&alice_token), "GET", "/v1/auth/me", None).await;
    assert_eq!((me.status, &me.body["user"]), (200, &"alice".into()));
    let r = call(
        &p,
        As::Token(&alice_token),
        "POST",
        "/v1/auth/tokens",
        Some(serde_json::json!({})),
    )
    .await;
    assert_eq!((r.status, r.code()), (403, "session_required"), "{r:?}");
    let r = call(&p, As::Token(&alice_token), "GET", "/v1/auth/tokens", None).await;
    assert_eq!(r.status, 200);
    let listed: Vec<&str> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![token_id.as_str()]);
    assert!(r.body["items"][0].get("token").is_none());
    // Another user's token id is not found.
    let r = call(
        &p,
        op,
        "DELETE",
        &format!("/v1/auth/tokens/{token_id}"),
        None,
    )
    .await;
    assert_eq!(r.status, 404, "{r:?}");

    // Disabled: the session and the token stop working, and so does the password.
    let r = call(&p, op, "POST", "/v1/users/alice/disable", None).await;
    assert_eq!(
        (r.status, &r.body["disabled"]),
        (200, &true.into()),
        "{r:?}"
    );
    for who in [As::Session(&alice), As::Token(&alice_token)] {
        assert_eq!(call(&p, who, "GET", "/v1/auth/me", None).await.status, 401);
    }
    assert_eq!(login_raw(&p, "alice", &pw).await.status, 401);
    // Enabled again: the token works again; the old session stays ended.
    let r = call(&p, op, "POST", "/v1/users/alice/enable", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        call(&p, As::Token(&alice_token), "GET", "/v1/auth/me", None)
            .await
            .status,
        200
    );
    assert_eq!(
        call(&p, As::Session(&alice), "GET", "/v1/auth/me", None)
            .await
            .status,
        401
    );

    // An administrator's password reset ends the sessions and revokes the tokens.
    let before = login(&p, "alice", &pw).await;
    let r = call(&p, op, "POST", "/v1/users/alice/password", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    let new_pw = r.body["password"].as_str().unwrap().to_owned();
    assert_ne!(new_pw, pw);
    for who in [As::Session(&before), As::Token(&alice_token)] {
        assert_eq!(call(&p, who, "GET", "/v1/auth/me", None).await.status, 401);
    }
    assert_eq!(login_raw(&p, "alice", &pw).await.status, 401);
    let _after = login(&p, "alice", &new_pw).await;
    let r = call(
        &p,
        op,
        "POST",
        "/v1/users/alice/password",
        Some(serde_json::json!({"password": "another long password"})),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.get("password").is_none());
    let _again = login(&p, "alice", "another long password").await;

    // The list: paginated and filtered on the server.
    let page = call(&p, op, "GET", "/v1/users?limit=1", None).await;
    assert_eq!(page.body["items"][0]["name"], "alice");
    assert_eq!(page.body["next"], "alice");
    let page = call(&p, op, "GET", "/v1/users?limit=1&after=alice", None).await;
    assert_eq!(page.body["items"][0]["name"], "op");
    assert!(page.body.get("next").is_none(), "{page:?}");
    let page = call(&p, op, "GET", "/v1/users?tenant=newco", None).await;
    assert_eq!(page.body["items"].as_array().unwrap().len(), 1);
    let page = call(&p, op, "GET", "/v1/users?role=admin", None).await;
    assert_eq!(page.body["items"][0]["name"], "op");
    let r = call(&p, op, "GET", "/v1/users?limit=many", None).await;
    assert_eq!((r.status, r.code()), (400, "bad_request"), "{r:?}");

    // The last global admin can be neither deleted nor disabled nor unbound.
    for (method, path) in [
        ("DELETE", "/v1/users/op"),
        ("POST", "/v1/users/op/disable"),
        ("DELETE", "/v1/users/op/bindings?role=admin&scope=global"),
    ] {
        let r = call(&p, op, method, path, None).await;
        assert_eq!(
            (r.status, r.code()),
            (409, "last_admin"),
            "{method} {path}: {r:?}"
        );
        assert!(r.body["message"].as_str().unwrap().contains("global admin"));
    }
    assert_eq!(call(&p, op, "GET", "/v1/auth/me", None).await.status, 200);

    // Deleting a user and a tenant.
    let r = call(&p, op, "DELETE", "/v1/users/alice", None).await;
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(
        call(&p, op, "GET", "/v1/users/alice", None).await.status,
        404
    );
    assert_eq!(
        login_raw(&p, "alice", "another long password").await.status,
        401
    );
    let carol = token_for(
        &p,
        "carol",
        vec![
            Binding {
                role: Role::Manager,
                scope: Scope::Tenant {
                    tenant: "newco".parse().unwrap(),
                },
            },
            Binding {
                role: Role::Viewer,
                scope: Scope::Tenant {
                    tenant: acme.clone(),
                },
            },
        ],
    )
    .await;
    // What hangs off it: an organization with a group, a device in it, an unused token.
    let newco: wegweiser_shared::ids::TenantId = "newco".parse().unwrap();
    p.place(&newco, "branch", Some("desks")).await.unwrap();
    let device = wegweiser_tests::sim::SimDevice::enroll(&p, &newco, "newco-pc")
        .await
        .unwrap();
    p.token(&newco, 5).await.unwrap();
    for list in ["devices", "organizations", "tokens"] {
        let r = call(&p, op, "GET", &format!("/v1/tenants/newco/{list}"), None).await;
        assert!(
            !r.body["items"].as_array().unwrap().is_empty(),
            "{list}: {r:?}"
        );
    }
    let r = call(&p, op, "DELETE", "/v1/tenants/newco", None).await;
    assert_eq!(r.status, 204, "{r:?}");
    drop(device);
    // Its users lose their bindings there: a new tenant of the same id is not theirs.
    let r = call(&p, op, "GET", "/v1/users/carol", None).await;
    assert_eq!(r.body["bindings"].as_array().unwrap().len(), 1, "{r:?}");
    assert_eq!(r.body["bindings"][0]["tenant"], "acme");
    let r = call(
        &p,
        op,
        "POST",
        "/v1/tenants",
        Some(serde_json::json!({"id": "newco"})),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let r = call(&p, As::Token(&carol), "GET", "/v1/tenants/newco", None).await;
    assert_eq!(r.status, 404, "{r:?}");
    // And it starts empty: nothing of the deleted tenant lives on under the same id.
    for list in ["devices", "organizations", "tokens"] {
        let r = call(&p, op, "GET", &format!("/v1/tenants/newco/{list}"), None).await;
        assert_eq!(r.status, 200, "{list}: {r:?}");
        assert_eq!(r.body["items"], serde_json::json!([]), "{list}: {r:?}");
    }
    let r = call(&p, op, "DELETE", "/v1/tenants/newco", None).await;
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(
        call(&p, op, "GET", "/v1/tenants/newco", None).await.status,
        404
    );
    assert!(p.auth.tenant(&"newco".parse().unwrap()).await.is_err());

    // Every change is in the audit trail.
    let audit = call(&p, op, "GET", "/v1/audit?limit=500", None).await;
    let kinds: Vec<&str> = audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"] == "op")
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for k in [
        "user.create",
        "user.disable",
        "user.enable",
        "user.password",
        "user.delete",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let tenant_audit = call(&p, op, "GET", "/v1/tenants/newco/audit", None).await;
    let kinds: Vec<&str> = tenant_audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for k in [
        "tenant.create",
        "tenant.retention",
        "tenant.delete",
        "user.bindings_dropped",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let acme_audit = call(
        &p,
        op,
        "GET",
        &format!("/v1/tenants/{acme}/audit?actor=op"),
        None,
    )
    .await;
    let kinds: Vec<&str> = acme_audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        vec!["user.revoke_binding", "user.grant"],
        "newest first"
    );

    // Changes made through the API are audited as done by the calling user, not as the CLI.
    let r = call(
        &p,
        op,
        "POST",
        &format!("/v1/tenants/{acme}/tokens"),
        Some(serde_json::json!({"max_uses": 1})),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.body["id"].as_str().unwrap().to_owned();
    let r = call(
        &p,
        op,
        "DELETE",
        &format!("/v1/tenants/{acme}/tokens/{id}"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = call(&p, op, "POST", "/v1/keys/rotate", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    for (path, kind) in [
        (format!("/v1/tenants/{acme}/audit"), "token.create"),
        (format!("/v1/tenants/{acme}/audit"), "token.revoke"),
        ("/v1/audit".to_owned(), "keys.rotate"),
    ] {
        let r = call(&p, op, "GET", &format!("{path}?kind={kind}"), None).await;
        let actors: Vec<&str> = r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["actor"].as_str().unwrap())
            .collect();
        assert_eq!(actors, vec!["op"], "{kind}: {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_queries_are_tenant_scoped_filtered_and_paginated() {
    let (p, _tasks) = setup().await;
    let acme = p.tenant("acme").await.unwrap().id;
    let other = p.tenant("other").await.unwrap().id;
    for (tenant, kind, actor) in [
        (&acme, "test.a", "x"),
        (&acme, "test.b", "y"),
        (&acme, "test.a", "y"),
        (&other, "test.a", "x"),
        (&acme, "test.a", "x"),
        (&acme, "test.b", "x"),
        (&other, "test.b", "y"),
        (&acme, "test.a", "x"),
    ] {
        let mut e = AuditEntry::new(kind, actor, "ok");
        e.tenant = Some(tenant.to_string());
        p.auth.audit().record(e).await;
    }
    let op = token_for(&p, "op", vec![global_admin()]).await;
    let manager = token_for(
        &p,
        "acme-manager",
        vec![Binding {
            role: Role::Manager,
            scope: Scope::Tenant {
                tenant: acme.clone(),
            },
        }],
    )
    .await;
    let org_admin = token_for(
        &p,
        "org-admin",
        vec![Binding {
            role: Role::Admin,
            scope: Scope::Organization {
                tenant: acme.clone(),
                organization: "o1".into(),
            },
        }],
    )
    .await;
    let path = format!("/v1/tenants/{acme}/audit");
    let items = |r: &HttpResponse| -> Vec<serde_json::Value> {
        r.body["items"].as_array().unwrap().clone()
    };

    // Only the tenant's own entries, newest first.
    let r = call(
        &p,
        As::Token(&manager),
        "GET",
        &format!("{path}?limit=50"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let all = items(&r);
    assert!(all.iter().all(|e| e["tenant"] == "acme"), "{all:?}");
    let tests: Vec<_> = all
        .iter()
        .filter(|e| e["kind"].as_str().unwrap().starts_with("test."))
        .collect();
    assert_eq!(tests.len(), 6, "{all:?}");
    let seqs: Vec<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] > w[1]), "{seqs:?}");
    assert!(r.body.get("next").is_none());
    let r = call(
        &p,
        As::Token(&manager),
        "GET",
        &format!("{path}?limit=50&order=oldest"),
        None,
    )
    .await;
    let mut oldest: Vec<u64> = items(&r)
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    oldest.reverse();
    assert_eq!(oldest, seqs);

    // Filters.
    let r = call(
        &p,
        As::Token(&manager),
        "GET",
        &format!("{path}?kind=test.a&actor=x"),
        None,
    )
    .await;
    let got = items(&r);
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        got.iter()
            .all(|e| e["kind"] == "test.a" && e["actor"] == "x")
    );
    let r = call(
        &p,
        As::Token(&manager),
        "GET",
        &format!("{path}?actor=y"),
        None,
    )
    .await;
    assert_eq!(items(&r).len(), 2);
    let far = wegweiser_shared::time::now() + 3600;
    let r = call(
        &p,
        As::Token(&manager),
        "GET",
        &format!("{path}?since={far}"),
        None,
    )
    .await;
    assert_eq!((r.status, items(&r).len()), (200, 0), "{r:?}");
    let r = call(
        &p,
        As::Token(&manager),
        "GET",
        &format!("{path}?until=0"),
        None,
    )
    .await;
    assert_eq!(items(&r).len(), 0);
    let r = call(
        &p,
        As::Token(&manager),
        "GET",
        &format!("{path}?since=2000-01-01T00:00:00Z&kind=test.b"),
        None,
    )
    .await;
    assert_eq!(items(&r).len(), 2, "{r:?}");
    let r = call(
        &p,
        As::Token(&manager),
        "GET",
        &format!("{path}?since=yesterday"),
        None,
    )
    .await;
    assert_eq!((r.status, r.code()), (400, "bad_request"));

    // Pages of 3 through `next`, both ways: every entry once, in order.
    for order in ["newest", "oldest"] {
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut q = format!("{path}?kind=test.a&limit=3&order={order}");
            if let Some(a) = &after {
                q.push_str(&format!("&after={a}"));
            }
            let r = call(&p, As::Token(&manager), "GET", &q, None).await;
            assert_eq!(r.status, 200, "{r:?}");
            pages += 1;
            seen.extend(items(&r).iter().map(|e| e["seq"].as_u64().unwrap()));
            match r.body.get("next") {
                Some(n) => after = Some(n.as_str().unwrap().to_owned()),
                None => break,
            }
            assert!(pages < 10);
        }
        assert_eq!(seen.len(), 4, "{order}: {seen:?}");
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        if order == "newest" {
            sorted.reverse();
        }
        assert_eq!(seen, sorted, "{order}");
        assert_eq!(pages, 2, "{order}");
    }

    // Who may read: a tenant Manager and the operator; an organization Admin sees the tenant
    // but not its tenant-wide trail; the other tenant is not found.
    let r = call(&p, As::Token(&org_admin), "GET", &path, None).await;
    assert_eq!((r.status, r.code()), (403, "forbidden"), "{r:?}");
    let r = call(
        &p,
        As::Token(&manager),
        "GET",
        &format!("/v1/tenants/{other}/audit"),
        None,
    )
    .await;
    assert_eq!((r.status, r.code()), (404, "not_found"));
    let r = call(
        &p,
        As::Token(&op),
        "GET",
        &format!("/v1/tenants/{other}/audit"),
        None,
    )
    .await;
    let got = items(&r);
    assert!(got.iter().all(|e| e["tenant"] == "other"));
    assert_eq!(
        got.iter()
            .filter(|e| e["kind"].as_str().unwrap().starts_with("test."))
            .count(),
        2
    );

    // Newest first reads backwards in growing windows: acme's entries lie far behind 600 of
    // another tenant's, and are found all the same, one page after another.
    let first = call(
        &p,
        As::Token(&manager),
        "GET",
        &format!("{path}?kind=test.a"),
        None,
    )
    .await;
    for i in 0..600 {
        let mut e = AuditEntry::new("test.bulk", "bulk", "ok");
        e.tenant = Some(other.to_string());
        e.detail = serde_json::json!({"n": i});
        p.auth.audit().record(e).await;
    }
    let r = call(
        &p,
        As::Token(&manager),
        "GET",
        &format!("{path}?kind=test.a"),
        None,
    )
    .await;
    assert_eq!(items(&r), items(&first));
    let mut seen = Vec::new();
    let mut q = format!("{path}?limit=2");
    loop {
        let r = call(&p, As::Token(&manager), "GET", &q, None).await;
        seen.extend(items(&r).iter().map(|e| e["seq"].as_u64().unwrap()));
        let Some(n) = r.body.get("next") else { break };
        q = format!("{path}?limit=2&after={}", n.as_str().unwrap());
    }
    assert_eq!(seen, seqs, "page by page, newest first");

    // The platform's own entries: no tenant; the operator only.
    let r = call(
        &p,
        As::Token(&op),
        "GET",
        "/v1/audit?kind=user.create",
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let got = items(&r);
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got.iter().all(|e| e.get("tenant").is_none()));
    assert_eq!(
        call(&p, As::Token(&manager), "GET", "/v1/audit", None)
            .await
            .status,
        404
    );
}

/// The `wegweiser` binary cargo built next to this test.
fn cp_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(std::path::Path::parent).unwrap();
    let bin = dir.join(format!("wegweiser{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p wegweiser-control-plane` (scripts/test does)",
        bin.display()
    );
    bin
}

async fn wegweiser(home: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = std::process::Command::new(cp_binary());
    c.args(args)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env_remove("WEGWEISER_API_URL")
        .env_remove("WEGWEISER_API_TOKEN")
        .env_remove("WEGWEISER_API_CA")
        .env_remove("WEGWEISER_PASSWORD")
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_logs_in_calls_the_api_and_logs_out() {
    let (p, _tasks) = setup().await;
    p.tenant("acme").await.unwrap();
    let _ = token_for(&p, "op", vec![global_admin()]).await;
    let home = tempfile::tempdir().unwrap();
    let url = p.https_url();
    let ca = p.ca.to_str().unwrap().to_owned();

    // A wrong password: the API's message, non-zero, nothing saved.
    let out = wegweiser(
        home.path(),
        &[("WEGWEISER_PASSWORD", "wrong password here")],
        &["login", "--url", &url, "--ca", &ca, "--user", "op"],
    )
    .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid_credentials"), "{err}");
    let file = home.path().join("config/wegweiser/login.json");
    assert!(!file.exists());

    let out = wegweiser(
        home.path(),
        &[("WEGWEISER_PASSWORD", PASSWORD)],
        &["login", "--url", &url, "--ca", &ca, "--user", "op"],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let token = saved["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("wgapi_"));
    assert!(!String::from_utf8_lossy(&std::fs::read(&file).unwrap()).contains(PASSWORD));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(file.parent().unwrap()), 0o700);
    }
    // The login session was ended; only the token remains.
    assert_eq!(p.auth.api_tokens(None).await.unwrap().len(), 2);

    let out = wegweiser(home.path(), &[], &["api", "GET", "/v1/tenants"]).await;
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["items"][0]["id"], "acme", "{v}");
    let out = wegweiser(
        home.path(),
        &[],
        &["api", "POST", "/v1/tenants", "--data", r#"{"id":"cli-co"}"#],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert!(p.auth.tenant(&"cli-co".parse().unwrap()).await.is_ok());
    let body = home.path().join("body.json");
    std::fs::write(&body, r#"{"retention_days": 7}"#).unwrap();
    let data = format!("@{}", body.display());
    let out = wegweiser(
        home.path(),
        &[],
        &["api", "PATCH", "/v1/tenants/cli-co", "--data", &data],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["retention_days"], 7);
    // An error answer: non-zero, with the API's code and message.
    let out = wegweiser(home.path(), &[], &["api", "GET", "/v1/tenants/nope"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("404 not_found"), "{err}");
    let out = wegweiser(
        home.path(),
        &[],
        &["api", "POST", "/v1/tenants", "--data", "{not json"],
    )
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not JSON"));

    // The environment overrides the saved login.
    let out = wegweiser(
        home.path(),
        &[("WEGWEISER_API_TOKEN", "wgapi_not-a-real-token")],
        &["api", "GET", "/v1/tenants"],
    )
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401 unauthenticated"));

    let out = wegweiser(home.path(), &[], &["logout"]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(!file.exists());
    let auth = format!("Bearer {token}");
    let r = p
        .request(
            "GET",
            "/v1/auth/me",
            &[("authorization", auth.as_str())],
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 401, "the token is revoked");
    let out = wegweiser(home.path(), &[], &["api", "GET", "/v1/tenants"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not logged in"));
    // Environment only, no saved login.
    let out = wegweiser(
        home.path(),
        &[
            ("WEGWEISER_API_URL", &url),
            ("WEGWEISER_API_CA", &ca),
            (
                "WEGWEISER_API_TOKEN",
                &token_for(&p, "ci", vec![global_admin()]).await,
            ),
        ],
        &["api", "GET", "/v1/tenants/acme"],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
}
