//! Enrollment: one HTTPS request that trades an enrollment token for a device identity.
//!
//! 1. Refuse when the device is already enrolled here (unless `force`).
//! 2. Generate the device's user nkey locally; the seed never leaves the device.
//! 3. Collect [`facts`] and check them.
//! 4. `POST {url}/v1/enroll` with the token, the public key and the facts; trust only the given
//!    CA file when there is one (else the WebPKI roots); 10 s timeout; no redirects.
//! 5. Check the answer (the JWT must be for our key, device and account) and store seed, JWT,
//!    CA and `agent.toml` ([`save_enrollment`]).
//!
//! The token is a secret: it is never logged and no error carries it.

use crate::{
    config::{AgentConfig, ConfigError, DEFAULT_HEARTBEAT_SECS},
    facts,
    paths::Paths,
    platform,
    store::{self, Credentials, StoreError},
};
use serde::Serialize;
use std::{
    path::{Path, PathBuf},
    time::Duration,
};
use wegweiser_shared::{
    enroll::{ENROLL_PATH, EnrollRequest, EnrollResponse, ErrorBody, TOKEN_PREFIX},
    ids::UserKey,
    secret::SecretString,
};

/// Timeout of the whole enrollment request.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read (JWT, CA certificate, trust material).
pub const MAX_RESPONSE: u64 = 256 * 1024;
/// Longest enrollment token accepted.
const MAX_TOKEN_LEN: usize = 1024;
/// Longest server message shown.
const MAX_MESSAGE_LEN: usize = 1024;

/// What `enroll` needs.
#[derive(Debug, Clone)]
pub struct EnrollOptions {
    /// Control-plane base URL (`https://…`).
    pub url: String,
    /// The enrollment token (secret).
    pub token: SecretString,
    /// Trust only this CA (PEM) for the control plane's certificate.
    pub ca_file: Option<PathBuf>,
    /// Replace an existing enrollment.
    pub force: bool,
    /// Use this machine id instead of the detected one.
    pub machine_id: Option<String>,
}

/// Why enrollment failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollError {
    /// The device is already enrolled at these paths.
    #[error(
        "already enrolled ({path} exists); run `wegweiser-agent status`, or enroll again with --force (the old identity stops being used)"
    )]
    AlreadyEnrolled {
        /// The existing configuration file.
        path: String,
    },
    /// An agent is running on these files.
    #[error(
        "a wegweiser-agent is running with {path}; stop it before enrolling again (then start it again)"
    )]
    AgentRunning {
        /// The lock file it holds.
        path: String,
    },
    /// The control-plane URL is unusable.
    #[error("bad --url {url:?}: {why}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong.
        why: &'static str,
    },
    /// The token does not look like an enrollment token (its value is never shown).
    #[error("the enrollment token is malformed: {why}; copy it again from the control plane")]
    BadToken {
        /// What is wrong.
        why: String,
    },
    /// The facts collected about this machine are unusable.
    #[error(
        "cannot describe this machine:\n  - {}\n(use --machine-id ID when no machine id can be found)",
        problems.join("\n  - ")
    )]
    Facts {
        /// Every problem.
        problems: Vec<String>,
    },
    /// The CA file is unusable.
    #[error("--ca-file {path}: {why}")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// The control plane could not be reached (DNS, TCP, TLS, timeout).
    #[error("cannot reach the control plane at {url}: {message}")]
    Unreachable {
        /// The endpoint.
        url: String,
        /// The transport error.
        message: String,
    },
    /// The control plane refused the enrollment.
    #[error("the control plane refused the enrollment (HTTP {status}, {code}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Stable error code.
        code: String,
        /// The control plane's message.
        message: String,
    },
    /// The answer is not a usable enrollment response.
    #[error("unexpected answer from the control plane: {why}")]
    BadResponse {
        /// What is wrong.
        why: String,
    },
    /// Storing the credentials failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Storing the configuration failed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file or directory could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// What enrollment produced.
