//! `wegweiser user …` and `wegweiser api-token …` on the command line: thin wrappers over the
//! library functions in [`crate::users`] and [`crate::sessions`] that the API calls too.
//!
//! Passwords are read from standard input (`--password-stdin`, one line) or generated and shown
//! once; they never appear on the command line (process list, shell history).

use crate::{
    authority::Authority,
    cli::print,
    rbac::{Binding, Role, Scope},
    sessions::NewApiToken,
    users::{Password, UserSummary},
};
use clap::{Args, Subcommand};
use std::path::Path;
use wegweiser_shared::{
    ids::{DeviceId, TenantId, UserName},
    secret::SecretString,
};

/// Who the CLI acts as in the audit trail.
const ACTOR: &str = "cli";

/// `user` subcommands.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user (password from stdin with --password-stdin, else generated and shown once).
    Create {
        /// User name (letters, digits, '-', '_').
        name: UserName,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
        /// A first binding (optional; `user grant` adds more).
        #[command(flatten)]
        binding: OptionalBinding,
    },
    /// List users and their bindings.
    List,
    /// Delete a user, its sessions and API tokens.
    Delete {
        /// User name.
        name: UserName,
    },
    /// Set a new password (ends every session of the user).
    SetPassword {
        /// User name.
        name: UserName,
        /// Read the password from standard input (else one is generated and shown once).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Grant a role at a scope.
    Grant {
        /// User name.
        name: UserName,
        /// The binding.
        #[command(flatten)]
        binding: BindingArgs,
    },
    /// Remove a role binding.
    RevokeBinding {
        /// User name.
        name: UserName,
        /// The binding.
        #[command(flatten)]
        binding: BindingArgs,
    },
    /// Disable a user: no login, sessions end, API tokens stop working.
    Disable {
        /// User name.
        name: UserName,
    },
    /// Enable a disabled user.
    Enable {
        /// User name.
        name: UserName,
    },
}

