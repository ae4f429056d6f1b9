//! Authentication of the `/v1` HTTPS API: login, sessions, API tokens, CSRF and the security
//! headers of every response.
//!
//! - [`require_principal`] (a middleware on the whole router) lets through everything outside
//!   `/v1` and the two public endpoints (`POST /v1/enroll`, `POST /v1/auth/login`). Any other
//!   `/v1` request, whether a route exists for it or not, needs `Authorization: Bearer wgapi_…`
//!   or the `wg_session` cookie; it then carries an [`rbac::Principal`] (and the
//!   [`Authenticated`] it came from) in its extensions, else it gets 401
//!   `{"code":"unauthenticated"}`. Handlers take `axum::Extension<Principal>`.
//! - CSRF: a cookie-authenticated POST, PUT, PATCH or DELETE needs `X-CSRF-Token` equal to the
//!   session's token (from login or `GET /v1/auth/me`), else 403 `{"code":"csrf"}`. Bearer
//!   tokens are exempt (browsers never send them on their own).
//! - The session store unreachable: 503 `{"code":"unavailable"}`, no local fallback (a cached
//!   session could outlive its logout or a password change).
//! - Login ([`LoginGuard`]): a rate limit per address and per account name, failures counted per
//!   address (blocks shared with enrollment through `wg_blocks`) and per account (locks). A
//!   locked account, an unknown user, a disabled user and a wrong password all answer the same
//!   401 `{"code":"invalid_credentials"}` after the same work (one argon2id verification).
//!
//! | endpoint | body | answer |
//! |---|---|---|
//! | `POST /v1/auth/login` | `{"user","password"}` | `{"user","csrf_token","expires_at"}` and the cookie |
//! | `POST /v1/auth/logout` | – | 204, the session ended, the cookie cleared |
//! | `POST /v1/auth/password` | `{"current","new"}` | 200 `{"sessions_ended"}`; every session of the user ends |
//! | `GET /v1/auth/me` | – | `{"user","bindings","auth","csrf_token"?,"expires_at"}` |
//!
//! [`rbac::Principal`]: crate::rbac::Principal

use crate::{
    audit::AuditEntry,
    authority::Authority,
    blocker::{Gate, IpBlocker, Policy},
    http::{ApiError, AppState},
    metrics::Metrics,
    sessions::{Authenticated, Credential, secret_eq},
    users::{Password, UserError},
};
use axum::{
    Extension, Json, Router,
    body::Bytes,
    extract::{ConnectInfo, Request, State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use std::{
    net::{IpAddr, SocketAddr},
    sync::atomic::Ordering,
};
use wegweiser_shared::{enroll::ENROLL_PATH, ids::UserName, secret::SecretString, time};

/// The session cookie.
pub const SESSION_COOKIE: &str = "wg_session";
/// The CSRF header.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The largest request body of any route (enrollment has its own, smaller limit).
pub const MAX_BODY: usize = 64 * 1024;
/// Login.
pub const LOGIN_PATH: &str = "/v1/auth/login";
/// Logout.
pub const LOGOUT_PATH: &str = "/v1/auth/logout";
/// Password change.
pub const PASSWORD_PATH: &str = "/v1/auth/password";
/// Who am I.
pub const ME_PATH: &str = "/v1/auth/me";

/// The Content-Security-Policy of every response.
pub const CSP: &str =
    "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The login gate: per-address and per-account limits.
#[derive(Debug)]
pub struct LoginGuard {
    ip: IpBlocker,
    accounts: IpBlocker,
    devices: crate::device_cookie::DeviceCookies,
}

impl LoginGuard {
    /// From `[auth]`, with the allow and deny lists of `[enrollment]` and the shared blocks.
    pub fn new(auth: &Authority) -> Self {
        let c = &auth.config().auth;
        let e = &auth.config().enrollment;
        let gate = |rate, burst, max_failures| {
            IpBlocker::with_policy(
                Policy {
                    rate_per_minute: rate,
                    burst,
                    max_failures,
                    failure_window_secs: c.failure_window_secs,
                    block_secs: c.block_secs,
                },
                e.allow.clone(),
                e.deny.clone(),
                auth.blocks_store().clone(),
            )
        };
        Self {
            ip: gate(c.login_rate_per_minute, c.login_burst, c.login_max_failures),
            accounts: gate(
                c.account_rate_per_minute,
                c.account_burst,
                c.account_max_failures,
            ),
            devices: crate::device_cookie::DeviceCookies::new(&auth.inner.master),
        }
    }
}

/// The routes of `/v1/auth`.
pub fn auth_routes() -> Router<AppState> {
    Router::new()
        .route(LOGIN_PATH, post(login))
        .route(LOGOUT_PATH, post(logout))
        .route(PASSWORD_PATH, post(change_password))
        .route(ME_PATH, get(me))
}

/// Sets the security headers on a response (every response of the router, errors included).
pub async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (
            header::STRICT_TRANSPORT_SECURITY,
            "max-age=31536000; includeSubDomains",
        ),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    // The dashboard's static files set their own caching; everything else is never stored.
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

fn unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the session store is unreachable; try again later",
    )
    .retry_after(5)
}