#[derive(Debug, Clone, Serialize)]
pub struct EnrollSummary {
    /// The device id.
    pub device_id: String,
    /// The tenant.
    pub tenant: String,
    /// The tenant's NATS account.
    pub account: String,
    /// The device's public key.
    pub public_key: String,
    /// When the JWT expires (unix seconds).
    pub jwt_expires_at: Option<i64>,
    /// NATS servers.
    pub nats_urls: Vec<String>,
    /// Whether the control plane knew this machine already.
    pub reenrolled: bool,
    /// `agent.toml`.
    pub config_file: PathBuf,
    /// Where the secrets are.
    pub state_dir: PathBuf,
}

/// Enrolls this device: see the [module docs](self).
pub fn enroll(paths: &Paths, opts: &EnrollOptions) -> Result<EnrollSummary, EnrollError> {
    if store::is_enrolled(paths) && !opts.force {
        let config = paths.config_file();
        let existing = if config.exists() {
            config
        } else {
            paths.seed_file()
        };
        return Err(EnrollError::AlreadyEnrolled {
            path: existing.display().to_string(),
        });
    }
    let base = normalize_url(&opts.url)?;
    check_token(&opts.token)?;
    // Held until the new files are written, so `run` cannot start halfway.
    let _lock = lock_if_enrolled(paths)?;
    let facts = facts::collect(opts.machine_id.as_deref());
    let problems = facts.problems();
    if !problems.is_empty() {
        return Err(EnrollError::Facts { problems });
    }
    let roots = opts.ca_file.as_deref().map(load_ca_file).transpose()?;

    let key = nkeys::KeyPair::new_user();
    let public_key: UserKey = key
        .public_key()
        .parse()
        .map_err(|e| EnrollError::BadResponse {
            why: format!("generated key refused: {e}"),
        })?;
    tracing::info!(
        url = %base,
        public_key = %public_key,
        hostname = %facts.hostname,
        machine_id = %facts.machine_id,
        "Enrolling."
    );
    let mut request = EnrollRequest {
        token: opts.token.expose().to_owned(),
        public_key,
        facts,
    };
    let body = serde_json::to_string(&request).map(SecretString::new);
    // Move the token copy into a secret so its memory is wiped.
    drop(SecretString::new(std::mem::take(&mut request.token)));
    let body = body.map_err(|e| EnrollError::BadResponse {
        why: format!("cannot encode the request: {e}"),
    })?;

    let url = format!("{base}{ENROLL_PATH}");
    let (status, text) = post(&url, roots, &body)?;
    let response = parse_response(status, &text)?;
    let summary = save_enrollment(paths, &base, key, &response)?;
    tracing::info!(
        device = %summary.device_id,
        tenant = %summary.tenant,
        reenrolled = summary.reenrolled,
        "Enrolled."
    );
    Ok(summary)
}

/// Checks an enrollment answer and stores everything: seed, JWT, CA, then `agent.toml` (whose
/// presence marks the device enrolled). Settings an administrator chose in an existing
/// `agent.toml` (`heartbeat_secs`, `rotate_key_on_renew`) are kept.
pub fn save_enrollment(
    paths: &Paths,
    control_plane_url: &str,
    key: nkeys::KeyPair,
    response: &EnrollResponse,
) -> Result<EnrollSummary, EnrollError> {
    let previous = AgentConfig::load(&paths.config_file()).ok();
    let config = AgentConfig {
        control_plane_url: control_plane_url.to_owned(),
        tenant: response.tenant.clone(),
        device_id: response.device_id.clone(),
        account: response.account.clone(),
        nats_urls: response.nats_urls.clone(),
        heartbeat_secs: previous
            .as_ref()
            .map_or(DEFAULT_HEARTBEAT_SECS, |p| p.heartbeat_secs),
        rotate_key_on_renew: previous.as_ref().is_some_and(|p| p.rotate_key_on_renew),
    };
    let problems = config.problems();
    if !problems.is_empty() {
        return Err(EnrollError::BadResponse {
            why: problems.join("; "),
        });
    }
    let ca_count = ureq::tls::parse_pem(response.nats_ca_pem.as_bytes())
        .filter(|i| matches!(i, Ok(ureq::tls::PemItem::Certificate(_))))
        .count();
    if ca_count == 0 {
        return Err(EnrollError::BadResponse {
            why: "nats_ca_pem holds no certificate".to_owned(),
        });
    }
    let credentials = Credentials::new(
        key,
        SecretString::new(response.jwt.clone()),
        &config.device_id,
        &config.account,
    )
    .map_err(|e| EnrollError::BadResponse { why: e.to_string() })?;

    paths.create_dirs().map_err(|source| EnrollError::Io {
        path: paths.state_dir().display().to_string(),
        source,
    })?;
    let next = paths.next_seed_file();
    if next.exists() {
        std::fs::remove_file(&next).map_err(|source| EnrollError::Io {
            path: next.display().to_string(),
            source,
        })?;
    }
    store::save_seed(&paths.seed_file(), credentials.key())?;
    store::save_jwt(&paths.jwt_file(), credentials.jwt())?;
    let ca = paths.ca_file();
    platform::write_atomic(&ca, response.nats_ca_pem.as_bytes()).map_err(|source| {
        EnrollError::Io {
            path: ca.display().to_string(),
            source,
        }
    })?;
    // A status left by an earlier identity would describe the wrong device.
    let _ = std::fs::remove_file(paths.status_file());
    config.save(&paths.config_file())?;
    Ok(EnrollSummary {
        device_id: config.device_id.to_string(),
        tenant: config.tenant.to_string(),
        account: config.account.to_string(),
        public_key: credentials.public_key(),
        jwt_expires_at: credentials.expires_at(),
        nats_urls: config.nats_urls,
        reenrolled: response.reenrolled,
        config_file: paths.config_file(),
        state_dir: paths.state_dir().to_owned(),
    })
}

