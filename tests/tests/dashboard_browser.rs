//! The technician dashboard in a real headless Chromium (Debian's `chromium`, driven over the
//! DevTools protocol) against a real platform and a real enrolled `wegweiser-agent` process:
//! an Admin logs in, sees the agent in the list go online live, sees its charts gain points,
//! pings it and sees the answer; a Viewer gets no command form. Every request the page makes
//! goes to the control plane's origin, the page breaks no rule of its Content-Security-Policy
//! and throws no script error, and neither 1280×800 nor a 390 px phone screen overflows
//! sideways. Screenshots land in `target/test-artifacts/dashboard/`.
//!
//! Chromium trusts exactly the control plane's key (`--ignore-certificate-errors-spki-list`
//! with the SHA-256 of the server certificate's public key), not any certificate.
//!
//! `WEGWEISER_SKIP_BROWSER=1` skips the test (loudly); `WEGWEISER_CHROMIUM` names another
//! Chromium binary.
#![allow(clippy::unwrap_used)]

use base64::Engine;
use chromiumoxide::{
    Browser, BrowserConfig, Page,
    cdp::browser_protocol::{emulation::SetDeviceMetricsOverrideParams, network},
    cdp::js_protocol::runtime::EvaluateParams,
    handler::viewport::Viewport,
    page::ScreenshotParams,
};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use wegweiser_cp::{
    rbac::{Binding, Role, Scope},
    users::Password,
};
use wegweiser_shared::{ids::TenantId, secret::SecretString};
use wegweiser_tests::{
    Platform,
    agent::{Running, enroll_agent, fast_heartbeats, setup},
    workspace_root,
};

const PASSWORD: &str = "correct horse battery staple";
/// 1280×800, a laptop.
const DESKTOP: (i64, i64, bool) = (1280, 800, false);
/// 390×844, a phone.
const PHONE: (i64, i64, bool) = (390, 844, true);

fn chromium() -> Option<PathBuf> {
    if std::env::var("WEGWEISER_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!(
            "\n*** SKIPPED: the dashboard browser test (WEGWEISER_SKIP_BROWSER=1). ***\n\
             *** The dashboard was NOT checked in a browser.                     ***\n"
        );
        return None;
    }
    let path = std::env::var_os("WEGWEISER_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "{} is missing: install Debian's chromium with scripts/install-browser \
         (or set WEGWEISER_SKIP_BROWSER=1 to skip this test)",
        path.display()
    );
    Some(path)
}

/// The base64 SHA-256 of the SubjectPublicKeyInfo of the first certificate in `pem`.
fn spki_pin(pem: &Path) -> String {
    let pem = std::fs::read(pem).unwrap();
    let der = ureq::tls::parse_pem(&pem)
        .find_map(|i| match i {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c.der().to_vec()),
            _ => None,
        })
        .unwrap();
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version, serialNumber,
    // signature, issuer, validity, subject, subjectPublicKeyInfo, ... }, ... }
    let (cert, _) = der_item(&der);
    let (tbs, _) = der_item(der_content(cert));
    let mut rest = der_content(tbs);
    let mut fields = Vec::new();
    while !rest.is_empty() {
        let (item, more) = der_item(rest);
        fields.push(item);
        rest = more;
    }
    let skip = usize::from(fields[0][0] == 0xa0);
    let spki = fields[skip + 5];
    assert_eq!(spki[0], 0x30, "the public key info is a SEQUENCE");
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(spki))
}

/// The first DER item of `b` (tag, length and content) and what follows it.
fn der_item(b: &[u8]) -> (&[u8], &[u8]) {
    let (len, head) = match b[1] {
        n if n < 0x80 => (usize::from(n), 2),
        n => {
            let k = usize::from(n & 0x7f);
            let len = b[2..2 + k]
                .iter()
                .fold(0usize, |a, x| (a << 8) | usize::from(*x));
            (len, 2 + k)
        }
    };
    b.split_at(head + len)
}

fn der_content(item: &[u8]) -> &[u8] {
    let head = if item[1] < 0x80 {
        2
    } else {
        2 + usize::from(item[1] & 0x7f)
    };
    &item[head..]
}

async fn user(p: &Platform, name: &str, role: Role, tenant: &TenantId) {
    p.auth
        .create_user(
            &name.parse().unwrap(),
            &Password::new(SecretString::new(PASSWORD.into())).unwrap(),
            vec![Binding {
                role,
                scope: Scope::Tenant {
                    tenant: tenant.clone(),
                },
            }],
            "test",
        )
        .await
        .unwrap();
}

