//! What the dashboard reads besides the plain `/v1` objects: a tenant's overview, a device's
//! details with what the caller may do to it, its telemetry history for charts, and a live
//! stream of presence and metrics changes.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /v1/tenants/{tenant}/summary` | counts (online, offline, revoked, recent enrollments), OS families, recent security events |
//! | `GET /v1/tenants/{tenant}/devices/{device}/detail` | the device, `can` (actions the caller's role allows on it), latest inventory, metrics and heartbeat |
//! | `GET /v1/tenants/{tenant}/devices/{device}/history?range=1h\|24h` | metrics series downsampled to at most [`MAX_POINTS`] points, and the recent events |
//! | `GET /v1/tenants/{tenant}/live` | Server-Sent Events: `device` events `{device, online, last_seen, cpu, mem}` |
//!
//! The live stream is fed by the device index ([`DeviceIndex`]), which follows the `wg_latest`
//! bucket (heartbeats and metrics) with KV watches: every change of a device's presence or
//! latest metrics is broadcast once inside the process, and each stream forwards the changes of
//! the devices its caller may read (decided once per device and connection by
//! [`crate::api::guard`]'s check). A timer turns devices whose last heartbeat grows older than
//! [`ONLINE_WITHIN_SECS`] into `online: false` events. A stream lasts at most
//! [`MAX_STREAM_SECS`] (the browser reconnects, with its session checked again), carries a
//! keepalive comment every 15 s, and a user holds at most [`MAX_STREAMS_PER_USER`] at once.

use crate::{
    api::{
        DeviceIndex, DeviceQuery, DeviceView, ErrorView, ONLINE_WITHIN_SECS, Page, bad_request,
        device_in_scope, device_target, guard, not_found, tenant_id,
    },
    authority::store_err,
    enrollment::{DeviceRecord, DeviceState},
    http::{ApiError, AppState},
    rbac::{self, Action, Decision, Principal, Target},
};
use async_nats::jetstream::{self, consumer};
use axum::{
    Extension, Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
    routing::get,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::{broadcast, mpsc};
use utoipa::{IntoParams, ToSchema};
use wegweiser_shared::{
    ids::{DeviceId, TenantId},
    telemetry::{EventKind, Kind, Metrics, TELEMETRY_TOKEN},
    time::now,
};

/// Points of a history series at most.
pub const MAX_POINTS: usize = 360;
/// Reports one history request reads at most.
pub const MAX_HISTORY_REPORTS: u64 = 20_000;
/// Events a history answer carries at most.
pub const MAX_EVENTS: usize = 50;
/// Live streams one user may hold at once.
pub const MAX_STREAMS_PER_USER: usize = 4;
/// A live stream ends after this long; the browser reconnects.
pub const MAX_STREAM_SECS: u64 = 600;
/// How often a stream looks for devices that went offline.
const OFFLINE_CHECK: Duration = Duration::from_secs(5);

/// A device's latest CPU and memory use, kept in the device index.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// CPU use, percent of all cores.
    pub cpu: f32,
    /// Memory use, percent.
    pub mem: f32,
}

impl Summary {
    /// From a metrics report.
    pub fn of(m: &Metrics) -> Self {
        let total = m.memory_used.saturating_add(m.memory_available);
        let mem = if total == 0 {
            0.0
        } else {
            (m.memory_used as f64 * 100.0 / total as f64) as f32
        };
        Self {
            cpu: round1(m.cpu.clamp(0.0, 100.0)),
            mem: round1(mem),
        }
    }
}

fn round1(v: f32) -> f32 {
    (v * 10.0).round() / 10.0
}

/// A device whose presence or metrics changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Its tenant.
    pub tenant: TenantId,
    /// The device.
    pub device: DeviceId,
}

/// The in-process broadcast of [`Change`]s.
#[derive(Debug)]
pub struct Changes(broadcast::Sender<Change>);

impl Default for Changes {
    fn default() -> Self {
        Self(broadcast::channel(4096).0)
    }
}

impl Changes {
    /// Announces a change (nobody listening is fine).
    pub fn send(&self, tenant: TenantId, device: DeviceId) {
        if self.0.receiver_count() > 0 {
            let _ = self.0.send(Change { tenant, device });
        }
    }

    /// A new listener.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.0.subscribe()
    }
}

/// Open live streams per user.
#[derive(Debug, Default)]
pub struct Streams(Arc<Mutex<HashMap<String, usize>>>);

/// One open stream; released on drop.
#[derive(Debug)]
pub struct StreamSlot {
    streams: Arc<Mutex<HashMap<String, usize>>>,
    user: String,
}

impl Streams {
    /// Takes a slot for `user`, or `None` when the user already holds the maximum.
    pub fn acquire(&self, user: &str) -> Option<StreamSlot> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(user.to_owned()).or_default();
        if *n >= MAX_STREAMS_PER_USER {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            streams: self.0.clone(),
            user: user.to_owned(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut m = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.user);
            }
        }
    }
}

