//! The JSON API under `/v1/` (tenants, devices, enrollment tokens, commands, command keys;
//! organizations and groups in [`crate::api_hierarchy`]),
//! described by the OpenAPI document at `/openapi.json`, generated from these handlers.
//!
//! Every handler receives the caller as an [`rbac::Principal`] (put into the request by the
//! authentication layer) and asks [`guard`], the one place that calls [`rbac::authorize`],
//! before it touches anything. Objects outside the caller's scopes are answered `404` exactly
//! like objects that do not exist; `403` means "in your scope, but not for your role". Lists are
//! filtered to the caller's scopes on the server, paginated with `limit` and `after` (the last
//! id of the previous page).
//!
//! Device lists are served from [`DeviceIndex`], an in-memory copy of `wg_devices` and of the
//! devices' last heartbeat times, kept current by KV watches, so a tenant with 10,000 devices is
//! listed and filtered without touching the store.

use crate::{
    authority::{Authority, AuthorityError},
    commands::{CommandRequest, Target as CommandTarget},
    enrollment::{DeviceRecord, DeviceState},
    http::{ApiError, AppState},
    rbac::{self, Action, Decision, Place, Principal, Target},
};
use axum::{
    Extension, Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    routing::{get, post},
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
    time::Duration,
};
use utoipa::{IntoParams, OpenApi, ToSchema};
use wegweiser_shared::{
    command::Command,
    ids::{DeviceId, TenantId},
    time::now,
};

/// Largest page.
pub const MAX_LIMIT: usize = 500;
/// Page size when none is asked for.
pub const DEFAULT_LIMIT: usize = 100;
/// A device whose last heartbeat is younger than this is online.
pub const ONLINE_WITHIN_SECS: i64 = 90;

/// The one authorization check of the API: `Ok` when allowed, else the error to answer.
pub fn guard(who: &Principal, action: Action, target: &Target) -> Result<(), ApiError> {
    match rbac::authorize(who, action, target) {
        Decision::Allow => Ok(()),
        Decision::Forbidden => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("your role does not allow {action:?} here"),
        )),
        Decision::NotFound => Err(not_found()),
    }
}

pub(crate) fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such object")
}

pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

impl From<AuthorityError> for ApiError {
    fn from(e: AuthorityError) -> Self {
        match e {
            AuthorityError::UnknownTenant(_) => not_found(),
            AuthorityError::TenantExists(_) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            AuthorityError::Command(m) => bad_request(m),
            AuthorityError::BadLifetime { .. } => bad_request(e.to_string()),
            AuthorityError::Hierarchy(h) => h.into(),
            other => {
                tracing::error!(error = %other, "API request failed.");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the control plane's log",
                )
            }
        }
    }
}

pub(crate) fn tenant_id(s: &str) -> Result<TenantId, ApiError> {
    // An id that cannot exist is simply not found.
    s.parse().map_err(|_| not_found())
}

pub(crate) fn device_target(d: &DeviceRecord) -> Target {
    Target::Device {
        at: Place {
            tenant: d.tenant.clone(),
            organization: d.organization.clone(),
            group: d.group.clone(),
        },
        device: d.id.clone(),
    }
}

/// In-memory index of devices and their presence, fed by KV watches.
#[derive(Debug, Default)]
pub struct DeviceIndex {
    pub(crate) devices: RwLock<BTreeMap<(String, String), DeviceRecord>>,
    pub(crate) last_seen: RwLock<HashMap<(TenantId, DeviceId), i64>>,
    /// The latest CPU and memory use per device (see [`crate::api_live`]).
    pub(crate) summary: RwLock<HashMap<(TenantId, DeviceId), crate::api_live::Summary>>,
    /// Presence and metrics changes, for the live streams.
    pub(crate) changes: crate::api_live::Changes,
    /// Open live streams per user.
    pub(crate) streams: crate::api_live::Streams,
}

