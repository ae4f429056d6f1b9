//! NATS JWT v2: encode and sign, decode and verify.
//!
//! A token is `b64(header).b64(claims).b64(signature)` (base64url without padding); the header is
//! always `{"typ":"JWT","alg":"ed25519-nkey"}` and the signature is Ed25519 by the issuer's nkey
//! over the first two parts. [`decode`] checks the header, the signature against `iss`, the claim
//! type and version, and the time window; the `verify_*` functions then check that the issuer is
//! trusted by the level above (operator → account → user).

mod claims;

pub use claims::*;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use serde::{Deserialize, Serialize};

/// Largest token we accept (the server refuses anything larger).
pub const MAX_TOKEN_LEN: usize = 1024 * 1024;
/// The only header Wegweiser writes.
pub const HEADER_JSON: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

/// Why a token was refused or could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// Not three base64url parts, or a part did not decode.
    #[error("malformed JWT: {0}")]
    Malformed(&'static str),
    /// The token is larger than [`MAX_TOKEN_LEN`].
    #[error("JWT too large: {len} bytes, at most {MAX_TOKEN_LEN} are allowed")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// The header is not a NATS v2 header.
    #[error("unsupported JWT header: typ must be JWT and alg ed25519-nkey")]
    BadHeader,
    /// The issuer is not a valid public nkey.
    #[error("JWT issuer is not a valid public nkey")]
    BadIssuer,
    /// The signature does not verify: the token was altered or signed by another key.
    #[error("JWT signature does not verify (tampered, or not signed by its issuer)")]
    BadSignature,
    /// The claims did not parse.
    #[error("JWT claims are not valid JSON for this claim type: {0}")]
    BadClaims(String),
    /// `nats.type` was not the expected one.
    #[error("JWT is a {found:?} claim, expected {expected:?}")]
    WrongType {
        /// Expected type.
        expected: &'static str,
        /// Found type.
        found: String,
    },
    /// `nats.version` was not 2.
    #[error("JWT claim version {0} is not supported (only 2)")]
    UnsupportedVersion(u8),
    /// `exp` has passed.
    #[error("JWT expired at {exp} (now {now})")]
    Expired {
        /// Expiry.
        exp: i64,
        /// Now.
        now: i64,
    },
    /// `nbf` is in the future.
    #[error("JWT not valid before {nbf} (now {now})")]
    NotYetValid {
        /// Not before.
        nbf: i64,
        /// Now.
        now: i64,
    },
    /// The issuer is not one the verifying level trusts.
    #[error("JWT issuer {issuer} is not trusted here: {why}")]
    UntrustedIssuer {
        /// The issuer key.
        issuer: String,
        /// Why.
        why: &'static str,
    },
    /// The user is revoked by its account.
    #[error("user {user} is revoked by its account")]
    Revoked {
        /// The user key.
        user: String,
    },
    /// The signing key pair cannot sign (public key only).
    #[error("cannot sign: {0}")]
    Signing(String),
}

/// A JWT: the standard claims plus the NATS body of kind `N`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims<N> {
    /// Unique id of this token.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jti: String,
    /// Issued at (unix seconds).
    #[serde(default)]
    pub iat: i64,
    /// Issuer public key.
    #[serde(default)]
    pub iss: String,
    /// Name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Subject public key.
    #[serde(default)]
    pub sub: String,
    /// Audience.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub aud: String,
    /// Expiry (unix seconds), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// Not before (unix seconds), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// The NATS body.
    pub nats: N,
}

/// A fresh random `jti`: 160 bits, base32 without padding (32 characters).
pub fn new_jti() -> String {
    let bytes: [u8; 20] = rand::random();
    data_encoding::BASE32_NOPAD.encode(&bytes)
}

impl<N: NatsClaim> Claims<N> {
    /// Claims about `sub` with this name, issued now, with a fresh `jti` and no expiry.
    pub fn new(sub: impl Into<String>, name: impl Into<String>, nats: N) -> Self {
        Self {
            jti: new_jti(),
            iat: crate::time::now(),
            iss: String::new(),
            name: name.into(),
            sub: sub.into(),
            aud: String::new(),
            exp: None,
            nbf: None,
            nats,
        }
    }

    /// Sets `exp` to `iat + seconds`.
    pub fn expires_in(mut self, seconds: i64) -> Self {
        self.exp = Some(self.iat.saturating_add(seconds));
        self
    }

    /// Sets `iat` (keeps `exp - iat` if an expiry was set).
    pub fn issued_at(mut self, iat: i64) -> Self {
        if let Some(exp) = self.exp {
            self.exp = Some(iat.saturating_add(exp - self.iat));
        }
        self.iat = iat;
        self
    }

    /// Signs with `signer` (which becomes `iss`) and returns the token.
    pub fn encode(mut self, signer: &nkeys::KeyPair) -> Result<String, JwtError> {
        self.iss = signer.public_key();
        encode_signed(&self, signer)
    }
}

/// Serializes `claims` as they are (with their `iss`) and signs them with `signer`.
fn encode_signed<N: Serialize>(
    claims: &Claims<N>,
    signer: &nkeys::KeyPair,
) -> Result<String, JwtError> {
    let body = serde_json::to_vec(claims).map_err(|e| JwtError::BadClaims(e.to_string()))?;
    let header = B64.encode(HEADER_JSON);
    let mut token = String::with_capacity(header.len() + body.len() * 4 / 3 + 100);
    token.push_str(&header);
    token.push('.');
    B64.encode_string(&body, &mut token);
    let sig = signer
        .sign(token.as_bytes())
        .map_err(|e| JwtError::Signing(e.to_string()))?;
    token.push('.');
    B64.encode_string(sig, &mut token);
    Ok(token)
}

