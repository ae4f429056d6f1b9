//! Role-based access control: the one authorization check every API handler goes through.
//!
//! A user holds role bindings: a [`Role`] at a [`Scope`] (a tenant, an organization of a tenant,
//! a group of an organization, or one device). The platform operator (created by the first
//! `serve`) holds [`Scope::Global`] Admin. [`authorize`] decides for an [`Action`] on a
//! [`Target`]: deny by default; an object outside every binding of the user is
//! [`Decision::NotFound`] (whether it exists or not, in any tenant), an object in scope for which
//! the role lacks the action is [`Decision::Forbidden`].
//!
//! | action | Viewer | Technician | Manager | Admin |
//! |---|---|---|---|---|
//! | [`Action::Read`]: tenants, organizations, groups, devices, reports, tokens, command log | ✓ | ✓ | ✓ | ✓ |
//! | [`Action::Command`]: send signed commands | | ✓ | ✓ | ✓ |
//! | [`Action::Manage`]: organizations, groups (create, rename, move, delete), devices (revoke, move, delete), enrollment tokens | | | ✓ | ✓ |
//! | [`Action::ReadAudit`]: audit queries | | | ✓ | ✓ |
//! | [`Action::ManageUsers`]: users and role bindings in scope | | | | ✓ |
//! | [`Action::ManageKeys`], [`Action::ManageTenants`]: command keys, tenants | | | | ✓ at [`Scope::Global`] only |
//!
//! The endpoints and what each needs are listed in [`crate::api`] and [`crate::api_admin`]
//! (users: an Admin manages the users whose bindings lie within its Admin scopes, and grants
//! only bindings within them; audit queries need [`Action::ReadAudit`] on the whole tenant).
//! Where the hierarchy endpoints ask ([`crate::api_hierarchy`]): creating an organization needs
//! Manage on the tenant, creating a group Manage on its organization; renaming or deleting needs
//! Manage on the object, showing it Read (or a binding below it); a move needs Manage on the
//! source and on the destination; deleting a device needs Manage on the device.

use serde::{Deserialize, Serialize};
use wegweiser_shared::ids::{DeviceId, TenantId};

/// A role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads.
    Viewer,
    /// Reads and sends commands.
    Technician,
    /// Also manages organizations, groups, devices and enrollment tokens.
    Manager,
    /// Everything in scope, users included.
    Admin,
}

impl Role {
    /// Every role, least first.
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Technician, Role::Manager, Role::Admin];

    /// Whether this role may do `action` (in a scope that covers the target).
    pub fn allows(self, action: Action) -> bool {
        match action {
            Action::Read => true,
            Action::Command => self >= Role::Technician,
            Action::Manage | Action::ReadAudit => self >= Role::Manager,
            Action::ManageUsers | Action::ManageKeys | Action::ManageTenants => self == Role::Admin,
        }
    }
}

/// Where a binding applies.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "scope", rename_all = "lowercase")]
pub enum Scope {
    /// The whole platform (the operator).
    Global,
    /// One tenant (MSP).
    Tenant {
        /// The tenant.
        tenant: TenantId,
    },
    /// One organization (an MSP's client) of a tenant.
    Organization {
        /// The tenant.
        tenant: TenantId,
        /// The organization.
        organization: String,
    },
    /// One group of an organization.
    Group {
        /// The tenant.
        tenant: TenantId,
        /// The organization.
        organization: String,
        /// The group.
        group: String,
    },
    /// One device.
    Device {
        /// The tenant.
        tenant: TenantId,
        /// The device.
        device: DeviceId,
    },
}

impl Scope {
    /// The tenant it lies in (none for [`Scope::Global`]).
    pub fn tenant(&self) -> Option<&TenantId> {
        match self {
            Self::Global => None,
            Self::Tenant { tenant }
            | Self::Organization { tenant, .. }
            | Self::Group { tenant, .. }
            | Self::Device { tenant, .. } => Some(tenant),
        }
    }

    /// Whether this scope contains `target`.
    pub fn covers(&self, target: &Target) -> bool {
        match (self, target) {
            (Self::Global, _) => true,
            (_, Target::Platform) => false,
            (Self::Tenant { tenant }, t) => t.tenant_id() == Some(tenant),
            (
                Self::Organization {
                    tenant,
                    organization,
                },
                t,
            ) => t.tenant_id() == Some(tenant) && t.organization() == Some(organization.as_str()),
            (
                Self::Group {
                    tenant,
                    organization,
                    group,
                },
                t,
            ) => {
                t.tenant_id() == Some(tenant)
                    && t.organization() == Some(organization.as_str())
                    && t.group() == Some(group.as_str())
            }
            (Self::Device { tenant, device }, Target::Device { at, device: d }) => {
                &at.tenant == tenant && d == device
            }
            (Self::Device { .. }, _) => false,
        }
    }

