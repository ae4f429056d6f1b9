//! Test helpers: a stand-in for the control plane's credential authority.

use crate::{enroll, paths::Paths, store};
use wegweiser_shared::{
    enroll::EnrollResponse,
    ids::{AccountKey, DeviceId, TenantId},
    jwt::{Claims, UserNats},
    secret::SecretString,
};

/// A self-signed CA certificate (P-256), for files that must hold one.
pub const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBmzCCAUGgAwIBAgIUCqVqmZ3sCrFOjkZLhxB736f3YGEwCgYIKoZIzj0EAwIw
IjEgMB4GA1UEAwwXd2Vnd2Vpc2VyIGFnZW50IHRlc3QgQ0EwIBcNMjYxMjA0MjA1
NzI4WhgPMjEyNjExMTAyMDU3MjhaMCIxIDAeBgNVBAMMF3dlZ3dlaXNlciBhZ2Vu
dCB0ZXN0IENBMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE8LUq7rX6k+YJFWYu
2CjYeFf1uopqDxsyFKVcIkzrwtG8HoKbBhG3JCHscYfJucKJ1YHkrt1L3Mdn2YhM
Om4/waNTMFEwHQYDVR0OBBYEFH+UORS7RRfYPBlKxlL9FZRL1gYrMB8GA1UdIwQY
MBaAFH+UORS7RRfYPBlKxlL9FZRL1gYrMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZI
zj0EAwIDSAAwRQIhAPiW91wnaqKLmkxu90Yrb75ekQ95vbU2OaSCxH3s4KjuAiBg
i1BfYaNlyUV7XwbcvKlmvnDak6gxu2gLG5m6qwvWYA==
-----END CERTIFICATE-----
";

/// Signs device JWTs the way the control plane does (scoped signing key, `issuer_account`).
pub struct Issuer {
    signing: nkeys::KeyPair,
    pub account: AccountKey,
    pub device: DeviceId,
    pub tenant: TenantId,
}

impl Issuer {
    pub fn new() -> Self {
        Self {
            signing: nkeys::KeyPair::new_account(),
            account: nkeys::KeyPair::new_account().public_key().parse().unwrap(),
            device: DeviceId::generate(),
            tenant: "acme-it".parse().unwrap(),
        }
    }

    pub fn jwt(&self, user: &str, ttl: i64) -> SecretString {
        let mut nats = UserNats::scoped();
        nats.issuer_account = Some(self.account.to_string());
        SecretString::new(
            Claims::new(user, self.device.as_str(), nats)
                .expires_in(ttl)
                .encode(&self.signing)
                .unwrap(),
        )
    }

    pub fn response(&self, key: &nkeys::KeyPair) -> EnrollResponse {
        let jwt = self.jwt(&key.public_key(), 86_400);
        EnrollResponse {
            device_id: self.device.clone(),
            tenant: self.tenant.clone(),
            account: self.account.clone(),
            jwt: jwt.expose().to_owned(),
            jwt_expires_at: wegweiser_shared::time::now() + 86_400,
            nats_urls: vec!["tls://127.0.0.1:1".into()],
            nats_ca_pem: CA_PEM.into(),
            reenrolled: false,
            trust: None,
        }
    }

    /// Stores an enrollment for `key` at `paths` and loads it back.
    pub fn enroll(&self, paths: &Paths, key: &nkeys::KeyPair) -> store::Enrollment {
        enroll::save_enrollment(
            paths,
            "https://cp.example.net",
            key.clone(),
            &self.response(key),
        )
        .unwrap();
        store::load(paths).unwrap()
    }
}