fn unauthenticated(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
}

fn store_connected(auth: &Authority) -> bool {
    matches!(
        auth.cp_client().connection_state(),
        async_nats::connection::State::Connected
    )
}

impl From<UserError> for ApiError {
    fn from(e: UserError) -> Self {
        let (status, code) = match &e {
            UserError::Exists(_) => (StatusCode::CONFLICT, "exists"),
            UserError::NotFound(_) | UserError::TokenNotFound(_) => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            UserError::WeakPassword(_) => (StatusCode::BAD_REQUEST, "weak_password"),
            UserError::BadBinding(_) => (StatusCode::BAD_REQUEST, "bad_binding"),
            UserError::BadToken(_) => (StatusCode::BAD_REQUEST, "bad_token"),
            UserError::LastAdmin => (StatusCode::CONFLICT, "last_admin"),
            UserError::Busy => (StatusCode::CONFLICT, "busy"),
            UserError::Store(inner) => {
                tracing::error!(error = %inner, "User store failed.");
                return unavailable();
            }
            UserError::Hash(_) => {
                tracing::error!(error = %e, "User operation failed.");
                return ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                );
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// The value of cookie `name` in the request's `Cookie` headers (the first, if several).
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    cookies(headers, name).next()
}

/// Every value of cookie `name` in the request's `Cookie` headers, in order.
fn cookies<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = String> + 'a {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .filter(move |(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_owned())
}

fn session_cookie(value: &str, max_age: i64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Strict"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("wg_session=; Path=/; Max-Age=0"))
}

fn clear_cookie() -> HeaderValue {
    session_cookie("", 0)
}

/// The header a page sets on requests it makes on its own (refreshes, polls): they do not
/// count as use of the session.
pub const BACKGROUND_HEADER: &str = "x-wegweiser-background";

/// Whether a request is one the page made on its own: marked with [`BACKGROUND_HEADER`], or a
/// live stream (`GET …/live`, which the browser reopens by itself).
fn is_background(req: &axum::extract::Request) -> bool {
    req.headers().contains_key(BACKGROUND_HEADER)
        || (req.method() == Method::GET && req.uri().path().ends_with("/live"))
}

/// Whether `method path` needs authentication: all of `/v1` but enrollment and login.
pub fn is_protected(method: &Method, path: &str) -> bool {
    let v1 = path == "/v1" || path.starts_with("/v1/");
    let public = method == Method::POST && (path == ENROLL_PATH || path == LOGIN_PATH);
    v1 && !public
}

fn refuse(m: &Metrics, reason: &str, e: ApiError) -> Response {
    Metrics::refused(&m.api_auth_refused, reason);
    e.into_response()
}

/// The authentication middleware (`axum::middleware::from_fn_with_state`): see the module
/// documentation.
pub async fn require_principal(
    State(s): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    if !is_protected(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let m = s.auth.metrics();
    if !store_connected(&s.auth) {
        return refuse(m, "unavailable", unavailable());
    }
    let now = time::now();
    let headers = req.headers();
    let found = if let Some(h) = headers.get(header::AUTHORIZATION) {
        let Some(token) = h
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
        else {
            return refuse(
                m,
                "unauthenticated",
                unauthenticated("use Authorization: Bearer <API token>"),
            );
        };
        s.auth.api_token(token, now).await
    } else if let Some(sid) = cookie(headers, SESSION_COOKIE) {
        s.auth.session(&sid, now, !is_background(&req)).await
    } else {
        return refuse(
            m,
            "unauthenticated",
            unauthenticated("log in first (POST /v1/auth/login) or send an API token"),
        );
    };
    let who: Authenticated = match found {
        Ok(Some(a)) => a,
        Ok(None) => {
            let mut r = refuse(
                m,
                "unauthenticated",
                unauthenticated("the session or API token is invalid, expired or revoked"),
            );
            if !headers.contains_key(header::AUTHORIZATION) {
                r.headers_mut().insert(header::SET_COOKIE, clear_cookie());
            }
            return r;
        }
        Err(e) => {
            tracing::error!(error = %e, "Session store failed.");
            return refuse(m, "unavailable", unavailable());
        }
    };
    if let Credential::Session { csrf_token, .. } = &who.credential
        && !matches!(
            *req.method(),
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        )
    {
        let sent = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !secret_eq(sent, csrf_token) {
            return refuse(
                m,
                "csrf",
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "csrf",
                    "missing or wrong X-CSRF-Token header (from the login answer or GET /v1/auth/me)",
                ),
            );
        }
    }
    req.extensions_mut().insert(who.principal.clone());
    req.extensions_mut().insert(who);
    next.run(req).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    user: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordRequest {
    current: String,
    new: String,
}

/// Parses a JSON request body taken as `Result<Bytes, BytesRejection>`: 413 `too_large` past
/// the body limit, 400 `bad_request` naming only the line and column (serde's messages may
/// quote input such as a password).
pub fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the request body has more than {MAX_BODY} bytes"),
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "unreadable body")
        }
    })?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "malformed JSON body (line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })
}

