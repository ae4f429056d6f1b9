//! The Wegweiser agent: enrolls a device, keeps it connected to its tenant's NATS account,
//! sends reports, renews its credentials and executes signed commands.
//!
//! - [`enroll`]: trade an enrollment token for a device identity (HTTPS); the key is made here
//!   and its seed never leaves the device; the command trust root is pinned here.
//! - [`run`]: the service loop (NATS over TLS, heartbeats, renewal, key rotation, shutdown).
//! - [`commands`]: signed commands (verify, replay check, local policy, execute, answer);
//!   [`trust`]: the pinned trust root and keyset (`trust.json`); [`replay`]: the command ids
//!   seen (`commands.seen`).
//! - [`status`]: `status.json` and the `status` report.
//! - [`report`]: reports through the offline [`spool`], delivered with JetStream acknowledgements.
//! - [`paths`], [`config`], [`store`]: where files live, `agent.toml`, seed and JWT on disk.
//! - [`facts`]: what the device says about itself; [`schedule`]: backoff and renewal times.
//! - [`platform`]: everything OS-specific (permissions, atomic writes, process checks).
//! - [`cli`]: the command line; `main.rs` only parses it and calls [`cli::main`].
//!
//! End-to-end tests drive the library directly:
//!
//! ```no_run
//! use wegweiser_agent::{enroll::{enroll, EnrollOptions}, paths::Paths};
//! use wegweiser_shared::secret::SecretString;
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let paths = Paths::in_dir("/tmp/agent-1");
//! let summary = enroll(&paths, &EnrollOptions {
//!     url: "https://127.0.0.1:8443".into(),
//!     token: SecretString::new("wgt_…".into()),
//!     ca_file: Some("/tmp/ca.pem".into()),
//!     force: false,
//!     machine_id: Some("test-machine-1".into()),
//! })?; // blocking: from async code, call it in `spawn_blocking`
//! println!("{}", summary.device_id);
//! // then: wegweiser_agent::run::run(&paths, shutdown_future).await
//! # Ok(()) }
//! ```
// `deny`, not `forbid`: `platform/windows.rs` (Win32 calls, each `unsafe` block justified) is
// the one module that allows it.
#![deny(unsafe_code)]

// The workspace's `async-nats` entry carries JetStream and KV for the control plane; the agent
// uses a separate, lean entry of the same crate (core NATS only) under this name.
extern crate async_nats_lean as async_nats;

pub mod cli;
pub mod collect;
pub mod commands;
pub mod config;
pub mod enroll;
pub mod facts;
pub mod paths;
pub mod platform;
pub mod replay;
pub mod report;
pub mod run;
pub mod schedule;
pub mod service;
pub mod spool;
pub mod status;
pub mod store;
pub mod trust;

#[cfg(test)]
pub(crate) mod testutil;
