//! The administrative part of the `/v1` API: tenants, users and role bindings, the caller's own
//! API tokens, and audit queries.
//!
//! | endpoint | permission | answers |
//! |---|---|---|
//! | `POST /v1/tenants` | `ManageTenants` (global Admin) | 201 tenant; 404 outside the platform scope, 403 for other global roles, 409 taken |
//! | `PATCH /v1/tenants/{tenant}` | `ManageTenants` | 200 tenant (retention; a shorter one purges older reports now); 403 for others who see the tenant, else 404 |
//! | `DELETE /v1/tenants/{tenant}` | `ManageTenants` | 204, users lose their bindings there; 403 for others who see the tenant, else 404 |
//! | `GET /v1/users` | `ManageUsers` | the users the caller administers, paginated by name |
//! | `POST /v1/users` | `ManageUsers`, every binding within the caller's Admin scopes | 201 user (a generated password once) |
//! | `GET /v1/users/{name}` | `ManageUsers`, the user visible | 200 user |
//! | `POST /v1/users/{name}/bindings` | `ManageUsers`, user modifiable, binding within | 200 user |
//! | `DELETE /v1/users/{name}/bindings` | same (binding in the body or the query) | 200 user |
//! | `POST /v1/users/{name}/disable`, `/enable` | `ManageUsers`, user modifiable | 200 user |
//! | `POST /v1/users/{name}/password` | `ManageUsers`, user modifiable | 200 user (a generated password once); sessions end, API tokens are revoked |
//! | `DELETE /v1/users/{name}` | `ManageUsers`, user modifiable | 204 |
//! | `GET/POST /v1/auth/tokens`, `DELETE /v1/auth/tokens/{id}` | the caller's own tokens (creating one needs a login session) | page, 201 token once, 204 |
//! | `GET /v1/tenants/{tenant}/audit` | `ReadAudit` at the tenant scope | page of entries, newest first (`order=oldest`) |
//! | `GET /v1/audit` | `ReadAudit` at the global scope | the platform's own entries (no tenant) |
//!
//! **Users.** The caller's *Admin scopes* are the scopes of its bindings at which [`guard`]
//! allows `ManageUsers`. A user is *visible* when at least one of its bindings lies within
//! one of them (a user without bindings: to global Admins only). A user none of whose bindings
//! lies in any scope of the caller is 404, like a user that does not exist; one that does, but
//! not within an Admin scope, is 403. Listing and creating users need an Admin binding (403
//! without one, 404 without any binding). Changing or deleting a user needs *every* one of its
//! bindings within the caller's Admin scopes: a user who is visible but also holds a binding
//! elsewhere is answered 403 (in scope, but not the caller's to change). A granted or revoked
//! binding must lie within the caller's Admin scopes: else 404 when it names a tenant the caller
//! does not see, 403 otherwise. A device-scope binding is placed where the device lies (its
//! organization and group), so an organization Admin can grant access to one of its devices.
//! Deleting, disabling or unbinding the last enabled global Admin is refused with 409
//! `last_admin`.
//!
//! User names are global: creating a name that exists elsewhere answers 409 `exists`.
//!
//! **API tokens.** `/v1/auth/tokens` acts on the caller's own credentials only, like the rest
//! of `/v1/auth`: it needs authentication, not a role, and reaches no one else's tokens (another
//! user's token id is 404).
//!
//! **Audit.** Entries are kept per tenant, not per organization, so reading a tenant's entries
//! needs `ReadAudit` on the tenant as a whole (Manager or Admin at the tenant or global scope);
//! organization-, group- or device-scoped Managers and Admins get 403. Pages run newest first
//! (`order=oldest` for the other way); `after` is the `next` of the previous page (the stream
//! position of its last entry). A walk may end with an empty page.

use crate::{
    api::{DEFAULT_LIMIT, ErrorView, MAX_LIMIT, Page, guard},
    audit::{AuditEntry, AuditQuery},
    authority::{AuthorityError, NewTenant},
    http::{ApiError, AppState},
    rbac::{self, Action, Binding, Decision, Place, Principal, Role, Scope, Target},
    retention::RetentionDays,
    sessions::{ApiTokenRecord, Authenticated, Credential, NewApiToken},
    tenant::TenantRecord,
    users::{Password, UserError, UserRecord},
    web::json_body,
};
use axum::{
    Extension, Json, Router,
    body::Bytes,
    extract::{Path, Query, State, rejection::BytesRejection, rejection::QueryRejection},
    http::StatusCode,
    routing::{delete, get, post},
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};
use wegweiser_shared::{
    ids::{DeviceId, TenantId, UserName},
    secret::SecretString,
};

/// Default lifetime of an API token made over the API: 30 days (or the configured maximum).
pub const DEFAULT_TOKEN_TTL_SECS: i64 = 30 * 86_400;

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such object")
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| bad_request(format!("bad query string: {}", e.body_text())))
}

fn tenant_id(s: &str) -> Result<TenantId, ApiError> {
    s.parse().map_err(|_| not_found())
}

/// `ManageTenants` on an existing tenant: 404 when the caller sees nothing of it, 403 when it
/// does but is no global Admin.
fn tenant_guard(who: &Principal, tenant: &TenantId) -> Result<(), ApiError> {
    let target = Target::tenant(tenant.clone());
    if rbac::sees_tenant(who, tenant)
        && rbac::authorize(who, Action::ManageTenants, &target) == Decision::NotFound
    {
        return Err(forbidden(
            "tenants are created, changed and deleted by platform administrators (global Admin)",
        ));
    }
    guard(who, Action::ManageTenants, &target)
}