impl DeviceIndex {
    /// Loads the index and keeps it current: device records and the last heartbeat times.
    pub async fn start(auth: &Authority) -> Result<Arc<Self>, AuthorityError> {
        let index = Arc::new(Self::default());
        let client = auth.inner.cp.clone();
        Self::follow(
            &index,
            &client,
            &auth.inner.devices,
            "*.*",
            Self::apply_device,
        )
        .await?;
        let js = async_nats::jetstream::new(client.clone());
        // Opened (created when missing) rather than looked up: the ingest task that creates it
        // may start after the index, which would then never see a heartbeat. The two may also
        // create it at the same moment: the loser tries again and finds it.
        let mut tries = 0;
        let latest = loop {
            match crate::ingest::open(
                &js,
                auth.config().telemetry_retention_days,
                auth.config().kv_replicas,
            )
            .await
            {
                Ok((_, latest)) => break latest,
                Err(e) if tries < 50 => {
                    tracing::debug!(error = %e, "The latest-report bucket is not ready yet.");
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        };
        Self::follow(&index, &client, &latest, "*.*.hb", Self::apply_seen).await?;
        Self::follow(&index, &client, &latest, "*.*.met", Self::apply_metrics).await?;
        Ok(index)
    }

    /// Loads the keys of `store` matching `keys` into the index with `apply`, then follows their
    /// changes in a task for as long as the process runs; when a watch ends (the server went
    /// away, the consumer was lost), it watches again and reloads every key after a second.
    async fn follow(
        index: &Arc<Self>,
        client: &async_nats::Client,
        store: &async_nats::jetstream::kv::Store,
        keys: &'static str,
        apply: fn(&Self, &str, Option<&bytes::Bytes>),
    ) -> Result<(), AuthorityError> {
        let mut updates = Self::watch_and_load(index, client, store, keys, apply).await?;
        let (index, client, store) = (index.clone(), client.clone(), store.clone());
        tokio::spawn(async move {
            loop {
                while let Some(Ok(e)) = updates.next().await {
                    let put = e.operation == async_nats::jetstream::kv::Operation::Put;
                    apply(&index, &e.key, put.then_some(&e.value));
                }
                tracing::warn!(bucket = %store.name, "The device index lost its watch; reloading.");
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    match Self::watch_and_load(&index, &client, &store, keys, apply).await {
                        Ok(w) => {
                            updates = w;
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(bucket = %store.name, error = %e, "Cannot reload the device index yet.")
                        }
                    }
                }
            }
        });
        Ok(())
    }

    /// Watches, then loads (an update between the two is applied twice, never lost).
    async fn watch_and_load(
        index: &Self,
        client: &async_nats::Client,
        store: &async_nats::jetstream::kv::Store,
        keys: &str,
        apply: fn(&Self, &str, Option<&bytes::Bytes>),
    ) -> Result<async_nats::jetstream::kv::Watch, AuthorityError> {
        let updates = store
            .watch(keys)
            .await
            .map_err(crate::authority::store_err)?;
        for (key, value) in crate::authority::kv_values(client, store, keys).await? {
            apply(index, &key, Some(&value));
        }
        Ok(updates)
    }

    pub(crate) fn apply_device(&self, key: &str, value: Option<&bytes::Bytes>) {
        let Some((t, d)) = key.split_once('.') else {
            return;
        };
        let (Ok(t), Ok(d)) = (t.parse::<TenantId>(), d.parse::<DeviceId>()) else {
            return;
        };
        let key = (t.to_string(), d.to_string());
        let mut map = self.devices.write().unwrap_or_else(|e| e.into_inner());
        match value.and_then(|v| serde_json::from_slice::<DeviceRecord>(v).ok()) {
            Some(r) => {
                map.insert(key, r);
            }
            None => {
                map.remove(&key);
            }
        }
    }

    pub(crate) fn apply_seen(&self, key: &str, value: Option<&bytes::Bytes>) {
        let Some(value) = value else {
            return;
        };
        let mut parts = key.split('.');
        let (Some(t), Some(d)) = (parts.next(), parts.next()) else {
            return;
        };
        let (Ok(t), Ok(d)) = (t.parse::<TenantId>(), d.parse::<DeviceId>()) else {
            return;
        };
        if let Ok(l) = serde_json::from_slice::<crate::ingest::Latest>(value) {
            self.last_seen
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert((t.clone(), d.clone()), l.received_at);
            self.changes.send(t, d);
        }
    }

    /// A page of `tenant`'s devices that `who` may read and that match `q`, after `q.after`.
    pub fn page(&self, who: &Principal, tenant: &TenantId, q: &DeviceQuery) -> Page<DeviceView> {
        if q.sort.as_deref().is_some_and(|s| s != "id") || q.order.as_deref() == Some("desc") {
            return crate::api_live::sorted_page(self, who, tenant, q);
        }
        let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
        let devices = self.devices.read().unwrap_or_else(|e| e.into_inner());
        let seen = self.last_seen.read().unwrap_or_else(|e| e.into_inner());
        let t = now();
        let start = match &q.after {
            Some(a) => std::ops::Bound::Excluded((tenant.to_string(), a.clone())),
            None => std::ops::Bound::Included((tenant.to_string(), String::new())),
        };
        let mut items = Vec::with_capacity(limit);
        let mut more = false;
        let needle = q.q.as_deref().map(str::to_lowercase);
        let summary = self.summary.read().unwrap_or_else(|e| e.into_inner());
        for ((tn, _), d) in devices.range((start, std::ops::Bound::Unbounded)) {
            if tn != tenant.as_str() {
                break;
            }
            if rbac::authorize(who, Action::Read, &device_target(d)) != Decision::Allow {
                continue;
            }
            if !crate::api_live::matches(d, q, needle.as_deref()) {
                continue;
            }
            let last = seen.get(&(d.tenant.clone(), d.id.clone())).copied();
            let online = last.is_some_and(|s| t - s <= ONLINE_WITHIN_SECS);
            if q.online.is_some_and(|want| want != online) {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            let s = summary.get(&(d.tenant.clone(), d.id.clone()));
            items.push(DeviceView::of(d, last, online).with_summary(s));
        }
        let next = if more {
            items.last().map(|d: &DeviceView| d.id.clone())
        } else {
            None
        };
        Page { items, next }
    }

    /// One device.
    pub fn get(&self, tenant: &TenantId, device: &DeviceId) -> Option<DeviceRecord> {
        self.devices
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(tenant.to_string(), device.to_string()))
            .cloned()
    }

    /// Every device of `tenant` in group `group`, whoever asks.
    pub fn in_group(&self, tenant: &TenantId, group: &str) -> Vec<DeviceRecord> {
        let devices = self.devices.read().unwrap_or_else(|e| e.into_inner());
        devices
            .range((tenant.to_string(), String::new())..)
            .take_while(|((t, _), _)| t == tenant.as_str())
            .filter(|(_, d)| d.group.as_deref() == Some(group))
            .map(|(_, d)| d.clone())
            .collect()
    }

    /// How many devices it holds.
    pub fn len(&self) -> usize {
        self.devices.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A page of results.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Device list filters and paging.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeviceQuery {
    /// Only this organization.
    pub organization: Option<String>,
    /// Only this group.
    pub group: Option<String>,
    /// Only online (`true`) or offline (`false`) devices.
    pub online: Option<bool>,
    /// Host name or id contains this (case-insensitive).
    pub q: Option<String>,
    /// Only this OS family (`linux`, `windows`, `macos`).
    pub os: Option<String>,
    /// Sort by `id` (default), `hostname`, `last_seen`, `cpu` or `mem`.
    pub sort: Option<String>,
    /// `asc` (default) or `desc`.
    pub order: Option<String>,
    /// Page size (1–500, default 100).
    pub limit: Option<usize>,
    /// The `next` of the previous page.
    pub after: Option<String>,
}

/// A device as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeviceView {
    /// Id.
    pub id: String,
    /// Organization.
    pub organization: Option<String>,
    /// Group.
    pub group: Option<String>,
    /// `active` or `revoked`.
    pub state: String,
    /// Host name.
    pub hostname: String,
    /// OS family.
    pub os: String,
    /// OS version.
    pub os_version: String,
    /// First enrollment (unix seconds).
    pub enrolled_at: i64,
    /// Last heartbeat received (unix seconds).
    pub last_seen: Option<i64>,
    /// Heartbeat within the last 90 s.
    pub online: bool,
    /// CPU use of the latest metrics, percent of all cores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f32>,
    /// Memory use of the latest metrics, percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem: Option<f32>,
}

impl DeviceView {
    pub(crate) fn of(d: &DeviceRecord, last_seen: Option<i64>, online: bool) -> Self {
        Self {
            id: d.id.to_string(),
            organization: d.organization.clone(),
            group: d.group.clone(),
            state: match d.state {
                DeviceState::Active => "active",
                DeviceState::Revoked => "revoked",
            }
            .to_owned(),
            hostname: d.facts.hostname.clone(),
            os: d.facts.os.clone(),
            os_version: d.facts.os_version.clone(),
            enrolled_at: d.enrolled_at,
            last_seen,
            online,
            cpu: None,
            mem: None,
        }
    }
}

/// A tenant as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TenantView {
    /// Id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// NATS account public key.
    pub account: String,
    /// Creation time (unix seconds).
    pub created_at: i64,
}

/// `GET /v1/tenants` paging.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size (1–500, default 100).
    pub limit: Option<usize>,
    /// The `next` of the previous page.
    pub after: Option<String>,
}

