//! `wegweiser init`: keys, keystore, the platform's JWTs, `wegweiser.toml` and a nats-server
//! configuration (operator mode, full resolver with the system and control-plane accounts
//! preloaded, JetStream, TLS when certificates are given).
//!
//! Running it again never replaces a key: existing keys are loaded, missing ones created, and
//! the derived files (`nats/operator.jwt`, `nats/nats-server.conf`) rewritten from the keys.

use crate::{
    config::{CONFIG_FILE, Config},
    identity,
    keystore::{ENV_MASTER_KEY, Keystore, KeystoreError, SeedKind, files},
};
use serde::Serialize;
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};
use wegweiser_shared::{ids::AccountKey, jwt::JwtError};

/// The seed files of a keystore, in creation order.
const SEEDS: [(&str, SeedKind); 6] = [
    (files::OPERATOR, SeedKind::Operator),
    (files::OPERATOR_SIGNING, SeedKind::Operator),
    (files::SYSTEM_ACCOUNT, SeedKind::Account),
    (files::SYSTEM_SIGNING, SeedKind::Account),
    (files::CP_ACCOUNT, SeedKind::Account),
    (files::CP_SIGNING, SeedKind::Account),
];

/// What `init` needs to know.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Address nats-server listens on.
    pub nats_host: String,
    /// Client port.
    pub nats_port: u16,
    /// Monitoring (HTTP) port, if wanted (always bound to 127.0.0.1: it is unauthenticated).
    pub monitor_port: Option<u16>,
    /// Server certificate and key (PEM) for TLS.
    pub tls: Option<TlsFiles>,
    /// Server name.
    pub server_name: String,
    /// Port of the control plane's HTTPS server (written to `wegweiser.toml` when TLS is given).
    pub http_port: Option<u16>,
    /// Signatures the trust root needs (`t` of [`InitOptions::root_keys`]).
    pub root_threshold: u32,
    /// Keys of the trust root.
    pub root_keys: usize,
}

/// TLS material for nats-server.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// CA that clients verify the certificate with (PEM).
    pub ca: PathBuf,
}

/// What `init` did.
#[derive(Debug, Clone, Serialize)]
pub struct InitReport {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Files created now.
    pub created: Vec<String>,
    /// Key files that existed and were kept.
    pub kept: Vec<String>,
    /// Operator public key.
    pub operator: String,
    /// System account.
    pub system_account: AccountKey,
    /// Control-plane account.
    pub cp_account: AccountKey,
    /// The nats-server configuration file.
    pub nats_config: PathBuf,
    /// URL clients use.
    pub nats_url: String,
}