impl DeviceIndex {
    /// Applies a `wg_latest` metrics entry (`<tenant>.<device>.met`).
    pub(crate) fn apply_metrics(&self, key: &str, value: Option<&bytes::Bytes>) {
        let mut parts = key.split('.');
        let (Some(t), Some(d)) = (parts.next(), parts.next()) else {
            return;
        };
        let (Ok(t), Ok(d)) = (t.parse::<TenantId>(), d.parse::<DeviceId>()) else {
            return;
        };
        let mut map = self.summary.write().unwrap_or_else(|e| e.into_inner());
        let parsed = value
            .and_then(|v| serde_json::from_slice::<crate::ingest::Latest>(v).ok())
            .and_then(|l| serde_json::from_value::<Metrics>(l.report).ok());
        match parsed {
            Some(m) => {
                map.insert((t.clone(), d.clone()), Summary::of(&m));
            }
            None => {
                map.remove(&(t.clone(), d.clone()));
            }
        }
        drop(map);
        self.changes.send(t, d);
    }

    /// The live view of one device: last heartbeat, online, latest CPU and memory.
    fn live_of(&self, tenant: &TenantId, device: &DeviceId, at: i64) -> LiveEvent {
        let key = (tenant.clone(), device.clone());
        let last = self
            .last_seen
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied();
        let s = self
            .summary
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied();
        LiveEvent {
            device: device.to_string(),
            online: last.is_some_and(|l| at - l <= ONLINE_WITHIN_SECS),
            last_seen: last,
            cpu: s.map(|s| s.cpu),
            mem: s.map(|s| s.mem),
        }
    }
}

impl DeviceView {
    /// With the latest CPU and memory use.
    pub fn with_summary(mut self, s: Option<&Summary>) -> Self {
        self.cpu = s.map(|s| s.cpu);
        self.mem = s.map(|s| s.mem);
        self
    }
}

/// Whether `d` passes the filters of `q` (organization, group, OS, and `needle`, the lowercased
/// search text, in the host name or the id).
pub fn matches(d: &DeviceRecord, q: &DeviceQuery, needle: Option<&str>) -> bool {
    q.organization
        .as_ref()
        .is_none_or(|o| d.organization.as_ref() == Some(o))
        && q.group.as_ref().is_none_or(|g| d.group.as_ref() == Some(g))
        && q.os
            .as_ref()
            .is_none_or(|os| d.facts.os.eq_ignore_ascii_case(os))
        && needle.is_none_or(|n| {
            d.facts.hostname.to_lowercase().contains(n) || d.id.as_str().contains(n)
        })
}

/// A page of the device list in another order than by id: every match is collected as a
/// small row (references into the index), sorted (ties by id), and only the page is turned into
/// views; the page starts after the device named by `after`. At 10,000 devices this is one pass
/// and one sort.
pub fn sorted_page(
    index: &DeviceIndex,
    who: &Principal,
    tenant: &TenantId,
    q: &DeviceQuery,
) -> Page<DeviceView> {
    struct Row<'a> {
        d: &'a DeviceRecord,
        last: Option<i64>,
        online: bool,
        s: Option<&'a Summary>,
    }
    let limit = q
        .limit
        .unwrap_or(crate::api::DEFAULT_LIMIT)
        .clamp(1, crate::api::MAX_LIMIT);
    let t = now();
    let needle = q.q.as_deref().map(str::to_lowercase);
    let devices = index.devices.read().unwrap_or_else(|e| e.into_inner());
    let seen = index.last_seen.read().unwrap_or_else(|e| e.into_inner());
    let summary = index.summary.read().unwrap_or_else(|e| e.into_inner());
    let mut rows: Vec<Row<'_>> = devices
        .range((tenant.to_string(), String::new())..)
        .take_while(|((tn, _), _)| tn == tenant.as_str())
        .map(|(_, d)| d)
        .filter(|d| rbac::authorize(who, Action::Read, &device_target(d)) == Decision::Allow)
        .filter(|d| matches(d, q, needle.as_deref()))
        .filter_map(|d| {
            let key = (d.tenant.clone(), d.id.clone());
            let last = seen.get(&key).copied();
            let online = last.is_some_and(|s| t - s <= ONLINE_WITHIN_SECS);
            if q.online.is_some_and(|want| want != online) {
                return None;
            }
            Some(Row {
                d,
                last,
                online,
                s: summary.get(&key),
            })
        })
        .collect();
    let f = |v: Option<&Summary>, cpu: bool| v.map_or(-1.0, |s| if cpu { s.cpu } else { s.mem });
    let id = |r: &Row<'_>| r.d.id.as_str().to_owned();
    match q.sort.as_deref().unwrap_or("id") {
        "hostname" => rows.sort_by_cached_key(|r| (r.d.facts.hostname.to_lowercase(), id(r))),
        "last_seen" => rows.sort_by(|a, b| {
            a.last
                .cmp(&b.last)
                .then(a.d.id.as_str().cmp(b.d.id.as_str()))
        }),
        "cpu" => rows.sort_by(|a, b| {
            f(a.s, true)
                .total_cmp(&f(b.s, true))
                .then(a.d.id.as_str().cmp(b.d.id.as_str()))
        }),
        "mem" => rows.sort_by(|a, b| {
            f(a.s, false)
                .total_cmp(&f(b.s, false))
                .then(a.d.id.as_str().cmp(b.d.id.as_str()))
        }),
        _ => rows.sort_by(|a, b| a.d.id.as_str().cmp(b.d.id.as_str())),
    }
    if q.order.as_deref() == Some("desc") {
        rows.reverse();
    }
    let start = match &q.after {
        Some(a) => rows
            .iter()
            .position(|r| r.d.id.as_str() == a)
            .map_or(rows.len(), |i| i + 1),
        None => 0,
    };
    let mut items: Vec<DeviceView> = rows[start..]
        .iter()
        .take(limit + 1)
        .map(|r| DeviceView::of(r.d, r.last, r.online).with_summary(r.s))
        .collect();
    let next = (items.len() > limit).then(|| {
        items.truncate(limit);
        items.last().map(|d| d.id.clone()).unwrap_or_default()
    });
    Page { items, next }
}

