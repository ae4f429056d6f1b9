//! The RBAC matrix through the real HTTPS API: each of the 4 roles at each of the 4 scopes
//! (tenant, organization, group, device) against each endpoint class gets exactly the allowed
//! answers; every endpoint asked about another tenant finds nothing; only the platform
//! operator reaches the command keys. Every request carries a real API token of a real user.
#![allow(clippy::unwrap_used)]

use wegweiser_cp::{
    enrollment::NewToken,
    rbac::{Binding, Role, Scope},
    sessions::NewApiToken,
    users::{AuthConfig, Password},
};
use wegweiser_shared::{ids::TenantId, secret::SecretString};
use wegweiser_tests::{HttpResponse, Platform, PlatformOptions, sim::SimDevice};

const PASSWORD: &str = "correct horse battery staple";

async fn token_for(p: &Platform, user: &str, bindings: Vec<Binding>) -> String {
    let name = user.parse().unwrap();
    p.auth
        .create_user(
            &name,
            &Password::new(SecretString::new(PASSWORD.into())).unwrap(),
            bindings,
            "test",
        )
        .await
        .unwrap();
    let (token, _) = p
        .auth
        .create_api_token(
            NewApiToken {
                owner: name,
                label: String::new(),
                bindings: None,
                ttl_secs: 3600,
            },
            "test",
        )
        .await
        .unwrap();
    token.expose().to_owned()
}

async fn call(
    p: &Platform,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> HttpResponse {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("authorization", auth.as_str())];
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    p.request(method, path, &headers, body.map(|b| b.as_bytes().to_vec()))
        .await
        .unwrap()
}