/// Locks `run.lock` when the state directory exists; refuses while an agent holds it.
fn lock_if_enrolled(paths: &Paths) -> Result<Option<std::fs::File>, EnrollError> {
    if !paths.state_dir().is_dir() {
        return Ok(None);
    }
    let path = paths.lock_file();
    match platform::try_lock(&path) {
        Ok(Some(lock)) => Ok(Some(lock)),
        Ok(None) => Err(EnrollError::AgentRunning {
            path: path.display().to_string(),
        }),
        Err(source) => Err(EnrollError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Trims the URL and its trailing slashes; refuses anything but `https://host…`.
pub fn normalize_url(url: &str) -> Result<String, EnrollError> {
    let bad = |why| EnrollError::BadUrl {
        url: url.to_owned(),
        why,
    };
    let u = url.trim().trim_end_matches('/');
    let Some(rest) = u.strip_prefix("https://") else {
        return Err(bad("it must start with https://"));
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad("it names no host"));
    }
    if u.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("it contains spaces or control characters"));
    }
    if u.contains(['?', '#']) {
        return Err(bad("give the base URL, without query or fragment"));
    }
    if rest.split('/').next().is_some_and(|h| h.contains('@')) {
        return Err(bad("credentials in the URL are not supported"));
    }
    Ok(u.to_owned())
}

fn check_token(token: &SecretString) -> Result<(), EnrollError> {
    let t = token.expose();
    let why = if !t.starts_with(TOKEN_PREFIX) {
        format!("enrollment tokens start with {TOKEN_PREFIX:?}")
    } else if t.len() > MAX_TOKEN_LEN {
        format!("longer than {MAX_TOKEN_LEN} characters")
    } else if t.len() == TOKEN_PREFIX.len() {
        "it is empty after the prefix".to_owned()
    } else if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "it contains spaces or control characters".to_owned()
    } else {
        return Ok(());
    };
    Err(EnrollError::BadToken { why })
}

fn load_ca_file(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, EnrollError> {
    let bad = |why: String| EnrollError::CaFile {
        path: path.display().to_string(),
        why,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => return Err(bad(format!("not valid PEM: {e}"))),
        }
    }
    if certs.is_empty() {
        return Err(bad("holds no CERTIFICATE block".to_owned()));
    }
    Ok(certs)
}