/// Checks the sort and order parameters of a device list (`list_devices` calls it).
pub fn check_query(q: &DeviceQuery) -> Result<(), ApiError> {
    if let Some(s) = &q.sort
        && !["id", "hostname", "last_seen", "cpu", "mem"].contains(&s.as_str())
    {
        return Err(bad_request(
            "sort must be one of id, hostname, last_seen, cpu, mem",
        ));
    }
    if let Some(o) = &q.order
        && o != "asc"
        && o != "desc"
    {
        return Err(bad_request("order must be asc or desc"));
    }
    Ok(())
}

/// The actions `who` may take on `target`, by name (`read`, `command`, `manage`, `audit`).
fn can(who: &Principal, target: &Target) -> Vec<String> {
    [
        (Action::Read, "read"),
        (Action::Command, "command"),
        (Action::Manage, "manage"),
        (Action::ReadAudit, "audit"),
    ]
    .into_iter()
    .filter(|(a, _)| rbac::authorize(who, *a, target) == Decision::Allow)
    .map(|(_, n)| n.to_owned())
    .collect()
}

/// `GET /v1/tenants/{tenant}/summary`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SummaryView {
    /// Devices the caller may read.
    pub devices: usize,
    /// Of those, online.
    pub online: usize,
    /// Active but offline.
    pub offline: usize,
    /// Revoked.
    pub revoked: usize,
    /// Enrolled in the last 24 hours.
    pub enrolled_24h: usize,
    /// Enrolled in the last 7 days.
    pub enrolled_7d: usize,
    /// Devices per OS family.
    pub os: Vec<OsCount>,
    /// What the caller may do at tenant level (`read`, `command`, `manage`, `audit`).
    pub can: Vec<String>,
    /// Security events of the last 24 hours, newest first.
    pub alerts: Vec<EventView>,
}

/// Devices of one OS family.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OsCount {
    /// OS family.
    pub os: String,
    /// Devices.
    pub count: usize,
}

/// `GET /v1/tenants/{tenant}/summary`: the tenant overview, counted over the devices the
/// caller may read.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/summary", params(("tenant" = String, Path)),
    responses((status = 200, body = SummaryView), (status = 401, body = ErrorView),
        (status = 404, body = ErrorView), (status = 503, body = ErrorView)))]
pub async fn tenant_summary(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(tenant): Path<String>,
) -> Result<Json<SummaryView>, ApiError> {
    let tenant = tenant_id(&tenant)?;
    if !rbac::sees_tenant(&who, &tenant) {
        return Err(not_found());
    }
    let t = now();
    let mut v = SummaryView {
        devices: 0,
        online: 0,
        offline: 0,
        revoked: 0,
        enrolled_24h: 0,
        enrolled_7d: 0,
        os: Vec::new(),
        can: can(&who, &Target::tenant(tenant.clone())),
        alerts: Vec::new(),
    };
    let mut readable = HashSet::new();
    {
        let devices = s.devices.devices.read().unwrap_or_else(|e| e.into_inner());
        let seen = s
            .devices
            .last_seen
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let mut os: HashMap<String, usize> = HashMap::new();
        for (_, d) in devices
            .range((tenant.to_string(), String::new())..)
            .take_while(|((tn, _), _)| tn == tenant.as_str())
        {
            if rbac::authorize(&who, Action::Read, &device_target(d)) != Decision::Allow {
                continue;
            }
            readable.insert(d.id.clone());
            v.devices += 1;
            *os.entry(d.facts.os.clone()).or_default() += 1;
            if t - d.enrolled_at <= 86_400 {
                v.enrolled_24h += 1;
            }
            if t - d.enrolled_at <= 7 * 86_400 {
                v.enrolled_7d += 1;
            }
            let online = seen
                .get(&(d.tenant.clone(), d.id.clone()))
                .is_some_and(|l| t - l <= ONLINE_WITHIN_SECS);
            match (d.state, online) {
                (DeviceState::Revoked, _) => v.revoked += 1,
                (_, true) => v.online += 1,
                (_, false) => v.offline += 1,
            }
        }
        v.os = os
            .into_iter()
            .map(|(os, count)| OsCount { os, count })
            .collect();
        v.os.sort_by(|a, b| b.count.cmp(&a.count).then(a.os.cmp(&b.os)));
    }
    let account = s.auth.tenant(&tenant).await?.account;
    let reports = read_reports(
        &s,
        vec![format!("wg.{account}.up.*.{TELEMETRY_TOKEN}.evt")],
        t - 86_400,
    )
    .await?;
    for r in reports.iter().rev() {
        if v.alerts.len() == MAX_EVENTS {
            break;
        }
        if let Some(e) = event_view(r)
            && e.security
            && e.device.as_ref().is_some_and(|d| {
                d.parse::<DeviceId>()
                    .is_ok_and(|id: DeviceId| readable.contains(&id))
            })
        {
            v.alerts.push(e);
        }
    }
    Ok(Json(v))
}