#[derive(Deserialize)]
struct Header {
    typ: String,
    alg: String,
}

/// Decodes `token`, verifies its signature by its own `iss`, its type, version and time window
/// at `now` (unix seconds). Trust in the issuer is checked separately by the `verify_*` functions.
pub fn decode<N: NatsClaim>(token: &str, now: i64) -> Result<Claims<N>, JwtError> {
    let claims: Claims<N> = decode_untimed(token)?;
    if let Some(exp) = claims.exp
        && exp > 0
        && now > exp
    {
        return Err(JwtError::Expired { exp, now });
    }
    if let Some(nbf) = claims.nbf
        && nbf > 0
        && nbf > now
    {
        return Err(JwtError::NotYetValid { nbf, now });
    }
    Ok(claims)
}

/// Like [`decode`] without the time checks (for reading back tokens that may have expired).
pub fn decode_untimed<N: NatsClaim>(token: &str) -> Result<Claims<N>, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::TooLarge { len: token.len() });
    }
    let token = token.trim();
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("expected three dot-separated parts"));
    };
    let header = B64
        .decode(h)
        .map_err(|_| JwtError::Malformed("header is not base64url"))?;
    let header: Header =
        serde_json::from_slice(&header).map_err(|_| JwtError::Malformed("header is not JSON"))?;
    if !header.typ.eq_ignore_ascii_case("jwt") || !header.alg.eq_ignore_ascii_case("ed25519-nkey") {
        return Err(JwtError::BadHeader);
    }
    let payload = B64
        .decode(p)
        .map_err(|_| JwtError::Malformed("claims are not base64url"))?;
    let sig = B64
        .decode(s)
        .map_err(|_| JwtError::Malformed("signature is not base64url"))?;
    #[derive(Deserialize)]
    struct Iss {
        #[serde(default)]
        iss: String,
    }
    let iss: Iss =
        serde_json::from_slice(&payload).map_err(|e| JwtError::BadClaims(e.to_string()))?;
    let issuer = nkeys::KeyPair::from_public_key(&iss.iss).map_err(|_| JwtError::BadIssuer)?;
    let signed_len = h.len() + 1 + p.len();
    issuer
        .verify(&token.as_bytes()[..signed_len], &sig)
        .map_err(|_| JwtError::BadSignature)?;
    // Only verified bytes are parsed into claims.
    let claims: Claims<N> =
        serde_json::from_slice(&payload).map_err(|e| JwtError::BadClaims(e.to_string()))?;
    if claims.nats.claim_type() != N::TYPE {
        return Err(JwtError::WrongType {
            expected: N::TYPE,
            found: claims.nats.claim_type().to_owned(),
        });
    }
    if claims.nats.claim_version() != 2 {
        return Err(JwtError::UnsupportedVersion(claims.nats.claim_version()));
    }
    Ok(claims)
}

/// Decodes an operator JWT and checks it is self-signed by one of `trusted` operator keys.
pub fn verify_operator(
    token: &str,
    trusted: &[&str],
    now: i64,
) -> Result<Claims<OperatorNats>, JwtError> {
    let c: Claims<OperatorNats> = decode(token, now)?;
    if c.iss != c.sub || !trusted.contains(&c.sub.as_str()) {
        return Err(JwtError::UntrustedIssuer {
            issuer: c.iss,
            why: "not a trusted operator identity key",
        });
    }
    Ok(c)
}

/// Decodes an account JWT and checks its issuer against the operator (strict signing key usage
/// means only operator signing keys may sign accounts).
pub fn verify_account(
    token: &str,
    operator: &Claims<OperatorNats>,
    now: i64,
) -> Result<Claims<AccountNats>, JwtError> {
    let c: Claims<AccountNats> = decode(token, now)?;
    let by_signing_key = operator.nats.signing_keys.contains(&c.iss);
    let by_identity = c.iss == operator.sub;
    if !(by_signing_key || by_identity && !operator.nats.strict_signing_key_usage) {
        return Err(JwtError::UntrustedIssuer {
            issuer: c.iss,
            why: if by_identity {
                "the operator requires accounts to be signed by a signing key"
            } else {
                "not the operator or one of its signing keys"
            },
        });
    }
    Ok(c)
}

/// Decodes a user JWT and checks it against its account: issued by the account or one of its
/// signing keys (with `issuer_account` set), not revoked, and for a scoped key, carrying no
/// permissions or limits of its own.
pub fn verify_user(
    token: &str,
    account: &Claims<AccountNats>,
    strict: bool,
    now: i64,
) -> Result<Claims<UserNats>, JwtError> {
    let c: Claims<UserNats> = decode(token, now)?;
    let untrusted = |why| JwtError::UntrustedIssuer {
        issuer: c.iss.clone(),
        why,
    };
    if c.iss == account.sub {
        if strict {
            return Err(untrusted(
                "the operator requires users to be signed by an account signing key",
            ));
        }
    } else {
        let Some(key) = account.nats.signing_key(&c.iss) else {
            return Err(untrusted("not the account or one of its signing keys"));
        };
        if c.nats.issuer_account.as_deref() != Some(account.sub.as_str()) {
            return Err(untrusted("issuer_account does not name the account"));
        }
        if matches!(key, SigningKey::Scoped(_)) && !c.nats.limits.is_empty() {
            return Err(untrusted(
                "users of a scoped signing key must carry no permissions or limits",
            ));
        }
    }
    if account.nats.is_revoked(&c.sub, c.iat) {
        return Err(JwtError::Revoked { user: c.sub });
    }
    Ok(c)
}

#[cfg(test)]
mod tests;
