//! The hierarchy endpoints of the `/v1` API: organizations and groups (create, list, show,
//! rename, move, delete) and device move and delete, over [`crate::hierarchy`].
//!
//! Every handler asks [`guard`] first. Creating an organization needs Manage on the tenant;
//! creating a group, Manage on its organization; renaming or deleting, Manage on the object;
//! moves, Manage on the source and on the destination; deleting a device, Manage on the device.
//! An organization or group is shown and listed to whoever may read it, and also to a user
//! scoped below it (a group- or device-scoped user sees the organization and group that hold its
//! scope); everything else is `404`, like objects that do not exist.

use crate::{
    api::{
        DeviceView, ErrorView, Page, PageQuery, bad_request, device_in_scope, guard, not_found,
        tenant_id,
    },
    hierarchy::{GroupRecord, HierarchyError, OrgRecord},
    http::{ApiError, AppState},
    rbac::{self, Action, Decision, Place, Principal, Scope, Target},
};
use axum::{
    Extension, Json,
    extract::{
        Path, Query, State,
        rejection::{JsonRejection, QueryRejection},
    },
    http::StatusCode,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use wegweiser_shared::ids::TenantId;

impl From<HierarchyError> for ApiError {
    fn from(e: HierarchyError) -> Self {
        let (status, code) = match &e {
            HierarchyError::Invalid(_) | HierarchyError::UnknownPlace(_) => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
            HierarchyError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            HierarchyError::Exists(_) | HierarchyError::Conflict(_) => {
                (StatusCode::CONFLICT, "conflict")
            }
            #[allow(unreachable_patterns)]
            _ => (StatusCode::BAD_REQUEST, "bad_request"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(v)| v).map_err(|e| {
        let why: String = e.body_text().chars().take(200).collect();
        bad_request(format!("malformed request body: {why}"))
    })
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v).map_err(|e| {
        let why: String = e.body_text().chars().take(200).collect();
        bad_request(format!("malformed query: {why}"))
    })
}

/// Runs a deletion in a task of its own: a client hanging up, or the request timeout, must not
/// cut it short between its steps.
async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, crate::authority::AuthorityError>>
    + Send
    + 'static,
) -> Result<T, ApiError> {
    match tokio::spawn(work).await {
        Ok(r) => Ok(r?),
        Err(e) => {
            tracing::error!(error = %e, "A deletion task failed.");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error; see the control plane's log",
            ))
        }
    }
}

fn place(tenant: &TenantId, org: &str, group: Option<&str>) -> Target {
    Target::Place(Place {
        tenant: tenant.clone(),
        organization: Some(org.to_owned()),
        group: group.map(str::to_owned),
    })
}

/// Whether `who` may see the organization `org` (and group `group` of it): it may read there,
/// or holds a binding below it (a group, or a device that lies there).
fn sees(s: &AppState, who: &Principal, tenant: &TenantId, org: &str, group: Option<&str>) -> bool {
    if rbac::authorize(who, Action::Read, &place(tenant, org, group)) == Decision::Allow {
        return true;
    }
    who.bindings.iter().any(|b| match &b.scope {
        Scope::Group {
            tenant: t,
            organization: o,
            group: g,
        } => t == tenant && o == org && group.is_none_or(|want| want == g),
        Scope::Device {
            tenant: t,
            device: d,
        } => {
            t == tenant
                && s.devices.get(t, d).is_some_and(|d| {
                    d.organization.as_deref() == Some(org)
                        && group.is_none_or(|want| d.group.as_deref() == Some(want))
                })
        }
        _ => false,
    })
}

/// [`guard`] for reading an organization or group, which a user scoped below it also sees.
fn guard_read(
    s: &AppState,
    who: &Principal,
    tenant: &TenantId,
    org: &str,
    group: Option<&str>,
) -> Result<(), ApiError> {
    match guard(who, Action::Read, &place(tenant, org, group)) {
        Err(e) if !sees(s, who, tenant, org, group) => Err(e),
        _ => Ok(()),
    }
}