/// `GET /v1/tenants/{tenant}/devices/{device}/detail`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DetailView {
    /// The device.
    pub device: DeviceView,
    /// What the caller may do to it (`read`, `command`, `manage`, `audit`); the server checks
    /// again on every request.
    pub can: Vec<String>,
    /// Latest inventory report.
    #[schema(value_type = Option<Object>)]
    pub inventory: Option<serde_json::Value>,
    /// Latest metrics report.
    #[schema(value_type = Option<Object>)]
    pub metrics: Option<serde_json::Value>,
    /// Latest heartbeat.
    #[schema(value_type = Option<Object>)]
    pub heartbeat: Option<serde_json::Value>,
}

/// `GET /v1/tenants/{tenant}/devices/{device}/detail`: the device page's data.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/devices/{device}/detail",
    params(("tenant" = String, Path), ("device" = String, Path)),
    responses((status = 200, body = DetailView), (status = 401, body = ErrorView),
        (status = 404, body = ErrorView), (status = 503, body = ErrorView)))]
pub async fn device_detail(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((tenant, device)): Path<(String, String)>,
) -> Result<Json<DetailView>, ApiError> {
    let d = device_in_scope(&s, &who, Action::Read, &tenant, &device)?;
    let live = s.devices.live_of(&d.tenant, &d.id, now());
    let mut view = DeviceView::of(&d, live.last_seen, live.online);
    view.cpu = live.cpu;
    view.mem = live.mem;
    let latest = |kind| {
        let (auth, t, id) = (s.auth.clone(), d.tenant.clone(), d.id.clone());
        async move {
            auth.latest(&t, &id, kind)
                .await
                .map(|l| l.map(|l| l.report))
        }
    };
    let (inventory, metrics, heartbeat) = futures::try_join!(
        latest(Kind::Inventory),
        latest(Kind::Metrics),
        latest(Kind::Heartbeat)
    )?;
    Ok(Json(DetailView {
        can: can(&who, &device_target(&d)),
        device: view,
        inventory,
        metrics,
        heartbeat,
    }))
}

/// History parameters.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// `metrics` (the only kind; events come with it).
    pub kind: Option<String>,
    /// `1h` (default) or `24h`.
    pub range: Option<String>,
}

/// One point of the history series (averages over its interval).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Point {
    /// Start of the interval (unix seconds).
    pub t: i64,
    /// CPU use, percent.
    pub cpu: f32,
    /// Memory use, percent.
    pub mem: f32,
    /// Disk space used over all mounts, percent.
    pub disk: f32,
    /// Received bytes per second over all interfaces.
    pub rx: u64,
    /// Sent bytes per second over all interfaces.
    pub tx: u64,
}

/// A reported event.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventView {
    /// When it was stored (unix seconds).
    pub t: i64,
    /// The device (in tenant-wide lists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The event kind (`agent_start`, `command_rejected`, ...).
    pub event: String,
    /// A security event (a refused command or refused trust material).
    pub security: bool,
    /// The report as sent.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// `GET /v1/tenants/{tenant}/devices/{device}/history`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HistoryView {
    /// Range start (unix seconds).
    pub from: i64,
    /// Range end (unix seconds).
    pub to: i64,
    /// Seconds per point.
    pub step: i64,
    /// The series, oldest first, one point per interval that had reports.
    pub points: Vec<Point>,
    /// Events of the range, newest first (at most 50).
    pub events: Vec<EventView>,
    /// The range held more reports than one answer reads; the oldest are left out.
    pub truncated: bool,
}

/// `GET /v1/tenants/{tenant}/devices/{device}/history`: the device's metrics over the last hour
/// or day, from the telemetry history, downsampled on the server.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/devices/{device}/history",
    params(("tenant" = String, Path), ("device" = String, Path), HistoryQuery),
    responses((status = 200, body = HistoryView), (status = 400, body = ErrorView),
        (status = 401, body = ErrorView), (status = 404, body = ErrorView),
        (status = 503, body = ErrorView)))]