/// Errors of tenant operations, beyond the API's general mapping.
fn tenant_error(e: AuthorityError) -> ApiError {
    match e {
        AuthorityError::NotActive(..) => {
            ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
        }
        other => other.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Tenants

/// `POST /v1/tenants`: like `wegweiser tenant create`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenantBody {
    /// Id: a lowercase slug.
    #[schema(example = "newco")]
    pub id: String,
    /// Display name (default: the id).
    #[serde(default)]
    pub name: Option<String>,
    /// Concurrent connections (-1 unlimited; default from the configuration).
    #[serde(default)]
    pub max_connections: Option<i64>,
    /// Subscriptions (-1 unlimited).
    #[serde(default)]
    pub max_subscriptions: Option<i64>,
    /// Largest payload, bytes (-1 unlimited).
    #[serde(default)]
    pub max_payload: Option<i64>,
    /// JetStream disk in the tenant's account, bytes.
    #[serde(default)]
    pub jetstream_disk: Option<i64>,
    /// Keep its reports this many days, 1 to 3650 (default from the configuration).
    #[serde(default)]
    #[schema(example = 90)]
    pub retention_days: Option<u64>,
}

/// `PATCH /v1/tenants/{tenant}`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantPatch {
    /// Keep its reports this many days, 1 to 3650; a shorter retention purges older reports now.
    pub retention_days: u64,
}

/// A tenant as the administrative endpoints show it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TenantDetail {
    /// Id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// NATS account public key.
    pub account: String,
    /// `creating`, `active` or `deleting`.
    pub state: String,
    /// Creation time (unix seconds).
    pub created_at: i64,
    /// Days its reports are kept.
    pub retention_days: u64,
    /// Reports purged by this change (a shorter retention).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purged: Option<u64>,
}

impl TenantDetail {
    fn of(s: &AppState, r: &TenantRecord, purged: Option<u64>) -> Self {
        Self {
            id: r.id.to_string(),
            name: r.name.clone(),
            account: r.account.to_string(),
            state: format!("{:?}", r.state).to_lowercase(),
            created_at: r.created_at,
            retention_days: s.auth.retention_of(r),
            purged,
        }
    }
}

fn retention(days: u64) -> Result<RetentionDays, ApiError> {
    RetentionDays::try_from(days).map_err(|e| bad_request(e.to_string()))
}

/// `POST /v1/tenants`: creates a tenant (global Admin only).
#[utoipa::path(post, path = "/v1/tenants", request_body = NewTenantBody,
    responses((status = 201, body = TenantDetail), (status = 400, body = ErrorView),
        (status = 403, body = ErrorView), (status = 404, body = ErrorView), (status = 409, body = ErrorView)))]
pub async fn create_tenant(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<TenantDetail>), ApiError> {
    guard(&who, Action::ManageTenants, &Target::Platform)?;
    let body: NewTenantBody = json_body(body)?;
    let id: TenantId = body
        .id
        .parse()
        .map_err(|e| bad_request(format!("bad tenant id: {e}")))?;
    let mut limits = s.auth.config().tenant_defaults.clone();
    for (v, slot) in [
        (body.max_connections, &mut limits.max_connections),
        (body.max_subscriptions, &mut limits.max_subscriptions),
        (body.max_payload, &mut limits.max_payload),
        (body.jetstream_disk, &mut limits.jetstream_disk),
    ] {
        if let Some(v) = v {
            *slot = v;
        }
    }
    let problems = limits.problems();
    if !problems.is_empty() {
        return Err(bad_request(problems.join("; ")));
    }
    if body.name.as_ref().is_some_and(|n| n.chars().count() > 200) {
        return Err(bad_request("a tenant name has at most 200 characters"));
    }
    let retention_days = body.retention_days.map(retention).transpose()?;
    let r = s
        .auth
        .create_tenant(NewTenant {
            id,
            name: body.name,
            limits: Some(limits),
            retention_days,
        })
        .await
        .map_err(tenant_error)?;
    let mut a = AuditEntry::new("tenant.create", &who.user, "ok");
    a.tenant = Some(r.id.to_string());
    a.detail = serde_json::json!({"account": r.account, "retention_days": retention_days.map(RetentionDays::days)});
    s.auth.audit().record(a).await;
    Ok((StatusCode::CREATED, Json(TenantDetail::of(&s, &r, None))))
}

/// `PATCH /v1/tenants/{tenant}`: sets the tenant's retention of reports.
#[utoipa::path(patch, path = "/v1/tenants/{tenant}", params(("tenant" = String, Path)),
    request_body = TenantPatch,
    responses((status = 200, body = TenantDetail), (status = 400, body = ErrorView),
        (status = 403, body = ErrorView), (status = 404, body = ErrorView), (status = 409, body = ErrorView)))]
pub async fn update_tenant(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(tenant): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TenantDetail>, ApiError> {
    let tenant = tenant_id(&tenant)?;
    tenant_guard(&who, &tenant)?;
    let body: TenantPatch = json_body(body)?;
    let days = retention(body.retention_days)?;
    let (r, purged) = s
        .auth
        .set_retention(&tenant, days, &who.user)
        .await
        .map_err(tenant_error)?;
    Ok(Json(TenantDetail::of(&s, &r, Some(purged))))
}

/// `DELETE /v1/tenants/{tenant}`: its account leaves the resolver, its devices disconnect, its
/// keys and reports are destroyed, and users lose their bindings in it.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}", params(("tenant" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorView), (status = 404, body = ErrorView)))]
pub async fn delete_tenant(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(tenant): Path<String>,
) -> Result<StatusCode, ApiError> {
    let tenant = tenant_id(&tenant)?;
    tenant_guard(&who, &tenant)?;
    s.auth
        .delete_tenant_as(&tenant, &who.user)
        .await
        .map_err(tenant_error)?;
    let mut a = AuditEntry::new("tenant.delete", &who.user, "ok");
    a.tenant = Some(tenant.to_string());
    s.auth.audit().record(a).await;
    s.auth.drop_tenant_bindings(&tenant, &who.user).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------
// Users and role bindings

/// A role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RoleName {
    /// Reads.
    Viewer,
    /// Reads and sends commands.
    Technician,
    /// Also manages organizations, groups, devices, enrollment tokens; reads the audit.
    Manager,
    /// Everything in scope, users included.
    Admin,
}

/// A scope kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ScopeKind {
    /// The whole platform.
    Global,
    /// A tenant (needs `tenant`).
    Tenant,
    /// An organization (needs `tenant`, `organization`).
    Organization,
    /// A group (needs `tenant`, `organization`, `group`).
    Group,
    /// A device (needs `tenant`, `device`).
    Device,
}

