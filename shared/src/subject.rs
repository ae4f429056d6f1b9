//! Every NATS subject Wegweiser uses is built here, and only here.
//!
//! Layout (see `docs/ARCHITECTURE.md` for the full table):
//!
//! | subject | direction | who may publish |
//! |---|---|---|
//! | `wg.<account>.up.<device>.<kind>…` | device → control plane (service import) | that device |
//! | `wg.<account>.down.<device>.<kind>…` | control plane → device (stream import) | the control plane |
//! | `_INBOX.<device>.…` | replies to a device's requests | the server, on behalf of responders |
//!
//! `<account>` is the tenant's NATS account public key: the control-plane account exports
//! `wg.*.up.>` and `wg.*.down.>` with `account_token_position: 2`, so the broker binds that
//! token to the importing account and a tenant can only ever reach its own slot.

use crate::ids::{AccountKey, DeviceId, IdError, UserName};

/// Root token of every Wegweiser subject.
pub const ROOT: &str = "wg";
/// Position (1-based) of the account token in `wg.<account>.…`, bound by the exports.
pub const ACCOUNT_TOKEN_POSITION: u32 = 2;
/// The service the control-plane account exports: everything devices send up.
pub const EXPORT_UP: &str = "wg.*.up.>";
/// The stream the control-plane account exports: everything sent down to devices.
pub const EXPORT_DOWN: &str = "wg.*.down.>";
/// Tag name carrying the devices a technician may watch (`device:<id>`, or `device:*`).
pub const TECHNICIAN_DEVICE_TAG: &str = "device";

/// The system account request subjects the control plane uses.
pub mod sys {
    use crate::ids::AccountKey;

    /// Push (create or update) an account JWT.
    pub const CLAIMS_UPDATE: &str = "$SYS.REQ.CLAIMS.UPDATE";
    /// Delete accounts from a full resolver.
    pub const CLAIMS_DELETE: &str = "$SYS.REQ.CLAIMS.DELETE";
    /// List the accounts a full resolver holds.
    pub const CLAIMS_LIST: &str = "$SYS.REQ.CLAIMS.LIST";
    /// The only subjects the push user may publish on.
    pub const PUSH_PUBLISH: [&str; 3] = [CLAIMS_UPDATE, CLAIMS_DELETE, CLAIMS_LIST];

    /// What the server really holds for a loaded account (imports, jwt, revocations).
    pub fn account_info(account: &AccountKey) -> String {
        format!("$SYS.REQ.ACCOUNT.{account}.INFO")
    }

    /// The connections of one account (with `{"auth":true}`: who signed each one).
    pub fn account_connz(account: &AccountKey) -> String {
        format!("$SYS.REQ.ACCOUNT.{account}.CONNZ")
    }

    /// The only subjects the inspection user may publish on.
    pub const INSPECT_PUBLISH: [&str; 2] = ["$SYS.REQ.ACCOUNT.*.INFO", "$SYS.REQ.ACCOUNT.*.CONNZ"];
}

/// One plain subject token (`[A-Za-z0-9_-]`, no dots, no wildcards), for the `<kind>` parts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Token(String);

impl std::str::FromStr for Token {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let u: UserName = s.parse().map_err(|e| match e {
            IdError::BadChar { allowed, found, .. } => IdError::BadChar {
                what: "subject token",
                allowed,
                found,
            },
            other => other,
        })?;
        Ok(Self(u.as_str().to_owned()))
    }
}

impl Token {
    /// A token known at compile time. Panics on an invalid one, so only for literals.
    pub fn from_static(s: &'static str) -> Self {
        match s.parse() {
            Ok(t) => t,
            Err(e) => panic!("invalid static subject token {s:?}: {e}"),
        }
    }

    /// The token.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn join(parts: &[&str]) -> String {
    parts.join(".")
}

