//! The control plane's HTTPS server (axum + rustls): health, enrollment, metrics, and the
//! authenticated `/v1` API ([`crate::web`]: login, sessions, API tokens, CSRF, security headers).
//!
//! Errors are JSON `{"code", "message"}` with one status per error kind; internal details are
//! logged, never returned.

use crate::{
    audit::AuditEntry,
    authority::Authority,
    blocker::{Gate, IpBlocker},
    config::HttpConfig,
    enrollment::EnrollError,
};
use axum::{
    Json, Router,
    body::Bytes,
    extract::{ConnectInfo, DefaultBodyLimit, State, rejection::BytesRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use std::{net::SocketAddr, sync::Arc, sync::atomic::Ordering, time::Duration};
use wegweiser_shared::{
    enroll::{ENROLL_PATH, EnrollRequest, ErrorBody, MAX_ENROLL_BODY},
    time,
};

/// Shared state of the handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The authority.
    pub auth: Authority,
    /// The enrollment gate.
    pub gate: Arc<IpBlocker>,
    /// Devices and their presence, in memory (see [`crate::api::DeviceIndex`]).
    pub devices: Arc<crate::api::DeviceIndex>,
    /// Where the trust root keys are (for key rotations through the API).
    pub root_dir: std::path::PathBuf,
    /// The login gate (per-address and per-account limits, sharing the enrollment gate's
    /// lists and blocks).
    pub login: Arc<crate::web::LoginGuard>,
}

impl AppState {
    /// The state for `auth`, its gates configured from its configuration, with the device
    /// index and the root key directory.
    pub fn new(
        auth: Authority,
        devices: Arc<crate::api::DeviceIndex>,
        root_dir: std::path::PathBuf,
    ) -> Self {
        Self {
            devices,
            root_dir,
            gate: Arc::new(IpBlocker::new(
                auth.config().enrollment.clone(),
                auth.blocks_store().clone(),
            )),
            login: Arc::new(crate::web::LoginGuard::new(&auth)),
            auth,
        }
    }
}

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
    retry_after: Option<i64>,
}

impl ApiError {
    /// An error with this status, stable code and message (never internals).
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                code: code.to_owned(),
                message: message.into(),
            },
            retry_after: None,
        }
    }

    /// Its status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// Its message.
    pub fn message(&self) -> &str {
        &self.body.message
    }

    /// With a `Retry-After` header, seconds.
    pub fn retry_after(mut self, secs: i64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(self.body)).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.max(1).to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

impl From<&EnrollError> for StatusCode {
    fn from(e: &EnrollError) -> Self {
        match e {
            EnrollError::InvalidToken => StatusCode::UNAUTHORIZED,
            EnrollError::TokenExpired | EnrollError::TokenRevoked | EnrollError::TokenUsed => {
                StatusCode::GONE
            }
            EnrollError::BadRequest(_) => StatusCode::BAD_REQUEST,
            EnrollError::TenantUnavailable => StatusCode::CONFLICT,
            EnrollError::UnknownDevice | EnrollError::Revoked | EnrollError::StaleKey => {
                StatusCode::FORBIDDEN
            }
            EnrollError::TooSoon => StatusCode::TOO_MANY_REQUESTS,
            EnrollError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            #[allow(unreachable_patterns)]
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(crate::api::openapi))
        .route(
            ENROLL_PATH,
            post(enroll).layer(DefaultBodyLimit::max(MAX_ENROLL_BODY)),
        )
        .merge(crate::web::auth_routes())
        .merge(crate::api::routes())
        .merge(crate::api_admin::routes())
        .merge(crate::api_live::routes())
        .merge(crate::dashboard::routes())
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method; see /openapi.json",
            )
        })
        .layer(DefaultBodyLimit::max(crate::web::MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::web::require_principal,
        ))
        .layer(axum::middleware::from_fn(request_timeout))
        .layer(axum::middleware::map_response(crate::web::security_headers))
        .with_state(state)
}

/// How long one request may take, body included (a client trickling its body is cut off).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

async fn request_timeout(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            "the request took too long; try again",
        )
        .into_response(),
    }
}

async fn health(State(s): State<AppState>) -> Response {
    let nats = s.auth.cp_client().connection_state();
    let ok = matches!(nats, async_nats::connection::State::Connected);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({"status": if ok { "ok" } else { "degraded" }, "nats": nats.to_string()})),
    )
        .into_response()
}