fn page<T, F: Fn(&T) -> &str>(mut all: Vec<T>, q: &PageQuery, id: F) -> Page<T> {
    let limit = q
        .limit
        .unwrap_or(crate::api::DEFAULT_LIMIT)
        .clamp(1, crate::api::MAX_LIMIT);
    if let Some(a) = &q.after {
        all.retain(|x| id(x) > a.as_str());
    }
    let more = all.len() > limit;
    all.truncate(limit);
    let next = if more {
        all.last().map(|x| id(x).to_owned())
    } else {
        None
    };
    Page { items: all, next }
}

/// An organization as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrgView {
    /// Id (a slug; never changes).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Created (unix seconds).
    pub created_at: i64,
    /// Who created it.
    pub created_by: String,
}

impl From<OrgRecord> for OrgView {
    fn from(r: OrgRecord) -> Self {
        Self {
            id: r.id,
            name: r.name,
            created_at: r.created_at,
            created_by: r.created_by,
        }
    }
}

/// A group as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GroupView {
    /// Id (a slug, unique in the tenant; never changes).
    pub id: String,
    /// The organization that holds it.
    pub organization: String,
    /// Display name.
    pub name: String,
    /// Created (unix seconds).
    pub created_at: i64,
    /// Who created it.
    pub created_by: String,
}

impl From<GroupRecord> for GroupView {
    fn from(r: GroupRecord) -> Self {
        Self {
            id: r.id,
            organization: r.organization,
            name: r.name,
            created_at: r.created_at,
            created_by: r.created_by,
        }
    }
}

/// `POST /v1/tenants/{tenant}/organizations` and `POST …/organizations/{org}/groups`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewObjectBody {
    /// Id: lowercase letters, digits and '-' (not first or last), at most 63 characters.
    pub id: String,
    /// Display name (default: the id; at most 200 characters).
    #[serde(default)]
    pub name: Option<String>,
}

/// `PATCH /v1/tenants/{tenant}/organizations/{org}`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameBody {
    /// The new display name (at most 200 characters).
    pub name: String,
}

/// `PATCH /v1/tenants/{tenant}/groups/{group}`: a new name, another organization, or both.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupPatchBody {
    /// The new display name.
    #[serde(default)]
    pub name: Option<String>,
    /// Move the group (with its devices) to this organization.
    #[serde(default)]
    pub organization: Option<String>,
}

/// `POST /v1/tenants/{tenant}/devices/{device}/move`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveDeviceBody {
    /// The organization.
    pub organization: String,
    /// A group of that organization (none: directly in the organization).
    #[serde(default)]
    pub group: Option<String>,
}

/// Deletion options.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Also delete what it holds (devices, then groups).
    pub cascade: Option<bool>,
}

/// `GET /v1/tenants/{tenant}/organizations`: the organizations the caller sees.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/organizations",
    params(("tenant" = String, Path), PageQuery),
    responses((status = 200, body = Page<OrgView>), (status = 400, body = ErrorView), (status = 404, body = ErrorView)))]
pub async fn list_orgs(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(tenant): Path<String>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Page<OrgView>>, ApiError> {
    let tenant = tenant_id(&tenant)?;
    if !rbac::sees_tenant(&who, &tenant) {
        return Err(not_found());
    }
    let q = query(q)?;
    let mut all = s.auth.organizations(&tenant).await?;
    all.retain(|o| sees(&s, &who, &tenant, &o.id, None));
    let p = page(all, &q, |o| o.id.as_str());
    Ok(Json(Page {
        items: p.items.into_iter().map(Into::into).collect(),
        next: p.next,
    }))
}

/// `POST /v1/tenants/{tenant}/organizations`: needs Manage on the tenant.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/organizations",
    params(("tenant" = String, Path)), request_body = NewObjectBody,
    responses((status = 201, body = OrgView), (status = 400, body = ErrorView), (status = 403, body = ErrorView),
        (status = 404, body = ErrorView), (status = 409, body = ErrorView)))]
