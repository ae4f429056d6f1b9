//! `wegweiser login`, `logout` and `api`: the command line as a client of the HTTPS API.
//!
//! `login` asks for the password (no echo; or [`ENV_PASSWORD`]), logs in, makes an expiring API
//! token through `POST /v1/auth/tokens`, ends the login session and saves the URL, the CA file
//! and the token in [`LOGIN_FILE`] in the user's configuration directory (the directory 0700,
//! the file 0600). `logout` revokes the token and deletes the file. [`ENV_URL`], [`ENV_TOKEN`]
//! and [`ENV_CA`] override what is saved. `api METHOD PATH` sends one authenticated request and
//! prints the JSON answer; an error status exits 1 with the API's message.

use anyhow::{Context, anyhow, bail};
use clap::Args;
use serde::{Deserialize, Serialize};
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

/// Overrides the saved API URL.
pub const ENV_URL: &str = "WEGWEISER_API_URL";
/// Overrides the saved API token.
pub const ENV_TOKEN: &str = "WEGWEISER_API_TOKEN";
/// Overrides the saved CA file.
pub const ENV_CA: &str = "WEGWEISER_API_CA";
/// The password for `login` (instead of the prompt).
pub const ENV_PASSWORD: &str = "WEGWEISER_PASSWORD";
/// The saved login, in the configuration directory.
pub const LOGIN_FILE: &str = "login.json";

/// `wegweiser login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The control plane's HTTPS URL, e.g. `https://cp.example.net:8443`.
    #[arg(long)]
    pub url: String,
    /// CA certificate (PEM) to trust for it (default: the public web roots).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// User name.
    #[arg(long)]
    pub user: String,
    /// Lifetime of the API token, days.
    #[arg(long, default_value_t = 30)]
    pub days: i64,
}

/// `wegweiser api`.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// HTTP method: GET, POST, PUT, PATCH or DELETE.
    pub method: String,
    /// Path, e.g. `/v1/tenants` (query string included).
    pub path: String,
    /// JSON body, or `@FILE` to read it from a file.
    #[arg(long)]
    pub data: Option<String>,
}

/// What `login` saves.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca: Option<PathBuf>,
    token: String,
    token_id: String,
    user: String,
    expires_at: i64,
}

/// Where the login is saved (`$XDG_CONFIG_HOME/wegweiser` on Linux).
pub fn config_dir() -> anyhow::Result<PathBuf> {
    directories::ProjectDirs::from("", "", "wegweiser")
        .map(|d| d.config_dir().to_owned())
        .ok_or_else(|| anyhow!("no home directory to keep the login in"))
}

fn agent(ca: Option<&Path>) -> anyhow::Result<ureq::Agent> {
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
        let certs: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|i| match i {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            bail!("{} holds no PEM certificate", ca.display());
        }
        tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
    }
    Ok(ureq::Agent::config_builder()
        .tls_config(tls.build())
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into())
}

/// One answer: status, `Set-Cookie` values, body (JSON, or a JSON string).
struct Answer {
    status: u16,
    cookies: Vec<String>,
    body: serde_json::Value,
}

impl Answer {
    /// The body, or the API's error as an error.
    fn ok(self) -> anyhow::Result<serde_json::Value> {
        if self.status < 400 {
            return Ok(self.body);
        }
        let code = self.body["code"].as_str().unwrap_or("error");
        let message = self.body["message"]
            .as_str()
            .map_or_else(|| self.body.to_string(), str::to_owned);
        let hint = if self.status == 401 && code == "unauthenticated" {
            " (run `wegweiser login` again, or check WEGWEISER_API_TOKEN)"
        } else {
            ""
        };
        bail!("the API answered {} {code}: {message}{hint}", self.status)
    }
}

fn send(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> anyhow::Result<Answer> {
    let mut b = ureq::http::Request::builder().method(method).uri(url);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    let req = b
        .body(body.unwrap_or_default().as_bytes().to_vec())
        .map_err(|e| anyhow!("bad request {method} {url}: {e}"))?;
    let mut r = agent
        .run(req)
        .with_context(|| format!("cannot reach {url}"))?;
    let status = r.status().as_u16();
    let cookies = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    let body = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
    };
    Ok(Answer {
        status,
        cookies,
        body,
    })
}

