//! End-to-end test harness: a real nats-server per test, started from the configuration
//! `wegweiser init` writes, on free ports with a temporary data directory, killed on drop.
//!
//! The nats-server binary is found through `WEGWEISER_NATS_SERVER`, then `tools/bin`, then
//! `PATH`; without one, every test fails with a message naming `scripts/install-nats-server`.

pub mod agent;
pub mod sim;
pub mod wine;

use async_nats::{Client, ConnectOptions, Event};
use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::mpsc;
use wegweiser_cp::{
    authority::Authority,
    init::{self, InitOptions},
    nats_server::{self, NatsServerProcess},
};

/// A running platform: data directory, nats-server, and a connected [`Authority`].
#[derive(Debug)]
pub struct Platform {
    /// Temporary data directory (removed on drop).
    pub dir: tempfile::TempDir,
    /// The nats-server process (`None` while stopped by [`Platform::stop_server`]).
    pub server: Option<NatsServerProcess>,
    /// The authority, connected.
    pub auth: Authority,
    /// Client URL (`tls://…`).
    pub url: String,
    /// The CA that signed the server's certificate.
    pub ca: PathBuf,
}

/// Options for [`Platform::start_with`].
#[derive(Debug, Default, Clone)]
pub struct PlatformOptions {
    /// Monitoring port wanted.
    pub monitor: bool,
    /// Enrollment policy to use instead of the defaults.
    pub enrollment: Option<wegweiser_cp::config::EnrollmentConfig>,
    /// Device JWT lifetime, seconds.
    pub device_ttl: Option<i64>,
    /// Shortest time between two renewals of a device, seconds.
    pub renew_min_interval: Option<i64>,
    /// `[auth]` to use instead of the defaults (e.g. short session timeouts, cheap hashes).
    pub auth: Option<wegweiser_cp::users::AuthConfig>,
}

/// A response of [`Platform::request`].
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercase, in order.
    pub headers: Vec<(String, String)>,
    /// The body as JSON (a JSON string when it is not JSON).
    pub body: serde_json::Value,
}

impl HttpResponse {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The error code of a JSON error body.
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }
}