    /// Whether this scope lies within `outer` (an admin may only grant inside its own scopes).
    pub fn within(&self, outer: &Scope) -> bool {
        outer.covers(&match self {
            Self::Global => Target::Platform,
            Self::Tenant { tenant } => Target::tenant(tenant.clone()),
            Self::Organization {
                tenant,
                organization,
            } => Target::Place(Place {
                tenant: tenant.clone(),
                organization: Some(organization.clone()),
                group: None,
            }),
            Self::Group {
                tenant,
                organization,
                group,
            } => Target::Place(Place {
                tenant: tenant.clone(),
                organization: Some(organization.clone()),
                group: Some(group.clone()),
            }),
            Self::Device { tenant, device } => Target::Device {
                at: Place {
                    tenant: tenant.clone(),
                    organization: None,
                    group: None,
                },
                device: device.clone(),
            },
        }) || (matches!(self, Self::Device { .. }) && self == outer)
    }
}

/// A role at a scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Binding {
    /// The role.
    pub role: Role,
    /// Where.
    #[serde(flatten)]
    pub scope: Scope,
}

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Read.
    Read,
    /// Send signed commands.
    Command,
    /// Create, rename, move, delete organizations, groups, devices, tokens.
    Manage,
    /// Query the audit log.
    ReadAudit,
    /// Manage users and role bindings.
    ManageUsers,
    /// Manage command keys and the trust root (global).
    ManageKeys,
    /// Create and delete tenants (global).
    ManageTenants,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 7] = [
        Action::Read,
        Action::Command,
        Action::Manage,
        Action::ReadAudit,
        Action::ManageUsers,
        Action::ManageKeys,
        Action::ManageTenants,
    ];

    /// Actions only a global binding can grant.
    pub fn global_only(self) -> bool {
        matches!(self, Action::ManageKeys | Action::ManageTenants)
    }
}

/// A place in a tenant's hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Place {
    /// The tenant.
    pub tenant: TenantId,
    /// The organization, if the object lies in one.
    pub organization: Option<String>,
    /// The group, if the object lies in one.
    pub group: Option<String>,
}

/// What an action is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// The platform itself (tenants, command keys).
    Platform,
    /// A tenant, organization or group, or an object that lies there (a token, a user).
    Place(Place),
    /// A device, where it lies.
    Device {
        /// Where it lies.
        at: Place,
        /// The device.
        device: DeviceId,
    },
}

impl Target {
    /// A tenant as a whole.
    pub fn tenant(tenant: TenantId) -> Self {
        Self::Place(Place {
            tenant,
            organization: None,
            group: None,
        })
    }

    fn place(&self) -> Option<&Place> {
        match self {
            Self::Platform => None,
            Self::Place(p) | Self::Device { at: p, .. } => Some(p),
        }
    }

    /// Its tenant.
    pub fn tenant_id(&self) -> Option<&TenantId> {
        self.place().map(|p| &p.tenant)
    }

    fn organization(&self) -> Option<&str> {
        self.place().and_then(|p| p.organization.as_deref())
    }

    fn group(&self) -> Option<&str> {
        self.place().and_then(|p| p.group.as_deref())
    }
}

/// Who is asking: a user and its bindings (for an API token: the bindings of its user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user name.
    pub user: String,
    /// Its role bindings.
    pub bindings: Vec<Binding>,
}

/// The outcome of [`authorize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// In scope, but the role does not allow it (HTTP 403).
    Forbidden,
    /// Outside every scope of the user (HTTP 404, like an object that does not exist).
    NotFound,
}

/// The authorization check. Deny by default: allowed only when a binding covers the target and
/// its role allows the action (global-only actions need a global binding).
pub fn authorize(who: &Principal, action: Action, target: &Target) -> Decision {
    let mut in_scope = false;
    for b in &who.bindings {
        if !b.scope.covers(target) {
            continue;
        }
        in_scope = true;
        if action.global_only() && b.scope != Scope::Global {
            continue;
        }
        if b.role.allows(action) {
            return Decision::Allow;
        }
    }
    if in_scope {
        Decision::Forbidden
    } else {
        Decision::NotFound
    }
}

