//! A tenant's hierarchy as objects: organizations (an MSP's clients) and their groups, kept in
//! the `wg_hierarchy` KV bucket of the control-plane account, and the moves and deletions of
//! groups and devices.
//!
//! Keys are `<tenant>.org.<organization>` and `<tenant>.grp.<group>`. An id is a slug (lowercase
//! letters, digits and `-`, at most [`MAX_ID_LEN`] characters: one NATS subject token) and never
//! changes, because device records, enrollment tokens and role bindings name it; a rename
//! changes only the display name. A group id is unique within its tenant (commands and the
//! device index name a group by its id alone); the group record says which organization holds
//! it.
//!
//! - Deleting an organization or group that still holds groups or devices is refused unless
//!   `cascade`, which deletes its devices, then its groups. Enrollment tokens that name a deleted
//!   organization or group are revoked with it. A deletion is refused while a role binding
//!   names the object (or, for an organization, one of its groups): the binding would reach a
//!   new object of the same id.
//! - Moving a group to another organization moves its devices and its enrollment tokens with
//!   it. It is refused while a user or API token holds a role binding on the group: that binding
//!   names the old organization and would silently change meaning.
//! - Deleting a device revokes its current and previous key (its connections drop at once),
//!   purges its reports from `WG_TELEMETRY` (`wg.<account>.up.<device>.>`) and `wg_latest`
//!   (`<tenant>.<device>.*`), and removes its record and machine index entry: it can neither
//!   renew (unknown device) nor come back with its old key (banned). A cascade revokes the keys
//!   of all its devices in one account update.
//! - [`Authority::migrate_hierarchy`] runs when the service starts and creates the objects for
//!   every organization and group label that devices and tokens already carry.

use crate::{
    audit::AuditEntry,
    authority::{Authority, AuthorityError, store_err},
    enrollment::DeviceRecord,
    rbac::{Binding, Scope},
};
use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use wegweiser_shared::{
    ids::{DeviceId, TenantId, UserKey},
    subject, time,
};

/// The KV bucket of organization and group records.
pub const HIERARCHY_BUCKET: &str = "wg_hierarchy";
/// Longest organization or group id.
pub const MAX_ID_LEN: usize = 63;
/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Who [`Authority::migrate_hierarchy`] records as the creator.
pub const MIGRATION_ACTOR: &str = "migration";

/// Why a hierarchy operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HierarchyError {
    /// A malformed id or name (HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// A request names an organization or group that does not exist (HTTP 400).
    #[error("{0}")]
    UnknownPlace(String),
    /// The object addressed does not exist (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// The id is taken (HTTP 409).
    #[error("{0}")]
    Exists(String),
    /// Refused in the object's current state: not empty, or bound (HTTP 409).
    #[error("{0}")]
    Conflict(String),
}

/// Checks an organization or group id: a slug that fits one NATS subject token.
pub fn check_id(what: &str, s: &str) -> Result<(), HierarchyError> {
    let bad = |why: String| {
        HierarchyError::Invalid(format!(
            "{what} id {:?} {why}; use lowercase letters, digits and '-' (not first or last), at most {MAX_ID_LEN} characters",
            s.chars().take(80).collect::<String>()
        ))
    };
    if s.is_empty() {
        return Err(bad("is empty".into()));
    }
    if s.len() > MAX_ID_LEN {
        return Err(bad(format!("is {} characters long", s.len())));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(bad(format!("contains {c:?}")));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err(bad("starts or ends with '-'".into()));
    }
    Ok(())
}

/// Checks a display name: 1 to [`MAX_NAME_CHARS`] characters, no control characters; returns it
/// trimmed.
pub fn check_name(s: &str) -> Result<String, HierarchyError> {
    let t = s.trim();
    let n = t.chars().count();
    if n == 0 {
        return Err(HierarchyError::Invalid(
            "the name is empty; give a display name".into(),
        ));
    }
    if n > MAX_NAME_CHARS {
        return Err(HierarchyError::Invalid(format!(
            "the name is {n} characters long; at most {MAX_NAME_CHARS} are allowed"
        )));
    }
    if t.chars().any(char::is_control) {
        return Err(HierarchyError::Invalid(
            "the name contains control characters".into(),
        ));
    }
    Ok(t.to_owned())
}

/// An organization as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgRecord {
    /// Id (never changes).
    pub id: String,
    /// Tenant.
    pub tenant: TenantId,
    /// Display name.
    pub name: String,
    /// Created, Unix seconds.
    pub created_at: i64,
    /// Who created it.
    pub created_by: String,
}