impl Platform {
    /// Initializes a data directory, boots nats-server with the written config, connects.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(PlatformOptions::default()).await
    }

    /// Like [`Platform::start`] with options.
    pub async fn start_with(opts: PlatformOptions) -> anyhow::Result<Self> {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,async_nats=off")),
            )
            .with_test_writer()
            .try_init();
        let binary = nats_server::locate()?;
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        let port = nats_server::free_port()?;
        let monitor_port = if opts.monitor {
            Some(nats_server::free_port()?)
        } else {
            None
        };
        let certs = wegweiser_cp::certs::dev(&dir.path().join("certs"), &[])?;
        let report = init::run(&InitOptions {
            data_dir: data.clone(),
            nats_host: "127.0.0.1".into(),
            nats_port: port,
            monitor_port,
            tls: Some(init::TlsFiles {
                cert: certs.cert,
                key: certs.key,
                ca: certs.ca.clone(),
            }),
            server_name: "wegweiser-test".into(),
            http_port: Some(nats_server::free_port()?),
            root_threshold: 1,
            root_keys: 1,
        })?;
        if opts.enrollment.is_some()
            || opts.device_ttl.is_some()
            || opts.renew_min_interval.is_some()
            || opts.auth.is_some()
        {
            let path = data.join(wegweiser_cp::config::CONFIG_FILE);
            let mut cfg: wegweiser_cp::config::Config =
                toml::from_str(&std::fs::read_to_string(&path)?)?;
            if let Some(e) = opts.enrollment {
                cfg.enrollment = e;
            }
            if let Some(t) = opts.device_ttl {
                cfg.device_jwt_ttl_secs = t;
            }
            if let Some(t) = opts.renew_min_interval {
                cfg.renew_min_interval_secs = t;
            }
            if let Some(a) = opts.auth {
                cfg.auth = a;
            }
            std::fs::write(&path, toml::to_string(&cfg)?)?;
        }
        let server = NatsServerProcess::start(
            &binary,
            &report.nats_config,
            port,
            &data.join("nats").join("nats-server.log"),
            Duration::from_secs(20),
        )
        .await?;
        let auth = Authority::open(&data).await?;
        Ok(Self {
            dir,
            server: Some(server),
            auth,
            url: report.nats_url,
            ca: certs.ca,
        })
    }

    /// Connects a user (device or technician) over TLS with the platform's CA.
    pub async fn connect_user(
        &self,
        jwt: String,
        kp: Arc<nkeys::KeyPair>,
        name: &str,
    ) -> Result<UserConn, async_nats::ConnectError> {
        connect_user(&self.url, Some(&self.ca), jwt, kp, name).await
    }

    /// Stops nats-server (its store stays), as an outage would.
    pub async fn stop_server(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
    }

    /// Starts nats-server again on the same port with the same store.
    pub async fn start_server(&mut self) -> anyhow::Result<()> {
        let data = self.data_dir();
        let port: u16 = self
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no port in {}", self.url))?;
        let server = NatsServerProcess::start(
            &nats_server::locate()?,
            &data.join("nats").join("nats-server.conf"),
            port,
            &data.join("nats").join("nats-server.log"),
            Duration::from_secs(20),
        )
        .await?;
        self.server = Some(server);
        Ok(())
    }

    /// Creates a tenant with default limits.
    pub async fn tenant(&self, id: &str) -> anyhow::Result<wegweiser_cp::tenant::TenantRecord> {
        Ok(self
            .auth
            .create_tenant(wegweiser_cp::authority::NewTenant {
                id: id.parse()?,
                name: None,
                limits: None,
                retention_days: None,
            })
            .await?)
    }

    /// An enrollment token of `tenant` with `uses` uses and the default lifetime.
    pub async fn token(
        &self,
        tenant: &wegweiser_shared::ids::TenantId,
        uses: u32,
    ) -> anyhow::Result<wegweiser_shared::secret::SecretString> {
        let (token, _) = self
            .auth
            .create_token(wegweiser_cp::enrollment::NewToken {
                tenant: tenant.clone(),
                organization: None,
                group: None,
                ttl_secs: None,
                max_uses: Some(uses),
                label: String::new(),
            })
            .await?;
        Ok(token)
    }

    /// Creates organization `org` of `tenant` (and its group `group`) unless they exist.
    pub async fn place(
        &self,
        tenant: &wegweiser_shared::ids::TenantId,
        org: &str,
        group: Option<&str>,
    ) -> anyhow::Result<()> {
        if self.auth.organization(tenant, org).await?.is_none() {
            self.auth
                .create_organization(tenant, org, None, "test")
                .await?;
        }
        if let Some(g) = group
            && self.auth.group(tenant, g).await?.is_none()
        {
            self.auth.create_group(tenant, org, g, None, "test").await?;
        }
        Ok(())
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Waits until nats-server has registered a subscription on each of `subjects` (exactly as
    /// subscribed) in `account`. `Client::flush` only writes the SUB to the socket: a publish
    /// from another connection can be processed before it and is then lost for that subscriber.
    /// Asks the server itself, through the system account's connection listing.
    pub async fn wait_subscribed(
        &self,
        account: &wegweiser_shared::ids::AccountKey,
        subjects: &[String],
    ) -> anyhow::Result<()> {
        let keys = Arc::new(wegweiser_cp::identity::PlatformKeys::load(
            &wegweiser_cp::authority::keystore(&self.data_dir())?,
        )?);
        let sys = wegweiser_cp::authority::connect_service(
            self.auth.config(),
            keys,
            wegweiser_cp::identity::ServiceUser::Inspect,
        )
        .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let reply = sys
                .request(
                    wegweiser_shared::subject::sys::account_connz(account),
                    r#"{"subscriptions":true,"limit":4096}"#.into(),
                )
                .await?;
            let v: serde_json::Value = serde_json::from_slice(&reply.payload)?;
            let registered: std::collections::BTreeSet<&str> = v["data"]["connections"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|c| c["subscriptions_list"].as_array().into_iter().flatten())
                .filter_map(|s| s.as_str())
                .collect();
            let missing: Vec<&String> = subjects
                .iter()
                .filter(|s| !registered.contains(s.as_str()))
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "nats-server never registered subscriptions on {missing:?} in {account}"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Connects a user of the control-plane account with exactly these publish and subscribe
    /// permissions, signed by that account's signing key from the keystore. Stands for a
    /// compromised or misconfigured service with publish rights on device subjects in tests,
    /// and for a fleet of simulated devices in benchmarks; the product never issues such users.
    pub async fn connect_cp_user(
        &self,
        name: &str,
        publish: &[String],
        subscribe: &[String],
    ) -> anyhow::Result<UserConn> {
        use wegweiser_shared::jwt::{
            Claims, Permission, Permissions, UserNats, UserPermissionLimits,
        };
        let keys = wegweiser_cp::identity::PlatformKeys::load(&wegweiser_cp::authority::keystore(
            &self.data_dir(),
        )?)?;
        let user = Arc::new(nkeys::KeyPair::new_user());
        let mut nats = UserNats::with_limits(UserPermissionLimits {
            permissions: Permissions {
                publish: Permission {
                    allow: publish.to_vec(),
                    deny: Vec::new(),
                },
                subscribe: Permission {
                    allow: subscribe.to_vec(),
                    deny: Vec::new(),
                },
                resp: None,
            },
            subs: Some(-1),
            data: Some(-1),
            payload: Some(-1),
            ..Default::default()
        });
        nats.issuer_account = Some(keys.cp_account.to_string());
        let jwt = Claims::new(user.public_key(), name, nats)
            .expires_in(3600)
            .encode(&keys.cp_signing)?;
        Ok(self.connect_user(jwt, user, name).await?)
    }

    /// The directory of the trust root keys.
    pub fn root_dir(&self) -> PathBuf {
        wegweiser_cp::trust::root_dir(&self.data_dir())
    }

    /// Starts the service parts (renewal responder, HTTPS server, reconciler) and waits until
    /// the HTTPS server answers.
    pub async fn serve(&self) -> anyhow::Result<wegweiser_cp::cli::ServiceTasks> {
        let tasks = wegweiser_cp::cli::start_service(&self.auth, &self.root_dir()).await?;
        let url = format!("{}/healthz", self.https_url());
        let agent = self.https();
        for _ in 0..100 {
            let (a, u) = (agent.clone(), url.clone());
            let ok = tokio::task::spawn_blocking(move || a.get(&u).call().is_ok()).await?;
            if ok {
                return Ok(tasks);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("the HTTPS server did not come up at {url}")
    }

    /// The control plane's HTTPS URL.
    pub fn https_url(&self) -> String {
        self.auth
            .config()
            .http
            .as_ref()
            .map(|h| format!("https://localhost:{}", h.listen.port()))
            .unwrap_or_default()
    }

    /// An HTTPS client trusting only the platform's CA, returning error statuses as responses.
    pub fn https(&self) -> ureq::Agent {
        https_client(&self.ca)
    }

    /// Sends `method path` to the control plane's HTTPS server with these headers and body.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<HttpResponse> {
        let agent = self.https();
        let mut b = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.https_url()));
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        if body.is_some() {
            b = b.header("content-type", "application/json");
        }
        let req = b.body(body.unwrap_or_default())?;
        tokio::task::spawn_blocking(move || {
            let mut r = agent.run(req)?;
            let status = r.status().as_u16();
            let headers = r
                .headers()
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        v.to_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            let text = r.body_mut().read_to_string().unwrap_or_default();
            let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
            Ok(HttpResponse {
                status,
                headers,
                body,
            })
        })
        .await?
    }

    /// POSTs `body` to the enrollment endpoint; the whole response.
    pub async fn post_enroll_raw(&self, body: Vec<u8>) -> HttpResponse {
        self.request(
            "POST",
            wegweiser_shared::enroll::ENROLL_PATH,
            &[],
            Some(body),
        )
        .await
        .unwrap_or_else(|e| panic!("enrollment request failed: {e}"))
    }

    /// POSTs a JSON body to the enrollment endpoint; returns status and JSON answer.
    pub async fn post_enroll(&self, body: Vec<u8>) -> anyhow::Result<(u16, serde_json::Value)> {
        let agent = self.https();
        let url = format!(
            "{}{}",
            self.https_url(),
            wegweiser_shared::enroll::ENROLL_PATH
        );
        tokio::task::spawn_blocking(move || {
            let mut r = agent
                .post(&url)
                .header("content-type", "application/json")
                .send(&body[..])?;
            let status = r.status().as_u16();
            let text = r.body_mut().read_to_string()?;
            let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
            Ok((status, v))
        })
        .await?
    }
}

/// Everything a connection reported through its event callback.
#[derive(Debug, Clone, Default)]
pub struct Events(Arc<Mutex<Vec<Event>>>);

impl Events {
    /// A snapshot.
    pub fn all(&self) -> Vec<Event> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Server errors (permission violations, authorization failures) as text.
    pub fn server_errors(&self) -> Vec<String> {
        self.all()
            .into_iter()
            .filter_map(|e| match e {
                Event::ServerError(e) => Some(e.to_string()),
                _ => None,
            })
            .collect()
    }

    /// Whether an authorization error was reported.
    pub fn saw_authorization_error(&self) -> bool {
        self.all().iter().any(|e| {
            matches!(
                e,
                Event::ServerError(async_nats::ServerError::AuthorizationViolation)
            ) || matches!(e, Event::ServerError(async_nats::ServerError::Other(s))
                if s.to_lowercase().contains("authorization") || s.to_lowercase().contains("revoked"))
        })
    }

    /// Waits until `pred` holds for some event, up to `timeout`.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&Event) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.all().iter().any(&pred) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The JWT a connection presents; replace it and reconnect to move to new credentials.
#[derive(Debug, Clone)]
pub struct SharedJwt(Arc<Mutex<String>>);

impl SharedJwt {
    /// Replaces the JWT used on the next (re)connect.
    pub fn set(&self, jwt: String) {
        if let Ok(mut g) = self.0.lock() {
            *g = jwt;
        }
    }
}

/// A user connection as a device or technician would make it.
#[derive(Debug)]
pub struct UserConn {
    /// The client.
    pub client: Client,
    /// Its events.
    pub events: Events,
    /// The JWT it presents.
    pub jwt: SharedJwt,
}

/// Connects with `jwt` and the key `kp`, an inbox under `_INBOX.<name>`, and an auth callback
/// that presents whatever JWT [`SharedJwt`] holds at (re)connect time.
pub async fn connect_user(
    url: &str,
    ca: Option<&Path>,
    jwt: String,
    kp: Arc<nkeys::KeyPair>,
    name: &str,
) -> Result<UserConn, async_nats::ConnectError> {
    let events = Events::default();
    let shared = SharedJwt(Arc::new(Mutex::new(jwt)));
    let (ev, cb_jwt) = (events.clone(), shared.clone());
    let opts = ConnectOptions::with_auth_callback(move |nonce| {
        let kp = kp.clone();
        let jwt = cb_jwt.0.lock().map(|g| g.clone()).unwrap_or_default();
        async move {
            let mut auth = async_nats::Auth::new();
            auth.jwt = Some(jwt);
            auth.signature = Some(
                kp.sign(&nonce)
                    .map_err(|e| async_nats::AuthError::new(e.to_string()))?,
            );
            Ok(auth)
        }
    })
    .custom_inbox_prefix(wegweiser_shared::subject::inbox_prefix(name))
    .event_callback(move |e| {
        let ev = ev.clone();
        async move {
            if let Ok(mut v) = ev.0.lock() {
                v.push(e);
            }
        }
    })
    .reconnect_delay_callback(|attempt| Duration::from_millis((attempt as u64 * 50).min(500)))
    .connection_timeout(Duration::from_secs(5));
    let opts = match ca {
        Some(ca) => opts.add_root_certificates(ca.to_owned()).require_tls(true),
        None => opts,
    };
    let client = opts.connect(url).await?;
    Ok(UserConn {
        client,
        events,
        jwt: shared,
    })
}

/// Collects messages of a subscription in the background.
pub fn collect(mut sub: async_nats::Subscriber) -> mpsc::UnboundedReceiver<async_nats::Message> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        use futures::StreamExt;
        while let Some(m) = sub.next().await {
            if tx.send(m).is_err() {
                break;
            }
        }
    });
    rx
}