/// Whether `who` may see anything in `tenant` (for listing tenants).
pub fn sees_tenant(who: &Principal, tenant: &TenantId) -> bool {
    who.bindings
        .iter()
        .any(|b| b.scope == Scope::Global || b.scope.tenant() == Some(tenant))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TenantId {
        s.parse().unwrap()
    }
    fn d(s: &str) -> DeviceId {
        s.parse().unwrap()
    }
    fn place(tenant: &str, org: Option<&str>, group: Option<&str>) -> Place {
        Place {
            tenant: t(tenant),
            organization: org.map(str::to_owned),
            group: group.map(str::to_owned),
        }
    }
    /// A device of acme in org `o1`, group `g1`.
    fn dev() -> Target {
        Target::Device {
            at: place("acme", Some("o1"), Some("g1")),
            device: d("dev-1"),
        }
    }
    fn scopes() -> [Scope; 4] {
        [
            Scope::Tenant { tenant: t("acme") },
            Scope::Organization {
                tenant: t("acme"),
                organization: "o1".into(),
            },
            Scope::Group {
                tenant: t("acme"),
                organization: "o1".into(),
                group: "g1".into(),
            },
            Scope::Device {
                tenant: t("acme"),
                device: d("dev-1"),
            },
        ]
    }
    fn who(role: Role, scope: Scope) -> Principal {
        Principal {
            user: "u".into(),
            bindings: vec![Binding { role, scope }],
        }
    }

    #[test]
    fn the_matrix_on_a_device_in_scope() {
        // Every role at every scope that contains the device: exactly the role's actions.
        for scope in scopes() {
            for role in Role::ALL {
                let p = who(role, scope.clone());
                for action in Action::ALL {
                    let want = if action.global_only() {
                        Decision::Forbidden
                    } else if role.allows(action) {
                        Decision::Allow
                    } else {
                        Decision::Forbidden
                    };
                    assert_eq!(
                        authorize(&p, action, &dev()),
                        want,
                        "{role:?} at {scope:?}: {action:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn outside_the_scope_is_not_found() {
        let elsewhere = [
            Target::Device {
                at: place("acme", Some("o1"), Some("g2")),
                device: d("dev-2"),
            },
            Target::Device {
                at: place("acme", Some("o2"), Some("g1")),
                device: d("dev-3"),
            },
            Target::Device {
                at: place("other", Some("o1"), Some("g1")),
                device: d("dev-1"),
            },
            Target::tenant(t("other")),
            Target::Platform,
        ];
        for role in Role::ALL {
            // Group scope: the other group, the other organization, the other tenant.
            let p = who(role, scopes()[2].clone());
            for target in &elsewhere {
                for action in Action::ALL {
                    assert_eq!(
                        authorize(&p, action, target),
                        Decision::NotFound,
                        "{role:?}: {action:?} on {target:?}"
                    );
                }
            }
        }
        // A tenant admin sees nothing of another tenant, and not the platform.
        let admin = who(Role::Admin, scopes()[0].clone());
        assert_eq!(
            authorize(&admin, Action::Read, &Target::tenant(t("other"))),
            Decision::NotFound
        );
        assert_eq!(
            authorize(&admin, Action::ManageKeys, &Target::Platform),
            Decision::NotFound
        );
        // A device-scoped user does not see the tenant's other devices.
        let device_viewer = who(Role::Viewer, scopes()[3].clone());
        assert_eq!(
            authorize(&device_viewer, Action::Read, &elsewhere[0]),
            Decision::NotFound
        );
    }

    #[test]
    fn global_admin_does_everything_and_no_one_else_the_global_actions() {
        let op = who(Role::Admin, Scope::Global);
        for action in Action::ALL {
            assert_eq!(authorize(&op, action, &Target::Platform), Decision::Allow);
            assert_eq!(authorize(&op, action, &dev()), Decision::Allow);
        }
        let global_viewer = who(Role::Viewer, Scope::Global);
        assert_eq!(
            authorize(&global_viewer, Action::ManageKeys, &Target::Platform),
            Decision::Forbidden
        );
        assert_eq!(
            authorize(&global_viewer, Action::Read, &dev()),
            Decision::Allow
        );
    }

    #[test]
    fn no_bindings_no_access() {
        let nobody = Principal {
            user: "n".into(),
            bindings: Vec::new(),
        };
        for action in Action::ALL {
            assert_eq!(authorize(&nobody, action, &dev()), Decision::NotFound);
        }
    }

    #[test]
    fn the_best_binding_wins() {
        let p = Principal {
            user: "u".into(),
            bindings: vec![
                Binding {
                    role: Role::Viewer,
                    scope: scopes()[0].clone(),
                },
                Binding {
                    role: Role::Technician,
                    scope: scopes()[2].clone(),
                },
            ],
        };
        assert_eq!(authorize(&p, Action::Command, &dev()), Decision::Allow);
        let other_group = Target::Device {
            at: place("acme", Some("o1"), Some("g2")),
            device: d("dev-2"),
        };
        assert_eq!(
            authorize(&p, Action::Command, &other_group),
            Decision::Forbidden
        );
        assert_eq!(authorize(&p, Action::Read, &other_group), Decision::Allow);
    }

    #[test]
    fn scopes_nest() {
        let [tenant, org, group, device] = scopes();
        assert!(org.within(&tenant) && group.within(&org) && group.within(&tenant));
        assert!(device.within(&device) && device.within(&tenant));
        assert!(!tenant.within(&org));
        assert!(!Scope::Global.within(&tenant));
        assert!(tenant.within(&Scope::Global));
    }
}