fn post(
    url: &str,
    roots: Option<Vec<ureq::tls::Certificate<'static>>>,
    body: &SecretString,
) -> Result<(u16, String), EnrollError> {
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Some(certs) = roots {
        tls = tls.root_certs(ureq::tls::RootCerts::from(certs));
    }
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .http_status_as_error(false)
            .https_only(true)
            // A redirect would carry the token to wherever it points.
            .max_redirects(0)
            .max_redirects_will_error(false)
            .user_agent(format!("wegweiser-agent/{}", env!("CARGO_PKG_VERSION")))
            .tls_config(tls.build())
            .build(),
    );
    let unreachable = |e: ureq::Error| {
        let mut message = e.to_string();
        if message.contains("certificate") {
            message.push_str(" (if the control plane uses its own CA, pass it with --ca-file)");
        }
        EnrollError::Unreachable {
            url: url.to_owned(),
            message,
        }
    };
    let mut response = agent
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .send(body.expose())
        .map_err(unreachable)?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE)
        .read_to_string()
        .map_err(unreachable)?;
    Ok((status, text))
}

/// Interprets an HTTP answer: 2xx is an [`EnrollResponse`], anything else an [`ErrorBody`].
pub fn parse_response(status: u16, body: &str) -> Result<EnrollResponse, EnrollError> {
    if (200..300).contains(&status) {
        return serde_json::from_str(body).map_err(|e| EnrollError::BadResponse {
            why: describe_json_error(&e),
        });
    }
    if (300..400).contains(&status) {
        return Err(EnrollError::BadResponse {
            why: format!(
                "HTTP {status} redirect (not followed: give the control plane's final URL)"
            ),
        });
    }
    match serde_json::from_str::<ErrorBody>(body) {
        Ok(e) => Err(EnrollError::Refused {
            status,
            code: printable(&e.code),
            message: printable(&e.message),
        }),
        Err(_) => Err(EnrollError::Refused {
            status,
            code: "http".to_owned(),
            message: format!("HTTP {status} without an error body; is --url the control plane?"),
        }),
    }
}

/// A JSON error without the values it quotes (the answer holds the JWT).
fn describe_json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    if text.starts_with("missing field") || text.starts_with("unknown variant") {
        text
    } else {
        format!(
            "not a valid enrollment response ({:?} error at line {}, column {})",
            e.classify(),
            e.line(),
            e.column()
        )
    }
}