async fn metrics(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
) -> Response {
    let ip = addr.ip().to_canonical();
    let allowed = s
        .auth
        .config()
        .http
        .as_ref()
        .is_some_and(|h| h.metrics_allow.iter().any(|n| n.contains(&ip)));
    if !allowed {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
            .into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.auth.metrics().render(),
    )
        .into_response()
}

async fn enroll(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // An IPv4 client of a dual-stack listener arrives as ::ffff:a.b.c.d.
    let ip = addr.ip().to_canonical();
    let now = time::now();
    let m = s.auth.metrics();
    let gate = s.gate.check(ip, now).await.map_err(|e| {
        tracing::error!(error = %e, "Enrollment gate failed.");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "try again later",
        )
    })?;
    match gate {
        Gate::Allowed => {}
        Gate::Limited => {
            m.rate_limited.fetch_add(1, Ordering::Relaxed);
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many enrollment requests from this address; wait and try again",
            );
            e.retry_after = Some(60);
            return Err(e);
        }
        Gate::Blocked { until } => {
            m.blocked_requests.fetch_add(1, Ordering::Relaxed);
            let mut e = ApiError::new(
                StatusCode::FORBIDDEN,
                "address_blocked",
                "this address is blocked after repeated failed enrollments; wait and try again, or ask your administrator",
            );
            e.retry_after = Some(until - now);
            return Err(e);
        }
        Gate::Denied => {
            m.blocked_requests.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "address_denied",
                "enrollment is not allowed from this address",
            ));
        }
    }
    let result = match parse(body) {
        Ok(req) => {
            // In a task of its own: a client that hangs up must not cut an enrollment short
            // between its writes.
            let (auth, ip_s) = (s.auth.clone(), ip.to_string());
            tokio::spawn(async move { auth.enroll(req, &ip_s).await })
                .await
                .unwrap_or_else(|e| {
                    Err(EnrollError::Internal(
                        crate::authority::AuthorityError::Store(format!("enrollment task: {e}")),
                    ))
                })
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(resp) => {
            m.enroll_ok.fetch_add(1, Ordering::Relaxed);
            Ok(Json(resp).into_response())
        }
        Err(e) => {
            crate::metrics::Metrics::refused(&m.enroll_refused, e.code());
            if let EnrollError::Internal(inner) = &e {
                tracing::error!(error = %inner, "Enrollment failed.");
            }
            let mut a = AuditEntry::new("enroll.refused", "enrollment", e.code());
            a.ip = Some(ip.to_string());
            s.auth.audit().record(a).await;
            if e.is_caller_failure()
                && let Ok(Some(until)) = s.gate.failure(ip, now).await
            {
                m.blocks.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%ip, until, "Address blocked after repeated failed enrollments.");
                let mut a = AuditEntry::new("ip.blocked", "enrollment", "blocked");
                a.ip = Some(ip.to_string());
                a.detail = serde_json::json!({"until": until});
                s.auth.audit().record(a).await;
            }
            Err(ApiError::new((&e).into(), e.code(), e.to_string()))
        }
    }
}

fn parse(body: Result<Bytes, BytesRejection>) -> Result<EnrollRequest, EnrollError> {
    let body = body.map_err(|_| {
        EnrollError::BadRequest(format!(
            "request body is too large or unreadable (at most {MAX_ENROLL_BODY} bytes)"
        ))
    })?;
    serde_json::from_slice::<EnrollRequest>(&body).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Data => {
                // Data errors name the field and why; cut them short (on a character boundary).
                e.to_string().chars().take(200).collect()
            }
            _ => format!("not valid JSON (line {}, column {})", e.line(), e.column()),
        };
        EnrollError::BadRequest(format!("malformed enrollment request: {what}"))
    })
}

/// Serves HTTPS until `shutdown` completes.
pub async fn serve(
    state: AppState,
    cfg: &HttpConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cfg.tls_cert, &cfg.tls_key)
        .await
        .map_err(|e| anyhow::anyhow!("cannot load the HTTPS certificate or key: {e}"))?;
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        h.graceful_shutdown(Some(Duration::from_secs(5)));
    });
    tracing::info!(listen = %cfg.listen, "HTTPS server listening.");
    let mut server = axum_server::bind_rustls(cfg.listen, tls).handle(handle);
    // Slow clients: headers must arrive within 10 s (the TLS handshake has its own 10 s limit,
    // the whole request 15 s).
    server
        .http_builder()
        .http1()
        .header_read_timeout(Some(Duration::from_secs(10)));
    server
        .serve(router(state).into_make_service_with_connect_info::<SocketAddr>())
        .await?;
    Ok(())
}