/// A role binding: `{"role": "manager", "scope": "organization", "tenant": "acme",
/// "organization": "o1"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BindingView {
    /// The role.
    pub role: RoleName,
    /// Where it applies.
    pub scope: ScopeKind,
    /// Tenant (every scope but `global`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Organization (`organization` and `group` scopes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    /// Group (`group` scope).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Device (`device` scope).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

impl From<&Binding> for BindingView {
    fn from(b: &Binding) -> Self {
        let role = match b.role {
            Role::Viewer => RoleName::Viewer,
            Role::Technician => RoleName::Technician,
            Role::Manager => RoleName::Manager,
            Role::Admin => RoleName::Admin,
        };
        let mut v = Self {
            role,
            scope: ScopeKind::Global,
            tenant: b.scope.tenant().map(ToString::to_string),
            organization: None,
            group: None,
            device: None,
        };
        match &b.scope {
            Scope::Global => {}
            Scope::Tenant { .. } => v.scope = ScopeKind::Tenant,
            Scope::Organization { organization, .. } => {
                v.scope = ScopeKind::Organization;
                v.organization = Some(organization.clone());
            }
            Scope::Group {
                organization,
                group,
                ..
            } => {
                v.scope = ScopeKind::Group;
                v.organization = Some(organization.clone());
                v.group = Some(group.clone());
            }
            Scope::Device { device, .. } => {
                v.scope = ScopeKind::Device;
                v.device = Some(device.to_string());
            }
        }
        v
    }
}

impl RoleName {
    /// The role.
    pub fn role(self) -> Role {
        match self {
            Self::Viewer => Role::Viewer,
            Self::Technician => Role::Technician,
            Self::Manager => Role::Manager,
            Self::Admin => Role::Admin,
        }
    }
}

impl BindingView {
    /// The binding it names; a clear 400 when fields are missing, extra or malformed.
    pub fn binding(&self) -> Result<Binding, ApiError> {
        let role = self.role.role();
        let need = |field: Option<&String>, name: &str| {
            field
                .filter(|v| !v.is_empty())
                .cloned()
                .ok_or_else(|| bad_binding(format!("this scope needs `{name}`")))
        };
        let tenant = || -> Result<TenantId, ApiError> {
            need(self.tenant.as_ref(), "tenant")?
                .parse()
                .map_err(|e| bad_binding(format!("bad tenant: {e}")))
        };
        let only = |allowed: &[&str]| -> Result<(), ApiError> {
            for (name, v) in [
                ("tenant", &self.tenant),
                ("organization", &self.organization),
                ("group", &self.group),
                ("device", &self.device),
            ] {
                if v.is_some() && !allowed.contains(&name) {
                    return Err(bad_binding(format!("this scope takes no `{name}`")));
                }
            }
            Ok(())
        };
        // Organizations and groups are lowercase slugs, like tenant ids.
        let slug = |v: String, name: &str| -> Result<String, ApiError> {
            v.parse::<TenantId>()
                .map(|_| v.clone())
                .map_err(|e| bad_binding(format!("bad {name}: {e}")))
        };
        let scope = match self.scope {
            ScopeKind::Global => {
                only(&[])?;
                Scope::Global
            }
            ScopeKind::Tenant => {
                only(&["tenant"])?;
                Scope::Tenant { tenant: tenant()? }
            }
            ScopeKind::Organization => {
                only(&["tenant", "organization"])?;
                Scope::Organization {
                    tenant: tenant()?,
                    organization: slug(
                        need(self.organization.as_ref(), "organization")?,
                        "organization",
                    )?,
                }
            }
            ScopeKind::Group => {
                only(&["tenant", "organization", "group"])?;
                Scope::Group {
                    tenant: tenant()?,
                    organization: slug(
                        need(self.organization.as_ref(), "organization")?,
                        "organization",
                    )?,
                    group: slug(need(self.group.as_ref(), "group")?, "group")?,
                }
            }
            ScopeKind::Device => {
                only(&["tenant", "device"])?;
                Scope::Device {
                    tenant: tenant()?,
                    device: need(self.device.as_ref(), "device")?
                        .parse::<DeviceId>()
                        .map_err(|e| bad_binding(format!("bad device: {e}")))?,
                }
            }
        };
        Ok(Binding { role, scope })
    }
}

fn bad_binding(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_binding", message)
}

/// A user as the API shows it (never its password hash).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserView {
    /// Name.
    pub name: String,
    /// Role bindings.
    pub bindings: Vec<BindingView>,
    /// Disabled users cannot log in; their sessions and API tokens do not work.
    pub disabled: bool,
    /// Created (unix seconds).
    pub created_at: i64,
    /// Last changed (unix seconds).
    pub changed_at: i64,
    /// Last password change (unix seconds).
    pub password_changed_at: i64,
    /// A generated password: only in the answer that set it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

impl UserView {
    fn of(r: &UserRecord, password: Option<String>) -> Self {
        Self {
            name: r.name.to_string(),
            bindings: r.bindings.iter().map(BindingView::from).collect(),
            disabled: r.disabled,
            created_at: r.created_at,
            changed_at: r.changed_at,
            password_changed_at: r.password_changed_at,
            password,
        }
    }
}

/// `GET /v1/users` filters and paging.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UserQuery {
    /// Only users with a binding in this tenant.
    pub tenant: Option<String>,
    /// Only users with a binding of this role.
    pub role: Option<RoleName>,
    /// Only disabled (`true`) or enabled (`false`) users.
    pub disabled: Option<bool>,
    /// Name contains this.
    pub q: Option<String>,
    /// Page size (1–500, default 100).
    pub limit: Option<usize>,
    /// The `next` of the previous page.
    pub after: Option<String>,
}

