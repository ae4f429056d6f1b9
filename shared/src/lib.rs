//! What the Wegweiser control plane and agent must agree on.
//!
//! This crate is pure: no runtime, no I/O beyond parsing bytes handed to it.
//!
//! - [`ids`]: newtypes for tenant, device and user ids and for NATS public keys, parsed at the
//!   boundary so the rest of the code only ever sees valid values.
//! - [`subject`]: the only place NATS subjects and permission templates are built.
//! - [`jwt`]: NATS JWT v2 claims (operator, account, user, activation, generic), signing and
//!   verification up to a trusted operator.
//! - [`enroll`]: enrollment and renewal messages.
//! - [`creds`]: the armoured `.creds` file layout that nsc writes and NATS clients load.
//! - [`telemetry`]: device reports (heartbeat, inventory, metrics, events), version 1.
//! - [`secret`]: secret strings that never print and are wiped on drop.
//!
//! ```
//! use wegweiser_shared::{ids::DeviceId, jwt::{Claims, UserNats}};
//! let account_signing_key = nkeys::KeyPair::new_account();
//! let account = nkeys::KeyPair::new_account();
//! let device = nkeys::KeyPair::new_user();
//! let id: DeviceId = "d-01".parse().unwrap();
//! let mut nats = UserNats::scoped();
//! nats.issuer_account = Some(account.public_key());
//! let claims = Claims::new(device.public_key(), id.as_str(), nats).expires_in(3600);
//! let token = claims.encode(&account_signing_key).unwrap();
//! let back: Claims<UserNats> = wegweiser_shared::jwt::decode(&token, wegweiser_shared::time::now()).unwrap();
//! assert_eq!(back.sub, device.public_key());
//! ```
#![forbid(unsafe_code)]

pub mod command;
pub mod creds;
pub mod dsse;
pub mod enroll;
pub mod ids;
pub mod jwt;
pub mod secret;
pub mod subject;
pub mod telemetry;
pub mod time;
pub mod trust;