fn invalid_credentials() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "wrong user name or password",
    )
}

fn too_many() -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many login attempts; wait and try again",
    )
    .retry_after(60)
}

/// The address gate; an error response when the address may not try now.
async fn gate_address(s: &AppState, ip: IpAddr, now: i64) -> Result<(), ApiError> {
    let m = s.auth.metrics();
    match s.login.ip.check(ip, now).await.map_err(|e| {
        tracing::error!(error = %e, "Login gate failed.");
        unavailable()
    })? {
        Gate::Allowed => Ok(()),
        Gate::Limited => {
            m.login_rate_limited.fetch_add(1, Ordering::Relaxed);
            Err(too_many())
        }
        Gate::Blocked { until } => {
            m.login_blocked_requests.fetch_add(1, Ordering::Relaxed);
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "address_blocked",
                "this address is blocked after repeated failures; wait and try again, or ask your administrator",
            )
            .retry_after(until - now))
        }
        Gate::Denied => {
            m.login_blocked_requests.fetch_add(1, Ordering::Relaxed);
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "address_denied",
                "logins are not allowed from this address",
            ))
        }
    }
}

/// Counts, audits and records a failed password check: against the address, and against the
/// account, or the device cookie `device` when the attempt came through one.
async fn failed(
    s: &AppState,
    ip: IpAddr,
    now: i64,
    name: &str,
    known: bool,
    reason: &str,
    device: Option<&str>,
) {
    let m = s.auth.metrics();
    Metrics::refused(&m.logins_failed, reason);
    let mut a = AuditEntry::new("login.failed", "login", reason);
    a.ip = Some(ip.to_string());
    if known {
        // Only names of real users: a mistyped password in the name field stays out.
        a.detail = serde_json::json!({"user": name});
    }
    s.auth.audit().record(a).await;
    match s.login.ip.failure(ip, now).await {
        Ok(Some(until)) => {
            m.blocks.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%ip, until, "Address blocked after repeated failed logins.");
            let mut a = AuditEntry::new("ip.blocked", "login", "blocked");
            a.ip = Some(ip.to_string());
            a.detail = serde_json::json!({"until": until});
            s.auth.audit().record(a).await;
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "Cannot record a failed login."),
    }
    if s.login.ip.allowed(&ip) {
        return;
    }
    // Through a device cookie the failure is the cookie's, not the account's.
    let (locked, kind) = match device {
        Some(id) => (
            s.login.accounts.device_failure(id, now).await,
            "device_cookie.locked",
        ),
        None => (
            s.login.accounts.account_failure(name, now).await,
            "account.locked",
        ),
    };
    match locked {
        Ok(Some(until)) => {
            if device.is_some() {
                m.device_cookie_locks.fetch_add(1, Ordering::Relaxed);
            } else {
                m.account_locks.fetch_add(1, Ordering::Relaxed);
            }
            if known {
                tracing::warn!(
                    user = name,
                    until,
                    kind,
                    "Locked after repeated failed logins."
                );
                let mut a = AuditEntry::new(kind, "login", "locked");
                a.ip = Some(ip.to_string());
                a.detail = serde_json::json!({"user": name, "until": until});
                s.auth.audit().record(a).await;
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "Cannot record a failed login."),
    }
}

