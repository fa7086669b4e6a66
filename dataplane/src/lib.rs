//! `keyplane-dataplane`: the proxy clients talk to.
//!
//! A request loads the route table once ([`gateway::Gateway::table`], an `ArcSwap`), is
//! authenticated by the SHA-256 of its key ([`table::Table::authenticate`]), ranked by estimated
//! cost ([`table::Table::rank`]) and forwarded with failover ([`proxy`]). Usage goes to a local
//! spool and on to the control plane in the background ([`usage`]); no request waits on the
//! control plane. Route tables arrive over a gRPC stream ([`control`]) and are sealed into a
//! snapshot ([`snapshot`]) so that a restart can serve without the control plane.

pub mod attribution;
pub mod capture;
pub mod control;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod gemini_api;
pub mod health;
pub mod leaser;
pub mod limits;
pub mod logbuf;
pub mod logfmt;
pub mod metrics;
pub mod protocol;
pub mod providers;
pub mod proxy;
pub mod redact;
pub mod server;
pub mod snapshot;
pub mod sse;
pub mod table;
pub mod tls;
pub mod usage;