/// A server-supplied text made safe for a terminal: no control characters, bounded length.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_MESSAGE_LEN)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Issuer;

    #[test]
    fn saves_an_enrollment_response() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = Paths::in_dir(tmp.path().join("state"));
        let issuer = Issuer::new();
        let key = nkeys::KeyPair::new_user();
        let response = issuer.response(&key);
        let summary =
            save_enrollment(&paths, "https://cp.example.net", key.clone(), &response).unwrap();
        assert_eq!(summary.device_id, issuer.device.as_str());
        assert_eq!(summary.public_key, key.public_key());
        assert_eq!(summary.jwt_expires_at.map(|e| e > 0), Some(true));
        let loaded = store::load(&paths).unwrap();
        assert_eq!(loaded.config.tenant, response.tenant);
        assert_eq!(loaded.config.nats_urls, response.nats_urls);
        assert_eq!(loaded.config.heartbeat_secs, DEFAULT_HEARTBEAT_SECS);
        assert_eq!(loaded.credentials.public_key(), key.public_key());
        assert_eq!(
            std::fs::read_to_string(paths.ca_file()).unwrap(),
            response.nats_ca_pem
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&paths.seed_file()), 0o600);
            assert_eq!(mode(&paths.jwt_file()), 0o600);
            assert_eq!(mode(paths.state_dir()), 0o700);
        }
        // The summary never holds a secret.
        let json = serde_json::to_string(&summary).unwrap();
        assert!(!json.contains(&response.jwt) && !json.contains(&key.seed().unwrap()));

        // Enrolling again keeps the administrator's settings.
        let mut config = loaded.config;
        config.heartbeat_secs = 7;
        config.rotate_key_on_renew = true;
        config.save(&paths.config_file()).unwrap();
        let key2 = nkeys::KeyPair::new_user();
        save_enrollment(&paths, "https://cp", key2.clone(), &issuer.response(&key2)).unwrap();
        let again = store::load(&paths).unwrap();
        assert_eq!(again.config.heartbeat_secs, 7);
        assert!(again.config.rotate_key_on_renew);
        assert_eq!(again.credentials.public_key(), key2.public_key());
    }

    #[test]
    fn refuses_responses_that_do_not_fit() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = Paths::in_dir(tmp.path());
        let issuer = Issuer::new();
        let key = nkeys::KeyPair::new_user();
        // A JWT for another key.
        let other = nkeys::KeyPair::new_user();
        let r = issuer.response(&other);
        let e = save_enrollment(&paths, "https://cp", key.clone(), &r).unwrap_err();
        assert!(matches!(e, EnrollError::BadResponse { .. }), "{e}");
        // No CA.
        let mut r = issuer.response(&key);
        r.nats_ca_pem = "nothing".into();
        assert!(save_enrollment(&paths, "https://cp", key.clone(), &r).is_err());
        // No servers.
        let mut r = issuer.response(&key);
        r.nats_urls.clear();
        assert!(save_enrollment(&paths, "https://cp", key, &r).is_err());
        // Nothing was written.
        assert!(!store::is_enrolled(&paths));
    }

    #[test]
    fn already_enrolled_needs_force() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = Paths::in_dir(tmp.path());
        Issuer::new().enroll(&paths, &nkeys::KeyPair::new_user());
        let opts = EnrollOptions {
            url: "https://127.0.0.1:1".into(),
            token: SecretString::new("wgt_secret-token-value".into()),
            ca_file: None,
            force: false,
            machine_id: Some("m".into()),
        };
        let e = enroll(&paths, &opts).unwrap_err();
        assert!(matches!(e, EnrollError::AlreadyEnrolled { .. }), "{e}");
        // With --force it goes on, and fails to connect without showing the token.
        let forced = EnrollOptions {
            force: true,
            ..opts
        };
        let e = enroll(&paths, &forced).unwrap_err();
        assert!(matches!(e, EnrollError::Unreachable { .. }), "{e}");
        assert!(!e.to_string().contains("secret-token-value"), "{e}");
        assert!(!format!("{forced:?}").contains("secret-token-value"));
    }

    #[test]
    fn urls_and_tokens_are_checked_without_echoing_the_token() {
        assert_eq!(
            normalize_url(" https://cp.example.net/ ").unwrap(),
            "https://cp.example.net"
        );
        assert_eq!(
            normalize_url("https://cp/base//").unwrap(),
            "https://cp/base"
        );
        for bad in [
            "http://cp",
            "cp.example.net",
            "https://",
            "https://a b",
            "https://cp?x=1",
            "https://u:p@cp",
        ] {
            assert!(normalize_url(bad).is_err(), "{bad}");
        }
        assert!(check_token(&SecretString::new("wgt_abc".into())).is_ok());
        for bad in ["abc-secret", "wgt_", "wgt_a b-secret"] {
            let e = check_token(&SecretString::new(bad.into()))
                .unwrap_err()
                .to_string();
            assert!(!e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn error_answers_show_the_message() {
        let e = parse_response(
            403,
            r#"{"code":"token_used","message":"This token was already used.\u001b[2J"}"#,
        )
        .unwrap_err();
        match &e {
            EnrollError::Refused {
                status,
                code,
                message,
            } => {
                assert_eq!((*status, code.as_str()), (403, "token_used"));
                assert_eq!(message, "This token was already used. [2J");
            }
            other => panic!("{other}"),
        }
        assert!(matches!(
            parse_response(502, "<html>bad gateway</html>"),
            Err(EnrollError::Refused { status: 502, .. })
        ));
        assert!(matches!(
            parse_response(307, ""),
            Err(EnrollError::BadResponse { .. })
        ));
        let e = parse_response(200, r#"{"jwt": 5}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a valid enrollment response"), "{e}");
        let e = parse_response(200, r#"{"device_id":"d1"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field"), "{e}");
    }

    #[test]
    fn ca_files_must_hold_certificates() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("ca.pem");
        std::fs::write(&p, "hello").unwrap();
        assert!(matches!(load_ca_file(&p), Err(EnrollError::CaFile { .. })));
        std::fs::write(&p, crate::testutil::CA_PEM).unwrap();
        assert_eq!(load_ca_file(&p).unwrap().len(), 1);
        assert!(load_ca_file(&tmp.path().join("missing.pem")).is_err());
    }
}