/// The id of a valid device cookie for user `name` in `headers`, if any (see
/// [`crate::device_cookie`]). Every value is tried: junk cookies of the same name planted
/// beside the real one do not hide it (the request's header size limit bounds their number).
async fn device_cookie(s: &AppState, headers: &HeaderMap, name: &str, now: i64) -> Option<String> {
    let mut values = cookies(headers, crate::device_cookie::COOKIE).peekable();
    values.peek()?;
    let user: UserName = name.parse().ok()?;
    let (rec, _) = s.auth.user_entry(&user).await.ok()??;
    values.find_map(|v| s.login.devices.open(&v, &rec, now))
}

/// What [`check_credentials`] found.
struct Checked {
    user: crate::users::UserRecord,
    /// The attempt came through a device cookie, which spared it the account's lock.
    through_device: bool,
}

/// Whether a login gate's answer is a block; a rate limit is 429, a failure 503.
fn is_blocked(
    s: &AppState,
    gate: Result<Gate, crate::authority::AuthorityError>,
) -> Result<bool, ApiError> {
    match gate {
        Ok(Gate::Limited) => {
            s.auth
                .metrics()
                .login_rate_limited
                .fetch_add(1, Ordering::Relaxed);
            Err(too_many())
        }
        Ok(Gate::Blocked { .. }) => Ok(true),
        Ok(_) => Ok(false),
        Err(e) => {
            tracing::error!(error = %e, "Login gate failed.");
            Err(unavailable())
        }
    }
}

/// Checks `name`/`password` behind the account gate, or the gate of the device cookie `device`
/// (valid for `name`) while that one is not locked itself. `Ok(None)`: refused (already counted
/// and audited); the caller answers like a wrong password.
async fn check_credentials(
    s: &AppState,
    ip: IpAddr,
    now: i64,
    name: &str,
    password: &SecretString,
    device: Option<String>,
) -> Result<Option<Checked>, ApiError> {
    let allowed = s.login.ip.allowed(&ip);
    let device = match device {
        // Locked after its own failures: it counts as absent.
        Some(id) if !allowed && !is_blocked(s, s.login.accounts.check_device(&id, now).await)? => {
            Some(id)
        }
        _ => None,
    };
    let locked = !allowed
        && device.is_none()
        && is_blocked(s, s.login.accounts.check_account(name, now).await)?;
    // The same work whatever the outcome: one verification (a dummy one for unknown names).
    let (result, known) = match name.parse::<UserName>() {
        Ok(user) => {
            let r = s.auth.check_password(&user, password).await?;
            let known = !matches!(r, Err("unknown_user"));
            (r, known)
        }
        Err(_) => {
            s.auth.hasher().verify(password, None).await;
            (Err("unknown_user"), false)
        }
    };
    let reason = match result {
        Ok(user) if !locked => {
            return Ok(Some(Checked {
                user,
                through_device: device.is_some(),
            }));
        }
        Ok(_) => "locked",
        Err(_) if locked => "locked",
        Err(r) => r,
    };
    failed(s, ip, now, name, known, reason, device.as_deref()).await;
    Ok(None)
}

