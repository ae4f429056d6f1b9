//! Identifiers, parsed at the boundary.
//!
//! Every id that ends up inside a NATS subject or a JWT `name` is a single plain subject token
//! (`[A-Za-z0-9_-]`): the server inserts `{{name()}}` into permission templates unchecked, so a
//! device named `*` or `a.>` would otherwise be granted every device's subjects.

use serde::{Deserialize, Serialize};
use std::{fmt, str::FromStr};

/// Why an id or key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The value was empty.
    #[error("{what} is empty")]
    Empty {
        /// What kind of id.
        what: &'static str,
    },
    /// The value was longer than allowed.
    #[error("{what} is {len} characters long; at most {max} are allowed")]
    TooLong {
        /// What kind of id.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The value held a character outside the allowed set.
    #[error("{what} may only contain {allowed}; found {found:?}")]
    BadChar {
        /// What kind of id.
        what: &'static str,
        /// The allowed characters, in words.
        allowed: &'static str,
        /// The offending character.
        found: char,
    },
    /// The value was not a valid NATS public key of the expected kind.
    #[error("not a valid {what} public key (expected an nkey starting with '{prefix}')")]
    BadKey {
        /// What kind of key.
        what: &'static str,
        /// The expected first character.
        prefix: char,
    },
}

fn check_token(what: &'static str, s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { what });
    }
    if s.len() > max {
        return Err(IdError::TooLong {
            what,
            len: s.len(),
            max,
        });
    }
    if let Some(found) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(IdError::BadChar {
            what,
            allowed: "ASCII letters, digits, '-' and '_'",
            found,
        });
    }
    Ok(())
}

/// The impls every string newtype here shares; `FromStr` (the check) is written per type.
macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The value as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }
    };
}

macro_rules! token_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr, $check:expr) => {
        string_newtype!($(#[$doc])* $name);

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                let check: fn(&'static str, &str) -> Result<(), IdError> = $check;
                check($what, s)?;
                Ok(Self(s.to_owned()))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }
    };
}

token_id!(
    /// A tenant (an MSP): a lowercase slug chosen by the platform operator, e.g. `acme-it`.
    TenantId,
    "tenant id",
    63,
    |what, s| {
        check_token(what, s, 63)?;
        if let Some(found) = s.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
            return Err(IdError::BadChar { what, allowed: "lowercase letters, digits and '-'", found });
        }
        if s.starts_with('-') || s.ends_with('-') {
            return Err(IdError::BadChar { what, allowed: "lowercase letters, digits and '-' (not first or last)", found: '-' });
        }
        Ok(())
    }
);

token_id!(
    /// A device: one plain subject token, used as its JWT `name` and in its subjects.
    DeviceId,
    "device id",
    64,
    |what, s| check_token(what, s, 64)
);

token_id!(
    /// A human or service user (a technician, the control-plane service): one plain token.
    UserName,
    "user name",
    64,
    |what, s| check_token(what, s, 64)
);

impl DeviceId {
    /// A fresh random device id: `d` followed by 25 lowercase base32 characters (125 bits).
    pub fn generate() -> Self {
        let bytes: [u8; 16] = rand::random();
        let enc = data_encoding::BASE32_NOPAD
            .encode(&bytes)
            .to_ascii_lowercase();
        Self(format!("d{}", &enc[..25]))
    }
}

macro_rules! public_key {
    ($(#[$doc:meta])* $name:ident, $what:literal, $prefix:literal) => {
        string_newtype!($(#[$doc])* $name);

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                let bad = IdError::BadKey { what: $what, prefix: $prefix };
                if !s.starts_with($prefix) || nkeys::KeyPair::from_public_key(s).is_err() {
                    return Err(bad);
                }
                Ok(Self(s.to_owned()))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

public_key!(
    /// An operator public key (`O…`).
    OperatorKey,
    "operator",
    'O'
);
public_key!(
    /// An account public key (`A…`): one tenant, the system account or the control plane.
    AccountKey,
    "account",
    'A'
);
public_key!(
    /// A user public key (`U…`): a device, a technician or a service user.
    UserKey,
    "user",
    'U'
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_are_single_plain_tokens() {
        for bad in ["", "*", ">", "a.b", "a b", "dev*", "ü", "a\n"] {
            assert!(bad.parse::<DeviceId>().is_err(), "{bad:?} must be refused");
        }
        assert!("x".repeat(65).parse::<DeviceId>().is_err());
        for good in ["d1", "host-01", "A_b-9"] {
            assert_eq!(good.parse::<DeviceId>().unwrap().as_str(), good);
        }
        let g = DeviceId::generate();
        assert_eq!(g.as_str().len(), 26);
        assert_eq!(g.as_str().parse::<DeviceId>().unwrap(), g);
        assert_ne!(DeviceId::generate(), g);
    }

    #[test]
    fn tenant_ids_are_lowercase_slugs() {
        assert!("acme-it".parse::<TenantId>().is_ok());
        for bad in ["Acme", "-acme", "acme-", "ac_me", "", "a.b"] {
            let e = bad.parse::<TenantId>().unwrap_err();
            assert!(!e.to_string().is_empty(), "{bad:?}");
        }
    }

    #[test]
    fn keys_are_checked_for_kind_and_checksum() {
        let a = nkeys::KeyPair::new_account().public_key();
        let u = nkeys::KeyPair::new_user().public_key();
        assert!(a.parse::<AccountKey>().is_ok());
        assert!(u.parse::<UserKey>().is_ok());
        assert!(a.parse::<UserKey>().is_err());
        assert!(u.parse::<AccountKey>().is_err());
        let mut tampered = u.clone().into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(
            tampered.parse::<UserKey>().unwrap_err().to_string(),
            "not a valid user public key (expected an nkey starting with 'U')"
        );
    }

    #[test]
    fn serde_round_trip_refuses_bad_values() {
        let ok: DeviceId = serde_json::from_str("\"dev-1\"").unwrap();
        assert_eq!(serde_json::to_string(&ok).unwrap(), "\"dev-1\"");
        assert!(serde_json::from_str::<DeviceId>("\"dev.*\"").is_err());
    }
}