/// `api-token` subcommands.
#[derive(Debug, Subcommand)]
pub enum ApiTokenCommand {
    /// Create an API token for a user (shown once; only its hash is stored).
    Create {
        /// The user it acts for.
        #[arg(long)]
        user: UserName,
        /// Lifetime in days (required; at most `auth.api_token_max_days`).
        #[arg(long)]
        expires_in_days: i64,
        /// Free text.
        #[arg(long, default_value = "")]
        label: String,
        /// Narrow the token to this binding (within the user's own).
        #[command(flatten)]
        binding: OptionalBinding,
    },
    /// List API tokens (of one user, or all).
    List {
        /// Only this user's.
        #[arg(long)]
        user: Option<UserName>,
    },
    /// Revoke an API token.
    Revoke {
        /// Token id (16 characters, from `api-token list`).
        id: String,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    serde_json::from_value(serde_json::Value::String(s.to_ascii_lowercase()))
        .map_err(|_| format!("{s:?} is not a role: viewer, technician, manager or admin"))
}

/// A role at a scope.
#[derive(Debug, Args)]
pub struct BindingArgs {
    /// Role: viewer, technician, manager or admin.
    #[arg(long, value_parser = parse_role)]
    pub role: Role,
    /// The scope fields.
    #[command(flatten)]
    pub scope: ScopeArgs,
}

/// An optional role at a scope.
#[derive(Debug, Args)]
pub struct OptionalBinding {
    /// Role: viewer, technician, manager or admin.
    #[arg(long, value_parser = parse_role)]
    pub role: Option<Role>,
    /// The scope fields.
    #[command(flatten)]
    pub scope: ScopeArgs,
}

/// Where a binding applies.
#[derive(Debug, Args)]
pub struct ScopeArgs {
    /// The whole platform.
    #[arg(long, conflicts_with_all = ["tenant", "organization", "group", "device"])]
    pub global: bool,
    /// A tenant.
    #[arg(long)]
    pub tenant: Option<TenantId>,
    /// An organization of the tenant.
    #[arg(long, requires = "tenant", conflicts_with = "device")]
    pub organization: Option<String>,
    /// A group of the organization.
    #[arg(long, requires = "organization")]
    pub group: Option<String>,
    /// One device of the tenant.
    #[arg(long, requires = "tenant")]
    pub device: Option<DeviceId>,
}

impl ScopeArgs {
    fn scope(self) -> anyhow::Result<Scope> {
        Ok(match self {
            Self { global: true, .. } => Scope::Global,
            Self {
                tenant: Some(tenant),
                organization: None,
                device: None,
                ..
            } => Scope::Tenant { tenant },
            Self {
                tenant: Some(tenant),
                organization: Some(organization),
                group: None,
                ..
            } => Scope::Organization {
                tenant,
                organization,
            },
            Self {
                tenant: Some(tenant),
                organization: Some(organization),
                group: Some(group),
                ..
            } => Scope::Group {
                tenant,
                organization,
                group,
            },
            Self {
                tenant: Some(tenant),
                device: Some(device),
                ..
            } => Scope::Device { tenant, device },
            _ => anyhow::bail!(
                "give a scope: --global, or --tenant (with --organization, --group or --device)"
            ),
        })
    }
}

impl BindingArgs {
    fn binding(self) -> anyhow::Result<Binding> {
        Ok(Binding {
            role: self.role,
            scope: self.scope.scope()?,
        })
    }
}

impl OptionalBinding {
    fn binding(self) -> anyhow::Result<Option<Binding>> {
        match self.role {
            None if self.scope.global || self.scope.tenant.is_some() => {
                anyhow::bail!("a scope needs --role")
            }
            None => Ok(None),
            Some(role) => Ok(Some(Binding {
                role,
                scope: self.scope.scope()?,
            })),
        }
    }
}

/// The password from stdin, or a generated one (and whether it was generated).
fn password(stdin: bool) -> anyhow::Result<(Password, bool)> {
    if !stdin {
        return Ok((Password::generate(), true));
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let trimmed = line.trim_end_matches(['\n', '\r']).to_owned();
    zeroize::Zeroize::zeroize(&mut line);
    Ok((Password::new(SecretString::new(trimmed))?, false))
}

fn describe(b: &Binding) -> String {
    let role = format!("{:?}", b.role).to_lowercase();
    match &b.scope {
        Scope::Global => format!("{role}@global"),
        Scope::Tenant { tenant } => format!("{role}@{tenant}"),
        Scope::Organization {
            tenant,
            organization,
        } => format!("{role}@{tenant}/{organization}"),
        Scope::Group {
            tenant,
            organization,
            group,
        } => format!("{role}@{tenant}/{organization}/{group}"),
        Scope::Device { tenant, device } => format!("{role}@{tenant}:device/{device}"),
    }
}

/// Creates the first admin user if there is none, saying where its password is.
pub async fn bootstrap(auth: &Authority, data_dir: &Path) -> anyhow::Result<()> {
    if let Some(b) = auth.bootstrap_admin(data_dir).await? {
        match &b.password_file {
            Some(f) => tracing::warn!(
                user = %b.user,
                file = %f.display(),
                "Created the platform operator user; its initial password is in the file (read it, then delete it and change the password)."
            ),
            None => tracing::info!(
                user = %b.user,
                "Created the platform operator user with the password from WEGWEISER_ADMIN_PASSWORD."
            ),
        }
    }
    Ok(())
}

/// Runs a `user` subcommand.
pub async fn user(data_dir: &Path, cmd: UserCommand, json: bool) -> anyhow::Result<()> {
    let auth = Authority::open(data_dir).await?;
    match cmd {
        UserCommand::Create {
            name,
            password_stdin,
            binding,
        } => {
            let (pw, generated) = password(password_stdin)?;
            let bindings: Vec<Binding> = binding.binding()?.into_iter().collect();
            let r = auth.create_user(&name, &pw, bindings, ACTOR).await?;
            let shown = generated.then(|| pw.expose().to_owned());
            print(
                json,
                &serde_json::json!({"user": UserSummary::from(&r), "password": shown}),
                || match &shown {
                    Some(p) => {
                        format!("Created user {name}. Its password is shown only now:\n  {p}")
                    }
                    None => format!("Created user {name}."),
                },
            );
        }
        UserCommand::List => {
            let list: Vec<UserSummary> =
                auth.users().await?.iter().map(UserSummary::from).collect();
            print(json, &list, || {
                let mut s = format!("{:<24} {:<9} BINDINGS", "NAME", "STATE");
                for u in &list {
                    s.push_str(&format!(
                        "\n{:<24} {:<9} {}",
                        u.name.as_str(),
                        if u.disabled { "disabled" } else { "enabled" },
                        u.bindings
                            .iter()
                            .map(describe)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                s
            });
        }
        UserCommand::Delete { name } => {
            auth.delete_user(&name, ACTOR).await?;
            print(json, &serde_json::json!({"deleted": name}), || {
                format!("Deleted user {name}; its sessions and API tokens no longer work.")
            });
        }
        UserCommand::SetPassword {
            name,
            password_stdin,
        } => {
            let (pw, generated) = password(password_stdin)?;
            auth.set_password(&name, &pw, ACTOR).await?;
            let shown = generated.then(|| pw.expose().to_owned());
            print(
                json,
                &serde_json::json!({"user": name, "password": shown}),
                || match &shown {
                    Some(p) => format!(
                        "New password of {name} (every session ended); shown only now:\n  {p}"
                    ),
                    None => format!("Password of {name} changed; every session ended."),
                },
            );
        }
        UserCommand::Grant { name, binding } => {
            let b = binding.binding()?;
            let r = auth.grant(&name, b.clone(), ACTOR).await?;
            print(json, &UserSummary::from(&r), || {
                format!("Granted {} to {name}.", describe(&b))
            });
        }
        UserCommand::RevokeBinding { name, binding } => {
            let b = binding.binding()?;
            let r = auth.revoke_binding(&name, &b, ACTOR).await?;
            print(json, &UserSummary::from(&r), || {
                format!("Removed {} from {name}.", describe(&b))
            });
        }
        UserCommand::Disable { name } => {
            let r = auth.set_disabled(&name, true, ACTOR).await?;
            print(json, &UserSummary::from(&r), || {
                format!("Disabled {name}; its sessions and API tokens no longer work.")
            });
        }
        UserCommand::Enable { name } => {
            let r = auth.set_disabled(&name, false, ACTOR).await?;
            print(json, &UserSummary::from(&r), || format!("Enabled {name}."));
        }
    }
    Ok(())
}

/// Runs an `api-token` subcommand.
pub async fn api_token(data_dir: &Path, cmd: ApiTokenCommand, json: bool) -> anyhow::Result<()> {
    let auth = Authority::open(data_dir).await?;
    match cmd {
        ApiTokenCommand::Create {
            user,
            expires_in_days,
            label,
            binding,
        } => {
            let bindings = binding.binding()?.map(|b| vec![b]);
            let (token, rec) = auth
                .create_api_token(
                    NewApiToken {
                        owner: user,
                        label,
                        bindings,
                        ttl_secs: expires_in_days.saturating_mul(86_400),
                    },
                    ACTOR,
                )
                .await?;
            print(
                json,
                &serde_json::json!({"token": token.expose(), "record": rec}),
                || {
                    format!(
                        "API token {} for {} (expires at {}). It is shown only now:\n  {}\nUse it as: Authorization: Bearer <token>",
                        rec.id,
                        rec.owner,
                        rec.expires_at,
                        token.expose()
                    )
                },
            );
        }
        ApiTokenCommand::List { user } => {
            let list = auth.api_tokens(user.as_ref()).await?;
            print(json, &list, || {
                let mut s = format!("{:<16} {:<24} {:<12} LABEL", "ID", "USER", "EXPIRES");
                for t in &list {
                    s.push_str(&format!(
                        "\n{:<16} {:<24} {:<12} {}",
                        t.id,
                        t.owner.as_str(),
                        t.expires_at,
                        t.label
                    ));
                }
                s
            });
        }
        ApiTokenCommand::Revoke { id } => {
            let rec = auth.revoke_api_token(&id, None, ACTOR).await?;
            print(json, &rec, || {
                format!("Revoked API token {} of {}.", rec.id, rec.owner)
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn grant(args: &[&str]) -> anyhow::Result<Binding> {
        let mut argv = vec!["wegweiser", "user", "grant", "alice"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv)?.command {
            Command::User(UserCommand::Grant { binding, .. }) => binding.binding(),
            other => anyhow::bail!("parsed as {other:?}"),
        }
    }

    #[test]
    fn scopes_from_the_command_line() {
        let b = grant(&["--role", "Admin", "--global"]).unwrap();
        assert_eq!((b.role, b.scope), (Role::Admin, Scope::Global));
        let b = grant(&["--role", "viewer", "--tenant", "acme"]).unwrap();
        assert!(matches!(b.scope, Scope::Tenant { .. }));
        let b = grant(&[
            "--role",
            "technician",
            "--tenant",
            "acme",
            "--organization",
            "o1",
            "--group",
            "g1",
        ])
        .unwrap();
        assert!(matches!(b.scope, Scope::Group { .. }));
        let b = grant(&["--role", "viewer", "--tenant", "acme", "--device", "dev-1"]).unwrap();
        assert!(matches!(b.scope, Scope::Device { .. }));
        // No scope, a group without its organization, two scopes at once: refused.
        assert!(grant(&["--role", "viewer"]).is_err());
        assert!(grant(&["--role", "viewer", "--tenant", "acme", "--group", "g"]).is_err());
        assert!(grant(&["--role", "viewer", "--global", "--tenant", "acme"]).is_err());
    }
}