/// `POST /v1/users`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUserBody {
    /// Name: ASCII letters, digits, `-` and `_`, at most 64.
    #[schema(example = "bob")]
    pub name: String,
    /// At least 12 characters; absent: one is generated and returned once.
    #[serde(default)]
    #[schema(example = "correct horse battery staple")]
    pub password: Option<String>,
    /// Role bindings, each within the caller's Admin scopes.
    #[serde(default)]
    #[schema(example = json!([{"role": "viewer", "scope": "tenant", "tenant": "demo"}]))]
    pub bindings: Vec<BindingView>,
}

/// `POST /v1/users/{name}/password`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordBody {
    /// The new password (at least 12 characters); absent: one is generated and returned once.
    #[serde(default)]
    pub password: Option<String>,
}

/// Where a scope lies, as an authorization target. A device is placed where the device index
/// has it (so organization and group scopes cover it).
fn scope_target(s: &AppState, scope: &Scope) -> Target {
    let place = |tenant: &TenantId, organization: Option<&String>, group: Option<&String>| Place {
        tenant: tenant.clone(),
        organization: organization.cloned(),
        group: group.cloned(),
    };
    match scope {
        Scope::Global => Target::Platform,
        Scope::Tenant { tenant } => Target::Place(place(tenant, None, None)),
        Scope::Organization {
            tenant,
            organization,
        } => Target::Place(place(tenant, Some(organization), None)),
        Scope::Group {
            tenant,
            organization,
            group,
        } => Target::Place(place(tenant, Some(organization), Some(group))),
        Scope::Device { tenant, device } => {
            let at = match s.devices.get(tenant, device) {
                Some(d) => place(tenant, d.organization.as_ref(), d.group.as_ref()),
                None => place(tenant, None, None),
            };
            Target::Device {
                at,
                device: device.clone(),
            }
        }
    }
}

/// Whether `scope` lies within one of the caller's Admin scopes.
fn administers(s: &AppState, who: &Principal, scope: &Scope) -> bool {
    guard(who, Action::ManageUsers, &scope_target(s, scope)).is_ok()
}

/// The caller may manage users somewhere: else 403 (404 without any binding).
fn user_admin(s: &AppState, who: &Principal) -> Result<(), ApiError> {
    let mut first = None;
    for b in &who.bindings {
        match guard(who, Action::ManageUsers, &scope_target(s, &b.scope)) {
            Ok(()) => return Ok(()),
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    Err(first.unwrap_or_else(not_found))
}

fn visible(s: &AppState, who: &Principal, u: &UserRecord) -> bool {
    if u.bindings.is_empty() {
        return administers(s, who, &Scope::Global);
    }
    u.bindings.iter().any(|b| administers(s, who, &b.scope))
}

/// Whether one of the user's bindings lies in any scope of the caller (whatever its role).
fn in_scope(s: &AppState, who: &Principal, u: &UserRecord) -> bool {
    let seen = |scope: &Scope| {
        rbac::authorize(who, Action::ManageUsers, &scope_target(s, scope)) != Decision::NotFound
    };
    if u.bindings.is_empty() {
        return seen(&Scope::Global);
    }
    u.bindings.iter().any(|b| seen(&b.scope))
}

/// The user `name`, visible to the caller: 404 when it does not exist or lies outside every
/// scope of the caller, 403 when it lies in scope but the caller is no Admin there.
async fn find_user(s: &AppState, who: &Principal, name: &str) -> Result<UserRecord, ApiError> {
    let name: UserName = name.parse().map_err(|_| not_found())?;
    match s.auth.user_entry(&name).await? {
        Some((u, _)) if visible(s, who, &u) => Ok(u),
        Some((u, _)) if in_scope(s, who, &u) => {
            user_admin(s, who)?;
            Err(forbidden(format!(
                "managing user {} needs the Admin role at one of its scopes",
                u.name
            )))
        }
        _ => Err(not_found()),
    }
}

/// The user `name`, every binding of it within the caller's Admin scopes (else 404 or 403).
async fn modifiable_user(
    s: &AppState,
    who: &Principal,
    name: &str,
) -> Result<UserRecord, ApiError> {
    let u = find_user(s, who, name).await?;
    if u.bindings.iter().all(|b| administers(s, who, &b.scope)) {
        Ok(u)
    } else {
        Err(forbidden(format!(
            "user {} also holds bindings outside your Admin scopes; an administrator whose scopes cover them must do this",
            u.name
        )))
    }
}

/// The binding lies within the caller's Admin scopes: else 404 (a tenant it does not see) or
/// 403.
fn may_grant(s: &AppState, who: &Principal, b: &Binding) -> Result<(), ApiError> {
    if administers(s, who, &b.scope) {
        return Ok(());
    }
    match b.scope.tenant() {
        Some(t) if !rbac::sees_tenant(who, t) => Err(not_found()),
        _ => Err(forbidden(
            "you may grant and revoke only bindings within your Admin scopes",
        )),
    }
}

/// `GET /v1/users`: the users the caller administers, by name.
#[utoipa::path(get, path = "/v1/users", params(UserQuery),
    responses((status = 200, body = Page<UserView>), (status = 400, body = ErrorView),
        (status = 403, body = ErrorView), (status = 404, body = ErrorView)))]