pub async fn create_org(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(tenant): Path<String>,
    b: Result<Json<NewObjectBody>, JsonRejection>,
) -> Result<(StatusCode, Json<OrgView>), ApiError> {
    let tenant = tenant_id(&tenant)?;
    guard(&who, Action::Manage, &Target::tenant(tenant.clone()))?;
    let b = body(b)?;
    let r = s
        .auth
        .create_organization(&tenant, &b.id, b.name.as_deref(), &who.user)
        .await?;
    Ok((StatusCode::CREATED, Json(r.into())))
}

async fn org_in_scope(
    s: &AppState,
    who: &Principal,
    tenant: &str,
    org: &str,
    action: Action,
) -> Result<(TenantId, OrgRecord), ApiError> {
    let tenant = tenant_id(tenant)?;
    if action == Action::Read {
        guard_read(s, who, &tenant, org, None)?;
    } else {
        guard(who, action, &place(&tenant, org, None))?;
    }
    let r = s
        .auth
        .organization(&tenant, org)
        .await?
        .ok_or_else(not_found)?;
    Ok((tenant, r))
}

/// `GET /v1/tenants/{tenant}/organizations/{org}`.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/organizations/{org}",
    params(("tenant" = String, Path), ("org" = String, Path)),
    responses((status = 200, body = OrgView), (status = 404, body = ErrorView)))]
pub async fn get_org(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((tenant, org)): Path<(String, String)>,
) -> Result<Json<OrgView>, ApiError> {
    let (_, r) = org_in_scope(&s, &who, &tenant, &org, Action::Read).await?;
    Ok(Json(r.into()))
}

/// `PATCH /v1/tenants/{tenant}/organizations/{org}`: renames (the id stays).
#[utoipa::path(patch, path = "/v1/tenants/{tenant}/organizations/{org}",
    params(("tenant" = String, Path), ("org" = String, Path)), request_body = RenameBody,
    responses((status = 200, body = OrgView), (status = 400, body = ErrorView), (status = 403, body = ErrorView),
        (status = 404, body = ErrorView)))]
pub async fn patch_org(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((tenant, org)): Path<(String, String)>,
    b: Result<Json<RenameBody>, JsonRejection>,
) -> Result<Json<OrgView>, ApiError> {
    let (tenant, _) = org_in_scope(&s, &who, &tenant, &org, Action::Manage).await?;
    let b = body(b)?;
    let r = s
        .auth
        .rename_organization(&tenant, &org, &b.name, &who.user)
        .await?;
    Ok(Json(r.into()))
}

/// `DELETE /v1/tenants/{tenant}/organizations/{org}`: refused (409) while it holds groups or
/// devices, unless `cascade=true`.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/organizations/{org}",
    params(("tenant" = String, Path), ("org" = String, Path), DeleteQuery),
    responses((status = 204), (status = 400, body = ErrorView), (status = 403, body = ErrorView),
        (status = 404, body = ErrorView), (status = 409, body = ErrorView)))]