/// Takes every message already received.
pub fn drain(rx: &mut mpsc::UnboundedReceiver<async_nats::Message>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(m) = rx.try_recv() {
        out.push(m.subject.to_string());
    }
    out
}

/// Where the workspace lives (for finding binaries built by cargo).
pub fn workspace_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Enrolls `n` devices through the library (no HTTPS), 32 at a time: device `i` uses
/// `tokens[i % tokens.len()]` and the machine name `{prefix}{i:05}`. For benchmarks that need
/// many real device records.
pub async fn enroll_many(
    p: &Arc<Platform>,
    tokens: &[String],
    n: usize,
    prefix: &str,
) -> anyhow::Result<()> {
    use wegweiser_shared::enroll::{EnrollRequest, enroll_proof_message, sign_proof};
    let tokens = Arc::new(tokens.to_vec());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (p, tokens, next, prefix) =
            (p.clone(), tokens.clone(), next.clone(), prefix.to_owned());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<(), anyhow::Error>(());
                }
                let token = &tokens[i % tokens.len()];
                let kp = nkeys::KeyPair::new_user();
                let public_key = kp.public_key().parse()?;
                let facts = facts(&format!("{prefix}{i:05}"));
                let proof = sign_proof(
                    &kp,
                    &enroll_proof_message(token, &facts.machine_id, &public_key),
                )
                .ok_or_else(|| anyhow::anyhow!("cannot sign the enrollment proof"))?;
                let request = EnrollRequest {
                    token: token.clone(),
                    public_key,
                    proof,
                    current: None,
                    facts,
                };
                p.auth
                    .enroll(request, "127.0.0.1")
                    .await
                    .map_err(|e| anyhow::anyhow!("enrollment {i}: {e}"))?;
            }
        });
    }
    while let Some(r) = workers.join_next().await {
        r??;
    }
    Ok(())
}