/// `POST /v1/tenants/{tenant}/commands`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CommandBody {
    /// Which devices: `{"device": ID}`, `{"organization": O}`, `{"group": G}` or `{"all": true}`.
    #[serde(default)]
    pub device: Option<String>,
    /// Every device of this organization.
    #[serde(default)]
    pub organization: Option<String>,
    /// Every device of this group.
    #[serde(default)]
    pub group: Option<String>,
    /// Every device of the tenant.
    #[serde(default)]
    pub all: bool,
    /// The command kind (`ping`, `collect`, `set_intervals`, `renew`, `restart`, `run`,
    /// `processes`).
    pub kind: String,
    /// The kind's arguments.
    #[serde(default = "empty_args")]
    #[schema(value_type = Object)]
    pub args: serde_json::Value,
    /// Seconds to wait for results (1–300, default 10).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

fn empty_args() -> serde_json::Value {
    serde_json::json!({})
}

/// A command's outcome per device.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CommandOutcomeView {
    /// Device.
    pub device: String,
    /// Command id.
    pub id: String,
    /// `ok`, `failed`, `rejected` or `timeout`.
    pub status: String,
    /// Microseconds from sending to the result.
    pub latency_us: Option<u64>,
    /// What the device answered.
    #[schema(value_type = Object)]
    pub result: Option<serde_json::Value>,
}