pub async fn list_users(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    q: Result<Query<UserQuery>, QueryRejection>,
) -> Result<Json<Page<UserView>>, ApiError> {
    user_admin(&s, &who)?;
    let q = query(q)?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let needle = q.q.as_deref().map(str::to_lowercase);
    let role = q.role.map(RoleName::role);
    let mut items: Vec<UserView> = s
        .auth
        .users()
        .await?
        .into_iter()
        .filter(|u| q.after.as_deref().is_none_or(|a| u.name.as_str() > a))
        .filter(|u| {
            q.tenant.as_deref().is_none_or(|t| {
                u.bindings
                    .iter()
                    .any(|b| b.scope.tenant().is_some_and(|bt| bt.as_str() == t))
            }) && role.is_none_or(|r| u.bindings.iter().any(|b| b.role == r))
                && q.disabled.is_none_or(|d| u.disabled == d)
                && needle
                    .as_deref()
                    .is_none_or(|n| u.name.as_str().to_lowercase().contains(n))
        })
        .filter(|u| visible(&s, &who, u))
        .take(limit + 1)
        .map(|u| UserView::of(&u, None))
        .collect();
    let next = (items.len() > limit).then(|| {
        items.truncate(limit);
        items.last().map(|u| u.name.clone()).unwrap_or_default()
    });
    Ok(Json(Page { items, next }))
}

/// `POST /v1/users`: with a password, or none (one is generated and answered once).
#[utoipa::path(post, path = "/v1/users", request_body = NewUserBody,
    responses((status = 201, body = UserView), (status = 400, body = ErrorView),
        (status = 403, body = ErrorView), (status = 404, body = ErrorView), (status = 409, body = ErrorView)))]
pub async fn create_user(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    user_admin(&s, &who)?;
    let body: NewUserBody = json_body(body)?;
    let name: UserName = body
        .name
        .parse()
        .map_err(|e| bad_request(format!("bad user name: {e}")))?;
    let mut bindings = Vec::with_capacity(body.bindings.len());
    for b in &body.bindings {
        let b = b.binding()?;
        may_grant(&s, &who, &b)?;
        bindings.push(b);
    }
    if bindings.is_empty() && !administers(&s, &who, &Scope::Global) {
        return Err(bad_binding(
            "give at least one binding within your Admin scopes (a user without bindings is seen by platform administrators only)".into(),
        ));
    }
    let (password, generated) = match body.password {
        Some(p) => (Password::new(SecretString::new(p))?, false),
        None => (Password::generate(), true),
    };
    let r = s
        .auth
        .create_user(&name, &password, bindings, &who.user)
        .await?;
    let shown = generated.then(|| password.expose().to_owned());
    Ok((StatusCode::CREATED, Json(UserView::of(&r, shown))))
}

/// `GET /v1/users/{name}`.
#[utoipa::path(get, path = "/v1/users/{name}", params(("name" = String, Path)),
    responses((status = 200, body = UserView), (status = 403, body = ErrorView), (status = 404, body = ErrorView)))]
pub async fn get_user(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<UserView>, ApiError> {
    let u = find_user(&s, &who, &name).await?;
    Ok(Json(UserView::of(&u, None)))
}

/// `POST /v1/users/{name}/bindings`: grants a binding.
#[utoipa::path(post, path = "/v1/users/{name}/bindings", params(("name" = String, Path)),
    request_body = BindingView,
    responses((status = 200, body = UserView), (status = 400, body = ErrorView),
        (status = 403, body = ErrorView), (status = 404, body = ErrorView)))]
pub async fn grant(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<UserView>, ApiError> {
    let u = modifiable_user(&s, &who, &name).await?;
    let b = json_body::<BindingView>(body)?.binding()?;
    may_grant(&s, &who, &b)?;
    let r = s.auth.grant(&u.name, b, &who.user).await?;
    Ok(Json(UserView::of(&r, None)))
}

/// The binding of a `DELETE …/bindings` query string (all optional, so a body may be used).
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BindingQuery {
    /// The role.
    pub role: Option<RoleName>,
    /// The scope.
    pub scope: Option<ScopeKind>,
    /// Tenant.
    pub tenant: Option<String>,
    /// Organization.
    pub organization: Option<String>,
    /// Group.
    pub group: Option<String>,
    /// Device.
    pub device: Option<String>,
}

/// `DELETE /v1/users/{name}/bindings`: revokes one binding, given in the query string or in the
/// body.
#[utoipa::path(delete, path = "/v1/users/{name}/bindings",
    params(("name" = String, Path), BindingQuery),
    request_body(content = Option<BindingView>),
    responses((status = 200, body = UserView), (status = 400, body = ErrorView),
        (status = 403, body = ErrorView), (status = 404, body = ErrorView), (status = 409, body = ErrorView)))]
pub async fn revoke(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    q: Result<Query<BindingQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<UserView>, ApiError> {
    let u = modifiable_user(&s, &who, &name).await?;
    let q = query(q)?;
    let view = match (q.role, q.scope) {
        (Some(role), Some(scope)) => BindingView {
            role,
            scope,
            tenant: q.tenant,
            organization: q.organization,
            group: q.group,
            device: q.device,
        },
        (None, None)
            if q.tenant.is_none()
                && body
                    .as_ref()
                    .is_ok_and(|b| !b.iter().all(u8::is_ascii_whitespace)) =>
        {
            json_body::<BindingView>(body)?
        }
        _ => {
            return Err(bad_binding(
                "name the binding with role and scope (and its tenant, organization, group or device), in the query or the body".into(),
            ));
        }
    };
    let b = view.binding()?;
    may_grant(&s, &who, &b)?;
    let r = s.auth.revoke_binding(&u.name, &b, &who.user).await?;
    Ok(Json(UserView::of(&r, None)))
}

async fn set_disabled(
    s: AppState,
    who: Principal,
    name: String,
    disabled: bool,
) -> Result<Json<UserView>, ApiError> {
    let u = modifiable_user(&s, &who, &name).await?;
    let r = s.auth.set_disabled(&u.name, disabled, &who.user).await?;
    Ok(Json(UserView::of(&r, None)))
}

/// `POST /v1/users/{name}/disable`: the user cannot log in; its sessions end and its API
/// tokens stop working.
#[utoipa::path(post, path = "/v1/users/{name}/disable", params(("name" = String, Path)),
    responses((status = 200, body = UserView), (status = 403, body = ErrorView),
        (status = 404, body = ErrorView), (status = 409, body = ErrorView)))]