pub async fn delete_org(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((tenant, org)): Path<(String, String)>,
    q: Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let (tenant, _) = org_in_scope(&s, &who, &tenant, &org, Action::Manage).await?;
    let q = query(q)?;
    let auth = s.auth.clone();
    detached(async move {
        auth.delete_organization(&tenant, &org, q.cascade.unwrap_or(false), &who.user)
            .await
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/tenants/{tenant}/organizations/{org}/groups`: the groups the caller sees.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/organizations/{org}/groups",
    params(("tenant" = String, Path), ("org" = String, Path), PageQuery),
    responses((status = 200, body = Page<GroupView>), (status = 400, body = ErrorView), (status = 404, body = ErrorView)))]
pub async fn list_groups(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((tenant, org)): Path<(String, String)>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Page<GroupView>>, ApiError> {
    let (tenant, _) = org_in_scope(&s, &who, &tenant, &org, Action::Read).await?;
    let q = query(q)?;
    let mut all = s.auth.groups(&tenant, Some(&org)).await?;
    all.retain(|g| sees(&s, &who, &tenant, &org, Some(&g.id)));
    let p = page(all, &q, |g| g.id.as_str());
    Ok(Json(Page {
        items: p.items.into_iter().map(Into::into).collect(),
        next: p.next,
    }))
}

/// `POST /v1/tenants/{tenant}/organizations/{org}/groups`: needs Manage on the organization.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/organizations/{org}/groups",
    params(("tenant" = String, Path), ("org" = String, Path)), request_body = NewObjectBody,
    responses((status = 201, body = GroupView), (status = 400, body = ErrorView), (status = 403, body = ErrorView),
        (status = 404, body = ErrorView), (status = 409, body = ErrorView)))]
pub async fn create_group(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((tenant, org)): Path<(String, String)>,
    b: Result<Json<NewObjectBody>, JsonRejection>,
) -> Result<(StatusCode, Json<GroupView>), ApiError> {
    let (tenant, _) = org_in_scope(&s, &who, &tenant, &org, Action::Manage).await?;
    let b = body(b)?;
    let r = s
        .auth
        .create_group(&tenant, &org, &b.id, b.name.as_deref(), &who.user)
        .await?;
    Ok((StatusCode::CREATED, Json(r.into())))
}

async fn group_in_scope(
    s: &AppState,
    who: &Principal,
    tenant: &str,
    group: &str,
    action: Action,
) -> Result<(TenantId, GroupRecord), ApiError> {
    let tenant = tenant_id(tenant)?;
    // Where the group lies decides; an unknown group and one out of scope look the same.
    if !rbac::sees_tenant(who, &tenant) {
        return Err(not_found());
    }
    let r = s.auth.group(&tenant, group).await?.ok_or_else(not_found)?;
    if action == Action::Read {
        guard_read(s, who, &tenant, &r.organization, Some(group))?;
    } else {
        guard(who, action, &place(&tenant, &r.organization, Some(group)))?;
    }
    Ok((tenant, r))
}

/// `GET /v1/tenants/{tenant}/groups/{group}`.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/groups/{group}",
    params(("tenant" = String, Path), ("group" = String, Path)),
    responses((status = 200, body = GroupView), (status = 404, body = ErrorView)))]
pub async fn get_group(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((tenant, group)): Path<(String, String)>,
) -> Result<Json<GroupView>, ApiError> {
    let (_, r) = group_in_scope(&s, &who, &tenant, &group, Action::Read).await?;
    Ok(Json(r.into()))
}

/// `PATCH /v1/tenants/{tenant}/groups/{group}`: renames, or moves to another organization with
/// its devices (Manage on the group and on the destination; 409 while a role binding names the
/// group).
#[utoipa::path(patch, path = "/v1/tenants/{tenant}/groups/{group}",
    params(("tenant" = String, Path), ("group" = String, Path)), request_body = GroupPatchBody,
    responses((status = 200, body = GroupView), (status = 400, body = ErrorView), (status = 403, body = ErrorView),
        (status = 404, body = ErrorView), (status = 409, body = ErrorView)))]
pub async fn patch_group(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((tenant, group)): Path<(String, String)>,
    b: Result<Json<GroupPatchBody>, JsonRejection>,
) -> Result<Json<GroupView>, ApiError> {
    let (tenant, mut r) = group_in_scope(&s, &who, &tenant, &group, Action::Manage).await?;
    let b = body(b)?;
    if b.name.is_none() && b.organization.is_none() {
        return Err(bad_request(
            "give a new name, an organization to move the group to, or both",
        ));
    }
    if let Some(to) = &b.organization {
        guard(&who, Action::Manage, &place(&tenant, to, None))?;
    }
    if let Some(name) = &b.name {
        // Checked before anything changes, so a bad name never leaves a half-done patch.
        crate::hierarchy::check_name(name)?;
    }
    if let Some(to) = &b.organization {
        r = s.auth.move_group(&tenant, &group, to, &who.user).await?;
    }
    if let Some(name) = &b.name {
        r = s
            .auth
            .rename_group(&tenant, &group, name, &who.user)
            .await?;
    }
    Ok(Json(r.into()))
}

/// `DELETE /v1/tenants/{tenant}/groups/{group}`: refused (409) while it holds devices, unless
/// `cascade=true`.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/groups/{group}",
    params(("tenant" = String, Path), ("group" = String, Path), DeleteQuery),
    responses((status = 204), (status = 400, body = ErrorView), (status = 403, body = ErrorView),
        (status = 404, body = ErrorView), (status = 409, body = ErrorView)))]
pub async fn delete_group(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((tenant, group)): Path<(String, String)>,
    q: Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let (tenant, _) = group_in_scope(&s, &who, &tenant, &group, Action::Manage).await?;
    let q = query(q)?;
    let auth = s.auth.clone();
    detached(async move {
        auth.delete_group(&tenant, &group, q.cascade.unwrap_or(false), &who.user)
            .await
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/tenants/{tenant}/devices/{device}`: revokes its credentials (it drops at once and
/// can neither renew nor come back with its old key), purges its reports, deletes its record.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/devices/{device}",
    params(("tenant" = String, Path), ("device" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorView), (status = 404, body = ErrorView)))]
pub async fn delete_device(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((tenant, device)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let d = device_in_scope(&s, &who, Action::Manage, &tenant, &device)?;
    let auth = s.auth.clone();
    detached(async move { auth.delete_device(&d.tenant, &d.id, &who.user).await }).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/tenants/{tenant}/devices/{device}/move`: to an existing organization (and group);
/// Manage on the device and on the destination.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/devices/{device}/move",
    params(("tenant" = String, Path), ("device" = String, Path)), request_body = MoveDeviceBody,
    responses((status = 200, body = DeviceView), (status = 400, body = ErrorView), (status = 403, body = ErrorView),
        (status = 404, body = ErrorView)))]
pub async fn move_device(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((tenant, device)): Path<(String, String)>,
    b: Result<Json<MoveDeviceBody>, JsonRejection>,
) -> Result<Json<DeviceView>, ApiError> {
    let d = device_in_scope(&s, &who, Action::Manage, &tenant, &device)?;
    let b = body(b)?;
    crate::hierarchy::check_id("organization", &b.organization)?;
    if let Some(g) = &b.group {
        crate::hierarchy::check_id("group", g)?;
    }
    guard(
        &who,
        Action::Manage,
        &place(&d.tenant, &b.organization, b.group.as_deref()),
    )?;
    let r = s
        .auth
        .move_device(
            &d.tenant,
            &d.id,
            &b.organization,
            b.group.as_deref(),
            &who.user,
        )
        .await?;
    Ok(Json(DeviceView::of(&r, None, false)))
}

/// The hierarchy routes (merged into [`crate::api::routes`]).
pub fn routes() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route(
            "/v1/tenants/{tenant}/organizations",
            get(list_orgs).post(create_org),
        )
        .route(
            "/v1/tenants/{tenant}/organizations/{org}",
            get(get_org).patch(patch_org).delete(delete_org),
        )
        .route(
            "/v1/tenants/{tenant}/organizations/{org}/groups",
            get(list_groups).post(create_group),
        )
        .route(
            "/v1/tenants/{tenant}/groups/{group}",
            get(get_group).patch(patch_group).delete(delete_group),
        )
        .route(
            "/v1/tenants/{tenant}/devices/{device}/move",
            post(move_device),
        )
}