/// A group as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// Id (never changes; unique in the tenant).
    pub id: String,
    /// Tenant.
    pub tenant: TenantId,
    /// The organization that holds it.
    pub organization: String,
    /// Display name.
    pub name: String,
    /// Created, Unix seconds.
    pub created_at: i64,
    /// Who created it.
    pub created_by: String,
}

/// What a deletion removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Deleted {
    /// Devices deleted.
    pub devices: usize,
    /// Groups deleted.
    pub groups: usize,
    /// Enrollment tokens revoked.
    pub tokens: usize,
    /// Reports purged from the history.
    pub reports: u64,
}

fn org_key(tenant: &TenantId, org: &str) -> String {
    format!("{tenant}.org.{org}")
}

fn group_key(tenant: &TenantId, group: &str) -> String {
    format!("{tenant}.grp.{group}")
}

fn no_org(tenant: &TenantId, org: &str) -> String {
    format!(
        "no organization {org} in tenant {tenant}; create it first (`wegweiser org create --tenant {tenant} {org}` or POST /v1/tenants/{tenant}/organizations)"
    )
}

fn no_group(tenant: &TenantId, group: &str) -> String {
    format!(
        "no group {group} in tenant {tenant}; create it first (`wegweiser group create --tenant {tenant} --organization ORG {group}` or POST /v1/tenants/{tenant}/organizations/ORG/groups)"
    )
}

fn audit(kind: &str, actor: &str, tenant: &TenantId, detail: serde_json::Value) -> AuditEntry {
    let mut a = AuditEntry::new(kind, actor, "ok");
    a.tenant = Some(tenant.to_string());
    a.detail = detail;
    a
}

/// Whether `b` is a binding on group `group` of `tenant` (with `group` `None`: on organization
/// `org` or on one of its groups).
fn binds(b: &Binding, tenant: &TenantId, org: &str, group: Option<&str>) -> bool {
    match (&b.scope, group) {
        (
            Scope::Group {
                tenant: t,
                group: g,
                ..
            },
            Some(want),
        ) => t == tenant && g == want,
        (
            Scope::Organization {
                tenant: t,
                organization: o,
            }
            | Scope::Group {
                tenant: t,
                organization: o,
                ..
            },
            None,
        ) => t == tenant && o == org,
        _ => false,
    }
}

