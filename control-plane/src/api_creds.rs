//! Technician NATS credentials for third-party dashboards: `POST
//! /v1/tenants/{tenant}/nats-credentials` and `wegweiser creds`.
//!
//! The credentials are a NATS creds file (user JWT and seed) signed by the tenant's technician
//! key. That key's permission template (see [`crate::tenant::Role::template`]) denies every
//! publish and allows subscribing only to `wg.<account>.up.<device>.>` for the devices named in
//! the JWT's `device:` tags: their reports, heartbeats (presence), command results and requests.
//! Commands (`wg.<account>.down.…`) and inboxes are denied.
//!
//! Which devices: the caller's read scope in the tenant at issue time. A binding covering the
//! whole tenant gives every device (`device:*`, devices enrolled later included); organization,
//! group and device bindings give the explicit list of devices they cover now, at most
//! [`MAX_LISTED_DEVICES`]. The API and the CLI share [`issue`], so both compute the same scope.

use crate::{
    api::{DeviceIndex, DeviceQuery, ErrorView, MAX_LIMIT, guard},
    audit::AuditEntry,
    authority::Authority,
    http::{ApiError, AppState},
    rbac::{self, Action, Decision, Place, Principal, Target},
    tenant::TechnicianScope,
};
use axum::{
    Extension, Json,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::StatusCode,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use wegweiser_shared::ids::{DeviceId, TenantId, UserName};

/// Most devices an explicit list may name; a wider scope must be narrowed (or be tenant-wide).
pub const MAX_LISTED_DEVICES: usize = 1000;
/// Lifetime when none is asked for, seconds.
pub const DEFAULT_TTL_SECS: i64 = 900;
/// Longest lifetime, seconds.
pub const MAX_TTL_SECS: i64 = 3600;

/// `POST /v1/tenants/{tenant}/nats-credentials` body (may be empty).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CredsBody {
    /// Lifetime in seconds (10–3600, default 900).
    #[serde(default)]
    pub ttl_secs: Option<i64>,
}

/// Which devices the credentials cover: `"all"` or `{"devices": n}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CredsScope {
    /// Every device of the tenant, including devices enrolled later.
    All,
    /// This many devices, listed at issue time.
    Devices(usize),
}

/// `POST /v1/tenants/{tenant}/nats-credentials` answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CredsView {
    /// The creds file (JWT and seed); the only copy of the seed.
    pub creds: String,
    /// The NATS user public key (what `wegweiser revoke --user` takes).
    pub user: String,
    /// Expiry (unix seconds); the server drops the connection then.
    pub expires_at: i64,
    /// Which devices.
    pub scope: CredsScope,
    /// NATS URLs to connect to.
    pub nats_urls: Vec<String>,
}

/// Why credentials were not issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredsError {
    /// The caller sees nothing of the tenant (or the tenant does not exist).
    #[error("no such tenant")]
    NotFound,
    /// More devices than an explicit list may hold.
    #[error(
        "your scope in this tenant holds {0} or more devices, more than the {MAX_LISTED_DEVICES} one credential may list; ask for a binding on a narrower organization or group, or a tenant-wide one"
    )]
    TooMany(usize),
    /// A lifetime outside 10..=3600 seconds.
    #[error("ttl_secs must be between 10 and {MAX_TTL_SECS} seconds ({0} given)")]
    BadTtl(i64),
    /// A user name that cannot name a NATS user.
    #[error("user name {0:?} cannot name NATS credentials")]
    BadName(String),
    /// The authority failed.
    #[error(transparent)]
    Authority(#[from] crate::authority::AuthorityError),
}