pub async fn device_history(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((tenant, device)): Path<(String, String)>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<HistoryView>, ApiError> {
    let d = device_in_scope(&s, &who, Action::Read, &tenant, &device)?;
    if q.kind.as_deref().is_some_and(|k| k != "metrics") {
        return Err(bad_request("kind must be metrics"));
    }
    let range = match q.range.as_deref().unwrap_or("1h") {
        "1h" => 3_600,
        "24h" => 86_400,
        _ => return Err(bad_request("range must be 1h or 24h")),
    };
    let to = now();
    let from = to - range;
    let account = s.auth.tenant(&d.tenant).await?.account;
    let base = format!("wg.{account}.up.{}.{TELEMETRY_TOKEN}", d.id);
    let reports =
        read_reports(&s, vec![format!("{base}.met"), format!("{base}.evt")], from).await?;
    let truncated = reports.len() as u64 >= MAX_HISTORY_REPORTS;
    let step = (range / MAX_POINTS as i64).max(1);
    let metrics = reports.iter().filter(|r| r.kind == Kind::Metrics);
    let points = downsample(metrics, from, step);
    let events = reports
        .iter()
        .rev()
        .filter_map(|r| {
            event_view(r).map(|mut e| {
                e.device = None;
                e
            })
        })
        .take(MAX_EVENTS)
        .collect();
    Ok(Json(HistoryView {
        from,
        to,
        step,
        points,
        events,
        truncated,
    }))
}

/// A stored report read back.
#[derive(Debug)]
struct Report {
    t: i64,
    device: String,
    kind: Kind,
    payload: bytes::Bytes,
}

/// Reads the reports on `subjects` stored since `since` (unix seconds), oldest first, at most
/// [`MAX_HISTORY_REPORTS`] (the newest ones), with an ephemeral consumer that is deleted after.
async fn read_reports(
    s: &AppState,
    subjects: Vec<String>,
    since: i64,
) -> Result<Vec<Report>, ApiError> {
    let js = jetstream::new(s.auth.cp_client().clone());
    let stream = js
        .get_stream(crate::ingest::TELEMETRY_STREAM)
        .await
        .map_err(|e| ApiError::from(store_err(e)))?;
    let start = time::OffsetDateTime::from_unix_timestamp(since)
        .map_err(|_| bad_request("bad start time"))?;
    let mut c = stream
        .create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::ByStartTime { start_time: start },
            filter_subjects: subjects,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            memory_storage: true,
            ..Default::default()
        })
        .await
        .map_err(|e| ApiError::from(store_err(e)))?;
    let result = read_all(&mut c).await;
    let name = c.cached_info().name.clone();
    if let Err(e) = stream.delete_consumer(&name).await {
        tracing::debug!(error = %e, "History consumer not deleted; it expires.");
    }
    result
}

async fn read_all(
    c: &mut consumer::Consumer<consumer::pull::Config>,
) -> Result<Vec<Report>, ApiError> {
    let pending = c
        .info()
        .await
        .map_err(|e| ApiError::from(store_err(e)))?
        .num_pending;
    let mut out = Vec::new();
    if pending == 0 {
        return Ok(out);
    }
    // Skip the oldest when the range holds more than one answer reads.
    let skip = pending.saturating_sub(MAX_HISTORY_REPORTS);
    let mut seen = 0u64;
    while seen < pending {
        let mut batch = c
            .fetch()
            .max_messages(((pending - seen) as usize).min(1000))
            .messages()
            .await
            .map_err(|e| ApiError::from(store_err(e)))?;
        let mut got = 0;
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| ApiError::from(store_err(e)))?;
            got += 1;
            seen += 1;
            if seen <= skip {
                continue;
            }
            let Some((_, device, kind)) = crate::ingest::parse_subject(&m.subject) else {
                continue;
            };
            let t = m
                .info()
                .map(|i| i.published.unix_timestamp())
                .unwrap_or_else(|_| now());
            out.push(Report {
                t,
                device: device.to_string(),
                kind,
                payload: m.payload.clone(),
            });
        }
        if got == 0 {
            break;
        }
    }
    Ok(out)
}

/// Averages the metrics reports into intervals of `step` seconds from `from`.
fn downsample<'a>(reports: impl Iterator<Item = &'a Report>, from: i64, step: i64) -> Vec<Point> {
    #[derive(Default)]
    struct Acc {
        n: u64,
        cpu: f64,
        mem: f64,
        disk: f64,
        rx: u64,
        tx: u64,
    }
    let mut buckets: std::collections::BTreeMap<i64, Acc> = std::collections::BTreeMap::new();
    for r in reports {
        let Ok(m) = serde_json::from_slice::<Metrics>(&r.payload) else {
            continue;
        };
        let s = Summary::of(&m);
        let (used, total) = m.disks.iter().fold((0u64, 0u64), |(u, t), d| {
            (u + d.used, t + d.used.saturating_add(d.free))
        });
        let a = buckets.entry((r.t - from).max(0) / step).or_default();
        a.n += 1;
        a.cpu += f64::from(s.cpu);
        a.mem += f64::from(s.mem);
        a.disk += if total == 0 {
            0.0
        } else {
            used as f64 * 100.0 / total as f64
        };
        let external = || m.network.iter().filter(|n| !is_loopback(&n.name));
        a.rx += external().map(|n| n.rx_bps).sum::<u64>();
        a.tx += external().map(|n| n.tx_bps).sum::<u64>();
    }
    buckets
        .into_iter()
        .map(|(i, a)| {
            let n = a.n.max(1);
            Point {
                t: from + i * step,
                cpu: round1((a.cpu / n as f64) as f32),
                mem: round1((a.mem / n as f64) as f32),
                disk: round1((a.disk / n as f64) as f32),
                rx: a.rx / n,
                tx: a.tx / n,
            }
        })
        .collect()
}