fn base(url: &str) -> anyhow::Result<String> {
    let url = url.trim_end_matches('/');
    if !url.starts_with("https://") {
        bail!("the API URL must start with https:// (got {url})");
    }
    Ok(url.to_owned())
}

/// Writes the login: the directory 0700, the file 0600 (also when it existed).
fn save(dir: &Path, saved: &Saved) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let file = dir.join(LOGIN_FILE);
    let tmp = dir.join(format!("{LOGIN_FILE}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        o.mode(0o600);
    }
    let mut f = o
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    use std::io::Write;
    f.write_all(&serde_json::to_vec_pretty(saved)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &file)?;
    Ok(file)
}

fn load(dir: &Path) -> anyhow::Result<Option<Saved>> {
    let file = dir.join(LOGIN_FILE);
    match std::fs::read(&file) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .with_context(|| format!("{} is damaged; delete it and log in again", file.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", file.display())),
    }
}

fn session_cookie(cookies: &[String]) -> Option<String> {
    cookies.iter().find_map(|c| {
        let first = c.split(';').next()?.trim();
        let (name, value) = first.split_once('=')?;
        (name == crate::web::SESSION_COOKIE && !value.is_empty()).then(|| first.to_owned())
    })
}

/// `wegweiser login`.
pub fn login(a: LoginArgs, json: bool) -> anyhow::Result<()> {
    let url = base(&a.url)?;
    let ca = a.ca.map(|c| std::path::absolute(&c).unwrap_or(c));
    let agent = agent(ca.as_deref())?;
    let password = zeroize::Zeroizing::new(match std::env::var(ENV_PASSWORD) {
        Ok(p) => p,
        Err(_) => rpassword::prompt_password(format!("Password for {}: ", a.user)).context(
            "cannot read the password (set WEGWEISER_PASSWORD when there is no terminal)",
        )?,
    });
    let body = zeroize::Zeroizing::new(
        serde_json::json!({"user": a.user, "password": password.as_str()}).to_string(),
    );
    let r = send(
        &agent,
        "POST",
        &format!("{url}/v1/auth/login"),
        &[],
        Some(&body),
    )?;
    let cookie = session_cookie(&r.cookies);
    let answer = r.ok()?;
    let cookie = cookie.ok_or_else(|| anyhow!("the login answer carried no session cookie"))?;
    let csrf = answer["csrf_token"]
        .as_str()
        .ok_or_else(|| anyhow!("the login answer carried no CSRF token"))?
        .to_owned();
    let headers = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())];
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "this host".into());
    let req = serde_json::json!({
        "label": format!("wegweiser login on {host}"),
        "ttl_secs": a.days.saturating_mul(86_400),
    })
    .to_string();
    let made = send(
        &agent,
        "POST",
        &format!("{url}/v1/auth/tokens"),
        &headers,
        Some(&req),
    )?
    .ok();
    // The session was only needed to make the token.
    let _ = send(
        &agent,
        "POST",
        &format!("{url}/v1/auth/logout"),
        &headers,
        None,
    );
    let made = made?;
    let saved = Saved {
        url,
        ca,
        token: made["token"]
            .as_str()
            .ok_or_else(|| anyhow!("the API answered no token"))?
            .to_owned(),
        token_id: made["id"].as_str().unwrap_or_default().to_owned(),
        user: a.user,
        expires_at: made["expires_at"].as_i64().unwrap_or_default(),
    };
    let file = save(&config_dir()?, &saved)?;
    let shown = serde_json::json!({
        "user": saved.user, "url": saved.url, "token_id": saved.token_id,
        "expires_at": saved.expires_at, "file": file,
    });
    crate::cli::print(json, &shown, || {
        format!(
            "Logged in to {} as {}; API token {} saved in {} (expires at {}).",
            saved.url,
            saved.user,
            saved.token_id,
            file.display(),
            saved.expires_at
        )
    });
    Ok(())
}

