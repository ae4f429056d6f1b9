//! Enrollment: one HTTPS request that trades an enrollment token for a device identity.
//!
//! 1. Refuse when the device is already enrolled here (unless `force`).
//! 2. Generate the device's user nkey locally; the seed never leaves the device.
//! 3. Collect [`facts`] and check them.
//! 4. Sign [`enroll_proof_message`] (token hash, machine id, new public key) with the new key;
//!    with `force` and an existing identity, also with that identity's current key (the key its
//!    stored JWT was issued for), so the control plane lets this machine keep its device id.
//!    Without that second proof it creates a new device.
//! 5. `POST {url}/v1/enroll` with the token, the public key, the proofs and the facts; trust only
//!    the given CA file when there is one (else the WebPKI roots); 10 s timeout; no redirects.
//! 6. Check the answer (the JWT must be for our key, device and account), pin the command trust
//!    root it carries ([`TrustState::pin`]; a bundle that does not verify fails the enrollment;
//!    without one, `run` pins the first bundle it fetches over NATS) and store seed, JWT, CA,
//!    `trust.json` and `agent.toml` crash-safely ([`save_enrollment`],
//!    [`store::save_enrollment_files`]).
//!
//! The token is a secret: it is never logged and no error carries it (the signed message holds
//! only its SHA-256).

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
    enroll::{
        DeviceFacts, ENROLL_PATH, EnrollRequest, EnrollResponse, ErrorBody, KeyProof, TOKEN_PREFIX,
        enroll_proof_message, sign_proof,
    },
    ids::UserKey,
    secret::SecretString,
    trust::TrustState,
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
    /// A device key could not be used (its public key refused, or it cannot sign).
    #[error("cannot use the device key: {why}")]
    Key {
        /// What is wrong.
        why: String,
    },
    /// The answer is not a usable enrollment response.
    #[error("unexpected answer from the control plane: {why}")]
    BadResponse {
        /// What is wrong.
        why: String,
    },
    /// The command trust material in the answer does not verify.
    #[error(
        "the control plane sent command trust material that does not verify ({code}): {message}; nothing was stored; check that --url names the right control plane"
    )]
    Trust {
        /// [`wegweiser_shared::trust::TrustError::code`].
        code: &'static str,
        /// What is wrong.
        message: String,
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
    if !opts.force
        && let Some(existing) = store::enrolled_file(paths)
    {
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

    // Read under the lock: loading may finish an interrupted rotation or enrollment.
    let current = if opts.force { current_key(paths) } else { None };

    let key = nkeys::KeyPair::new_user();
    let mut request = enroll_request(&opts.token, &key, current.as_ref(), facts)?;
    tracing::info!(
        url = %base,
        public_key = %request.public_key,
        current_key = ?request.current.as_ref().map(|c| c.public_key.as_str()),
        hostname = %request.facts.hostname,
        machine_id = %request.facts.machine_id,
        "Enrolling."
    );
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

/// The key of the identity `enroll --force` replaces: the key its stored JWT was issued for
/// ([`store::load`], which also finishes an interrupted rotation or enrollment), else `device.nk`
/// alone when the rest of the enrollment is unusable. `None` when no key is usable: the control
/// plane then makes a new device for this machine.
fn current_key(paths: &Paths) -> Option<nkeys::KeyPair> {
    if !store::is_enrolled(paths) {
        return None;
    }
    let loaded = match store::load(paths) {
        Ok(e) => return Some(e.credentials.key().as_ref().clone()),
        Err(e) => e,
    };
    match store::load_seed(&paths.seed_file()) {
        Ok(k) => {
            tracing::warn!(error = %loaded, "The current enrollment is incomplete; proving its key from the seed alone.");
            Some(k)
        }
        Err(e) => {
            tracing::warn!(error = %e, "No usable current key: the control plane will enroll this machine as a new device.");
            None
        }
    }
}

/// The enrollment request for the new `key`: its proof over [`enroll_proof_message`] and, when
/// replacing an identity, `current`'s proof over the same message. The request holds the token:
/// the caller wipes it after encoding.
fn enroll_request(
    token: &SecretString,
    key: &nkeys::KeyPair,
    current: Option<&nkeys::KeyPair>,
    facts: DeviceFacts,
) -> Result<EnrollRequest, EnrollError> {
    let public_key = user_key(key)?;
    let message = enroll_proof_message(token.expose(), &facts.machine_id, &public_key);
    let proof = prove(key, &message)?;
    let current = match current {
        Some(k) => Some(KeyProof {
            public_key: user_key(k)?,
            proof: prove(k, &message)?,
        }),
        None => None,
    };
    Ok(EnrollRequest {
        token: token.expose().to_owned(),
        public_key,
        proof,
        current,
        facts,
    })
}

fn user_key(key: &nkeys::KeyPair) -> Result<UserKey, EnrollError> {
    key.public_key().parse().map_err(|e| EnrollError::Key {
        why: format!("public key refused: {e}"),
    })
}

/// `key`'s signature over `message` ([`sign_proof`]).
fn prove(key: &nkeys::KeyPair, message: &[u8]) -> Result<String, EnrollError> {
    sign_proof(key, message).ok_or_else(|| EnrollError::Key {
        why: format!("key {} cannot sign the enrollment proof", key.public_key()),
    })
}

/// Checks an enrollment answer and stores everything ([`store::save_enrollment_files`]: staged,
/// then renamed into place, the seed last; `agent.toml` marks the device enrolled). Settings an administrator chose in an existing
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
        metrics_secs: previous
            .as_ref()
            .map_or_else(crate::config::default_metrics_secs, |p| p.metrics_secs),
        inventory_check_secs: previous
            .as_ref()
            .map_or_else(crate::config::default_inventory_check_secs, |p| {
                p.inventory_check_secs
            }),
        allowed_commands: previous.as_ref().and_then(|p| p.allowed_commands.clone()),
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
    let trust = match &response.trust {
        Some(bundle) => {
            let state = TrustState::pin(bundle, wegweiser_shared::time::now()).map_err(|e| {
                EnrollError::Trust {
                    code: e.code(),
                    message: e.to_string(),
                }
            })?;
            tracing::info!(
                root_version = state.root_version(),
                keyset_version = state.keyset_version(),
                "Pinned the command trust root."
            );
            Some(crate::trust::encode(&state))
        }
        None => None,
    };

    paths.create_dirs().map_err(|source| EnrollError::Io {
        path: paths.state_dir().display().to_string(),
        source,
    })?;
    // Also drops the previous identity's pending rotation key and its status (another device
    // or key).
    store::save_enrollment_files(
        paths,
        &credentials,
        &response.nats_ca_pem,
        &config,
        trust.as_deref(),
    )?;
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
    use wegweiser_shared::enroll::verify_proof;

    #[test]
    fn the_trust_in_the_answer_is_pinned_or_fails_the_enrollment() {
        use crate::trust::tests::World;
        let tmp = tempfile::tempdir().unwrap();
        let paths = Paths::in_dir(tmp.path().join("state"));
        let issuer = Issuer::new();
        let key = nkeys::KeyPair::new_user();
        // Its keyset expires a day after the tests' NOW, which is later than the real clock.
        let w = World::new();
        let mut response = issuer.response(&key);
        response.trust = Some(w.bundle());
        save_enrollment(&paths, "https://cp", key.clone(), &response).unwrap();
        let pinned = crate::trust::load(&paths).unwrap().unwrap();
        assert_eq!(pinned.keyset_version(), w.keyset_version);

        // A forged bundle (keyset not signed by the root) fails and stores nothing new.
        let other = World::new();
        let mut forged = w.bundle();
        forged.keyset = other.bundle().keyset;
        response.trust = Some(forged);
        let e = save_enrollment(&paths, "https://cp", key.clone(), &response).unwrap_err();
        assert!(
            matches!(
                e,
                EnrollError::Trust {
                    code: "keyset_signatures",
                    ..
                }
            ),
            "{e}"
        );
        assert!(crate::trust::load(&paths).unwrap().is_some());

        // Enrolling again without trust drops the previous identity's.
        response.trust = None;
        save_enrollment(&paths, "https://cp", key, &response).unwrap();
        assert!(crate::trust::load(&paths).unwrap().is_none());
        assert!(!store::staged(&paths.trust_file()).exists());
    }

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

    fn facts(machine_id: &str) -> DeviceFacts {
        DeviceFacts {
            hostname: "h".into(),
            os: "linux".into(),
            os_version: String::new(),
            arch: "x86_64".into(),
            machine_id: machine_id.into(),
            agent_version: "0.1.0".into(),
        }
    }

    #[test]
    fn requests_prove_the_new_and_the_current_key() {
        let token = SecretString::new("wgt_secret-token-value".into());
        let (key, current) = (nkeys::KeyPair::new_user(), nkeys::KeyPair::new_user());
        let r = enroll_request(&token, &key, None, facts("m-1")).unwrap();
        assert_eq!(r.public_key.as_str(), key.public_key());
        let msg = enroll_proof_message(token.expose(), "m-1", &r.public_key);
        assert!(verify_proof(&r.public_key, &msg, &r.proof));
        assert!(r.current.is_none());
        // The proof is bound to the token, the machine and the key.
        let other_token = enroll_proof_message("wgt_other", "m-1", &r.public_key);
        let other_machine = enroll_proof_message(token.expose(), "m-2", &r.public_key);
        assert!(!verify_proof(&r.public_key, &other_token, &r.proof));
        assert!(!verify_proof(&r.public_key, &other_machine, &r.proof));
        // The signed message holds the token's hash only.
        assert!(!String::from_utf8_lossy(&msg).contains("secret-token-value"));

        let r = enroll_request(&token, &key, Some(&current), facts("m-1")).unwrap();
        let c = r.current.as_ref().unwrap();
        assert_eq!(c.public_key.as_str(), current.public_key());
        let msg = enroll_proof_message(token.expose(), "m-1", &r.public_key);
        assert!(verify_proof(&c.public_key, &msg, &c.proof));
        assert!(verify_proof(&r.public_key, &msg, &r.proof));
        assert!(!verify_proof(&r.public_key, &msg, &c.proof));
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(json["current"]["public_key"], current.public_key());
    }

    #[test]
    fn the_current_key_is_the_one_the_stored_jwt_is_for() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = Paths::in_dir(tmp.path());
        assert!(current_key(&paths).is_none());
        let issuer = Issuer::new();
        let old = nkeys::KeyPair::new_user();
        issuer.enroll(&paths, &old);
        assert_eq!(current_key(&paths).unwrap().public_key(), old.public_key());
        // A pending rotation key whose JWT was not stored is not the current key.
        let pending = store::pending_key(&paths, true).unwrap().unwrap();
        assert_eq!(current_key(&paths).unwrap().public_key(), old.public_key());
        // Once its JWT is stored (rotation half done), it is.
        store::save_jwt(&paths.jwt_file(), &issuer.jwt(&pending.public_key(), 600)).unwrap();
        assert_eq!(
            current_key(&paths).unwrap().public_key(),
            pending.public_key()
        );
        // A broken enrollment still proves the seed's key.
        std::fs::remove_file(paths.jwt_file()).unwrap();
        assert_eq!(
            current_key(&paths).unwrap().public_key(),
            pending.public_key()
        );
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