/// `wg.<account>.up.<device>.<kind>.<rest…>`: a device's message to the control plane.
pub fn up(account: &AccountKey, device: &DeviceId, kind: &[Token]) -> String {
    let mut parts = vec![ROOT, account.as_str(), "up", device.as_str()];
    parts.extend(kind.iter().map(Token::as_str));
    join(&parts)
}

/// `wg.<account>.down.<device>.<kind>.<rest…>`: the control plane's message to a device.
pub fn down(account: &AccountKey, device: &DeviceId, kind: &[Token]) -> String {
    let mut parts = vec![ROOT, account.as_str(), "down", device.as_str()];
    parts.extend(kind.iter().map(Token::as_str));
    join(&parts)
}

/// `wg.<account>.up.<device>.>`: everything one device sends.
pub fn up_all(account: &AccountKey, device: &DeviceId) -> String {
    join(&[ROOT, account.as_str(), "up", device.as_str(), ">"])
}

/// `wg.<account>.down.<device>.>`: everything sent to one device.
pub fn down_all(account: &AccountKey, device: &DeviceId) -> String {
    join(&[ROOT, account.as_str(), "down", device.as_str(), ">"])
}

/// `wg.<account>.up.>`: the slot of the up service a tenant account imports.
pub fn import_up(account: &AccountKey) -> String {
    join(&[ROOT, account.as_str(), "up", ">"])
}

/// `wg.<account>.down.>`: the slot of the down stream a tenant account imports.
pub fn import_down(account: &AccountKey) -> String {
    join(&[ROOT, account.as_str(), "down", ">"])
}

/// The inbox prefix a device must use (`_INBOX.<device>`): its template only lets it subscribe there.
pub fn inbox_prefix(user: &str) -> String {
    format!("_INBOX.{user}")
}

/// Permission templates of the scoped signing keys (expanded by the server at connect).
pub mod template {
    /// Device: publish only on its own up subjects.
    pub const DEVICE_PUB: &str = "wg.{{account-subject()}}.up.{{name()}}.>";
    /// Device: receive only its own down subjects.
    pub const DEVICE_SUB_DOWN: &str = "wg.{{account-subject()}}.down.{{name()}}.>";
    /// Device: its own inbox only.
    pub const OWN_INBOX: &str = "_INBOX.{{name()}}.>";
    /// Technician: watch the up subjects of the devices named in its `device:` tags.
    pub const TECHNICIAN_SUB_UP: &str = "wg.{{account-subject()}}.up.{{tag(device)}}.>";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_have_the_documented_shape() {
        let a: AccountKey = nkeys::KeyPair::new_account().public_key().parse().unwrap();
        let d: DeviceId = "dev-1".parse().unwrap();
        let hb = Token::from_static("hb");
        assert_eq!(
            up(&a, &d, std::slice::from_ref(&hb)),
            format!("wg.{a}.up.dev-1.hb")
        );
        assert_eq!(down(&a, &d, &[hb]), format!("wg.{a}.down.dev-1.hb"));
        assert_eq!(up_all(&a, &d), format!("wg.{a}.up.dev-1.>"));
        assert_eq!(import_up(&a), format!("wg.{a}.up.>"));
        assert_eq!(import_down(&a), format!("wg.{a}.down.>"));
        assert_eq!(sys::account_info(&a), format!("$SYS.REQ.ACCOUNT.{a}.INFO"));
        // The exported wildcard's second token is the one the server binds to the importer.
        assert_eq!(
            EXPORT_UP
                .split('.')
                .nth(ACCOUNT_TOKEN_POSITION as usize - 1),
            Some("*")
        );
    }

    #[test]
    fn tokens_refuse_wildcards_and_dots() {
        for bad in ["*", ">", "a.b", "", "a b"] {
            assert!(bad.parse::<Token>().is_err(), "{bad:?}");
        }
        let e = "a.b".parse::<Token>().unwrap_err().to_string();
        assert!(e.contains("subject token"), "{e}");
    }
}