async fn enroll_in(
    p: &Platform,
    tenant: &TenantId,
    org: &str,
    group: &str,
    machine: &str,
) -> SimDevice {
    let (tok, _) = p
        .auth
        .create_token(NewToken {
            tenant: tenant.clone(),
            organization: Some(org.into()),
            group: Some(group.into()),
            ttl_secs: None,
            max_uses: Some(1),
            label: "test".into(),
        })
        .await
        .unwrap();
    SimDevice::enroll_with(p, tok.expose(), machine)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_at_every_scope_gets_exactly_what_it_may() {
    let p = Platform::start_with(PlatformOptions {
        auth: Some(AuthConfig {
            argon2_memory_kib: 1024,
            argon2_iterations: 1,
            ..AuthConfig::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let acme = p.tenant("acme").await.unwrap().id;
    let other = p.tenant("other").await.unwrap().id;
    let _tasks = p.serve().await.unwrap();
    let dev = enroll_in(&p, &acme, "o1", "g1", "m1").await;
    let _serving = tokio::spawn(dev.clone().serve());
    let foreign = enroll_in(&p, &other, "o1", "g1", "m2").await;

    // The device index follows the store: wait until the API lists both.
    let op = token_for(
        &p,
        "op",
        vec![Binding {
            role: Role::Admin,
            scope: Scope::Global,
        }],
    )
    .await;
    for (t, d) in [(&acme, &dev.id), (&other, &foreign.id)] {
        let path = format!("/v1/tenants/{t}/devices/{d}");
        let mut found = false;
        for _ in 0..100 {
            if call(&p, &op, "GET", &path, None).await.status == 200 {
                found = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(found, "{path} never appeared");
    }
    assert_eq!(call(&p, &op, "GET", "/v1/keys", None).await.status, 200);

    let scopes = [
        (
            "tenant",
            Scope::Tenant {
                tenant: acme.clone(),
            },
        ),
        (
            "org",
            Scope::Organization {
                tenant: acme.clone(),
                organization: "o1".into(),
            },
        ),
        (
            "group",
            Scope::Group {
                tenant: acme.clone(),
                organization: "o1".into(),
                group: "g1".into(),
            },
        ),
        (
            "device",
            Scope::Device {
                tenant: acme.clone(),
                device: dev.id.clone(),
            },
        ),
    ];
    let mut checked = 0;
    for (scope_name, scope) in &scopes {
        for role in Role::ALL {
            let who = format!("{role:?}-{scope_name}").to_lowercase();
            let tok = token_for(
                &p,
                &who,
                vec![Binding {
                    role,
                    scope: scope.clone(),
                }],
            )
            .await;
            let at_least = |r: Role| role >= r;
            let device_scope = *scope_name == "device";
            let cases: Vec<(&str, String, Option<String>, u16)> = vec![
                // Read: every scope covers the device.
                (
                    "GET",
                    format!("/v1/tenants/{acme}/devices/{}", dev.id),
                    None,
                    200,
                ),
                ("GET", format!("/v1/tenants/{acme}/devices"), None, 200),
                ("GET", format!("/v1/tenants/{acme}"), None, 200),
                // The dashboard's reads.
                (
                    "GET",
                    format!("/v1/tenants/{acme}/devices/{}/detail", dev.id),
                    None,
                    200,
                ),
                (
                    "GET",
                    format!("/v1/tenants/{acme}/devices/{}/history?range=1h", dev.id),
                    None,
                    200,
                ),
                ("GET", format!("/v1/tenants/{acme}/summary"), None, 200),
                // Command the device.
                (
                    "POST",
                    format!("/v1/tenants/{acme}/commands"),
                    Some(format!(
                        r#"{{"device":"{}","kind":"ping","timeout_secs":5}}"#,
                        dev.id
                    )),
                    if at_least(Role::Technician) { 200 } else { 403 },
                ),
                // Manage: an enrollment token for the device's group (not inside a device scope).
                (
                    "POST",
                    format!("/v1/tenants/{acme}/tokens"),
                    Some(r#"{"organization":"o1","group":"g1"}"#.into()),
                    if device_scope {
                        404
                    } else if at_least(Role::Manager) {
                        201
                    } else {
                        403
                    },
                ),
                // Platform: command keys.
                ("GET", "/v1/keys".into(), None, 404),
                ("POST", "/v1/keys/rotate".into(), None, 404),
                // Another tenant: nothing exists there.
                ("GET", format!("/v1/tenants/{other}"), None, 404),
                ("GET", format!("/v1/tenants/{other}/devices"), None, 404),
                (
                    "GET",
                    format!("/v1/tenants/{other}/devices/{}", foreign.id),
                    None,
                    404,
                ),
                ("GET", format!("/v1/tenants/{other}/tokens"), None, 404),
                ("GET", format!("/v1/tenants/{other}/summary"), None, 404),
                ("GET", format!("/v1/tenants/{other}/live"), None, 404),
                (
                    "GET",
                    format!("/v1/tenants/{other}/devices/{}/detail", foreign.id),
                    None,
                    404,
                ),
                (
                    "GET",
                    format!("/v1/tenants/{other}/devices/{}/history", foreign.id),
                    None,
                    404,
                ),
                (
                    "POST",
                    format!("/v1/tenants/{other}/commands"),
                    Some(format!(r#"{{"device":"{}","kind":"ping"}}"#, foreign.id)),
                    404,
                ),
                (
                    "POST",
                    format!("/v1/tenants/{other}/devices/{}/revoke", foreign.id),
                    None,
                    404,
                ),
                (
                    "POST",
                    format!("/v1/tenants/{other}/tokens"),
                    Some("{}".into()),
                    404,
                ),
            ];
            for (method, path, body, want) in cases {
                let r = call(&p, &tok, method, &path, body.as_deref()).await;
                assert_eq!(r.status, want, "{who}: {method} {path}: {r:?}");
                if want == 404 {
                    assert_eq!(r.code(), "not_found", "{who}: {method} {path}");
                }
                if want == 200 && path.ends_with("/commands") {
                    assert_eq!(r.body["devices"][0]["status"], "ok", "{who}: {r:?}");
                }
                checked += 1;
            }
            // The dashboard shows the command form exactly to the roles that may command.
            let detail = call(
                &p,
                &tok,
                "GET",
                &format!("/v1/tenants/{acme}/devices/{}/detail", dev.id),
                None,
            )
            .await;
            let can = detail.body["can"].as_array().unwrap();
            assert_eq!(
                can.iter().any(|c| c == "command"),
                at_least(Role::Technician),
                "{who}: {can:?}"
            );
            // The list shows only what the scope covers, and never the other tenant's device.
            let list = call(
                &p,
                &tok,
                "GET",
                &format!("/v1/tenants/{acme}/devices"),
                None,
            )
            .await;
            let ids: Vec<&str> = list.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["id"].as_str().unwrap())
                .collect();
            assert_eq!(ids, vec![dev.id.as_str()], "{who}");
        }
    }
    assert_eq!(checked, 4 * 4 * 21);
    // A second device in the same group: a technician scoped to the first device must not reach
    // it by commanding the whole group, even though it cannot see it.
    let second = enroll_in(&p, &acme, "o1", "g1", "m3").await;
    let _second_serving = tokio::spawn(second.clone().serve());
    for _ in 0..100 {
        if call(
            &p,
            &op,
            "GET",
            &format!("/v1/tenants/{acme}/devices/{}", second.id),
            None,
        )
        .await
        .status
            == 200
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let tech = token_for(
        &p,
        "tech-one-device",
        vec![Binding {
            role: Role::Technician,
            scope: scopes[3].1.clone(),
        }],
    )
    .await;
    let group_ping = r#"{"group":"g1","kind":"ping","timeout_secs":5}"#;
    let r = call(
        &p,
        &tech,
        "POST",
        &format!("/v1/tenants/{acme}/commands"),
        Some(group_ping),
    )
    .await;
    assert_eq!(r.status, 404, "{r:?}");
    assert!(
        second.seen().executed.is_empty(),
        "the unseen device ran nothing"
    );
    // A group-scoped technician commands both.
    let group_tech = token_for(
        &p,
        "tech-group",
        vec![Binding {
            role: Role::Technician,
            scope: scopes[2].1.clone(),
        }],
    )
    .await;
    let r = call(
        &p,
        &group_tech,
        "POST",
        &format!("/v1/tenants/{acme}/commands"),
        Some(group_ping),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["devices"].as_array().unwrap().len(), 2, "{r:?}");
    // The other tenant's device never saw a command.
    assert!(foreign.seen().executed.is_empty());
}