async fn login(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let ip = addr.ip().to_canonical();
    let now = time::now();
    if !store_connected(&s.auth) {
        return Err(unavailable());
    }
    gate_address(&s, ip, now).await?;
    let req: LoginRequest = json_body(body)?;
    let password = SecretString::new(req.password);
    let device = device_cookie(&s, &headers, &req.user, now).await;
    let Some(Checked {
        user,
        through_device,
    }) = check_credentials(&s, ip, now, &req.user, &password, device).await?
    else {
        return Err(invalid_credentials());
    };
    // Through a device cookie the account's failures are somebody else's: they stay.
    if !through_device && let Err(e) = s.login.accounts.account_success(&req.user).await {
        tracing::warn!(error = %e, "Cannot reset the failed logins of an account.");
    }
    let session = s
        .auth
        .create_session(&user, Some(ip.to_string()))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "Cannot store a session.");
            unavailable()
        })?;
    s.auth.metrics().logins_ok.fetch_add(1, Ordering::Relaxed);
    let mut a = AuditEntry::new("login", user.name.as_str(), "ok");
    a.ip = Some(ip.to_string());
    a.detail = serde_json::json!({"device_cookie": through_device});
    s.auth.audit().record(a).await;
    tracing::info!(user = %user.name, %ip, "Login.");
    let mut r = Json(serde_json::json!({
        "user": user.name,
        "csrf_token": session.csrf_token,
        "expires_at": session.expires_at,
    }))
    .into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(session.id.expose(), session.expires_at - now),
    );
    // A new device cookie on every login (the old one stays valid until it expires).
    let value = s.login.devices.issue(&user, now);
    if let Some(v) = crate::device_cookie::DeviceCookies::header(&value) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(r)
}

fn session_required() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "session_required",
        "this needs a login session, not an API token",
    )
}

async fn logout(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Extension(who): Extension<Authenticated>,
) -> Result<Response, ApiError> {
    let Credential::Session { key, .. } = &who.credential else {
        return Err(session_required());
    };
    s.auth.end_session(key).await.map_err(|e| {
        tracing::error!(error = %e, "Cannot end a session.");
        unavailable()
    })?;
    let mut a = AuditEntry::new("logout", &who.principal.user, "ok");
    a.ip = Some(addr.ip().to_canonical().to_string());
    s.auth.audit().record(a).await;
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(header::SET_COOKIE, clear_cookie());
    Ok(r)
}

async fn change_password(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Extension(who): Extension<Authenticated>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if !matches!(who.credential, Credential::Session { .. }) {
        return Err(session_required());
    }
    let ip = addr.ip().to_canonical();
    let now = time::now();
    // The current password is checked like a login's, behind the same address gate.
    gate_address(&s, ip, now).await?;
    let req: PasswordRequest = json_body(body)?;
    let new = Password::new(SecretString::new(req.new))?;
    let current = SecretString::new(req.current);
    let device = device_cookie(&s, &headers, &who.principal.user, now).await;
    let Some(Checked { user, .. }) =
        check_credentials(&s, ip, now, &who.principal.user, &current, device).await?
    else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "wrong_password",
            "the current password is wrong",
        ));
    };
    let actor = user.name.to_string();
    s.auth.set_password(&user.name, &new, &actor).await?;
    let mut r =
        Json(serde_json::json!({"password_changed": true, "sessions_ended": true})).into_response();
    r.headers_mut().insert(header::SET_COOKIE, clear_cookie());
    Ok(r)
}

async fn me(Extension(who): Extension<Authenticated>) -> Response {
    let (kind, csrf, expires_at) = match &who.credential {
        Credential::Session {
            csrf_token,
            expires_at,
            ..
        } => ("session", Some(csrf_token.clone()), *expires_at),
        Credential::ApiToken { expires_at, .. } => ("api_token", None, *expires_at),
    };
    let mut v = serde_json::json!({
        "user": who.principal.user,
        "bindings": who.principal.bindings,
        "auth": kind,
        "expires_at": expires_at,
    });
    if let Some(c) = csrf {
        v["csrf_token"] = c.into();
    }
    Json(v).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_needs_authentication() {
        assert!(!is_protected(&Method::POST, ENROLL_PATH));
        assert!(!is_protected(&Method::POST, LOGIN_PATH));
        assert!(!is_protected(&Method::GET, "/healthz"));
        assert!(!is_protected(&Method::GET, "/metrics"));
        assert!(is_protected(&Method::GET, LOGIN_PATH));
        assert!(is_protected(&Method::GET, ME_PATH));
        assert!(is_protected(&Method::POST, LOGOUT_PATH));
        assert!(is_protected(&Method::GET, "/v1/tenants"));
        assert!(is_protected(&Method::GET, "/v1/no-such-thing"));
        assert!(is_protected(&Method::GET, "/v1"));
        assert!(!is_protected(&Method::GET, "/v10"));
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; wg_session=abc"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "b"), None);
        let c = session_cookie("x", 10);
        let c = c.to_str().unwrap();
        for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(c.contains(flag), "{c}");
        }
    }
}
