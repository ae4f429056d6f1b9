//! The Wegweiser control plane: a NATS credential authority for many tenants.
//!
//! - [`init`] creates the platform's keys, the keystore and a nats-server configuration.
//! - [`authority::Authority`] creates and deletes tenants (one NATS account each), issues device
//!   and technician JWTs, revokes users and rotates signing keys, with every account change
//!   pushed to nats-server and checked as applied.
//! - [`hierarchy`] keeps each tenant's organizations and groups, and moves and deletes groups
//!   and devices.
//! - [`certs`] makes development TLS material.
//! - [`cli`] is the `wegweiser` command line; `main.rs` only calls it.
#![forbid(unsafe_code)]

pub mod api;
pub mod api_admin;
pub mod api_creds;
pub mod api_hierarchy;
pub mod api_live;
pub mod audit;
pub mod authority;
pub mod blocker;
pub mod certs;
pub mod cli;
pub mod cli_api;
pub mod cli_commands;
pub mod cli_hierarchy;
pub mod cli_users;
pub mod commands;
pub mod config;
pub mod dashboard;
pub mod demo;
pub mod device_cookie;
pub mod enrollment;
pub mod hierarchy;
pub mod http;
pub mod identity;
pub mod ingest;
pub mod init;
pub mod keystore;
pub mod metrics;
pub mod nats_server;
pub mod rbac;
pub mod retention;
pub mod seal;
pub mod service;
pub mod sessions;
pub mod tenant;
pub mod trust;
pub mod users;
pub mod web;
