//! Development TLS material: a local CA and a server certificate signed by it (rcgen).
//!
//! For production, use certificates from your own PKI; see `certs/README.md`.

use crate::keystore::{self, KeystoreError};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// File names written by [`dev`].
pub mod files {
    /// CA certificate (give this to clients).
    pub const CA: &str = "ca.pem";
    /// CA private key.
    pub const CA_KEY: &str = "ca-key.pem";
    /// Server certificate chain.
    pub const SERVER: &str = "server.pem";
    /// Server private key.
    pub const SERVER_KEY: &str = "server-key.pem";
}

/// How long development certificates stay valid.
pub const DEV_VALIDITY_DAYS: i64 = 365;

/// What [`dev`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct DevCerts {
    /// CA certificate.
    pub ca: PathBuf,
    /// Server certificate.
    pub cert: PathBuf,
    /// Server key.
    pub key: PathBuf,
    /// Names and addresses the server certificate is valid for.
    pub names: Vec<String>,
    /// Whether the files were created now (false: they existed and were kept).
    pub created: bool,
}

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// Generation failed.
    #[error("cannot generate certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// Writing failed.
    #[error(transparent)]
    Write(#[from] KeystoreError),
    /// Some files exist, others do not.
    #[error("{0} holds only part of a certificate set; move it aside and run again")]
    Partial(String),
}

/// Creates a development CA and a server certificate for `localhost`, `127.0.0.1`, `::1` and
/// `extra_names` in `dir`. Keys are written owner-only; existing files are kept, never replaced.
pub fn dev(dir: &Path, extra_names: &[String]) -> Result<DevCerts, CertError> {
    let paths = [files::CA, files::CA_KEY, files::SERVER, files::SERVER_KEY].map(|f| dir.join(f));
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    names.extend(extra_names.iter().cloned());
    let result = |created| DevCerts {
        ca: paths[0].clone(),
        cert: paths[2].clone(),
        key: paths[3].clone(),
        names: names.clone(),
        created,
    };
    let existing = paths.iter().filter(|p| p.exists()).count();
    if existing == paths.len() {
        return Ok(result(false));
    }
    if existing != 0 {
        return Err(CertError::Partial(dir.display().to_string()));
    }
    std::fs::create_dir_all(dir).map_err(|source| KeystoreError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let now = time::OffsetDateTime::now_utc();
    let not_before = now - time::Duration::days(1);
    let not_after = now + time::Duration::days(DEV_VALIDITY_DAYS);

    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "Wegweiser development CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut server = CertificateParams::new(names.clone())?;
    server
        .distinguished_name
        .push(DnType::CommonName, "Wegweiser development server");
    server.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.not_before = not_before;
    server.not_after = not_after;
    let server_key = KeyPair::generate()?;
    let server_cert = server.signed_by(&server_key, &issuer)?;

    keystore::write_new_private(&paths[1], issuer.key().serialize_pem().as_bytes())?;
    keystore::write_new_private(&paths[3], server_key.serialize_pem().as_bytes())?;
    keystore::write_new_private(&paths[0], ca_cert.pem().as_bytes())?;
    keystore::write_new_private(&paths[2], server_cert.pem().as_bytes())?;
    Ok(result(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_ca_and_server_cert_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        let made = dev(&dir, &["cp.example.internal".into()]).unwrap();
        assert!(made.created);
        let ca = std::fs::read_to_string(&made.ca).unwrap();
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&made.key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let again = dev(&dir, &[]).unwrap();
        assert!(!again.created);
        assert_eq!(
            std::fs::read_to_string(&again.ca).unwrap(),
            ca,
            "kept, not replaced"
        );
        std::fs::remove_file(dir.join(files::SERVER)).unwrap();
        assert!(matches!(dev(&dir, &[]), Err(CertError::Partial(_))));
    }
}
