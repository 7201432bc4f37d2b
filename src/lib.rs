//! switchyard: an outbound MTA for multi-tenant senders, where tenants and campaigns are
//! first-class queues.
//!
//! This crate is the daemon's edges — CLI plumbing, config, SMTP ingress, spool, logs,
//! metrics export, HTTP. The actors that route and shape mail live in `switchyard-actors`.
//! A message's path: [`ingress`] (SMTP session) → [`spool`] (fsync, then `250`) → the
//! tenant's actors ([`delivery`] wires them) → [`dns`] for the route → [`outbound`] SMTP to
//! the remote MTA; every outcome lands in [`logs`]. Shaping and automation files are read by
//! [`shaping`]; operators use [`http`] (the admin API), [`ctl`] (its command-line client) and
//! [`reload`]. `switchyard sink`, the receiving server of tests and benchmarks, is its own
//! crate (`sink/`, `switchyard-sink`).

pub mod cluster;
pub mod config;
pub mod ctl;
pub mod delivery;
pub mod dkim;
pub mod dns;
pub mod fuzzing;
pub mod http;
pub mod https;
pub mod ingress;
pub mod logs;
pub mod mta_sts;
pub mod outbound;
pub mod reload;
pub mod server;
pub mod shaping;
pub mod spool;
pub mod telemetry;
pub mod webhooks;
