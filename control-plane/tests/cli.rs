//! The `wegweiser` binary, run as a user would: init, a real nats-server booted from the written
//! config, tenant commands, and the errors for bad input.
#![allow(clippy::unwrap_used)]

use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Output},
    time::Duration,
};
use wegweiser_cp::nats_server::{self, NatsServerProcess};

fn wegweiser(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wegweiser"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("WEGWEISER_MASTER_KEY")
        .env_remove("WEGWEISER_NATS_URL")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every file of the keystore (`keys/` and `keys/root/`), by path below `keys/`.
fn key_files(data: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for dir in ["", "root"] {
        for e in std::fs::read_dir(data.join("keys").join(dir)).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                let name = Path::new(dir).join(e.file_name());
                v.push((
                    name.to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                ));
            }
        }
    }
    v.sort();
    v
}

#[test]
fn init_twice_keeps_every_key_and_writes_private_files() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    let o = wegweiser(&data, &["--json", "init", "--port", "4999"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let first: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(first["created"].as_array().unwrap().len(), 9, "{first}");
    let keys = key_files(&data);
    // Six seeds, the master key, one root key and the signed root document (public).
    assert_eq!(
        keys.len(),
        9,
        "{:?}",
        keys.iter().map(|k| &k.0).collect::<Vec<_>>()
    );
    for (name, _) in keys.iter().filter(|(n, _)| !n.ends_with(".json")) {
        let mode = std::fs::metadata(data.join("keys").join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{name}");
    }
    for dir in [data.join("keys"), data.join("keys").join("root")] {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
    }

    let o = wegweiser(&data, &["--json", "init", "--port", "4999"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let second: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(second["created"].as_array().unwrap().is_empty(), "{second}");
    assert_eq!(second["operator"], first["operator"]);
    assert_eq!(second["cp_account"], first["cp_account"]);
    assert_eq!(key_files(&data), keys, "a second init changed key files");
    // No seed appears in what init prints.
    for (_, content) in &keys {
        let text = String::from_utf8_lossy(content);
        let text = text.trim();
        assert!(!String::from_utf8_lossy(&o.stdout).contains(text));
    }
}

#[test]
fn a_keystore_others_can_read_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    assert!(wegweiser(&data, &["init"]).status.success());
    std::fs::set_permissions(data.join("keys"), std::fs::Permissions::from_mode(0o755)).unwrap();
    for args in [&["init"][..], &["tenant", "list"][..]] {
        let o = wegweiser(&data, args);
        assert!(!o.status.success());
        assert!(stderr(&o).contains("chmod 700"), "{args:?}: {}", stderr(&o));
    }
    std::fs::set_permissions(data.join("keys"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(
        data.join("keys/operator-signing.nk"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let o = wegweiser(&data, &["tenant", "list"]);
    assert!(stderr(&o).contains("chmod 600"), "{}", stderr(&o));
}

#[test]
fn bad_config_and_missing_server_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    let o = wegweiser(&data, &["tenant", "list"]);
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    assert!(stderr(&o).contains("wegweiser init"), "{}", stderr(&o));

    let port = nats_server::free_port().unwrap().to_string();
    assert!(
        wegweiser(&data, &["init", "--port", &port])
            .status
            .success()
    );
    let o = wegweiser(&data, &["tenant", "list"]);
    assert_eq!(o.status.code(), Some(69), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cannot reach nats-server"),
        "{}",
        stderr(&o)
    );

    let cfg = data.join("wegweiser.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("device_jwt_ttl_secs = 86400", "device_jwt_ttl_secs = 5"),
    )
    .unwrap();
    let o = wegweiser(&data, &["tenant", "list"]);
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    assert!(stderr(&o).contains("device_jwt_ttl_secs"), "{}", stderr(&o));

    // Bad ids and keys are refused before anything is touched.
    let o = wegweiser(&data, &["tenant", "create", "Not_A_Slug"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("tenant id may only contain"),
        "{}",
        stderr(&o)
    );
    let o = wegweiser(
        &data,
        &[
            "issue",
            "device",
            "--tenant",
            "x",
            "--device",
            "d.*",
            "--public-key",
            "UABC",
        ],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("device id"), "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_written_config_boots_the_pinned_server_and_the_cli_manages_tenants() {
    let binary = nats_server::locate().unwrap();
    assert_eq!(
        nats_server::version(&binary).unwrap(),
        nats_server::PINNED_VERSION
    );
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    let port = nats_server::free_port().unwrap();
    let o = wegweiser(&data, &["init", "--port", &port.to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let server = NatsServerProcess::start(
        &binary,
        &data.join("nats/nats-server.conf"),
        port,
        &tmp.path().join("nats.log"),
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    let data2 = data.clone();
    let run = move |args: Vec<&'static str>| {
        let data = data2.clone();
        async move {
            tokio::task::spawn_blocking(move || wegweiser(&data, &args))
                .await
                .unwrap()
        }
    };
    let o = run(vec![
        "--json",
        "tenant",
        "create",
        "acme",
        "--name",
        "Acme IT",
        "--max-connections",
        "50",
    ])
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let t: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(t["limits"]["max_connections"], 50);
    assert_eq!(t["state"], "active");
    let o = run(vec!["tenant", "create", "acme"]).await;
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));

    // Retention per tenant: checked on the command line, stored in the record.
    let o = run(vec!["tenant", "create", "brief", "--retention-days", "0"]).await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("1 to 3650 days"), "{}", stderr(&o));
    let o = run(vec![
        "--json",
        "tenant",
        "create",
        "brief",
        "--retention-days",
        "7",
    ])
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let t: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(t["retention_days"], 7);
    let o = run(vec!["tenant", "set-retention", "acme", "3651"]).await;
    assert!(stderr(&o).contains("1 to 3650 days"), "{}", stderr(&o));
    let o = run(vec!["--json", "tenant", "set-retention", "acme", "90"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(vec!["--json", "tenant", "show", "acme"]).await;
    let t: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(t["retention_days"], 90);
    let o = run(vec!["tenant", "set-retention", "nobody", "5"]).await;
    assert!(stderr(&o).contains("unknown tenant"), "{}", stderr(&o));
    let o = run(vec!["tenant", "delete", "brief", "--yes"]).await;
    assert!(o.status.success(), "{}", stderr(&o));

    let creds = tmp.path().join("alice.creds");
    let creds_s: &'static str = Box::leak(creds.display().to_string().into_boxed_str());
    let o = run(vec![
        "issue",
        "technician",
        "--tenant",
        "acme",
        "--name",
        "alice",
        "--all-devices",
        "--out",
        creds_s,
    ])
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let parsed =
        wegweiser_shared::creds::Creds::parse(&std::fs::read_to_string(&creds).unwrap()).unwrap();
    assert!(parsed.claims(wegweiser_shared::time::now()).is_ok());
    // Refuses to overwrite an existing creds file.
    let o = run(vec![
        "issue",
        "technician",
        "--tenant",
        "acme",
        "--name",
        "alice",
        "--all-devices",
        "--out",
        creds_s,
    ])
    .await;
    assert!(!o.status.success());

    let o = run(vec!["--json", "tenant", "list"]).await;
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let o = run(vec!["tenant", "delete", "acme"]).await;
    assert!(stderr(&o).contains("--yes"), "{}", stderr(&o));
    let o = run(vec!["tenant", "delete", "acme", "--yes"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(vec!["tenant", "show", "acme"]).await;
    assert!(stderr(&o).contains("unknown tenant"), "{}", stderr(&o));
    server.stop().await;
}

#[test]
fn init_refuses_a_partial_keystore_but_accepts_an_offline_operator_key() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    assert!(wegweiser(&data, &["init"]).status.success());
    let operator_jwt = std::fs::read_to_string(data.join("nats/operator.jwt")).unwrap();
    // The operator identity key moved offline: init keeps the operator JWT it signed.
    let offline = tmp.path().join("operator.nk");
    std::fs::rename(data.join("keys/operator.nk"), &offline).unwrap();
    let o = wegweiser(&data, &["init"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(data.join("nats/operator.jwt")).unwrap(),
        operator_jwt
    );
    assert!(
        !data.join("keys/operator.nk").exists(),
        "init recreated the offline key"
    );
    // A missing account key is never silently replaced.
    std::fs::rename(&offline, data.join("keys/operator.nk")).unwrap();
    std::fs::remove_file(data.join("keys/cp-account.nk")).unwrap();
    let o = wegweiser(&data, &["init"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("cp-account.nk"), "{}", stderr(&o));
    assert!(stderr(&o).contains("restore"), "{}", stderr(&o));
    assert!(!data.join("keys/cp-account.nk").exists());
    // A bad listen address is refused before anything is written.
    let o = wegweiser(
        &tmp.path().join("e"),
        &["init", "--host", "127.0.0.1\nport: 1"],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not a host name"), "{}", stderr(&o));
    assert!(!tmp.path().join("e").exists());
}