fn event_view(r: &Report) -> Option<EventView> {
    if r.kind != Kind::Event {
        return None;
    }
    let detail: serde_json::Value = serde_json::from_slice(&r.payload).ok()?;
    let name = detail.get("event")?.as_str()?.to_owned();
    let security = matches!(
        serde_json::from_value::<wegweiser_shared::telemetry::Event>(detail.clone())
            .map(|e| e.what),
        Ok(EventKind::CommandRejected { .. } | EventKind::TrustRejected { .. })
    );
    Some(EventView {
        t: r.t,
        device: Some(r.device.clone()),
        event: name,
        security,
        detail,
    })
}

/// One `device` event of the live stream.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LiveEvent {
    /// Device id.
    pub device: String,
    /// Heartbeat within the last 90 s.
    pub online: bool,
    /// Last heartbeat (unix seconds).
    pub last_seen: Option<i64>,
    /// CPU use of the latest metrics, percent.
    pub cpu: Option<f32>,
    /// Memory use of the latest metrics, percent.
    pub mem: Option<f32>,
}

/// `GET /v1/tenants/{tenant}/live`: Server-Sent Events of presence and metrics changes of the
/// devices the caller may read (`event: device`, data [`LiveEvent`]), keepalive comments every
/// 15 s; the stream ends after 10 minutes (the browser reconnects). Needs
/// `Accept: text/event-stream`.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/live", params(("tenant" = String, Path)),
    responses((status = 200, description = "Server-Sent Events: `event: device`, `data:` a LiveEvent", content_type = "text/event-stream", body = String),
        (status = 401, body = ErrorView), (status = 404, body = ErrorView),
        (status = 406, body = ErrorView), (status = 429, body = ErrorView),
        (status = 503, body = ErrorView)))]
pub async fn live(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let tenant = tenant_id(&tenant)?;
    if !rbac::sees_tenant(&who, &tenant) {
        return Err(not_found());
    }
    // A tenant that does not exist is not found, even for the platform operator.
    s.auth.tenant(&tenant).await?;
    let wants_stream = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"));
    if !wants_stream {
        // A client that would read the body to its end would wait for minutes.
        return Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "not_acceptable",
            "this is a Server-Sent Events stream: send Accept: text/event-stream (as EventSource does)",
        ));
    }
    let Some(slot) = s.devices.streams.acquire(&who.user) else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_streams",
            format!(
                "at most {MAX_STREAMS_PER_USER} live streams per user; close another dashboard tab"
            ),
        )
        .retry_after(30));
    };
    let changes = s.devices.changes.subscribe();
    let (tx, rx) = mpsc::channel::<SseEvent>(256);
    tokio::spawn(forward(s.devices.clone(), who, tenant, changes, tx, slot));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    let mut r = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    // Like every other API answer, never stored (the SSE default is `no-cache`).
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    Ok(r)
}

