//! switchyard's actors: where tenants and campaigns are first-class queues.
//!
//! A message's way through them (see DESIGN.md):
//!
//! - [`engine`] — the door: spooled mail is submitted to its tenant;
//! - [`tenant`] — TenantActor: the tenant's pool, suspensions and QoS;
//! - [`campaign`] — CampaignActor: one campaign's scheduled queues, created and reaped;
//! - [`queue`] — QueueActor: the scheduled queue `campaign:tenant@domain`, retry schedule,
//!   source choice ([`pool`]), outcomes and their log records;
//! - [`ready_queue`] — ReadyQueueActor: per (egress source, site), shaping ([`shaping`]) and
//!   connections;
//! - [`connection`] — ConnectionActor: one SMTP session;
//! - [`classifier`] — ClassifierActor: every reply, bounce classes ([`bounce`]) and
//!   automation rules ([`automation`]);
//! - [`suspensions`] — SuspensionsActor: the register of suspensions and shaping
//!   overrides, durable and self-expiring.
//!
//! The actors reach spool, log, DNS and network only through the traits of [`ports`], so
//! they can be run and tested without sockets.

pub mod automation;
pub mod bounce;
pub mod campaign;
pub mod classifier;
pub mod connection;
pub mod engine;
pub mod message;
pub mod pool;
pub mod ports;
pub mod queue;
pub mod ready_queue;
pub mod record;
pub mod schedule;
pub mod shaping;
pub mod suspensions;
pub mod tenant;