/// `POST /v1/tenants/{tenant}/commands` answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CommandResponse {
    /// The signing key.
    pub keyid: String,
    /// Its keyset version.
    pub keyset_version: u64,
    /// Per device.
    pub devices: Vec<CommandOutcomeView>,
}

/// The command keys (`GET /v1/keys`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KeysView {
    /// Trust root version.
    pub root_version: u64,
    /// Keyset version.
    pub keyset_version: u64,
    /// Keyset expiry (unix seconds).
    pub keyset_expires_at: i64,
    /// The signing key id.
    pub signing: String,
    /// Keys: id and status.
    pub keys: Vec<KeyView>,
    /// Rotation phase, if one is under way.
    pub rotation: Option<String>,
}

/// One command key.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KeyView {
    /// Key id.
    pub keyid: String,
    /// `active`, `retired` or `revoked`.
    pub status: String,
}

/// Error body.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorView {
    /// Stable code.
    pub code: String,
    /// What to do.
    pub message: String,
}

/// `GET /v1/tenants`: the tenants the caller sees.
#[utoipa::path(get, path = "/v1/tenants", params(PageQuery),
    responses((status = 200, body = Page<TenantView>), (status = 401, body = ErrorView)))]
pub async fn list_tenants(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Page<TenantView>>, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let mut items: Vec<TenantView> = s
        .auth
        .tenants()
        .await?
        .into_iter()
        .filter(|t| rbac::sees_tenant(&who, &t.id))
        .filter(|t| q.after.as_deref().is_none_or(|a| t.id.as_str() > a))
        .map(|t| TenantView {
            id: t.id.to_string(),
            name: t.name,
            account: t.account.to_string(),
            created_at: t.created_at,
        })
        .take(limit + 1)
        .collect();
    let next = (items.len() > limit).then(|| {
        items.truncate(limit);
        items.last().map(|t| t.id.clone()).unwrap_or_default()
    });
    Ok(Json(Page { items, next }))
}

/// `GET /v1/tenants/{tenant}`.
#[utoipa::path(get, path = "/v1/tenants/{tenant}", params(("tenant" = String, Path)),
    responses((status = 200, body = TenantView), (status = 404, body = ErrorView)))]