/// The devices `who` may read in `tenant`: every one when a binding covers the tenant, else the
/// list (at most [`MAX_LISTED_DEVICES`]) from the device index.
pub fn scope_of(
    who: &Principal,
    tenant: &TenantId,
    devices: &DeviceIndex,
) -> Result<TechnicianScope, ApiError> {
    if rbac::authorize(who, Action::Read, &Target::tenant(tenant.clone())) == Decision::Allow {
        guard(who, Action::Read, &Target::tenant(tenant.clone()))?;
        return Ok(TechnicianScope::AllDevices);
    }
    if !rbac::sees_tenant(who, tenant) {
        return Err(not_found());
    }
    let mut listed = Vec::new();
    let mut q = DeviceQuery {
        limit: Some(MAX_LIMIT),
        ..Default::default()
    };
    loop {
        let page = devices.page(who, tenant, &q);
        for d in page.items {
            guard(
                who,
                Action::Read,
                &Target::Device {
                    at: Place {
                        tenant: tenant.clone(),
                        organization: d.organization,
                        group: d.group,
                    },
                    device: d.id.parse().map_err(|_| not_found())?,
                },
            )?;
            listed.push(d.id.parse::<DeviceId>().map_err(|_| not_found())?);
        }
        if listed.len() > MAX_LISTED_DEVICES {
            return Err(error(CredsError::TooMany(listed.len())));
        }
        match page.next {
            Some(n) => q.after = Some(n),
            None => break,
        }
    }
    Ok(TechnicianScope::Devices(listed))
}

/// Issues credentials for `who` in `tenant` with `scope`, valid `ttl_secs`, and audits it.
pub async fn issue(
    auth: &Authority,
    who: &Principal,
    tenant: &TenantId,
    scope: &TechnicianScope,
    ttl_secs: Option<i64>,
    actor: &str,
) -> Result<CredsView, CredsError> {
    let ttl = ttl_secs.unwrap_or(DEFAULT_TTL_SECS);
    if !(crate::config::MIN_JWT_TTL_SECS..=MAX_TTL_SECS).contains(&ttl) {
        return Err(CredsError::BadTtl(ttl));
    }
    let name: UserName = who
        .user
        .parse()
        .map_err(|_| CredsError::BadName(who.user.clone()))?;
    let c = auth
        .issue_technician_creds(tenant, &name, scope, Some(ttl))
        .await
        .map_err(|e| match e {
            crate::authority::AuthorityError::UnknownTenant(_) => CredsError::NotFound,
            other => other.into(),
        })?;
    let scope = match scope {
        TechnicianScope::AllDevices => CredsScope::All,
        TechnicianScope::Devices(d) => CredsScope::Devices(d.len()),
    };
    let mut a = AuditEntry::new("technician_creds.issue", actor, "ok");
    a.tenant = Some(tenant.to_string());
    a.detail = serde_json::json!({
        "for": who.user,
        "user": c.user,
        "expires_at": c.expires_at,
        "scope": scope,
    });
    auth.audit().record(a).await;
    Ok(CredsView {
        creds: c.creds.expose().to_owned(),
        user: c.user.to_string(),
        expires_at: c.expires_at,
        scope,
        nats_urls: auth.config().device_urls(),
    })
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such object")
}

fn error(e: CredsError) -> ApiError {
    match e {
        CredsError::NotFound => not_found(),
        CredsError::TooMany(_) | CredsError::BadTtl(_) | CredsError::BadName(_) => {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string())
        }
        CredsError::Authority(a) => a.into(),
    }
}

/// `POST /v1/tenants/{tenant}/nats-credentials`: subscribe-only NATS credentials for the
/// caller, limited to the devices it may read in the tenant.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/nats-credentials",
    params(("tenant" = String, Path)), request_body = CredsBody,
    responses((status = 200, body = CredsView), (status = 400, body = ErrorView),
        (status = 404, body = ErrorView), (status = 413, body = ErrorView)))]
pub async fn create_creds(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(tenant): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<CredsView>, ApiError> {
    let tenant: TenantId = tenant.parse().map_err(|_| not_found())?;
    let scope = scope_of(&who, &tenant, &s.devices)?;
    let body: CredsBody = match &body {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => CredsBody::default(),
        _ => {
            let v: serde_json::Value = crate::web::json_body(body)?;
            if !v.is_object() {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "the body must be a JSON object such as {\"ttl_secs\": 900}",
                ));
            }
            serde_json::from_value(v).map_err(|e| {
                // The body holds no secret; the message names the field and is cut short.
                let what: String = e.to_string().chars().take(200).collect();
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("bad body: {what}"),
                )
            })?
        }
    };
    let view = issue(&s.auth, &who, &tenant, &scope, body.ttl_secs, &who.user)
        .await
        .map_err(error)?;
    Ok(Json(view))
}