/// Facts of a Linux test machine named `machine` (host name and machine id).
pub fn facts(machine: &str) -> wegweiser_shared::enroll::DeviceFacts {
    wegweiser_shared::enroll::DeviceFacts {
        hostname: machine.into(),
        os: "linux".into(),
        os_version: String::new(),
        arch: String::new(),
        machine_id: machine.into(),
        agent_version: String::new(),
    }
}

/// An enrollment request body with the proof of possession of `key` (and, for a re-enrollment,
/// of the device's current key).
pub fn enroll_body(
    token: &str,
    key: &nkeys::KeyPair,
    facts: &wegweiser_shared::enroll::DeviceFacts,
    current: Option<&nkeys::KeyPair>,
) -> Vec<u8> {
    use wegweiser_shared::enroll::{enroll_proof_message, sign_proof};
    let public: wegweiser_shared::ids::UserKey =
        key.public_key().parse().unwrap_or_else(|e| panic!("{e}"));
    let message = enroll_proof_message(token, &facts.machine_id, &public);
    let mut body = serde_json::json!({
        "token": token,
        "public_key": public,
        "proof": sign_proof(key, &message),
        "facts": facts,
    });
    if let Some(c) = current {
        body["current"] =
            serde_json::json!({"public_key": c.public_key(), "proof": sign_proof(c, &message)});
    }
    serde_json::to_vec(&body).unwrap_or_default()
}