pub async fn get_tenant(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(tenant): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    let tenant = tenant_id(&tenant)?;
    if !rbac::sees_tenant(&who, &tenant) {
        return Err(not_found());
    }
    let t = s.auth.tenant(&tenant).await?;
    Ok(Json(TenantView {
        id: t.id.to_string(),
        name: t.name,
        account: t.account.to_string(),
        created_at: t.created_at,
    }))
}

/// `GET /v1/tenants/{tenant}/devices`: filtered to the caller's scopes, paginated.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/devices",
    params(("tenant" = String, Path), DeviceQuery),
    responses((status = 200, body = Page<DeviceView>), (status = 400, body = ErrorView), (status = 404, body = ErrorView)))]
pub async fn list_devices(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(tenant): Path<String>,
    Query(q): Query<DeviceQuery>,
) -> Result<Json<Page<DeviceView>>, ApiError> {
    let tenant = tenant_id(&tenant)?;
    if !rbac::sees_tenant(&who, &tenant) {
        return Err(not_found());
    }
    crate::api_live::check_query(&q)?;
    Ok(Json(s.devices.page(&who, &tenant, &q)))
}

pub(crate) fn device_in_scope(
    s: &AppState,
    who: &Principal,
    action: Action,
    tenant: &str,
    device: &str,
) -> Result<DeviceRecord, ApiError> {
    let tenant = tenant_id(tenant)?;
    let device: DeviceId = device.parse().map_err(|_| not_found())?;
    let Some(d) = s.devices.get(&tenant, &device) else {
        // Unknown and out of scope look the same.
        return Err(not_found());
    };
    guard(who, action, &device_target(&d))?;
    Ok(d)
}

/// `GET /v1/tenants/{tenant}/devices/{device}`.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/devices/{device}",
    params(("tenant" = String, Path), ("device" = String, Path)),
    responses((status = 200, body = DeviceView), (status = 404, body = ErrorView)))]
pub async fn get_device(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((tenant, device)): Path<(String, String)>,
) -> Result<Json<DeviceView>, ApiError> {
    let d = device_in_scope(&s, &who, Action::Read, &tenant, &device)?;
    let last = s
        .devices
        .last_seen
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&(d.tenant.clone(), d.id.clone()))
        .copied();
    let online = last.is_some_and(|l| now() - l <= ONLINE_WITHIN_SECS);
    let s = s
        .devices
        .summary
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&(d.tenant.clone(), d.id.clone()))
        .copied();
    Ok(Json(
        DeviceView::of(&d, last, online).with_summary(s.as_ref()),
    ))
}

/// `POST /v1/tenants/{tenant}/devices/{device}/revoke`: disconnected at once, renewals refused.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/devices/{device}/revoke",
    params(("tenant" = String, Path), ("device" = String, Path)),
    responses((status = 200, body = DeviceView), (status = 403, body = ErrorView), (status = 404, body = ErrorView)))]
pub async fn revoke_device(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((tenant, device)): Path<(String, String)>,
) -> Result<Json<DeviceView>, ApiError> {
    let d = device_in_scope(&s, &who, Action::Manage, &tenant, &device)?;
    let r = s.auth.revoke_device_as(&d.tenant, &d.id, &who.user).await?;
    Ok(Json(DeviceView::of(&r, None, false)))
}

/// `POST /v1/tenants/{tenant}/commands`: signed for each target device; waits for results.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/commands",
    params(("tenant" = String, Path)), request_body = CommandBody,
    responses((status = 200, body = CommandResponse), (status = 400, body = ErrorView),
        (status = 403, body = ErrorView), (status = 404, body = ErrorView)))]