impl Authority {
    async fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        key: &str,
    ) -> Result<Option<(T, u64)>, AuthorityError> {
        let Some(e) = self
            .inner
            .hierarchy
            .entry(key)
            .await
            .map_err(store_err)?
            .filter(|e| e.operation == kv::Operation::Put)
        else {
            return Ok(None);
        };
        let v = serde_json::from_slice(&e.value)
            .map_err(|err| AuthorityError::Store(format!("record {key} is damaged: {err}")))?;
        Ok(Some((v, e.revision)))
    }

    async fn all_json<T: for<'de> Deserialize<'de>>(
        &self,
        pattern: &str,
    ) -> Result<Vec<T>, AuthorityError> {
        Ok(
            crate::authority::kv_values(&self.inner.cp, &self.inner.hierarchy, pattern)
                .await?
                .into_iter()
                .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
                .collect(),
        )
    }

    /// Changes a stored record with a compare-and-set, retried on conflict.
    async fn update_json<T, F>(
        &self,
        key: &str,
        missing: impl Fn() -> HierarchyError,
        mut change: F,
    ) -> Result<T, AuthorityError>
    where
        T: Serialize + for<'de> Deserialize<'de>,
        F: FnMut(&mut T) -> Result<(), AuthorityError>,
    {
        loop {
            let Some((mut r, rev)) = self.get_json::<T>(key).await? else {
                return Err(missing().into());
            };
            change(&mut r)?;
            let body = serde_json::to_vec(&r).map_err(store_err)?;
            match self.inner.hierarchy.update(key, body.into(), rev).await {
                Ok(_) => return Ok(r),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
    }

    /// One organization.
    pub async fn organization(
        &self,
        tenant: &TenantId,
        org: &str,
    ) -> Result<Option<OrgRecord>, AuthorityError> {
        if check_id("organization", org).is_err() {
            return Ok(None);
        }
        Ok(self.get_json(&org_key(tenant, org)).await?.map(|(r, _)| r))
    }

    /// Every organization of a tenant, by id.
    pub async fn organizations(&self, tenant: &TenantId) -> Result<Vec<OrgRecord>, AuthorityError> {
        let mut out: Vec<OrgRecord> = self.all_json(&format!("{tenant}.org.*")).await?;
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// One group.
    pub async fn group(
        &self,
        tenant: &TenantId,
        group: &str,
    ) -> Result<Option<GroupRecord>, AuthorityError> {
        if check_id("group", group).is_err() {
            return Ok(None);
        }
        Ok(self
            .get_json(&group_key(tenant, group))
            .await?
            .map(|(r, _)| r))
    }

    /// Every group of a tenant (of one organization, when given), by id.
    pub async fn groups(
        &self,
        tenant: &TenantId,
        org: Option<&str>,
    ) -> Result<Vec<GroupRecord>, AuthorityError> {
        let mut out: Vec<GroupRecord> = self.all_json(&format!("{tenant}.grp.*")).await?;
        out.retain(|g| org.is_none_or(|o| g.organization == o));
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Checks that an organization (and group, which must lie in it) exist: what an enrollment
    /// token or a move names.
    pub async fn check_place(
        &self,
        tenant: &TenantId,
        org: Option<&str>,
        group: Option<&str>,
    ) -> Result<(), AuthorityError> {
        let Some(org) = org else {
            if group.is_some() {
                return Err(HierarchyError::Invalid(
                    "a group lies in an organization: give both".into(),
                )
                .into());
            }
            return Ok(());
        };
        check_id("organization", org)?;
        if self.organization(tenant, org).await?.is_none() {
            return Err(HierarchyError::UnknownPlace(no_org(tenant, org)).into());
        }
        if let Some(group) = group {
            check_id("group", group)?;
            match self.group(tenant, group).await? {
                None => return Err(HierarchyError::UnknownPlace(no_group(tenant, group)).into()),
                Some(g) if g.organization != org => {
                    return Err(HierarchyError::UnknownPlace(format!(
                        "group {group} lies in organization {}, not {org}",
                        g.organization
                    ))
                    .into());
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Creates an organization (audited).
    pub async fn create_organization(
        &self,
        tenant: &TenantId,
        id: &str,
        name: Option<&str>,
        actor: &str,
    ) -> Result<OrgRecord, AuthorityError> {
        check_id("organization", id)?;
        let name = check_name(name.unwrap_or(id))?;
        self.tenant(tenant).await?;
        let r = OrgRecord {
            id: id.to_owned(),
            tenant: tenant.clone(),
            name,
            created_at: time::now(),
            created_by: actor.to_owned(),
        };
        let body = serde_json::to_vec(&r).map_err(store_err)?;
        match self
            .inner
            .hierarchy
            .create(org_key(tenant, id), body.into())
            .await
        {
            Ok(_) => {}
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                return Err(HierarchyError::Exists(format!(
                    "organization {id} already exists in tenant {tenant}; pick another id"
                ))
                .into());
            }
            Err(e) => return Err(store_err(e)),
        }
        self.audit()
            .record(audit(
                "organization.create",
                actor,
                tenant,
                serde_json::json!({"organization": id, "name": r.name}),
            ))
            .await;
        Ok(r)
    }

    /// Renames an organization (its id stays; audited).
    pub async fn rename_organization(
        &self,
        tenant: &TenantId,
        id: &str,
        name: &str,
        actor: &str,
    ) -> Result<OrgRecord, AuthorityError> {
        check_id("organization", id).map_err(|_| HierarchyError::NotFound(no_org(tenant, id)))?;
        let name = check_name(name)?;
        let r: OrgRecord = self
            .update_json(
                &org_key(tenant, id),
                || HierarchyError::NotFound(no_org(tenant, id)),
                |r: &mut OrgRecord| {
                    r.name = name.clone();
                    Ok(())
                },
            )
            .await?;
        self.audit()
            .record(audit(
                "organization.rename",
                actor,
                tenant,
                serde_json::json!({"organization": id, "name": r.name}),
            ))
            .await;
        Ok(r)
    }

    /// Deletes an organization. Refused while it holds groups or devices, unless `cascade`:
    /// then its devices are deleted (see [`Authority::delete_device`]), then its groups. Tokens
    /// that name it are revoked. Audited.
    pub async fn delete_organization(
        &self,
        tenant: &TenantId,
        id: &str,
        cascade: bool,
        actor: &str,
    ) -> Result<Deleted, AuthorityError> {
        if self.organization(tenant, id).await?.is_none() {
            return Err(HierarchyError::NotFound(no_org(tenant, id)).into());
        }
        let groups = self.groups(tenant, Some(id)).await?;
        let devices: Vec<DeviceRecord> = self
            .devices(tenant)
            .await?
            .into_iter()
            .filter(|d| d.organization.as_deref() == Some(id))
            .collect();
        if !cascade && (!groups.is_empty() || !devices.is_empty()) {
            return Err(HierarchyError::Conflict(format!(
                "organization {id} still holds {} group(s) and {} device(s); move or delete them first, or delete with cascade=true (`--cascade`) to delete them with it",
                groups.len(),
                devices.len()
            ))
            .into());
        }
        // A binding would outlive the organization and reach a new one of the same id.
        let bound = self.bindings_on(tenant, id, None).await?;
        if !bound.is_empty() {
            return Err(HierarchyError::Conflict(format!(
                "role bindings name organization {id} or its groups, and would reach a new organization of the same id; remove them first (`wegweiser user revoke-binding`): {}",
                bound.join(", ")
            ))
            .into());
        }
        let mut done = Deleted {
            reports: self.delete_devices(tenant, &devices, actor).await?,
            devices: devices.len(),
            ..Deleted::default()
        };
        for g in &groups {
            done.tokens += self.revoke_tokens_naming(tenant, None, Some(&g.id)).await?;
            self.purge_group(
                tenant,
                &g.id,
                actor,
                serde_json::json!({"group": g.id, "organization": id, "cascade": true}),
            )
            .await?;
            done.groups += 1;
        }
        done.tokens += self.revoke_tokens_naming(tenant, Some(id), None).await?;
        self.inner
            .hierarchy
            .purge(org_key(tenant, id))
            .await
            .map_err(store_err)?;
        // A group created while this ran, which saw the organization still there, goes too
        // (empty: enrollment tokens can only name groups that already existed).
        for g in self.groups(tenant, Some(id)).await? {
            self.purge_group(
                tenant,
                &g.id,
                actor,
                serde_json::json!({"group": g.id, "organization": id, "reason": "created while its organization was deleted"}),
            )
            .await?;
            done.groups += 1;
        }
        self.audit()
            .record(audit(
                "organization.delete",
                actor,
                tenant,
                serde_json::json!({"organization": id, "cascade": cascade, "devices": done.devices, "groups": done.groups, "tokens": done.tokens}),
            ))
            .await;
        Ok(done)
    }

    /// Removes a group's record and audits `group.delete` with `detail`.
    async fn purge_group(
        &self,
        tenant: &TenantId,
        group: &str,
        actor: &str,
        detail: serde_json::Value,
    ) -> Result<(), AuthorityError> {
        self.inner
            .hierarchy
            .purge(group_key(tenant, group))
            .await
            .map_err(store_err)?;
        self.audit()
            .record(audit("group.delete", actor, tenant, detail))
            .await;
        Ok(())
    }

    /// Creates a group in an existing organization (audited).
    pub async fn create_group(
        &self,
        tenant: &TenantId,
        org: &str,
        id: &str,
        name: Option<&str>,
        actor: &str,
    ) -> Result<GroupRecord, AuthorityError> {
        check_id("group", id)?;
        let name = check_name(name.unwrap_or(id))?;
        if self.organization(tenant, org).await?.is_none() {
            return Err(HierarchyError::NotFound(no_org(tenant, org)).into());
        }
        let r = GroupRecord {
            id: id.to_owned(),
            tenant: tenant.clone(),
            organization: org.to_owned(),
            name,
            created_at: time::now(),
            created_by: actor.to_owned(),
        };
        let body = serde_json::to_vec(&r).map_err(store_err)?;
        match self
            .inner
            .hierarchy
            .create(group_key(tenant, id), body.into())
            .await
        {
            Ok(_) => {}
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                return Err(HierarchyError::Exists(format!(
                    "group {id} already exists in tenant {tenant} (group ids are unique in a tenant); pick another id"
                ))
                .into());
            }
            Err(e) => return Err(store_err(e)),
        }
        // The organization may have been deleted while this ran: then the group goes again.
        // (A deletion that began after this check removes the group itself; see
        // `delete_organization`.)
        if self.organization(tenant, org).await?.is_none() {
            self.inner
                .hierarchy
                .purge(group_key(tenant, id))
                .await
                .map_err(store_err)?;
            return Err(HierarchyError::NotFound(no_org(tenant, org)).into());
        }
        self.audit()
            .record(audit(
                "group.create",
                actor,
                tenant,
                serde_json::json!({"group": id, "organization": org, "name": r.name}),
            ))
            .await;
        Ok(r)
    }

    /// Renames a group (its id stays; audited).
    pub async fn rename_group(
        &self,
        tenant: &TenantId,
        id: &str,
        name: &str,
        actor: &str,
    ) -> Result<GroupRecord, AuthorityError> {
        check_id("group", id).map_err(|_| HierarchyError::NotFound(no_group(tenant, id)))?;
        let name = check_name(name)?;
        let r: GroupRecord = self
            .update_json(
                &group_key(tenant, id),
                || HierarchyError::NotFound(no_group(tenant, id)),
                |r: &mut GroupRecord| {
                    r.name = name.clone();
                    Ok(())
                },
            )
            .await?;
        self.audit()
            .record(audit(
                "group.rename",
                actor,
                tenant,
                serde_json::json!({"group": id, "name": r.name}),
            ))
            .await;
        Ok(r)
    }

    /// The role bindings (of users and of API tokens) on a group (with `group` `None`: on the
    /// organization or one of its groups), described for an error message.
    async fn bindings_on(
        &self,
        tenant: &TenantId,
        org: &str,
        group: Option<&str>,
    ) -> Result<Vec<String>, AuthorityError> {
        let mut out = Vec::new();
        for u in self.users().await.map_err(store_err)? {
            for b in u.bindings.iter().filter(|b| binds(b, tenant, org, group)) {
                out.push(format!("user {} ({:?})", u.name, b.role).to_lowercase());
            }
        }
        for t in self.api_tokens(None).await? {
            for b in t
                .bindings
                .iter()
                .flatten()
                .filter(|b| binds(b, tenant, org, group))
            {
                out.push(format!(
                    "API token {} of user {} ({:?})",
                    t.id, t.owner, b.role
                ));
            }
        }
        Ok(out)
    }

    /// Moves a group, its devices and the enrollment tokens that name it to another existing
    /// organization. Refused while a role binding names the group. Audited.
    pub async fn move_group(
        &self,
        tenant: &TenantId,
        id: &str,
        to: &str,
        actor: &str,
    ) -> Result<GroupRecord, AuthorityError> {
        let Some(g) = self.group(tenant, id).await? else {
            return Err(HierarchyError::NotFound(no_group(tenant, id)).into());
        };
        self.check_place(tenant, Some(to), None).await?;
        if g.organization == to {
            return Ok(g);
        }
        let bound = self.bindings_on(tenant, &g.organization, Some(id)).await?;
        if !bound.is_empty() {
            return Err(HierarchyError::Conflict(format!(
                "role bindings name group {id} in organization {}, and would change meaning if it moved; remove them first (`wegweiser user revoke-binding`): {}",
                g.organization,
                bound.join(", ")
            ))
            .into());
        }
        // Devices and tokens first: a move cut short is finished by running it again.
        let mut moved = 0usize;
        for d in self.devices(tenant).await? {
            if d.group.as_deref() == Some(id) {
                self.set_device_place(tenant, &d.id, Some(to), Some(id))
                    .await?;
                moved += 1;
            }
        }
        let tokens = self.retarget_tokens(tenant, id, to).await?;
        let r: GroupRecord = self
            .update_json(
                &group_key(tenant, id),
                || HierarchyError::NotFound(no_group(tenant, id)),
                |r: &mut GroupRecord| {
                    r.organization = to.to_owned();
                    Ok(())
                },
            )
            .await?;
        self.audit()
            .record(audit(
                "group.move",
                actor,
                tenant,
                serde_json::json!({"group": id, "from": g.organization, "to": to, "devices": moved, "tokens": tokens}),
            ))
            .await;
        Ok(r)
    }

    /// Deletes a group. Refused while it holds devices, unless `cascade` (which deletes them).
    /// Tokens that name it are revoked. Audited.
    pub async fn delete_group(
        &self,
        tenant: &TenantId,
        id: &str,
        cascade: bool,
        actor: &str,
    ) -> Result<Deleted, AuthorityError> {
        let Some(g) = self.group(tenant, id).await? else {
            return Err(HierarchyError::NotFound(no_group(tenant, id)).into());
        };
        let devices: Vec<DeviceRecord> = self
            .devices(tenant)
            .await?
            .into_iter()
            .filter(|d| d.group.as_deref() == Some(id))
            .collect();
        if !cascade && !devices.is_empty() {
            return Err(HierarchyError::Conflict(format!(
                "group {id} still holds {} device(s); move or delete them first, or delete with cascade=true (`--cascade`) to delete them with it",
                devices.len()
            ))
            .into());
        }
        let bound = self.bindings_on(tenant, &g.organization, Some(id)).await?;
        if !bound.is_empty() {
            return Err(HierarchyError::Conflict(format!(
                "role bindings name group {id}, and would reach a new group of the same id; remove them first (`wegweiser user revoke-binding`): {}",
                bound.join(", ")
            ))
            .into());
        }
        let mut done = Deleted {
            reports: self.delete_devices(tenant, &devices, actor).await?,
            devices: devices.len(),
            ..Deleted::default()
        };
        done.tokens = self.revoke_tokens_naming(tenant, None, Some(id)).await?;
        self.inner
            .hierarchy
            .purge(group_key(tenant, id))
            .await
            .map_err(store_err)?;
        done.groups = 1;
        self.audit()
            .record(audit(
                "group.delete",
                actor,
                tenant,
                serde_json::json!({"group": id, "organization": g.organization, "cascade": cascade, "devices": done.devices, "tokens": done.tokens}),
            ))
            .await;
        Ok(done)
    }

    /// Sets a device's organization and group (compare-and-set).
    async fn set_device_place(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
        org: Option<&str>,
        group: Option<&str>,
    ) -> Result<DeviceRecord, AuthorityError> {
        let key = format!("{tenant}.{device}");
        loop {
            let Some((mut r, rev)) = self.device_entry(tenant, device).await? else {
                return Err(HierarchyError::NotFound(format!(
                    "no device {device} in tenant {tenant}"
                ))
                .into());
            };
            r.organization = org.map(str::to_owned);
            r.group = group.map(str::to_owned);
            let body = serde_json::to_vec(&r).map_err(store_err)?;
            match self.inner.devices.update(&key, body.into(), rev).await {
                Ok(_) => return Ok(r),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
    }

    /// Moves a device to an existing organization (and group of it). Its credentials stay: they
    /// name the device, not where it lies. Audited.
    pub async fn move_device(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
        org: &str,
        group: Option<&str>,
        actor: &str,
    ) -> Result<DeviceRecord, AuthorityError> {
        let Some((before, _)) = self.device_entry(tenant, device).await? else {
            return Err(
                HierarchyError::NotFound(format!("no device {device} in tenant {tenant}")).into(),
            );
        };
        self.check_place(tenant, Some(org), group).await?;
        let r = self
            .set_device_place(tenant, device, Some(org), group)
            .await?;
        let mut a = audit(
            "device.move",
            actor,
            tenant,
            serde_json::json!({
                "from": {"organization": before.organization, "group": before.group},
                "to": {"organization": org, "group": group},
            }),
        );
        a.device = Some(device.to_string());
        self.audit().record(a).await;
        Ok(r)
    }

    /// Deletes a device: revokes its current and previous key (live connections drop at once,
    /// no JWT is issued for them again), purges its reports (history and latest), removes its
    /// machine index entry and its record. Returns the reports purged. Audited.
    pub async fn delete_device(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
        actor: &str,
    ) -> Result<u64, AuthorityError> {
        let Some((record, _)) = self.device_entry(tenant, device).await? else {
            return Err(
                HierarchyError::NotFound(format!("no device {device} in tenant {tenant}")).into(),
            );
        };
        self.delete_devices(tenant, &[record], actor).await
    }

    /// Deletes devices as [`Authority::delete_device`] does, with every key of every one of them
    /// revoked in a single account update first (so nothing they send lands after the purge).
    /// Returns the reports purged.
    async fn delete_devices(
        &self,
        tenant: &TenantId,
        devices: &[DeviceRecord],
        actor: &str,
    ) -> Result<u64, AuthorityError> {
        if devices.is_empty() {
            return Ok(0);
        }
        let keys: Vec<UserKey> = devices
            .iter()
            .flat_map(|d| std::iter::once(d.public_key.clone()).chain(d.previous_key.clone()))
            .collect();
        self.revoke_all(tenant, &keys).await?;
        let account = self.tenant(tenant).await?.account;
        let js = jetstream::new(self.cp_client().clone());
        let (stream, latest) = crate::ingest::open(
            &js,
            self.config().telemetry_retention_days,
            self.config().kv_replicas,
        )
        .await?;
        let mut total = 0;
        for d in devices {
            let reports = stream
                .purge()
                .filter(subject::up_all(&account, &d.id))
                .await
                .map_err(store_err)?
                .purged;
            // Its latest reports, straight from the bucket's stream: one request, no consumer
            // and no purge markers left behind.
            let stale = latest
                .stream
                .purge()
                .filter(format!("{}{tenant}.{}.>", latest.prefix, d.id))
                .await
                .map_err(store_err)?
                .purged;
            // The machine index entry, only when it still points at this device (a later
            // enrollment may own it).
            let mkey = crate::enrollment::machine_key(tenant, &d.facts.machine_id);
            let indexed_here = self
                .inner
                .machines
                .entry(&mkey)
                .await
                .map_err(store_err)?
                .is_some_and(|e| {
                    e.operation == kv::Operation::Put && e.value == d.id.as_str().as_bytes()
                });
            if indexed_here {
                self.inner.machines.purge(&mkey).await.map_err(store_err)?;
            }
            self.inner
                .devices
                .purge(format!("{tenant}.{}", d.id))
                .await
                .map_err(store_err)?;
            let mut a = audit(
                "device.delete",
                actor,
                tenant,
                serde_json::json!({
                    "organization": d.organization, "group": d.group, "hostname": d.facts.hostname,
                    "revoked": std::iter::once(&d.public_key).chain(&d.previous_key).collect::<Vec<_>>(),
                    "reports": reports, "latest": stale,
                }),
            );
            a.device = Some(d.id.to_string());
            self.audit().record(a).await;
            total += reports;
        }
        // Bindings on the devices guard nothing now; they go too, so user lists stay true.
        let ids: Vec<DeviceId> = devices.iter().map(|d| d.id.clone()).collect();
        self.drop_device_bindings(tenant, &ids, actor)
            .await
            .map_err(store_err)?;
        Ok(total)
    }

    /// Revokes the unrevoked tokens of `tenant` that name organization `org` or group `group`.
    async fn revoke_tokens_naming(
        &self,
        tenant: &TenantId,
        org: Option<&str>,
        group: Option<&str>,
    ) -> Result<usize, AuthorityError> {
        let mut n = 0;
        for (hash, t) in self.tokens(tenant).await? {
            let names = (org.is_some() && t.organization.as_deref() == org)
                || (group.is_some() && t.group.as_deref() == group);
            if names && t.revoked_at.is_none() {
                self.revoke_token(tenant, &hash).await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Points the tokens that name group `group` at organization `to`.
    async fn retarget_tokens(
        &self,
        tenant: &TenantId,
        group: &str,
        to: &str,
    ) -> Result<usize, AuthorityError> {
        let mut n = 0;
        for (hash, t) in self.tokens(tenant).await? {
            if t.group.as_deref() == Some(group) {
                self.update_token(&hash, |r| {
                    r.organization = Some(to.to_owned());
                    Ok(())
                })
                .await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Creates the organization and group objects for every label that devices and usable
    /// enrollment tokens already carry (records written before the hierarchy existed), so existing
    /// installs keep working. A group label found in several organizations is created in the
    /// first (by id) and the others are logged. Returns how many objects it created.
    pub async fn migrate_hierarchy(&self) -> Result<usize, AuthorityError> {
        let mut created = 0;
        // Every tenant's tokens in one pass over the bucket; spent tokens enroll nothing more,
        // so only usable ones count.
        let now = time::now();
        let mut tokens: BTreeMap<TenantId, Vec<crate::enrollment::TokenRecord>> = BTreeMap::new();
        for (_, v) in crate::authority::kv_values(&self.inner.cp, &self.inner.tokens, ">").await? {
            if let Ok(r) = serde_json::from_slice::<crate::enrollment::TokenRecord>(&v)
                && r.revoked_at.is_none()
                && r.expires_at > now
                && r.uses < r.max_uses
            {
                tokens.entry(r.tenant.clone()).or_default().push(r);
            }
        }
        for t in self.tenants().await? {
            if t.state != crate::tenant::TenantState::Active {
                continue;
            }
            let tenant = &t.id;
            // organization → groups, as labelled.
            let mut labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            let devices = self.devices(tenant).await?;
            let places = devices.iter().map(|d| (&d.organization, &d.group)).chain(
                tokens
                    .get(tenant)
                    .into_iter()
                    .flatten()
                    .map(|r| (&r.organization, &r.group)),
            );
            for (org, group) in places {
                if let Some(o) = org {
                    let groups = labels.entry(o.clone()).or_default();
                    if let Some(g) = group {
                        groups.insert(g.clone());
                    }
                }
            }
            for (org, groups) in labels {
                if check_id("organization", &org).is_err() {
                    tracing::warn!(tenant = %tenant, organization = %org, "Organization label is not a valid id; left as it is.");
                    continue;
                }
                if self.organization(tenant, &org).await?.is_none() {
                    match self
                        .create_organization(tenant, &org, None, MIGRATION_ACTOR)
                        .await
                    {
                        Ok(_) => created += 1,
                        Err(AuthorityError::Hierarchy(HierarchyError::Exists(_))) => {}
                        Err(e) => return Err(e),
                    }
                }
                for g in groups {
                    if check_id("group", &g).is_err() {
                        tracing::warn!(tenant = %tenant, group = %g, "Group label is not a valid id; left as it is.");
                        continue;
                    }
                    match self.group(tenant, &g).await? {
                        Some(existing) if existing.organization != org => {
                            tracing::warn!(tenant = %tenant, group = %g, organization = %org, holder = %existing.organization,
                                "Group label used in two organizations; the group object lies in the first.");
                        }
                        Some(_) => {}
                        None => match self
                            .create_group(tenant, &org, &g, None, MIGRATION_ACTOR)
                            .await
                        {
                            Ok(_) => created += 1,
                            Err(AuthorityError::Hierarchy(HierarchyError::Exists(_))) => {}
                            Err(e) => return Err(e),
                        },
                    }
                }
            }
        }
        if created > 0 {
            tracing::info!(
                created,
                "Created organization and group objects for labels already in use."
            );
        }
        Ok(created)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_slugs_that_fit_one_subject_token() {
        for good in ["a", "client-a", "o1", &"x".repeat(MAX_ID_LEN)] {
            assert!(check_id("organization", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "A",
            "a.b",
            "a*",
            ">",
            "-a",
            "a-",
            "a b",
            "ä",
            &"x".repeat(MAX_ID_LEN + 1),
        ] {
            let e = check_id("group", bad).unwrap_err();
            assert!(
                matches!(&e, HierarchyError::Invalid(m) if m.contains("lowercase letters")),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn bindings_on_a_group_or_an_organization_and_its_groups() {
        let t: TenantId = "acme".parse().unwrap();
        let other: TenantId = "other".parse().unwrap();
        let b = |scope| Binding {
            role: crate::rbac::Role::Viewer,
            scope,
        };
        let org = |tenant: &TenantId, o: &str| {
            b(Scope::Organization {
                tenant: tenant.clone(),
                organization: o.into(),
            })
        };
        let group = |tenant: &TenantId, o: &str, g: &str| {
            b(Scope::Group {
                tenant: tenant.clone(),
                organization: o.into(),
                group: g.into(),
            })
        };
        // A group: bindings on that group only.
        assert!(binds(&group(&t, "o1", "g1"), &t, "o1", Some("g1")));
        assert!(!binds(&group(&t, "o1", "g2"), &t, "o1", Some("g1")));
        assert!(!binds(&org(&t, "o1"), &t, "o1", Some("g1")));
        assert!(!binds(&group(&other, "o1", "g1"), &t, "o1", Some("g1")));
        // An organization: on it, or on any of its groups.
        assert!(binds(&org(&t, "o1"), &t, "o1", None));
        assert!(binds(&group(&t, "o1", "g9"), &t, "o1", None));
        assert!(!binds(&org(&t, "o2"), &t, "o1", None));
        assert!(!binds(&org(&other, "o1"), &t, "o1", None));
        assert!(!binds(
            &b(Scope::Tenant { tenant: t.clone() }),
            &t,
            "o1",
            None
        ));
    }

    #[test]
    fn names_are_trimmed_and_limited() {
        assert_eq!(check_name("  Client A ").unwrap(), "Client A");
        assert_eq!(
            check_name(&"é".repeat(MAX_NAME_CHARS))
                .unwrap()
                .chars()
                .count(),
            MAX_NAME_CHARS
        );
        for bad in ["", "   ", "a\nb", &"x".repeat(MAX_NAME_CHARS + 1)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