/// An HTTPS client trusting only the CA certificate(s) in `ca` (PEM), returning error statuses
/// as responses.
pub fn https_client(ca: &Path) -> ureq::Agent {
    let pem = std::fs::read(ca).unwrap_or_default();
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|i| match i {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    ureq::Agent::config_builder()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                .build(),
        )
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// The password of every user [`user_token`] creates.
pub const TEST_PASSWORD: &str = "correct horse battery staple";

/// Creates `user` with these bindings and the password [`TEST_PASSWORD`], and returns an API
/// token of it (1 h); panics on failure.
pub async fn user_token(
    p: &Platform,
    user: &str,
    bindings: Vec<wegweiser_cp::rbac::Binding>,
) -> String {
    let name: wegweiser_shared::ids::UserName = user.parse().expect("a valid user name");
    let password = wegweiser_cp::users::Password::new(wegweiser_shared::secret::SecretString::new(
        TEST_PASSWORD.into(),
    ))
    .expect("the test password is strong enough");
    p.auth
        .create_user(&name, &password, bindings, "test")
        .await
        .expect("user created");
    let (token, _) = p
        .auth
        .create_api_token(
            wegweiser_cp::sessions::NewApiToken {
                owner: name,
                label: String::new(),
                bindings: None,
                ttl_secs: 3600,
            },
            "test",
        )
        .await
        .expect("API token created");
    token.expose().to_owned()
}