pub async fn send_command(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(tenant): Path<String>,
    Json(body): Json<CommandBody>,
) -> Result<Json<CommandResponse>, ApiError> {
    let tenant = tenant_id(&tenant)?;
    let place = |organization: Option<String>, group: Option<String>| {
        Target::Place(Place {
            tenant: tenant.clone(),
            organization,
            group,
        })
    };
    let target = match (&body.device, &body.organization, &body.group, body.all) {
        (Some(d), None, None, false) => {
            let d = device_in_scope(&s, &who, Action::Command, tenant.as_str(), d)?;
            CommandTarget::Device(d.id)
        }
        (None, Some(o), None, false) => {
            guard(&who, Action::Command, &place(Some(o.clone()), None))?;
            CommandTarget::Organization(o.clone())
        }
        (None, None, Some(g), false) => {
            // A group lies in an organization: allowed when the caller may command every
            // device of the group, checked per device below.
            CommandTarget::Group(g.clone())
        }
        (None, None, None, true) => {
            guard(&who, Action::Command, &Target::tenant(tenant.clone()))?;
            CommandTarget::All
        }
        _ => {
            return Err(bad_request(
                "name the devices with exactly one of device, organization, group or all",
            ));
        }
    };
    if let CommandTarget::Group(g) = &target {
        if !rbac::sees_tenant(&who, &tenant) {
            return Err(not_found());
        }
        // Every device of the group, seen by the caller or not: commanding the group needs
        // Command on each one.
        for d in s.devices.in_group(&tenant, g) {
            guard(&who, Action::Command, &device_target(&d))?;
        }
    }
    let mut raw = serde_json::json!({"kind": body.kind, "args": body.args});
    if raw["args"].is_null() {
        raw["args"] = empty_args();
    }
    let command: Command = serde_json::from_value(raw)
        .map_err(|e| bad_request(format!("unknown command or bad arguments: {e}")))?;
    let report = s
        .auth
        .send_command(CommandRequest {
            tenant,
            target,
            command,
            by: who.user.clone(),
            timeout: Duration::from_secs(body.timeout_secs.unwrap_or(10).clamp(1, 300)),
        })
        .await?;
    Ok(Json(CommandResponse {
        keyid: report.keyid.clone(),
        keyset_version: report.keyset_version,
        devices: report
            .devices
            .iter()
            .map(|o| CommandOutcomeView {
                device: o.device.to_string(),
                id: o.id.clone(),
                status: o.status().to_owned(),
                latency_us: o.latency_us,
                result: o.result.as_ref().and_then(|r| serde_json::to_value(r).ok()),
            })
            .collect(),
    }))
}

/// `GET /v1/keys`: the command trust (platform operators).
#[utoipa::path(get, path = "/v1/keys",
    responses((status = 200, body = KeysView), (status = 404, body = ErrorView)))]
pub async fn get_keys(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Json<KeysView>, ApiError> {
    guard(&who, Action::ManageKeys, &Target::Platform)?;
    let (rec, _) = s.auth.trust_record().await?;
    Ok(Json(KeysView {
        root_version: rec.root_version,
        keyset_version: rec.keyset.version,
        keyset_expires_at: rec.keyset.expires_at,
        signing: rec.signing.clone(),
        keys: rec
            .keys
            .iter()
            .map(|k| KeyView {
                keyid: k.keyid.clone(),
                status: format!("{:?}", k.status).to_lowercase(),
            })
            .collect(),
        rotation: rec
            .rotation
            .as_ref()
            .map(|r| format!("{:?}", r.phase).to_lowercase()),
    }))
}

/// `POST /v1/keys/rotate`: starts a command key rotation.
#[utoipa::path(post, path = "/v1/keys/rotate",
    responses((status = 200, body = KeysView), (status = 404, body = ErrorView), (status = 409, body = ErrorView)))]
pub async fn rotate_keys(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Json<KeysView>, ApiError> {
    guard(&who, Action::ManageKeys, &Target::Platform)?;
    match s.auth.keys_rotate_as(&s.root_dir, None, &who.user).await {
        Ok(_) => get_keys(State(s), Extension(who)).await,
        Err(AuthorityError::Trust(m)) => Err(ApiError::new(StatusCode::CONFLICT, "conflict", m)),
        Err(e) => Err(e.into()),
    }
}

/// An enrollment token as the API shows it (never the token itself, except once at creation).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenView {
    /// Id: the first 12 characters of the token's SHA-256.
    pub id: String,
    /// Organization devices land in.
    pub organization: Option<String>,
    /// Group devices land in.
    pub group: Option<String>,
    /// Label.
    pub label: String,
    /// Created (unix seconds).
    pub created_at: i64,
    /// Expires (unix seconds).
    pub expires_at: i64,
    /// Uses allowed.
    pub max_uses: u32,
    /// Uses so far.
    pub uses: u32,
    /// Revocation time.
    pub revoked_at: Option<i64>,
    /// The token: only in the answer that created it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl TokenView {
    fn of(hash: &str, r: &crate::enrollment::TokenRecord, token: Option<String>) -> Self {
        Self {
            id: hash.chars().take(12).collect(),
            organization: r.organization.clone(),
            group: r.group.clone(),
            label: r.label.clone(),
            created_at: r.created_at,
            expires_at: r.expires_at,
            max_uses: r.max_uses,
            uses: r.uses,
            revoked_at: r.revoked_at,
            token,
        }
    }
}