/// `wegweiser creds`: issues technician credentials for a user by name, with the scope the API
/// would give that user.
#[derive(Debug, clap::Args)]
pub struct CredsArgs {
    /// Tenant.
    #[arg(long)]
    pub tenant: TenantId,
    /// The user (its role bindings decide the devices).
    #[arg(long)]
    pub user: UserName,
    /// Lifetime: seconds, or with a unit (`90s`, `15m`, `1h`); at most 1h.
    #[arg(long, default_value = "15m", value_parser = parse_ttl)]
    pub ttl: i64,
    /// Write the creds file here (mode 0600, never overwritten) instead of standard output.
    #[arg(short = 'o', long = "out")]
    pub out: Option<std::path::PathBuf>,
}

/// Parses `900`, `90s`, `15m` or `1h` into seconds.
pub fn parse_ttl(s: &str) -> Result<i64, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 900, 90s, 15m or 1h"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("{s:?}: the unit must be s, m or h")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// Runs `wegweiser creds`.
pub async fn cli(data_dir: &std::path::Path, args: CredsArgs, json: bool) -> anyhow::Result<()> {
    if let Some(out) = &args.out
        && out.exists()
    {
        anyhow::bail!(
            "{} exists; choose another -o (creds files are never overwritten)",
            out.display()
        );
    }
    let auth = Authority::open(data_dir).await?;
    let user = auth.user(&args.user).await?;
    anyhow::ensure!(
        !user.disabled,
        "user {} is disabled; enable it first",
        args.user
    );
    let who = Principal {
        user: user.name.to_string(),
        bindings: user.bindings,
    };
    let devices = DeviceIndex::start(&auth).await?;
    let scope = scope_of(&who, &args.tenant, &devices).map_err(|e| {
        anyhow::anyhow!(
            "{}",
            match e.status() {
                StatusCode::NOT_FOUND => format!(
                    "user {} has no binding in tenant {} (or the tenant does not exist)",
                    args.user, args.tenant
                ),
                _ => e.message().to_owned(),
            }
        )
    })?;
    let view = issue(&auth, &who, &args.tenant, &scope, Some(args.ttl), "cli").await?;
    match &args.out {
        Some(out) => {
            crate::keystore::write_new_private(out, view.creds.as_bytes())?;
            let summary = serde_json::json!({
                "creds_file": out, "user": view.user, "expires_at": view.expires_at,
                "scope": view.scope, "nats_urls": view.nats_urls,
            });
            crate::cli::print(json, &summary, || {
                format!(
                    "Wrote {} for {} (NATS user {}, {}, expires at {}).",
                    out.display(),
                    args.user,
                    view.user,
                    match view.scope {
                        CredsScope::All => "every device".to_owned(),
                        CredsScope::Devices(n) => format!("{n} devices"),
                    },
                    view.expires_at
                )
            });
        }
        None => crate::cli::print(json, &view, || view.creds.trim_end().to_owned()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_parses_with_and_without_units() {
        assert_eq!(parse_ttl("900"), Ok(900));
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("15m"), Ok(900));
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert!(parse_ttl("15d").is_err());
        assert!(parse_ttl("m").is_err());
        assert!(parse_ttl("").is_err());
    }

    #[test]
    fn the_openapi_document_describes_the_endpoint_and_both_scope_shapes() {
        use utoipa::OpenApi;
        let doc = serde_json::to_value(crate::api::ApiDoc::openapi()).unwrap();
        let op = &doc["paths"]["/v1/tenants/{tenant}/nats-credentials"]["post"];
        for code in ["200", "400", "404", "413"] {
            assert!(op["responses"][code].is_object(), "{code}");
        }
        let scope = doc["components"]["schemas"]["CredsScope"].to_string();
        assert!(
            scope.contains("\"all\"") && scope.contains("devices"),
            "{scope}"
        );
    }

    #[test]
    fn scope_serializes_as_all_or_a_count() {
        assert_eq!(serde_json::to_value(CredsScope::All).unwrap(), "all");
        assert_eq!(
            serde_json::to_value(CredsScope::Devices(3)).unwrap(),
            serde_json::json!({"devices": 3})
        );
    }
}