/// `wegweiser logout`.
pub fn logout(json: bool) -> anyhow::Result<()> {
    let dir = config_dir()?;
    let Some(saved) = load(&dir)? else {
        bail!("not logged in (no {})", dir.join(LOGIN_FILE).display());
    };
    let agent = agent(saved.ca.as_deref())?;
    let auth = format!("Bearer {}", saved.token);
    let r = send(
        &agent,
        "DELETE",
        &format!("{}/v1/auth/tokens/{}", saved.url, saved.token_id),
        &[("authorization", auth.as_str())],
        None,
    )?;
    // 401: the token expired or was revoked already; nothing left to revoke.
    if r.status != 401 {
        r.ok()?;
    }
    std::fs::remove_file(dir.join(LOGIN_FILE))?;
    crate::cli::print(
        json,
        &serde_json::json!({"logged_out": saved.url, "token_id": saved.token_id}),
        || {
            format!(
                "Logged out of {}; API token {} revoked.",
                saved.url, saved.token_id
            )
        },
    );
    Ok(())
}

/// `wegweiser api`.
pub fn api(a: ApiArgs) -> anyhow::Result<()> {
    let saved = load(&config_dir()?)?;
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let url = env(ENV_URL)
        .or_else(|| saved.as_ref().map(|s| s.url.clone()))
        .ok_or_else(|| {
            anyhow!("not logged in: run `wegweiser login --url https://HOST:8443 --user NAME`, or set {ENV_URL} and {ENV_TOKEN}")
        })?;
    let token = env(ENV_TOKEN)
        .or_else(|| saved.as_ref().map(|s| s.token.clone()))
        .ok_or_else(|| anyhow!("no API token: run `wegweiser login` or set {ENV_TOKEN}"))?;
    let ca = env(ENV_CA)
        .map(PathBuf::from)
        .or_else(|| saved.as_ref().and_then(|s| s.ca.clone()));
    let method = a.method.to_ascii_uppercase();
    if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str()) {
        bail!(
            "unknown method {}: use GET, POST, PUT, PATCH or DELETE",
            a.method
        );
    }
    if !a.path.starts_with('/') {
        bail!("the path starts with / (e.g. /v1/tenants)");
    }
    let body = match a.data.as_deref() {
        None => None,
        Some(d) => {
            let text = match d.strip_prefix('@') {
                Some(f) => {
                    std::fs::read_to_string(f).with_context(|| format!("cannot read {f}"))?
                }
                None => d.to_owned(),
            };
            serde_json::from_str::<serde_json::Value>(&text)
                .map_err(|e| anyhow!("--data is not JSON: {e}"))?;
            Some(text)
        }
    };
    let agent = agent(ca.as_deref())?;
    let auth = format!("Bearer {token}");
    let v = send(
        &agent,
        &method,
        &format!("{}{}", base(&url)?, a.path),
        &[("authorization", auth.as_str())],
        body.as_deref(),
    )?
    .ok()?;
    if !v.is_null() {
        crate::cli::say(&serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found() {
        let c = vec![
            "other=1; Path=/".to_owned(),
            "wg_session=abc; Path=/; Secure; HttpOnly".to_owned(),
        ];
        assert_eq!(session_cookie(&c).as_deref(), Some("wg_session=abc"));
        assert_eq!(session_cookie(&["wg_session=; Max-Age=0".to_owned()]), None);
    }

    #[test]
    fn the_login_file_is_owner_only() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let sub = dir.path().join("wegweiser");
        let saved = Saved {
            url: "https://x:8443".into(),
            ca: None,
            token: "wgapi_secret".into(),
            token_id: "0123456789abcdef".into(),
            user: "u".into(),
            expires_at: 1,
        };
        let f = save(&sub, &saved).unwrap_or_else(|e| panic!("{e}"));
        // Saved twice: replaced, still owner-only.
        let f2 = save(&sub, &saved).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(f, f2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| {
                std::fs::metadata(p)
                    .unwrap_or_else(|e| panic!("{e}"))
                    .permissions()
                    .mode()
                    & 0o777
            };
            assert_eq!(mode(&f), 0o600);
            assert_eq!(mode(&sub), 0o700);
        }
        let back = load(&sub)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("not saved"));
        assert_eq!(back.token, "wgapi_secret");
        assert!(base("http://x").is_err());
        assert_eq!(base("https://x:1/").unwrap_or_default(), "https://x:1");
    }
}