/// `POST /v1/tenants/{tenant}/tokens`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTokenBody {
    /// Organization devices land in.
    #[serde(default)]
    pub organization: Option<String>,
    /// Group devices land in (needs an organization).
    #[serde(default)]
    pub group: Option<String>,
    /// Lifetime in seconds (default from the configuration).
    #[serde(default)]
    pub ttl_secs: Option<i64>,
    /// Uses allowed (default 1).
    #[serde(default)]
    pub max_uses: Option<u32>,
    /// Free text.
    #[serde(default)]
    pub label: String,
}

fn token_place(tenant: &TenantId, r: &crate::enrollment::TokenRecord) -> Target {
    Target::Place(Place {
        tenant: tenant.clone(),
        organization: r.organization.clone(),
        group: r.group.clone(),
    })
}

/// `GET /v1/tenants/{tenant}/tokens`: the tokens in the caller's scopes, newest first.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/tokens", params(("tenant" = String, Path), PageQuery),
    responses((status = 200, body = Page<TokenView>), (status = 404, body = ErrorView)))]
pub async fn list_tokens(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(tenant): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Page<TokenView>>, ApiError> {
    let tenant = tenant_id(&tenant)?;
    if !rbac::sees_tenant(&who, &tenant) {
        return Err(not_found());
    }
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let mut all = s.auth.tokens(&tenant).await?;
    all.retain(|(_, r)| {
        rbac::authorize(&who, Action::Read, &token_place(&tenant, r)) == Decision::Allow
    });
    let start = match &q.after {
        Some(a) => all
            .iter()
            .position(|(h, _)| h.starts_with(a.as_str()))
            .map_or(all.len(), |i| i + 1),
        None => 0,
    };
    let mut items: Vec<TokenView> = all[start.min(all.len())..]
        .iter()
        .take(limit + 1)
        .map(|(h, r)| TokenView::of(h, r, None))
        .collect();
    let next = (items.len() > limit).then(|| {
        items.truncate(limit);
        items.last().map(|t| t.id.clone()).unwrap_or_default()
    });
    Ok(Json(Page { items, next }))
}

/// `POST /v1/tenants/{tenant}/tokens`: the answer carries the token, once.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/tokens", params(("tenant" = String, Path)),
    request_body = NewTokenBody,
    responses((status = 201, body = TokenView), (status = 400, body = ErrorView),
        (status = 403, body = ErrorView), (status = 404, body = ErrorView)))]
pub async fn create_token(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(tenant): Path<String>,
    Json(body): Json<NewTokenBody>,
) -> Result<(StatusCode, Json<TokenView>), ApiError> {
    let tenant = tenant_id(&tenant)?;
    if body.group.is_some() && body.organization.is_none() {
        return Err(bad_request("a group lies in an organization: give both"));
    }
    guard(
        &who,
        Action::Manage,
        &Target::Place(Place {
            tenant: tenant.clone(),
            organization: body.organization.clone(),
            group: body.group.clone(),
        }),
    )?;
    let (token, record) = s
        .auth
        .create_token_as(
            crate::enrollment::NewToken {
                tenant,
                organization: body.organization,
                group: body.group,
                ttl_secs: body.ttl_secs,
                max_uses: body.max_uses,
                label: body.label,
            },
            &who.user,
        )
        .await
        .map_err(|e| match e {
            AuthorityError::Store(m) if m.contains("slug") => bad_request(m),
            other => other.into(),
        })?;
    let hash = wegweiser_shared::enroll::token_hash(token.expose());
    Ok((
        StatusCode::CREATED,
        Json(TokenView::of(
            &hash,
            &record,
            Some(token.expose().to_owned()),
        )),
    ))
}