/// Evaluates `js` in the page (awaiting a promise) and returns its JSON value.
async fn eval(page: &Page, js: &str) -> serde_json::Value {
    let params = EvaluateParams::builder()
        .expression(js)
        .await_promise(true)
        .return_by_value(true)
        .build()
        .unwrap();
    match page.evaluate_expression(params).await {
        Ok(r) => r.value().cloned().unwrap_or(serde_json::Value::Null),
        Err(e) => panic!("evaluating {js}: {e}"),
    }
}

/// Waits until `js` is true in the page.
async fn wait_for(page: &Page, js: &str, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    loop {
        if eval(page, js).await == serde_json::Value::Bool(true) {
            return;
        }
        if Instant::now() > deadline {
            let text = eval(page, "document.body.innerText").await;
            let dbg = eval(page, "(state.tenant ? fetch(tpath('/devices')) : Promise.reject('no tenant')).then(r => r.text(), e => String(e)).then(t => t + ' events=' + window.__ev + ' rs=' + (state.live && state.live.readyState))").await;
            eprintln!("The device list API answers: {dbg}");
            panic!("timed out waiting for {what} ({js}); the page shows: {text}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Saves a full-page screenshot, then puts back the viewport `(width, height, mobile)` (a
/// full-page capture resizes the page).
async fn screenshot(page: &Page, name: &str, viewport: (i64, i64, bool)) {
    let dir = workspace_root().join("target/test-artifacts/dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    // Let pending layout and fonts settle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    page.save_screenshot(
        ScreenshotParams::builder().full_page(true).build(),
        dir.join(format!("{name}.png")),
    )
    .await
    .unwrap();
    set_viewport(page, viewport.0, viewport.1, viewport.2).await;
}

/// No element sticks out to the right of the viewport (scrollable tables excepted), and the
/// document is no wider than the window.
async fn assert_no_horizontal_overflow(page: &Page, width: i64, what: &str) {
    let v = eval(
        page,
        r#"(() => {
            const w = document.documentElement.clientWidth;
            const out = [];
            for (const el of document.querySelectorAll('body *')) {
                if (el.closest('.table-wrap') || el.closest('[hidden]')) continue;
                const r = el.getBoundingClientRect();
                if (r.width > 0 && r.right > w + 1) out.push(el.tagName + '#' + el.id + '.' + el.className + ' ' + Math.round(r.right));
            }
            return { width: w, scroll: document.documentElement.scrollWidth, out: out.slice(0, 10) };
        })()"#,
    )
    .await;
    assert_eq!(
        v["width"], width,
        "{what}: the viewport is not as wide as expected"
    );
    assert!(
        v["scroll"].as_u64() <= v["width"].as_u64() && v["out"].as_array().unwrap().is_empty(),
        "{what} overflows sideways: {v}"
    );
}

async fn set_viewport(page: &Page, width: i64, height: i64, mobile: bool) {
    page.execute(SetDeviceMetricsOverrideParams::new(
        width,
        height,
        if mobile { 2.0 } else { 1.0 },
        mobile,
    ))
    .await
    .unwrap();
}

async fn login(page: &Page, name: &str) {
    wait_for(
        page,
        "!document.getElementById('login').hidden",
        Duration::from_secs(15),
        "the login form",
    )
    .await;
    page.find_element("#login-user")
        .await
        .unwrap()
        .click()
        .await
        .unwrap()
        .type_str(name)
        .await
        .unwrap();
    page.find_element("#login-password")
        .await
        .unwrap()
        .click()
        .await
        .unwrap()
        .type_str(PASSWORD)
        .await
        .unwrap();
    page.find_element("#login-submit")
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(
        page,
        "!document.getElementById('shell').hidden",
        Duration::from_secs(15),
        "the dashboard after login",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_live_agent_and_commands_it() {
    let Some(chromium) = chromium() else {
        return;
    };
    let (p, tenant, _tasks) = setup(None).await;
    let state = p.dir.path().join("agent");
    let device = enroll_agent(&p, &tenant, &state).await;
    fast_heartbeats(&state);
    user(&p, "admin", Role::Admin, &tenant).await;
    user(&p, "viewer", Role::Viewer, &tenant).await;

    let base = p.https_url();
    let cert = p.auth.config().http.as_ref().unwrap().tls_cert.clone();
    let profile = tempfile::tempdir().unwrap();
    let config = BrowserConfig::builder()
        .chrome_executable(chromium)
        .no_sandbox()
        .respect_https_errors()
        .user_data_dir(profile.path())
        .window_size(1280, 800)
        .viewport(Viewport {
            width: 1280,
            height: 800,
            ..Default::default()
        })
        // chromiumoxide adds the dashes, and by default `--headless`, `--no-first-run`,
        // `--disable-background-networking` and `--disable-sync`.
        .args([
            "disable-gpu".to_owned(),
            "disable-quic".to_owned(),
            "disable-component-update".to_owned(),
            format!("ignore-certificate-errors-spki-list={}", spki_pin(&cert)),
        ])
        .launch_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let (mut browser, mut handler) = Browser::launch(config).await.unwrap();
    let driver = tokio::spawn(async move { while handler.next().await.is_some() {} });

    let page = browser.new_page("about:blank").await.unwrap();
    let requests = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut sent = page
        .event_listener::<network::EventRequestWillBeSent>()
        .await
        .unwrap();
    let seen = requests.clone();
    tokio::spawn(async move {
        while let Some(e) = sent.next().await {
            seen.lock().unwrap().push(e.request.url.clone());
        }
    });

    // Content-Security-Policy violations and script errors are collected from the start.
    page.evaluate_on_new_document(
        "window.__problems = []; \
         document.addEventListener('securitypolicyviolation', e => \
           window.__problems.push('CSP ' + e.violatedDirective + ' ' + e.blockedURI)); \
         window.addEventListener('error', e => window.__problems.push('error ' + e.message)); \
         window.addEventListener('unhandledrejection', e => \
           window.__problems.push('rejection ' + String(e.reason)));",
    )
    .await
    .unwrap();
    // The shell is public; the data is not: the login form comes first.
    page.goto(format!("{base}/")).await.unwrap();
    login(&page, "admin").await;

    // The enrolled agent is listed, offline: it has not run yet.
    eval(&page, "location.hash = '#/devices'").await;
    let row = format!("document.querySelector('tr[data-device=\"{device}\"]')");
    wait_for(
        &page,
        &format!("!!{row}"),
        Duration::from_secs(15),
        "the agent in the list",
    )
    .await;
    assert_eq!(
        eval(
            &page,
            &format!("{row}.querySelector('[data-status]').dataset.status")
        )
        .await,
        "offline"
    );
    wait_for(
        &page,
        "document.getElementById('live-state').classList.contains('on')",
        Duration::from_secs(15),
        "the live stream",
    )
    .await;

    // The agent starts; the row turns online without a reload (pushed over the live stream).
    eval(&page, "window.__sameDocument = true; window.__ev = 0; state.live.addEventListener('device', () => window.__ev++)").await;
    let _agent = Running::start(&state);
    let online = format!("{row}.querySelector('[data-status]').dataset.status === 'online'");
    let deadline = Instant::now() + Duration::from_secs(45);
    while eval(&page, &online).await != true {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(state.join("agent.log")).unwrap_or_default();
            let tail: String = log.lines().rev().take(20).collect::<Vec<_>>().join("\n");
            let hb = p
                .auth
                .latest(
                    &tenant,
                    &device,
                    wegweiser_shared::telemetry::Kind::Heartbeat,
                )
                .await;
            panic!(
                "the agent never showed online; latest heartbeat stored: {:?}; page: {}; agent log (newest first):\n{tail}",
                hb.map(|l| l.map(|l| l.received_at)),
                eval(&page, "document.body.innerText").await
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_for(
        &page,
        &format!("{row}.querySelector('.num').textContent.includes('%')"),
        Duration::from_secs(30),
        "the agent's CPU in the list",
    )
    .await;
    assert_eq!(
        eval(&page, "window.__sameDocument === true").await,
        true,
        "the page must not have reloaded"
    );
    screenshot(&page, "devices-1280", DESKTOP).await;
    assert_no_horizontal_overflow(&page, DESKTOP.0, "the device list at 1280×800").await;

    // Server-side search: a host name that matches nothing empties the list.
    page.find_element("#search")
        .await
        .unwrap()
        .click()
        .await
        .unwrap()
        .type_str("no-such-host")
        .await
        .unwrap();
    wait_for(
        &page,
        &format!("!{row} && !!document.querySelector('#device-rows .empty')"),
        Duration::from_secs(10),
        "the search to find nothing",
    )
    .await;
    eval(&page, "location.hash = '#/overview'").await;
    wait_for(
        &page,
        "document.getElementById('stat-online')?.textContent === '1'",
        Duration::from_secs(15),
        "one online device in the overview",
    )
    .await;
    screenshot(&page, "overview-1280", DESKTOP).await;

    // The device page: charts from the history, then live points.
    eval(&page, &format!("location.hash = '#/device/{device}'")).await;
    let points = "Number(document.getElementById('chart-cpu')?.dataset.points || 0)";
    wait_for(
        &page,
        &format!("{points} >= 1"),
        Duration::from_secs(20),
        "the CPU chart",
    )
    .await;
    let before = eval(&page, points).await.as_u64().unwrap();
    wait_for(
        &page,
        &format!("{points} > {before}"),
        Duration::from_secs(40),
        "the CPU chart gaining a live point",
    )
    .await;
    assert_eq!(
        eval(
            &page,
            "document.querySelector('#device-status [data-status]').dataset.status"
        )
        .await,
        "online"
    );

    // A ping through the command form, and its answer.
    page.find_element("#command-send")
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(
        &page,
        "!!document.getElementById('command-status')",
        Duration::from_secs(30),
        "the command's result",
    )
    .await;
    assert_eq!(
        eval(
            &page,
            "document.getElementById('command-status').textContent"
        )
        .await,
        "ok",
        "{}",
        eval(&page, "document.getElementById('command-result').innerText").await
    );
    screenshot(&page, "device-1280", DESKTOP).await;
    assert_no_horizontal_overflow(&page, DESKTOP.0, "the device page at 1280×800").await;

    // The audit view answers, with entries or as not available.
    eval(&page, "location.hash = '#/audit'").await;
    wait_for(
        &page,
        "!!document.querySelector('#audit table, #audit-unavailable, #audit .empty')",
        Duration::from_secs(15),
        "the audit view",
    )
    .await;
    screenshot(&page, "audit-1280", DESKTOP).await;

    // A phone-width screen.
    set_viewport(&page, PHONE.0, PHONE.1, PHONE.2).await;
    eval(&page, "location.hash = '#/devices'").await;
    // The list keeps its search across views: clear it.
    wait_for(
        &page,
        "!!document.getElementById('search')",
        Duration::from_secs(15),
        "the device list at phone width",
    )
    .await;
    eval(&page, "document.getElementById('search').value = ''; document.getElementById('search').dispatchEvent(new Event('input'))").await;
    wait_for(
        &page,
        &format!("!!{row}"),
        Duration::from_secs(15),
        "the list at phone width",
    )
    .await;
    assert_no_horizontal_overflow(&page, PHONE.0, "the device list at 390 px").await;
    screenshot(&page, "devices-390", PHONE).await;
    eval(&page, &format!("location.hash = '#/device/{device}'")).await;
    wait_for(
        &page,
        &format!("{points} >= 1"),
        Duration::from_secs(20),
        "the device page at phone width",
    )
    .await;
    assert_no_horizontal_overflow(&page, PHONE.0, "the device page at 390 px").await;
    screenshot(&page, "device-390", PHONE).await;
    eval(&page, "location.hash = '#/overview'").await;
    wait_for(
        &page,
        "!!document.getElementById('stat-online')",
        Duration::from_secs(15),
        "the overview at phone width",
    )
    .await;
    assert_no_horizontal_overflow(&page, PHONE.0, "the overview at 390 px").await;
    screenshot(&page, "overview-390", PHONE).await;
    set_viewport(&page, DESKTOP.0, DESKTOP.1, DESKTOP.2).await;

    // A Viewer sees the device but no command form, and the server refuses a command anyway.
    page.find_element("#logout")
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    login(&page, "viewer").await;
    eval(&page, &format!("location.hash = '#/device/{device}'")).await;
    wait_for(
        &page,
        "!!document.getElementById('command-denied')",
        Duration::from_secs(15),
        "the device page of a Viewer",
    )
    .await;
    assert_eq!(
        eval(&page, "!!document.getElementById('command-form')").await,
        false,
        "a Viewer must not get the command form"
    );
    let status = eval(
        &page,
        &format!(
            "fetch('/v1/tenants/{tenant}/commands', {{method: 'POST', headers: {{'content-type': 'application/json', 'x-csrf-token': state.csrf}}, body: JSON.stringify({{device: '{device}', kind: 'ping', args: {{}}}})}}).then(r => r.status)"
        ),
    )
    .await;
    assert_eq!(status, 403, "the server refuses a Viewer's command");
    screenshot(&page, "device-viewer-1280", DESKTOP).await;

    // The page kept to its Content-Security-Policy and threw nothing.
    assert_eq!(
        eval(&page, "window.__problems").await,
        serde_json::json!([]),
        "CSP violations or script errors"
    );

    // Every request went to the control plane.
    let all = requests.lock().unwrap().clone();
    assert!(
        all.iter().any(|u| u.contains("/live")) && all.iter().any(|u| u.contains("/app/app.js")),
        "the request log looks incomplete: {all:?}"
    );
    let foreign: Vec<&String> = all
        .iter()
        .filter(|u| !u.starts_with(&format!("{base}/")) && u.as_str() != "about:blank")
        .collect();
    assert!(
        foreign.is_empty(),
        "the page made requests elsewhere: {foreign:?}"
    );

    browser.close().await.unwrap();
    let _ = browser.wait().await;
    driver.abort();
}