/// Forwards the changes `who` may read until the client goes away or the stream's time is up.
async fn forward(
    index: Arc<DeviceIndex>,
    who: Principal,
    tenant: TenantId,
    mut changes: broadcast::Receiver<Change>,
    tx: mpsc::Sender<SseEvent>,
    _slot: StreamSlot,
) {
    let mut allowed: HashMap<DeviceId, bool> = HashMap::new();
    // Devices last announced online, to announce when they go offline.
    let mut online: HashSet<DeviceId> = HashSet::new();
    {
        let t = now();
        let devices = index.devices.read().unwrap_or_else(|e| e.into_inner());
        let seen = index.last_seen.read().unwrap_or_else(|e| e.into_inner());
        for (_, d) in devices
            .range((tenant.to_string(), String::new())..)
            .take_while(|((tn, _), _)| tn == tenant.as_str())
        {
            let ok = guard(&who, Action::Read, &device_target(d)).is_ok();
            allowed.insert(d.id.clone(), ok);
            if ok
                && seen
                    .get(&(d.tenant.clone(), d.id.clone()))
                    .is_some_and(|l| t - l <= ONLINE_WITHIN_SECS)
            {
                online.insert(d.id.clone());
            }
        }
    }
    let may_read = |allowed: &mut HashMap<DeviceId, bool>, d: &DeviceId| -> bool {
        if let Some(ok) = allowed.get(d) {
            return *ok;
        }
        let ok = index
            .get(&tenant, d)
            .is_some_and(|r| guard(&who, Action::Read, &device_target(&r)).is_ok());
        allowed.insert(d.clone(), ok);
        ok
    };
    let end = tokio::time::sleep(Duration::from_secs(MAX_STREAM_SECS));
    tokio::pin!(end);
    let mut tick = tokio::time::interval(OFFLINE_CHECK);
    let event = |e: &LiveEvent| {
        SseEvent::default()
            .event("device")
            .json_data(e)
            .unwrap_or_else(|_| SseEvent::default().comment("unencodable"))
    };
    loop {
        tokio::select! {
            () = &mut end => break,
            () = tx.closed() => break,
            c = changes.recv() => match c {
                Ok(c) if c.tenant == tenant && may_read(&mut allowed, &c.device) => {
                    let e = index.live_of(&tenant, &c.device, now());
                    if e.online {
                        online.insert(c.device.clone());
                    } else {
                        online.remove(&c.device);
                    }
                    if tx.send(event(&e)).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    // Too slow a reader: tell the page to reload its list.
                    tracing::debug!(skipped = n, "A live stream fell behind.");
                    if tx.send(SseEvent::default().event("resync").data("{}")).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = tick.tick() => {
                let t = now();
                let gone: Vec<DeviceId> = online
                    .iter()
                    .filter(|d| !index.live_of(&tenant, d, t).online)
                    .cloned()
                    .collect();
                for d in gone {
                    online.remove(&d);
                    if tx.send(event(&index.live_of(&tenant, &d, t))).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// The routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/tenants/{tenant}/summary", get(tenant_summary))
        .route(
            "/v1/tenants/{tenant}/devices/{device}/detail",
            get(device_detail),
        )
        .route(
            "/v1/tenants/{tenant}/devices/{device}/history",
            get(device_history),
        )
        .route("/v1/tenants/{tenant}/live", get(live))
}

/// A loopback interface (`lo` on Linux, `lo0` elsewhere, Windows' "Loopback Pseudo-Interface"):
/// left out of the network chart, whose traffic never leaves the device.
fn is_loopback(name: &str) -> bool {
    name == "lo"
        || name
            .strip_prefix("lo")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        || name.starts_with("Loopback")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(cpu: f32, used: u64, available: u64) -> Metrics {
        serde_json::from_value(serde_json::json!({
            "v": 1, "seq": 1, "ts": 0, "cpu": cpu, "memory_used": used,
            "memory_available": available, "process_count": 1,
            "top_cpu": [], "top_memory": [], "uptime": 1,
            "disks": [{"mount": "/", "used": 30, "free": 70}],
            "network": [{"name": "eth0", "rx_bps": 100, "tx_bps": 10}, {"name": "lo", "rx_bps": 1, "tx_bps": 1}]
        }))
        .unwrap()
    }

    fn report(t: i64, m: &Metrics) -> Report {
        Report {
            t,
            device: "d".into(),
            kind: Kind::Metrics,
            payload: serde_json::to_vec(m).unwrap().into(),
        }
    }

    #[test]
    fn summaries_are_percentages() {
        assert_eq!(
            Summary::of(&metrics(12.34, 1, 3)),
            Summary {
                cpu: 12.3,
                mem: 25.0
            }
        );
        assert_eq!(Summary::of(&metrics(250.0, 0, 0)).cpu, 100.0);
        assert_eq!(Summary::of(&metrics(1.0, 0, 0)).mem, 0.0);
    }

    #[test]
    fn history_is_averaged_into_at_most_max_points() {
        // A report every second for an hour: 3,600 reports, 360 points of 10 s.
        let from = 1_000_000;
        let reports: Vec<Report> = (0..3_600)
            .map(|i| report(from + i, &metrics((i % 10) as f32, 1, 1)))
            .collect();
        let points = downsample(reports.iter(), from, 3_600 / MAX_POINTS as i64);
        assert_eq!(points.len(), MAX_POINTS);
        assert_eq!(points[0].t, from);
        assert_eq!(points[1].t, from + 10);
        // 0..9 averaged.
        assert!((points[0].cpu - 4.5).abs() < 0.01, "{:?}", points[0]);
        assert_eq!(points[0].mem, 50.0);
        assert_eq!(points[0].disk, 30.0);
        // Loopback traffic (the device talking to itself) is not network traffic.
        assert_eq!((points[0].rx, points[0].tx), (100, 10));
        // Gaps stay gaps.
        let sparse = [
            report(from, &metrics(1.0, 1, 1)),
            report(from + 100, &metrics(3.0, 1, 1)),
        ];
        let p = downsample(sparse.iter(), from, 10);
        assert_eq!(
            p.iter().map(|p| p.t).collect::<Vec<_>>(),
            [from, from + 100]
        );
    }

    /// Puts a device into `index` as the KV watches would, seen `seen_ago` seconds ago with
    /// `cpu` % CPU.
    fn put(
        index: &DeviceIndex,
        tenant: &TenantId,
        group: &str,
        seen_ago: i64,
        cpu: f32,
    ) -> DeviceId {
        let id = DeviceId::generate();
        let record = serde_json::json!({
            "id": id, "tenant": tenant, "organization": "o1", "group": group,
            "public_key": nkeys::KeyPair::new_user().public_key(), "state": "active",
            "facts": {"hostname": format!("host-{id}"), "os": "linux", "machine_id": id},
            "enrolled_at": now(), "enrolled_by": "t",
        });
        let bytes = |v: &serde_json::Value| bytes::Bytes::from(serde_json::to_vec(v).unwrap());
        index.apply_device(&format!("{tenant}.{id}"), Some(&bytes(&record)));
        let latest =
            |report| serde_json::json!({"received_at": now() - seen_ago, "report": report});
        index.apply_seen(
            &format!("{tenant}.{id}.hb"),
            Some(&bytes(&latest(serde_json::json!({"v": 1})))),
        );
        let m = serde_json::to_value(metrics(cpu, 1, 1)).unwrap();
        index.apply_metrics(&format!("{tenant}.{id}.met"), Some(&bytes(&latest(m))));
        id
    }

    fn principal(role: crate::rbac::Role, scope: crate::rbac::Scope) -> Principal {
        Principal {
            user: "u".into(),
            bindings: vec![crate::rbac::Binding { role, scope }],
        }
    }

    #[test]
    fn ten_thousand_devices_page_in_cpu_order_without_gaps() {
        let index = DeviceIndex::default();
        let tenant: TenantId = "acme".parse().unwrap();
        for i in 0..10_000 {
            put(&index, &tenant, "g1", 0, (i % 1000) as f32 / 10.0);
        }
        let who = principal(
            crate::rbac::Role::Viewer,
            crate::rbac::Scope::Tenant {
                tenant: tenant.clone(),
            },
        );
        let mut q = DeviceQuery {
            sort: Some("cpu".into()),
            order: Some("desc".into()),
            limit: Some(500),
            ..Default::default()
        };
        let started = std::time::Instant::now();
        let mut all = Vec::new();
        loop {
            let page = index.page(&who, &tenant, &q);
            all.extend(page.items);
            match page.next {
                Some(n) => q.after = Some(n),
                None => break,
            }
        }
        let per_page = started.elapsed() / 20;
        assert_eq!(all.len(), 10_000);
        assert!(all.windows(2).all(|w| w[0].cpu >= w[1].cpu));
        let ids: HashSet<&String> = all.iter().map(|d| &d.id).collect();
        assert_eq!(ids.len(), 10_000, "every device exactly once");
        eprintln!("a sorted page of 500 out of 10,000 devices: {per_page:?}");
    }

    #[tokio::test]
    async fn a_stream_forwards_only_readable_devices_and_announces_them_offline() {
        let index = Arc::new(DeviceIndex::default());
        let tenant: TenantId = "acme".parse().unwrap();
        // Seen 87 s ago: online now, offline within the next check or two.
        let mine = put(&index, &tenant, "g1", ONLINE_WITHIN_SECS - 3, 5.0);
        let other = put(&index, &tenant, "g2", 0, 5.0);
        let who = principal(
            crate::rbac::Role::Viewer,
            crate::rbac::Scope::Group {
                tenant: tenant.clone(),
                organization: "o1".into(),
                group: "g1".into(),
            },
        );
        let streams = Streams::default();
        let (tx, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(forward(
            index.clone(),
            who,
            tenant.clone(),
            index.changes.subscribe(),
            tx,
            streams.acquire("u").unwrap(),
        ));
        index.changes.send(tenant.clone(), other.clone());
        index.changes.send(tenant.clone(), mine.clone());
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while seen.len() < 2 {
            let e = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .expect("no offline event")
                .unwrap();
            seen.push(format!("{e:?}"));
        }
        assert!(
            seen.iter()
                .all(|e| e.contains(mine.as_str()) && !e.contains(other.as_str())),
            "{seen:?}"
        );
        assert!(seen[0].contains(r#"\"online\":true"#), "{seen:?}");
        assert!(seen[1].contains(r#"\"online\":false"#), "{seen:?}");
        // The client goes away: the stream ends and frees its slot.
        drop(rx);
        index.changes.send(tenant.clone(), mine.clone());
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            streams.0.lock().unwrap().get("u"),
            None,
            "the slot is released"
        );
    }

    #[test]
    fn stream_slots_are_bounded_per_user_and_released() {
        let s = Streams::default();
        let held: Vec<_> = (0..MAX_STREAMS_PER_USER)
            .map(|_| s.acquire("ann").unwrap())
            .collect();
        assert!(s.acquire("ann").is_none());
        assert!(s.acquire("bob").is_some());
        drop(held);
        assert!(s.acquire("ann").is_some());
    }

    #[test]
    fn events_are_marked_security_or_not() {
        let r = |v: serde_json::Value| Report {
            t: 5,
            device: "d".into(),
            kind: Kind::Event,
            payload: serde_json::to_vec(&v).unwrap().into(),
        };
        let e = event_view(&r(serde_json::json!({"v":1,"seq":1,"ts":1,"event":"command_rejected","reason":"bad_signature","detail":"x"}))).unwrap();
        assert!(e.security && e.event == "command_rejected");
        let e = event_view(&r(
            serde_json::json!({"v":1,"seq":2,"ts":1,"event":"agent_start","agent_version":"1"}),
        ))
        .unwrap();
        assert!(!e.security && e.event == "agent_start");
        assert!(event_view(&r(serde_json::json!("not an event"))).is_none());
    }
}