/// `DELETE /v1/tenants/{tenant}/tokens/{id}`: revokes a token.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/tokens/{id}",
    params(("tenant" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = TokenView), (status = 403, body = ErrorView), (status = 404, body = ErrorView)))]
pub async fn revoke_token(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<Json<TokenView>, ApiError> {
    let tenant = tenant_id(&tenant)?;
    if !rbac::sees_tenant(&who, &tenant) || id.len() < 12 {
        return Err(not_found());
    }
    let Some((hash, record)) = s
        .auth
        .tokens(&tenant)
        .await?
        .into_iter()
        .find(|(h, _)| h.starts_with(id.as_str()))
    else {
        return Err(not_found());
    };
    guard(&who, Action::Manage, &token_place(&tenant, &record))?;
    let r = s.auth.revoke_token_as(&tenant, &hash, &who.user).await?;
    Ok(Json(TokenView::of(&hash, &r, None)))
}

/// The generated OpenAPI document.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "Wegweiser control plane", description = "Tenants, organizations and groups, devices, signed commands and command keys, users, role bindings and audit queries, and what the dashboard reads. Every endpoint needs a session cookie (with X-CSRF-Token on changes) or a bearer API token."),
    paths(list_tenants, get_tenant, list_devices, get_device, revoke_device, send_command, list_tokens, create_token, revoke_token, get_keys, rotate_keys,
        crate::api_hierarchy::list_orgs, crate::api_hierarchy::create_org, crate::api_hierarchy::get_org, crate::api_hierarchy::patch_org, crate::api_hierarchy::delete_org,
        crate::api_hierarchy::list_groups, crate::api_hierarchy::create_group, crate::api_hierarchy::get_group, crate::api_hierarchy::patch_group, crate::api_hierarchy::delete_group,
        crate::api_hierarchy::delete_device, crate::api_hierarchy::move_device,
        crate::api_live::tenant_summary, crate::api_live::device_detail, crate::api_live::device_history, crate::api_live::live,
        crate::api_creds::create_creds),
    components(schemas(Page<TenantView>, Page<DeviceView>, Page<TokenView>, TokenView, NewTokenBody, TenantView, DeviceView, CommandBody, CommandResponse, CommandOutcomeView, KeysView, KeyView, ErrorView,
        Page<crate::api_hierarchy::OrgView>, Page<crate::api_hierarchy::GroupView>, crate::api_hierarchy::OrgView, crate::api_hierarchy::GroupView,
        crate::api_hierarchy::NewObjectBody, crate::api_hierarchy::RenameBody, crate::api_hierarchy::GroupPatchBody, crate::api_hierarchy::MoveDeviceBody,
        crate::api_live::SummaryView, crate::api_live::OsCount, crate::api_live::DetailView, crate::api_live::HistoryView, crate::api_live::Point, crate::api_live::EventView, crate::api_live::LiveEvent,
        crate::api_creds::CredsBody, crate::api_creds::CredsView, crate::api_creds::CredsScope))
)]
pub struct ApiDoc;

/// `GET /openapi.json`.
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    let mut doc = ApiDoc::openapi();
    doc.merge(crate::api_admin::AdminApiDoc::openapi());
    Json(doc)
}

/// The API routes (they expect a [`Principal`] in the request extensions).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/tenants", get(list_tenants))
        .route("/v1/tenants/{tenant}", get(get_tenant))
        .route("/v1/tenants/{tenant}/devices", get(list_devices))
        .route(
            "/v1/tenants/{tenant}/devices/{device}",
            get(get_device).delete(crate::api_hierarchy::delete_device),
        )
        .route(
            "/v1/tenants/{tenant}/devices/{device}/revoke",
            post(revoke_device),
        )
        .route("/v1/tenants/{tenant}/commands", post(send_command))
        .route(
            "/v1/tenants/{tenant}/tokens",
            get(list_tokens).post(create_token),
        )
        .route(
            "/v1/tenants/{tenant}/tokens/{id}",
            axum::routing::delete(revoke_token),
        )
        .route(
            "/v1/tenants/{tenant}/nats-credentials",
            post(crate::api_creds::create_creds),
        )
        .route("/v1/keys", get(get_keys))
        .route("/v1/keys/rotate", post(rotate_keys))
        .merge(crate::api_hierarchy::routes())
}