pub async fn disable_user(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<UserView>, ApiError> {
    set_disabled(s, who, name, true).await
}

/// `POST /v1/users/{name}/enable`.
#[utoipa::path(post, path = "/v1/users/{name}/enable", params(("name" = String, Path)),
    responses((status = 200, body = UserView), (status = 403, body = ErrorView), (status = 404, body = ErrorView)))]
pub async fn enable_user(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<UserView>, ApiError> {
    set_disabled(s, who, name, false).await
}

/// `POST /v1/users/{name}/password`: an administrator's reset. Every session of the user ends
/// and its API tokens are revoked (whoever knew the old password may have made some).
#[utoipa::path(post, path = "/v1/users/{name}/password", params(("name" = String, Path)),
    request_body(content = Option<PasswordBody>),
    responses((status = 200, body = UserView), (status = 400, body = ErrorView),
        (status = 403, body = ErrorView), (status = 404, body = ErrorView)))]
pub async fn reset_password(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<UserView>, ApiError> {
    let u = modifiable_user(&s, &who, &name).await?;
    let body: PasswordBody = match &body {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => PasswordBody::default(),
        _ => json_body(body)?,
    };
    let (password, generated) = match body.password {
        Some(p) => (Password::new(SecretString::new(p))?, false),
        None => (Password::generate(), true),
    };
    let r = s.auth.set_password(&u.name, &password, &who.user).await?;
    let revoked = s
        .auth
        .revoke_api_tokens_of(&u.name)
        .await
        .map_err(UserError::Store)?;
    if revoked > 0 {
        let mut a = AuditEntry::new("api_token.revoke", &who.user, "ok");
        a.detail = serde_json::json!({"user": u.name, "api_tokens_revoked": revoked, "reason": "password reset"});
        s.auth.audit().record(a).await;
    }
    let shown = generated.then(|| password.expose().to_owned());
    Ok(Json(UserView::of(&r, shown)))
}

/// `DELETE /v1/users/{name}`: the user, its sessions and its API tokens.
#[utoipa::path(delete, path = "/v1/users/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorView),
        (status = 404, body = ErrorView), (status = 409, body = ErrorView)))]
pub async fn delete_user(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let u = modifiable_user(&s, &who, &name).await?;
    s.auth.delete_user(&u.name, &who.user).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------
// The caller's own API tokens

/// An API token as the API shows it (the token itself only once, at creation).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApiTokenView {
    /// Id (16 hex characters).
    pub id: String,
    /// Free text.
    pub label: String,
    /// Narrower bindings (absent: the user's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bindings: Option<Vec<BindingView>>,
    /// Created (unix seconds).
    pub created_at: i64,
    /// Expires (unix seconds).
    pub expires_at: i64,
    /// The token (`wgapi_…`): only in the answer that created it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl ApiTokenView {
    fn of(r: &ApiTokenRecord, token: Option<String>) -> Self {
        Self {
            id: r.id.clone(),
            label: r.label.clone(),
            bindings: r
                .bindings
                .as_ref()
                .map(|bs| bs.iter().map(BindingView::from).collect()),
            created_at: r.created_at,
            expires_at: r.expires_at,
            token,
        }
    }
}

/// `POST /v1/auth/tokens`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiTokenBody {
    /// Free text.
    #[serde(default)]
    pub label: String,
    /// Lifetime, seconds (60 s to the configured maximum; default 30 days or the maximum).
    #[serde(default)]
    pub ttl_secs: Option<i64>,
    /// Narrower bindings, each within the caller's (absent: the caller's, as they are at each
    /// use).
    #[serde(default)]
    pub bindings: Option<Vec<BindingView>>,
}

/// `GET /v1/auth/tokens`: the caller's API tokens, oldest first.
#[utoipa::path(get, path = "/v1/auth/tokens", params(crate::api::PageQuery),
    responses((status = 200, body = Page<ApiTokenView>), (status = 400, body = ErrorView)))]
pub async fn list_api_tokens(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    q: Result<Query<crate::api::PageQuery>, QueryRejection>,
) -> Result<Json<Page<ApiTokenView>>, ApiError> {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let owner: UserName = who.user.parse().map_err(|_| not_found())?;
    let all = s.auth.api_tokens(Some(&owner)).await?;
    let start = match &q.after {
        Some(a) => all
            .iter()
            .position(|r| &r.id == a)
            .map_or(all.len(), |i| i + 1),
        None => 0,
    };
    let mut items: Vec<ApiTokenView> = all[start..]
        .iter()
        .take(limit + 1)
        .map(|r| ApiTokenView::of(r, None))
        .collect();
    let next = (items.len() > limit).then(|| {
        items.truncate(limit);
        items.last().map(|t| t.id.clone()).unwrap_or_default()
    });
    Ok(Json(Page { items, next }))
}

/// `POST /v1/auth/tokens`: a new API token for the caller, shown once. Needs a login session
/// (a token cannot mint tokens that outlive or outrank it).
#[utoipa::path(post, path = "/v1/auth/tokens", request_body = NewApiTokenBody,
    responses((status = 201, body = ApiTokenView), (status = 400, body = ErrorView), (status = 403, body = ErrorView)))]
pub async fn create_api_token(
    State(s): State<AppState>,
    Extension(who): Extension<Authenticated>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<ApiTokenView>), ApiError> {
    if !matches!(who.credential, Credential::Session { .. }) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "session_required",
            "creating an API token needs a login session (POST /v1/auth/login), not an API token",
        ));
    }
    let body: NewApiTokenBody = json_body(body)?;
    let owner: UserName = who.principal.user.parse().map_err(|_| not_found())?;
    let bindings = body
        .bindings
        .map(|bs| {
            bs.iter()
                .map(BindingView::binding)
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let max = s.auth.config().auth.api_token_max_days * 86_400;
    let (token, rec) = s
        .auth
        .create_api_token(
            NewApiToken {
                owner,
                label: body.label.chars().take(200).collect(),
                bindings,
                ttl_secs: body.ttl_secs.unwrap_or(DEFAULT_TOKEN_TTL_SECS.min(max)),
            },
            &who.principal.user,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(ApiTokenView::of(&rec, Some(token.expose().to_owned()))),
    ))
}