/// Why `init` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// Keystore problem.
    #[error(transparent)]
    Keystore(#[from] KeystoreError),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Jwt(#[from] JwtError),
    /// A TLS file is missing.
    #[error(
        "TLS file {0} does not exist; create dev certificates with `wegweiser certs dev` (see certs/README.md)"
    )]
    TlsMissing(String),
    /// The listen address is not a host name or IP address.
    #[error("--host {0:?} is not a host name or IP address")]
    BadHost(String),
    /// Some keys exist and others do not.
    #[error(
        "{dir} lacks {missing} while other keys exist; restore them from your backup (new keys would orphan every tenant and sealed secret)"
    )]
    PartialKeystore {
        /// The keystore.
        dir: String,
        /// What is missing.
        missing: String,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

fn write(path: &Path, content: &str) -> Result<(), InitError> {
    let io = |source| InitError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Runs `init`.
pub fn run(opts: &InitOptions) -> Result<InitReport, InitError> {
    if opts.nats_host.is_empty()
        || !opts
            .nats_host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
    {
        return Err(InitError::BadHost(opts.nats_host.clone()));
    }
    if let Some(tls) = &opts.tls {
        for p in [&tls.cert, &tls.key, &tls.ca] {
            if !p.is_file() {
                return Err(InitError::TlsMissing(p.display().to_string()));
            }
        }
    }
    let data_dir = absolute(&opts.data_dir);
    if !data_dir.exists() {
        std::fs::create_dir_all(&data_dir).map_err(|source| InitError::Io {
            path: data_dir.display().to_string(),
            source,
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700));
        }
    }
    let ks = Keystore::create(&data_dir.join("keys"))?;
    let mut created = Vec::new();
    let mut kept = Vec::new();
    let nats_dir = data_dir.join("nats");
    let operator_path = nats_dir.join("operator.jwt");
    let from_env = std::env::var_os(ENV_MASTER_KEY).is_some();
    // All keys or none: a new key beside existing ones would orphan every tenant (a new
    // operator or control-plane account) or every sealed secret (a new master key).
    let mut set: Vec<&str> = SEEDS.iter().map(|(n, _)| *n).collect();
    if !from_env {
        set.push(files::MASTER_KEY);
    }
    let missing: Vec<&str> = set
        .iter()
        .copied()
        .filter(|n| !ks.dir().join(n).exists())
        .collect();
    let operator_offline = missing == [files::OPERATOR] && operator_path.exists();
    if !missing.is_empty() && missing.len() != set.len() && !operator_offline {
        return Err(InitError::PartialKeystore {
            dir: ks.dir().display().to_string(),
            missing: missing.join(", "),
        });
    }
    let mut seed = |name: &str, kind| -> Result<nkeys::KeyPair, InitError> {
        let (kp, new) = ks.load_or_create_seed(name, kind)?;
        if new { &mut created } else { &mut kept }.push(format!("keys/{name}"));
        Ok(kp)
    };
    let operator = if operator_offline {
        None
    } else {
        Some(seed(files::OPERATOR, SeedKind::Operator)?)
    };
    let operator_signing = seed(files::OPERATOR_SIGNING, SeedKind::Operator)?;
    let sys = seed(files::SYSTEM_ACCOUNT, SeedKind::Account)?;
    let sys_signing = seed(files::SYSTEM_SIGNING, SeedKind::Account)?;
    let cp = seed(files::CP_ACCOUNT, SeedKind::Account)?;
    let cp_signing = seed(files::CP_SIGNING, SeedKind::Account)?;
    let root_dir = crate::trust::root_dir(&data_dir);
    match crate::trust::create_root(&root_dir, opts.root_threshold, opts.root_keys) {
        Ok(true) => created.push(format!(
            "keys/root ({} of {} root keys)",
            opts.root_threshold, opts.root_keys
        )),
        Ok(false) => kept.push("keys/root".to_owned()),
        Err(e) => {
            return Err(InitError::Io {
                path: root_dir.display().to_string(),
                source: std::io::Error::other(e.to_string()),
            });
        }
    }
    if !from_env {
        if ks.create_master_key_file()? {
            created.push(format!("keys/{}", files::MASTER_KEY));
        } else {
            kept.push(format!("keys/{}", files::MASTER_KEY));
        }
    } else {
        // Validate the key from the environment now rather than at the first tenant.
        ks.master_key(std::env::var(ENV_MASTER_KEY).ok().as_deref())?;
    }
    let account = |kp: &nkeys::KeyPair| -> AccountKey {
        kp.public_key()
            .parse()
            .unwrap_or_else(|_| unreachable!("account seed yields an account key"))
    };
    let (sys_key, cp_key) = (account(&sys), account(&cp));
    let (operator_key, operator_jwt) = match &operator {
        Some(op) => (
            op.public_key(),
            identity::operator_jwt(op, &operator_signing, &sys_key)?,
        ),
        None => {
            // The operator identity key is kept offline: keep the operator JWT it signed.
            let jwt = std::fs::read_to_string(&operator_path).map_err(|source| InitError::Io {
                path: operator_path.display().to_string(),
                source,
            })?;
            let claims = wegweiser_shared::jwt::decode_untimed::<
                wegweiser_shared::jwt::OperatorNats,
            >(jwt.trim())?;
            if !claims
                .nats
                .signing_keys
                .contains(&operator_signing.public_key())
            {
                return Err(InitError::PartialKeystore {
                    dir: operator_path.display().to_string(),
                    missing: "the operator signing key this operator JWT lists".into(),
                });
            }
            kept.push("nats/operator.jwt (operator key offline)".into());
            (claims.sub, jwt.trim().to_owned())
        }
    };
    let sys_jwt = identity::system_account_jwt(&sys_key, &sys_signing, &operator_signing)?;
    let cp_jwt = identity::cp_account_jwt(&cp_key, &cp_signing, &operator_signing)?;

    write(&operator_path, &operator_jwt)?;
    let conf_path = nats_dir.join("nats-server.conf");
    let conf = render_nats_config(
        opts,
        &nats_dir,
        &operator_path,
        &sys_key,
        &[(&sys_key, &sys_jwt), (&cp_key, &cp_jwt)],
    );
    write(&conf_path, &conf)?;
    let scheme = if opts.tls.is_some() { "tls" } else { "nats" };
    let nats_url = format!("{scheme}://{}:{}", opts.nats_host, opts.nats_port);
    let cfg_path = data_dir.join(CONFIG_FILE);
    if cfg_path.exists() {
        kept.push(CONFIG_FILE.to_owned());
    } else {
        let mut cfg = Config::new(nats_url.clone(), opts.tls.as_ref().map(|t| absolute(&t.ca)));
        if let (Some(tls), Some(port)) = (&opts.tls, opts.http_port) {
            let bind = if opts.nats_host.contains(':') {
                format!("[{}]:{port}", opts.nats_host)
            } else {
                format!("{}:{port}", opts.nats_host)
            };
            let public_host = match opts.nats_host.as_str() {
                "0.0.0.0" | "::" | "127.0.0.1" => "localhost",
                h => h,
            };
            cfg.http = Some(crate::config::HttpConfig {
                listen: bind
                    .parse()
                    .unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], port))),
                tls_cert: absolute(&tls.cert),
                tls_key: absolute(&tls.key),
                public_url: format!("https://{public_host}:{port}"),
                metrics_allow: crate::config::HttpConfig::default_metrics_allow(),
            });
        }
        let text = format!(
            "# Wegweiser control plane configuration. Environment overrides: \
             WEGWEISER_NATS_URL, WEGWEISER_NATS_CA, WEGWEISER_MASTER_KEY.\n{}",
            toml::to_string(&cfg).map_err(|e| InitError::Io {
                path: cfg_path.display().to_string(),
                source: std::io::Error::other(e),
            })?
        );
        write(&cfg_path, &text)?;
        created.push(CONFIG_FILE.to_owned());
    }
    Ok(InitReport {
        data_dir,
        created,
        kept,
        operator: operator_key,
        system_account: sys_key,
        cp_account: cp_key,
        nats_config: conf_path,
        nats_url,
    })
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

