//! `wegweiser org …` and `wegweiser group …` on the command line: thin wrappers over
//! [`crate::hierarchy`], which the API calls too.

use crate::{authority::Authority, cli::print};
use clap::Subcommand;
use std::path::Path;
use wegweiser_shared::ids::TenantId;

/// Who the CLI acts as in the audit trail.
const ACTOR: &str = "cli";

/// `org` subcommands.
#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Create an organization.
    Create {
        /// Tenant.
        #[arg(long)]
        tenant: TenantId,
        /// Id (lowercase letters, digits and '-'; never changes).
        id: String,
        /// Display name (default: the id).
        #[arg(long)]
        name: Option<String>,
    },
    /// List a tenant's organizations.
    List {
        /// Tenant.
        #[arg(long)]
        tenant: TenantId,
    },
    /// Give an organization a new display name (its id stays).
    Rename {
        /// Tenant.
        #[arg(long)]
        tenant: TenantId,
        /// Id.
        id: String,
        /// The new display name.
        name: String,
    },
    /// Delete an organization (refused while it holds groups or devices, unless --cascade).
    Delete {
        /// Tenant.
        #[arg(long)]
        tenant: TenantId,
        /// Id.
        id: String,
        /// Also delete its devices (credentials revoked, reports purged) and groups.
        #[arg(long)]
        cascade: bool,
    },
}

/// `group` subcommands.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a group in an organization.
    Create {
        /// Tenant.
        #[arg(long)]
        tenant: TenantId,
        /// The organization.
        #[arg(long)]
        organization: String,
        /// Id (lowercase letters, digits and '-'; unique in the tenant; never changes).
        id: String,
        /// Display name (default: the id).
        #[arg(long)]
        name: Option<String>,
    },
    /// List a tenant's groups (of one organization, with --organization).
    List {
        /// Tenant.
        #[arg(long)]
        tenant: TenantId,
        /// Only this organization.
        #[arg(long)]
        organization: Option<String>,
    },
    /// Give a group a new display name (its id stays).
    Rename {
        /// Tenant.
        #[arg(long)]
        tenant: TenantId,
        /// Id.
        id: String,
        /// The new display name.
        name: String,
    },
    /// Move a group and its devices to another organization.
    Move {
        /// Tenant.
        #[arg(long)]
        tenant: TenantId,
        /// Id.
        id: String,
        /// The organization to move it to.
        #[arg(long)]
        to: String,
    },
    /// Delete a group (refused while it holds devices, unless --cascade).
    Delete {
        /// Tenant.
        #[arg(long)]
        tenant: TenantId,
        /// Id.
        id: String,
        /// Also delete its devices (credentials revoked, reports purged).
        #[arg(long)]
        cascade: bool,
    },
}

/// Runs an `org` subcommand.
pub async fn org(data_dir: &Path, cmd: OrgCommand, json: bool) -> anyhow::Result<()> {
    let auth = Authority::open(data_dir).await?;
    match cmd {
        OrgCommand::Create { tenant, id, name } => {
            let r = auth
                .create_organization(&tenant, &id, name.as_deref(), ACTOR)
                .await?;
            print(json, &r, || {
                format!("Created organization {} ({}).", r.id, r.name)
            });
        }
        OrgCommand::List { tenant } => {
            auth.tenant(&tenant).await?;
            let all = auth.organizations(&tenant).await?;
            print(json, &all, || {
                let mut s = format!("{:<32} {:<12} NAME", "ORGANIZATION", "CREATED-BY");
                for o in &all {
                    s.push_str(&format!("\n{:<32} {:<12} {}", o.id, o.created_by, o.name));
                }
                s
            });
        }
        OrgCommand::Rename { tenant, id, name } => {
            let r = auth.rename_organization(&tenant, &id, &name, ACTOR).await?;
            print(json, &r, || {
                format!("Organization {} is now called {}.", r.id, r.name)
            });
        }
        OrgCommand::Delete {
            tenant,
            id,
            cascade,
        } => {
            let d = auth
                .delete_organization(&tenant, &id, cascade, ACTOR)
                .await?;
            print(json, &d, || {
                format!(
                    "Deleted organization {id}: {} group(s), {} device(s), {} token(s) revoked.",
                    d.groups, d.devices, d.tokens
                )
            });
        }
    }
    Ok(())
}

/// Runs a `group` subcommand.
pub async fn group(data_dir: &Path, cmd: GroupCommand, json: bool) -> anyhow::Result<()> {
    let auth = Authority::open(data_dir).await?;
    match cmd {
        GroupCommand::Create {
            tenant,
            organization,
            id,
            name,
        } => {
            let r = auth
                .create_group(&tenant, &organization, &id, name.as_deref(), ACTOR)
                .await?;
            print(json, &r, || {
                format!(
                    "Created group {} ({}) in organization {}.",
                    r.id, r.name, r.organization
                )
            });
        }
        GroupCommand::List {
            tenant,
            organization,
        } => {
            auth.tenant(&tenant).await?;
            let all = auth.groups(&tenant, organization.as_deref()).await?;
            print(json, &all, || {
                let mut s = format!(
                    "{:<32} {:<32} {:<12} NAME",
                    "GROUP", "ORGANIZATION", "CREATED-BY"
                );
                for g in &all {
                    s.push_str(&format!(
                        "\n{:<32} {:<32} {:<12} {}",
                        g.id, g.organization, g.created_by, g.name
                    ));
                }
                s
            });
        }
        GroupCommand::Rename { tenant, id, name } => {
            let r = auth.rename_group(&tenant, &id, &name, ACTOR).await?;
            print(json, &r, || {
                format!("Group {} is now called {}.", r.id, r.name)
            });
        }
        GroupCommand::Move { tenant, id, to } => {
            let r = auth.move_group(&tenant, &id, &to, ACTOR).await?;
            print(json, &r, || {
                format!(
                    "Moved group {} and its devices to organization {}.",
                    r.id, r.organization
                )
            });
        }
        GroupCommand::Delete {
            tenant,
            id,
            cascade,
        } => {
            let d = auth.delete_group(&tenant, &id, cascade, ACTOR).await?;
            print(json, &d, || {
                format!(
                    "Deleted group {id}: {} device(s), {} token(s) revoked.",
                    d.devices, d.tokens
                )
            });
        }
    }
    Ok(())
}