/// `DELETE /v1/auth/tokens/{id}`: revokes one of the caller's API tokens.
#[utoipa::path(delete, path = "/v1/auth/tokens/{id}", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorView)))]
pub async fn revoke_api_token(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let owner: UserName = who.user.parse().map_err(|_| not_found())?;
    s.auth
        .revoke_api_token(&id, Some(&owner), &who.user)
        .await
        .map_err(|e| match e {
            UserError::TokenNotFound(_) => not_found(),
            other => other.into(),
        })?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------
// Audit

/// Audit query filters and paging.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only this kind (exact, e.g. `user.grant`).
    pub kind: Option<String>,
    /// Only this actor (exact: a user name, `enrollment`, `cli`, …).
    pub actor: Option<String>,
    /// Only entries at or after this time: unix seconds or RFC 3339.
    pub since: Option<String>,
    /// Only entries at or before this time: unix seconds or RFC 3339.
    pub until: Option<String>,
    /// `newest` first (the default) or `oldest` first.
    pub order: Option<AuditOrder>,
    /// Page size (1–500, default 100).
    pub limit: Option<usize>,
    /// The `next` of the previous page.
    pub after: Option<String>,
}

/// The order of an audit page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuditOrder {
    /// Newest first.
    #[default]
    Newest,
    /// Oldest first.
    Oldest,
}

/// One audit entry.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditEntryView {
    /// Position in the hash chain.
    pub seq: u64,
    /// Unix seconds.
    pub ts: i64,
    /// What happened (`login`, `user.grant`, `device.revoke`, …).
    pub kind: String,
    /// `ok` or a refusal code.
    pub outcome: String,
    /// Who acted.
    pub actor: String,
    /// Tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Remote address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Anything else recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub detail: Option<serde_json::Value>,
    /// Hash of the previous entry.
    pub prev: String,
    /// This entry's hash.
    pub hash: String,
}

impl From<AuditEntry> for AuditEntryView {
    fn from(e: AuditEntry) -> Self {
        Self {
            seq: e.seq,
            ts: e.ts,
            kind: e.kind,
            outcome: e.outcome,
            actor: e.actor,
            tenant: e.tenant,
            device: e.device,
            ip: e.ip,
            detail: (!e.detail.is_null()).then_some(e.detail),
            prev: e.prev,
            hash: e.hash,
        }
    }
}

fn time_param(name: &str, v: Option<&str>) -> Result<Option<i64>, ApiError> {
    let Some(v) = v else {
        return Ok(None);
    };
    if let Ok(t) = v.parse::<i64>() {
        return Ok(Some(t));
    }
    time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .map(|t| Some(t.unix_timestamp()))
        .map_err(|_| bad_request(format!("`{name}` must be unix seconds or RFC 3339")))
}

async fn audit_page(
    s: &AppState,
    tenant: Option<TenantId>,
    p: AuditParams,
) -> Result<Json<Page<AuditEntryView>>, ApiError> {
    let newest_first = p.order.unwrap_or_default() == AuditOrder::Newest;
    // `after` is the stream position of the last entry of the previous page.
    let after = p
        .after
        .as_deref()
        .map(|a| {
            a.parse::<u64>()
                .map_err(|_| bad_request("`after` must be the `next` of a previous page"))
        })
        .transpose()?;
    let start = match (after, newest_first) {
        (None, _) => 0,
        (Some(a), false) => a.saturating_add(1),
        // Nothing lies before the first entry.
        (Some(0 | 1), true) => {
            return Ok(Json(Page {
                items: Vec::new(),
                next: None,
            }));
        }
        (Some(a), true) => a - 1,
    };
    let kind = p.kind.filter(|k| !k.is_empty());
    if kind.as_deref().is_some_and(|k| {
        k.len() > 64
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    }) {
        return Err(bad_request(
            "`kind` is an entry kind such as `user.grant`: letters, digits, '.', '_', '-'",
        ));
    }
    let q = AuditQuery {
        tenant,
        kind,
        actor: p.actor.filter(|a| !a.is_empty()),
        since: time_param("since", p.since.as_deref())?,
        until: time_param("until", p.until.as_deref())?,
        start,
        limit: p.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT),
        newest_first,
    };
    let page = s.auth.audit_query(&q).await?;
    let next = page.next.map(|n| {
        if newest_first {
            n.saturating_add(1)
        } else {
            n.saturating_sub(1)
        }
    });
    Ok(Json(Page {
        items: page.entries.into_iter().map(Into::into).collect(),
        next: next.map(|n| n.to_string()),
    }))
}

/// `GET /v1/tenants/{tenant}/audit`: the tenant's audit entries, newest first.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/audit",
    params(("tenant" = String, Path), AuditParams),
    responses((status = 200, body = Page<AuditEntryView>), (status = 400, body = ErrorView),
        (status = 403, body = ErrorView), (status = 404, body = ErrorView)))]