fn quoted(p: &Path) -> String {
    serde_json::to_string(&p.display().to_string()).unwrap_or_default()
}

/// The nats-server configuration.
fn render_nats_config(
    opts: &InitOptions,
    nats_dir: &Path,
    operator_path: &Path,
    system_account: &AccountKey,
    preload: &[(&AccountKey, &String)],
) -> String {
    let mut c = String::new();
    let _ = writeln!(
        c,
        "# Written by `wegweiser init` from the keystore; `wegweiser init` rewrites it.\n\
         server_name: {}\n\
         host: {}\n\
         port: {}",
        serde_json::to_string(&opts.server_name).unwrap_or_default(),
        serde_json::to_string(&opts.nats_host).unwrap_or_default(),
        opts.nats_port
    );
    if let Some(m) = opts.monitor_port {
        // Monitoring is unauthenticated and lists every tenant's connections: loopback only.
        let _ = writeln!(c, "http: \"127.0.0.1:{m}\"");
    }
    let _ = writeln!(
        c,
        "max_payload: 1048576\n\
         operator: {}\n\
         system_account: {system_account}\n\
         resolver: {{\n  type: full\n  dir: {}\n  allow_delete: true\n  interval: \"2m\"\n  timeout: \"1.9s\"\n}}\n\
         resolver_preload: {{",
        quoted(operator_path),
        quoted(&nats_dir.join("jwt")),
    );
    for (key, jwt) in preload {
        let _ = writeln!(c, "  {key}: {jwt}");
    }
    let _ = writeln!(
        c,
        "}}\njetstream: {{\n  store_dir: {}\n}}",
        quoted(&nats_dir.join("jetstream"))
    );
    if let Some(tls) = &opts.tls {
        let _ = writeln!(
            c,
            "tls: {{\n  cert_file: {}\n  key_file: {}\n  timeout: 2\n}}",
            quoted(&absolute(&tls.cert)),
            quoted(&absolute(&tls.key))
        );
    }
    c
}
