//! The RBAC matrix through the real HTTPS API: each of the 4 roles at each of the 4 scopes
//! (tenant, organization, group, device) against each endpoint class (devices, commands,
//! tokens, organizations and groups, device moves) gets exactly the allowed answers; every endpoint asked about another tenant finds nothing; only the platform
//! operator reaches the command keys. Every request carries a real API token of a real user.
#![allow(clippy::unwrap_used)]

use wegweiser_cp::{
    rbac::{Binding, Role, Scope},
    users::AuthConfig,
};
use wegweiser_tests::user_token as token_for;
use wegweiser_tests::{HttpResponse, Platform, PlatformOptions, sim::SimDevice};

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

/// Waits until the operator's `GET path` answers `status` (the device index follows the store).
async fn wait_for(p: &Platform, op: &str, path: &str, status: u16) {
    for _ in 0..200 {
        if call(p, op, "GET", path, None).await.status == status {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("GET {path} never answered {status}");
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
    let dev = SimDevice::enroll_in(&p, &acme, "o1", "g1", "m1")
        .await
        .unwrap();
    let _serving = dev.spawn_serve(&p).await.unwrap();
    let foreign = SimDevice::enroll_in(&p, &other, "o1", "g1", "m2")
        .await
        .unwrap();
    // Siblings: an organization and a group outside the narrower scopes.
    p.place(&acme, "o2", Some("g2")).await.unwrap();
    p.place(&acme, "o1", Some("g1b")).await.unwrap();

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
    // Users to administer: one in the group, one at the tenant, one in the other tenant.
    for (name, scope) in [
        ("in-group", scopes[2].1.clone()),
        ("in-tenant", scopes[0].1.clone()),
        (
            "elsewhere",
            Scope::Tenant {
                tenant: other.clone(),
            },
        ),
    ] {
        token_for(
            &p,
            name,
            vec![Binding {
                role: Role::Viewer,
                scope,
            }],
        )
        .await;
    }
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
                // Tenants: the platform operator's; a tenant in view is 403, else 404.
                (
                    "POST",
                    "/v1/tenants".into(),
                    Some(format!(r#"{{"id":"t-{who}"}}"#)),
                    404,
                ),
                (
                    "PATCH",
                    format!("/v1/tenants/{acme}"),
                    Some(r#"{"retention_days":5}"#.into()),
                    403,
                ),
                ("DELETE", format!("/v1/tenants/{acme}"), None, 403),
                ("DELETE", format!("/v1/tenants/{other}"), None, 404),
                // Users: Admins in their scopes; other roles 403 in scope, 404 outside.
                (
                    "GET",
                    "/v1/users".into(),
                    None,
                    if role == Role::Admin { 200 } else { 403 },
                ),
                (
                    "POST",
                    "/v1/users".into(),
                    Some(format!(
                        r#"{{"name":"new-{who}","bindings":[{}]}}"#,
                        serde_json::to_string(&Binding {
                            role: Role::Viewer,
                            scope: scope.clone(),
                        })
                        .unwrap()
                    )),
                    if role == Role::Admin { 201 } else { 403 },
                ),
                (
                    "GET",
                    "/v1/users/in-group".into(),
                    None,
                    if device_scope {
                        404
                    } else if role == Role::Admin {
                        200
                    } else {
                        403
                    },
                ),
                (
                    "GET",
                    "/v1/users/in-tenant".into(),
                    None,
                    match (*scope_name, role) {
                        ("tenant", Role::Admin) => 200,
                        ("tenant", _) => 403,
                        _ => 404,
                    },
                ),
                ("GET", "/v1/users/elsewhere".into(), None, 404),
                ("POST", "/v1/users/elsewhere/disable".into(), None, 404),
                // Bindings: a tenant-scope binding only by a tenant Admin (an organization or
                // group Admin gets 403); a group binding by any Admin whose scope holds it.
                (
                    "POST",
                    "/v1/users/in-group/bindings".into(),
                    Some(format!(
                        r#"{{"role":"viewer","scope":"tenant","tenant":"{acme}"}}"#
                    )),
                    if device_scope {
                        404
                    } else if (*scope_name, role) == ("tenant", Role::Admin) {
                        200
                    } else {
                        403
                    },
                ),
                (
                    "DELETE",
                    format!("/v1/users/in-group/bindings?role=viewer&scope=tenant&tenant={acme}"),
                    None,
                    if device_scope {
                        404
                    } else if (*scope_name, role) == ("tenant", Role::Admin) {
                        200
                    } else {
                        403
                    },
                ),
                (
                    "POST",
                    "/v1/users/in-group/bindings".into(),
                    Some(format!(
                        r#"{{"role":"technician","scope":"group","tenant":"{acme}","organization":"o1","group":"g1"}}"#
                    )),
                    if device_scope {
                        404
                    } else if role == Role::Admin {
                        200
                    } else {
                        403
                    },
                ),
                (
                    "POST",
                    "/v1/users/in-tenant/bindings".into(),
                    Some(format!(
                        r#"{{"role":"viewer","scope":"tenant","tenant":"{other}"}}"#
                    )),
                    match (*scope_name, role) {
                        // The user is in view, the binding's tenant is not.
                        ("tenant", Role::Admin) => 404,
                        ("tenant", _) => 403,
                        _ => 404,
                    },
                ),
                // Audit: the tenant's trail needs Manager at the tenant scope; the platform's
                // is global.
                (
                    "GET",
                    format!("/v1/tenants/{acme}/audit?limit=5"),
                    None,
                    if *scope_name == "tenant" && at_least(Role::Manager) {
                        200
                    } else {
                        403
                    },
                ),
                ("GET", format!("/v1/tenants/{other}/audit"), None, 404),
                ("GET", "/v1/audit".into(), None, 404),
            ];
            let above_device = |tenant_or_org: bool| -> u16 {
                // Manage on an organization: covered by tenant and organization scopes only.
                if !tenant_or_org {
                    404
                } else if at_least(Role::Manager) {
                    200
                } else {
                    403
                }
            };
            let tenant_scope = *scope_name == "tenant";
            let org_or_above = tenant_scope || *scope_name == "org";
            let manage_group = |ok: u16| {
                if device_scope {
                    404
                } else if at_least(Role::Manager) {
                    ok
                } else {
                    403
                }
            };
            let hierarchy: Vec<(&str, String, Option<String>, u16)> = vec![
                // Read: the organization and group holding the scope are visible to all.
                (
                    "GET",
                    format!("/v1/tenants/{acme}/organizations"),
                    None,
                    200,
                ),
                (
                    "GET",
                    format!("/v1/tenants/{acme}/organizations/o1"),
                    None,
                    200,
                ),
                (
                    "GET",
                    format!("/v1/tenants/{acme}/organizations/o1/groups"),
                    None,
                    200,
                ),
                ("GET", format!("/v1/tenants/{acme}/groups/g1"), None, 200),
                // Siblings outside the scope do not exist for it.
                (
                    "GET",
                    format!("/v1/tenants/{acme}/organizations/o2"),
                    None,
                    if tenant_scope { 200 } else { 404 },
                ),
                (
                    "GET",
                    format!("/v1/tenants/{acme}/groups/g1b"),
                    None,
                    if org_or_above { 200 } else { 404 },
                ),
                // Create an organization: Manage on the tenant.
                (
                    "POST",
                    format!("/v1/tenants/{acme}/organizations"),
                    Some(format!(r#"{{"id":"n-{who}"}}"#)),
                    match above_device(tenant_scope) {
                        200 => 201,
                        other => other,
                    },
                ),
                // Rename and create a group in it: Manage on the organization.
                (
                    "PATCH",
                    format!("/v1/tenants/{acme}/organizations/o1"),
                    Some(r#"{"name":"Org One"}"#.into()),
                    above_device(org_or_above),
                ),
                (
                    "POST",
                    format!("/v1/tenants/{acme}/organizations/o1/groups"),
                    Some(format!(r#"{{"id":"ng-{who}"}}"#)),
                    match above_device(org_or_above) {
                        200 => 201,
                        other => other,
                    },
                ),
                // Rename a group: Manage on the group.
                (
                    "PATCH",
                    format!("/v1/tenants/{acme}/groups/g1"),
                    Some(r#"{"name":"Group One"}"#.into()),
                    manage_group(200),
                ),
                // Deleting what still holds the device is refused, to whoever may manage it.
                (
                    "DELETE",
                    format!("/v1/tenants/{acme}/groups/g1"),
                    None,
                    manage_group(409),
                ),
                (
                    "DELETE",
                    format!("/v1/tenants/{acme}/organizations/o1"),
                    None,
                    match above_device(org_or_above) {
                        200 => 409,
                        other => other,
                    },
                ),
                // Moving the device (to where it is): Manage on the device and the destination.
                (
                    "POST",
                    format!("/v1/tenants/{acme}/devices/{}/move", dev.id),
                    Some(r#"{"organization":"o1","group":"g1"}"#.into()),
                    if !at_least(Role::Manager) {
                        403
                    } else if device_scope {
                        404
                    } else {
                        200
                    },
                ),
                // Another tenant's hierarchy does not exist.
                (
                    "GET",
                    format!("/v1/tenants/{other}/organizations"),
                    None,
                    404,
                ),
                (
                    "GET",
                    format!("/v1/tenants/{other}/organizations/o1"),
                    None,
                    404,
                ),
                (
                    "GET",
                    format!("/v1/tenants/{other}/organizations/o1/groups"),
                    None,
                    404,
                ),
                ("GET", format!("/v1/tenants/{other}/groups/g1"), None, 404),
                (
                    "POST",
                    format!("/v1/tenants/{other}/organizations"),
                    Some(r#"{"id":"x"}"#.into()),
                    404,
                ),
                (
                    "PATCH",
                    format!("/v1/tenants/{other}/organizations/o1"),
                    Some(r#"{"name":"x"}"#.into()),
                    404,
                ),
                (
                    "PATCH",
                    format!("/v1/tenants/{other}/groups/g1"),
                    Some(r#"{"organization":"o1"}"#.into()),
                    404,
                ),
                (
                    "DELETE",
                    format!("/v1/tenants/{other}/organizations/o1?cascade=true"),
                    None,
                    404,
                ),
                (
                    "DELETE",
                    format!("/v1/tenants/{other}/groups/g1?cascade=true"),
                    None,
                    404,
                ),
                (
                    "DELETE",
                    format!("/v1/tenants/{other}/devices/{}", foreign.id),
                    None,
                    404,
                ),
                (
                    "POST",
                    format!("/v1/tenants/{other}/devices/{}/move", foreign.id),
                    Some(r#"{"organization":"o1"}"#.into()),
                    404,
                ),
            ];
            let cases: Vec<_> = cases.into_iter().chain(hierarchy).collect();
            for (method, path, body, want) in cases {
                let r = call(&p, &tok, method, &path, body.as_deref()).await;
                assert_eq!(r.status, want, "{who}: {method} {path}: {r:?}");
                if want == 404 {
                    assert_eq!(r.code(), "not_found", "{who}: {method} {path}");
                }
                if want == 200 && path.ends_with("/commands") {
                    assert_eq!(r.body["devices"][0]["status"], "ok", "{who}: {r:?}");
                }
                if want == 409 {
                    assert_eq!(r.code(), "conflict", "{who}: {method} {path}");
                }
                if want == 201 && (path.ends_with("/organizations") || path.ends_with("/groups")) {
                    // What it created, it may delete again (and the lists below stay exact).
                    let id = r.body["id"].as_str().unwrap();
                    let gone = if path.ends_with("/groups") {
                        format!("/v1/tenants/{acme}/groups/{id}")
                    } else {
                        format!("/v1/tenants/{acme}/organizations/{id}")
                    };
                    let d = call(&p, &tok, "DELETE", &gone, None).await;
                    assert_eq!(d.status, 204, "{who}: DELETE {gone}: {d:?}");
                }
                checked += 1;
            }
            // Deleting a device: forbidden below Manager (asked about the shared device, which
            // every scope covers); allowed to a Manager whose scope covers it (asked about a
            // device enrolled for this, in the shared device's group), which a device scope
            // does not.
            if at_least(Role::Manager) {
                let victim = SimDevice::enroll_in(&p, &acme, "o1", "g1", &format!("victim-{who}"))
                    .await
                    .unwrap();
                let path = format!("/v1/tenants/{acme}/devices/{}", victim.id);
                wait_for(&p, &op, &path, 200).await;
                let r = call(&p, &tok, "DELETE", &path, None).await;
                let want = if device_scope { 404 } else { 204 };
                assert_eq!(r.status, want, "{who}: DELETE {path}: {r:?}");
                if device_scope {
                    // Deleted by someone who may, so the lists below stay exact.
                    assert_eq!(call(&p, &op, "DELETE", &path, None).await.status, 204);
                }
                wait_for(&p, &op, &path, 404).await;
            } else {
                let path = format!("/v1/tenants/{acme}/devices/{}", dev.id);
                let r = call(&p, &tok, "DELETE", &path, None).await;
                assert_eq!(r.status, 403, "{who}: DELETE {path}: {r:?}");
            }
            checked += 1;
            // Lists show what holds the scope: every organization and group to a tenant-scoped
            // user, the organization and group of the device to those scoped below.
            let ids = |r: &wegweiser_tests::HttpResponse| -> Vec<String> {
                r.body["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| o["id"].as_str().unwrap().to_owned())
                    .collect()
            };
            let orgs = call(
                &p,
                &tok,
                "GET",
                &format!("/v1/tenants/{acme}/organizations"),
                None,
            )
            .await;
            let want: Vec<&str> = if tenant_scope {
                vec!["o1", "o2"]
            } else {
                vec!["o1"]
            };
            assert_eq!(ids(&orgs), want, "{who}: {orgs:?}");
            let groups = call(
                &p,
                &tok,
                "GET",
                &format!("/v1/tenants/{acme}/organizations/o1/groups"),
                None,
            )
            .await;
            let want: Vec<&str> = if org_or_above {
                vec!["g1", "g1b"]
            } else {
                vec!["g1"]
            };
            assert_eq!(ids(&groups), want, "{who}: {groups:?}");
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
    assert_eq!(checked, 4 * 4 * (31 + 24 + 1 + 7));
    // Global roles other than Admin: the platform is in view (403), not theirs to change.
    let global_viewer = token_for(
        &p,
        "global-viewer",
        vec![Binding {
            role: Role::Viewer,
            scope: Scope::Global,
        }],
    )
    .await;
    for (method, path, body, want) in [
        ("POST", "/v1/tenants", Some(r#"{"id":"gv"}"#), 403),
        ("GET", "/v1/audit", None, 403),
        ("GET", "/v1/users", None, 403),
        ("GET", "/v1/users/in-group", None, 403),
        ("GET", "/v1/users/no-such-user", None, 404),
    ] {
        let r = call(&p, &global_viewer, method, path, body).await;
        assert_eq!(r.status, want, "global viewer: {method} {path}: {r:?}");
    }
    let r = call(&p, &op, "GET", "/v1/audit?kind=user.create", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    // A device binding lies where the device does: an organization Admin grants one for a
    // device of its organization, not for the other tenant's device.
    let org_admin = token_for(
        &p,
        "org-admin-devices",
        vec![Binding {
            role: Role::Admin,
            scope: scopes[1].1.clone(),
        }],
    )
    .await;
    for (device, tenant, want) in [(&dev.id, &acme, 200), (&foreign.id, &other, 404)] {
        let body = format!(
            r#"{{"role":"technician","scope":"device","tenant":"{tenant}","device":"{device}"}}"#
        );
        let r = call(
            &p,
            &org_admin,
            "POST",
            "/v1/users/in-group/bindings",
            Some(&body),
        )
        .await;
        assert_eq!(r.status, want, "{body}: {r:?}");
    }
    // A second device in the same group: a technician scoped to the first device must not reach
    // it by commanding the whole group, even though it cannot see it.
    let second = SimDevice::enroll_in(&p, &acme, "o1", "g1", "m3")
        .await
        .unwrap();
    let _second_serving = second.spawn_serve(&p).await.unwrap();
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