pub async fn tenant_audit(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(tenant): Path<String>,
    q: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<Page<AuditEntryView>>, ApiError> {
    let tenant = tenant_id(&tenant)?;
    if !rbac::sees_tenant(&who, &tenant) {
        return Err(not_found());
    }
    if rbac::authorize(&who, Action::ReadAudit, &Target::tenant(tenant.clone()))
        == Decision::NotFound
    {
        // Seen, but the entries are the whole tenant's.
        return Err(forbidden(
            "audit entries are kept per tenant: reading them needs Manager or Admin at the tenant scope",
        ));
    }
    guard(&who, Action::ReadAudit, &Target::tenant(tenant.clone()))?;
    audit_page(&s, Some(tenant), query(q)?).await
}

/// `GET /v1/audit`: the platform's own audit entries (no tenant: logins, user changes, key
/// rotations, …), newest first. Global scope only.
#[utoipa::path(get, path = "/v1/audit", params(AuditParams),
    responses((status = 200, body = Page<AuditEntryView>), (status = 400, body = ErrorView),
        (status = 403, body = ErrorView), (status = 404, body = ErrorView)))]
pub async fn platform_audit(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    q: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<Page<AuditEntryView>>, ApiError> {
    guard(&who, Action::ReadAudit, &Target::Platform)?;
    audit_page(&s, None, query(q)?).await
}

/// The OpenAPI document of these endpoints (merged into [`crate::api::ApiDoc`]'s).
#[derive(Debug, OpenApi)]
#[openapi(
    paths(create_tenant, update_tenant, delete_tenant, list_users, create_user, get_user, grant,
        revoke, disable_user, enable_user, reset_password, delete_user, list_api_tokens,
        create_api_token, revoke_api_token, tenant_audit, platform_audit),
    components(schemas(NewTenantBody, TenantPatch, TenantDetail, RoleName, ScopeKind, BindingView,
        UserView, Page<UserView>, NewUserBody, PasswordBody, ApiTokenView, Page<ApiTokenView>,
        NewApiTokenBody, AuditEntryView, Page<AuditEntryView>, AuditOrder, ErrorView))
)]
pub struct AdminApiDoc;

/// The routes (they expect a [`Principal`] and an [`Authenticated`] in the request extensions).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/tenants", post(create_tenant))
        .route(
            "/v1/tenants/{tenant}",
            delete(delete_tenant).patch(update_tenant),
        )
        .route("/v1/tenants/{tenant}/audit", get(tenant_audit))
        .route("/v1/audit", get(platform_audit))
        .route("/v1/users", get(list_users).post(create_user))
        .route("/v1/users/{name}", get(get_user).delete(delete_user))
        .route("/v1/users/{name}/bindings", post(grant).delete(revoke))
        .route("/v1/users/{name}/disable", post(disable_user))
        .route("/v1/users/{name}/enable", post(enable_user))
        .route("/v1/users/{name}/password", post(reset_password))
        .route(
            "/v1/auth/tokens",
            get(list_api_tokens).post(create_api_token),
        )
        .route("/v1/auth/tokens/{id}", delete(revoke_api_token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_round_trip_and_bad_ones_say_what_is_missing() {
        let scopes = [
            serde_json::json!({"role": "admin", "scope": "global"}),
            serde_json::json!({"role": "viewer", "scope": "tenant", "tenant": "acme"}),
            serde_json::json!({"role": "manager", "scope": "organization", "tenant": "acme", "organization": "o1"}),
            serde_json::json!({"role": "technician", "scope": "group", "tenant": "acme", "organization": "o1", "group": "g1"}),
        ];
        for v in scopes {
            let view: BindingView =
                serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}"));
            let b = view.binding().unwrap_or_else(|_| panic!("{v}"));
            // The API's form is the stored form.
            assert_eq!(serde_json::to_value(&b).unwrap_or_default(), v);
            assert_eq!(BindingView::from(&b), view);
        }
        for (v, says) in [
            (
                serde_json::json!({"role": "viewer", "scope": "tenant"}),
                "tenant",
            ),
            (
                serde_json::json!({"role": "viewer", "scope": "global", "tenant": "acme"}),
                "no `tenant`",
            ),
            (
                serde_json::json!({"role": "viewer", "scope": "organization", "tenant": "acme"}),
                "organization",
            ),
            (
                serde_json::json!({"role": "viewer", "scope": "organization", "tenant": "acme", "organization": "Not A Slug"}),
                "organization",
            ),
            (
                serde_json::json!({"role": "viewer", "scope": "device", "tenant": "acme", "device": "x y"}),
                "device",
            ),
        ] {
            let view: BindingView =
                serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}"));
            let e = format!("{:?}", view.binding().err());
            assert!(e.contains("bad_binding") && e.contains(says), "{v}: {e}");
        }
        assert!(
            serde_json::from_value::<BindingView>(
                serde_json::json!({"role": "root", "scope": "global"})
            )
            .is_err()
        );
    }

    #[test]
    fn the_openapi_document_has_every_route_and_schema() {
        let mut doc = crate::api::ApiDoc::openapi();
        doc.merge(AdminApiDoc::openapi());
        let v = serde_json::to_value(&doc).unwrap_or_default();
        for (path, methods) in [
            ("/v1/tenants", &["get", "post"][..]),
            ("/v1/tenants/{tenant}", &["get", "patch", "delete"]),
            ("/v1/tenants/{tenant}/audit", &["get"]),
            ("/v1/audit", &["get"]),
            ("/v1/users", &["get", "post"]),
            ("/v1/users/{name}", &["get", "delete"]),
            ("/v1/users/{name}/bindings", &["post", "delete"]),
            ("/v1/users/{name}/disable", &["post"]),
            ("/v1/users/{name}/enable", &["post"]),
            ("/v1/users/{name}/password", &["post"]),
            ("/v1/auth/tokens", &["get", "post"]),
            ("/v1/auth/tokens/{id}", &["delete"]),
        ] {
            for m in methods {
                assert!(
                    v["paths"][path][m].is_object(),
                    "{m} {path} is not documented"
                );
            }
        }
        // Every schema referred to is defined.
        let text = v.to_string();
        assert!(text.matches("#/components/schemas/").count() > 40, "{text}");
        for r in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = r.split('"').next().unwrap_or_default();
            assert!(
                v["components"]["schemas"][name].is_object(),
                "{name} is referred to but not defined"
            );
        }
    }
}
