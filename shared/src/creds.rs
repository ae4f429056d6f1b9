//! The `.creds` file: a user JWT and its nkey seed, in the armoured layout nsc writes.
//!
//! ```text
//! -----BEGIN NATS USER JWT-----
//! eyJ0eXAiOiJKV1Qi...
//! ------END NATS USER JWT------
//!
//! ************************* IMPORTANT *************************
//! NKEY Seed printed below can be used to sign and prove identity.
//! NKEYs are sensitive and should be treated as secrets.
//!
//! -----BEGIN USER NKEY SEED-----
//! SUAM...
//! ------END USER NKEY SEED------
//!
//! *************************************************************
//! ```
//!
//! async-nats, nats.go, nats-py and the nats CLI all read this layout. [`Creds::parse`] is
//! strict: exactly one JWT block and one seed block, a user seed whose public key is the JWT's
//! subject, and a JWT whose signature verifies.

use crate::{
    jwt::{self, Claims, JwtError, UserNats},
    secret::SecretString,
};
use zeroize::Zeroizing;

/// Largest creds file accepted.
pub const MAX_CREDS_LEN: usize = 64 * 1024;

/// Why a creds file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredsError {
    /// Larger than [`MAX_CREDS_LEN`].
    #[error(
        "creds file too large ({len} bytes, at most {MAX_CREDS_LEN}); is this really a .creds file?"
    )]
    TooLarge {
        /// Its size.
        len: usize,
    },
    /// A block is missing or unterminated.
    #[error("malformed creds file: {0}; regenerate it with `wegweiser` or nsc")]
    Malformed(&'static str),
    /// The seed is not a valid user nkey seed.
    #[error("the creds file's seed is not a valid user nkey seed (file damaged?)")]
    BadSeed,
    /// The JWT is invalid.
    #[error("the creds file's JWT is invalid: {0}")]
    Jwt(#[from] JwtError),
    /// The seed does not belong to the JWT's subject.
    #[error("the creds file's seed does not match its JWT (the JWT was issued for another key)")]
    Mismatch,
}

/// A parsed creds file. The seed is a secret; `Debug` never prints it.
#[derive(Debug, Clone)]
pub struct Creds {
    /// The user JWT.
    pub jwt: String,
    /// The user nkey seed.
    pub seed: SecretString,
}

const JWT_BEGIN: &str = "-----BEGIN NATS USER JWT-----";
const JWT_END: &str = "------END NATS USER JWT------";
const SEED_BEGIN: &str = "-----BEGIN USER NKEY SEED-----";
const SEED_END: &str = "------END USER NKEY SEED------";

impl Creds {
    /// Renders the armoured file.
    pub fn render(jwt: &str, seed: &SecretString) -> SecretString {
        SecretString::new(format!(
            "{JWT_BEGIN}\n{jwt}\n{JWT_END}\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\
             NKEYs are sensitive and should be treated as secrets.\n\n\
             {SEED_BEGIN}\n{}\n{SEED_END}\n\n\
             *************************************************************\n",
            seed.expose()
        ))
    }

    /// Parses a creds file and checks that the seed and JWT belong together and that the JWT's
    /// signature verifies. Expiry is not checked here (see [`Creds::claims`]).
    pub fn parse(text: &str) -> Result<Self, CredsError> {
        if text.len() > MAX_CREDS_LEN {
            return Err(CredsError::TooLarge { len: text.len() });
        }
        let jwt = block(text, JWT_BEGIN, JWT_END)?;
        let seed = Zeroizing::new(block(text, SEED_BEGIN, SEED_END)?.to_owned());
        if !seed.starts_with("SU") {
            return Err(CredsError::BadSeed);
        }
        let kp = nkeys::KeyPair::from_seed(&seed).map_err(|_| CredsError::BadSeed)?;
        let claims: Claims<UserNats> = jwt::decode_untimed(jwt)?;
        if claims.sub != kp.public_key() {
            return Err(CredsError::Mismatch);
        }
        Ok(Self {
            jwt: jwt.to_owned(),
            seed: SecretString::new(seed.to_string()),
        })
    }

    /// The JWT's claims, checked for expiry and not-before at `now`.
    pub fn claims(&self, now: i64) -> Result<Claims<UserNats>, CredsError> {
        Ok(jwt::decode(&self.jwt, now)?)
    }
}

/// The single non-empty line between `begin` and `end`; refuses duplicates.
fn block<'a>(text: &'a str, begin: &str, end: &str) -> Result<&'a str, CredsError> {
    let mut found = None;
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if line != begin {
            continue;
        }
        if found.is_some() {
            return Err(CredsError::Malformed("a block appears twice"));
        }
        let mut value = None;
        loop {
            match lines.next() {
                None => return Err(CredsError::Malformed("a block is not terminated")),
                Some(l) if l == end => break,
                Some("") => {}
                Some(l) if value.is_none() => value = Some(l),
                Some(_) => return Err(CredsError::Malformed("a block holds more than one line")),
            }
        }
        found = Some(value.ok_or(CredsError::Malformed("a block is empty"))?);
    }
    found.ok_or(if begin == JWT_BEGIN {
        CredsError::Malformed("no NATS USER JWT block")
    } else {
        CredsError::Malformed("no USER NKEY SEED block")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::UserNats;

    fn sample() -> (String, SecretString) {
        let acc = nkeys::KeyPair::new_account();
        let user = nkeys::KeyPair::new_user();
        let jwt = Claims::new(user.public_key(), "t", UserNats::scoped())
            .expires_in(60)
            .encode(&acc)
            .unwrap();
        (jwt, SecretString::new(user.seed().unwrap()))
    }

    #[test]
    fn render_then_parse_round_trips() {
        let (jwt, seed) = sample();
        let text = Creds::render(&jwt, &seed);
        let c = Creds::parse(text.expose()).unwrap();
        assert_eq!(c.jwt, jwt);
        assert_eq!(c.seed.expose(), seed.expose());
        assert!(c.claims(crate::time::now()).is_ok());
        assert!(!format!("{c:?}").contains(seed.expose()));
        // CRLF line endings, as a Windows editor may leave them.
        let crlf = text.expose().replace('\n', "\r\n");
        assert_eq!(Creds::parse(&crlf).unwrap().jwt, jwt);
    }

    #[test]
    fn malformed_tampered_and_mismatched_files_are_refused() {
        let (jwt, seed) = sample();
        let good = Creds::render(&jwt, &seed).expose().to_owned();
        assert!(matches!(Creds::parse(""), Err(CredsError::Malformed(_))));
        assert!(matches!(
            Creds::parse(&good.replace(JWT_END, "")),
            Err(CredsError::Malformed(_))
        ));
        let twice = format!("{good}{good}");
        assert!(matches!(
            Creds::parse(&twice),
            Err(CredsError::Malformed(_))
        ));
        // Tampered JWT: change one character of the claims part.
        let mid = jwt.find('.').unwrap() + 5;
        let mut t = jwt.clone().into_bytes();
        t[mid] = if t[mid] == b'A' { b'B' } else { b'A' };
        let tampered = good.replace(&jwt, std::str::from_utf8(&t).unwrap());
        assert!(matches!(Creds::parse(&tampered), Err(CredsError::Jwt(_))));
        // Another user's seed.
        let other = nkeys::KeyPair::new_user().seed().unwrap();
        let swapped = good.replace(seed.expose(), &other);
        assert_eq!(Creds::parse(&swapped).unwrap_err(), CredsError::Mismatch);
        // Not a user seed.
        let acc_seed = nkeys::KeyPair::new_account().seed().unwrap();
        let wrong_kind = good.replace(seed.expose(), &acc_seed);
        assert_eq!(Creds::parse(&wrong_kind).unwrap_err(), CredsError::BadSeed);
        let huge = "x".repeat(MAX_CREDS_LEN + 1);
        assert!(matches!(
            Creds::parse(&huge),
            Err(CredsError::TooLarge { .. })
        ));
        // Error text never carries the seed.
        let e = Creds::parse(&swapped).unwrap_err().to_string();
        assert!(!e.contains(&other));
    }
}
