//! `keyplane-control`: the single owner of Keyplane's durable state.
//!
//! It keeps providers, credentials (sealed at rest), the model catalog, client keys (hashes only)
//! and the usage ledger in one sled store ([`store`]); compiles them into route tables and pushes
//! those to data planes ([`routes`]); and ingests the data planes' usage, idempotently
//! ([`ledger`]). Everything reaches the outside through [`grpc`], and operators' browsers through
//! [`console`].

pub mod backup;
pub mod catalog;
pub mod catalog_sync;
pub mod chains;
pub mod config;
pub mod console;
pub mod creds;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod keys;
pub mod leases;
pub mod ledger;
pub mod metrics;
pub mod money;
pub mod nodes;
pub mod period;
pub mod price_import;
pub mod prices;
pub mod request_bodies;
pub mod request_log;
pub mod rollup;
pub mod rotate;
pub mod routes;
pub mod store;
pub mod tls;
