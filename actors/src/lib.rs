//! switchyard's actors: where tenants and campaigns are first-class queues.
//!
//! A message's way through them (see DESIGN.md), each step in its own module:
//!
//! - [`engine`] — the door: spooled mail goes straight to its scheduled queue;
//! - [`scheduled_queue`] — ScheduledQueueActor: the queue `campaign:tenant@domain`, its
//!   retry schedule and holds, route and source choice ([`pool`]), and settlement;
//! - [`ready_queue`] — ReadyQueueActor: per (egress source, site), shaping ([`shaping`],
//!   [`limits`]), a domain's MTA-STS policy ([`mta_sts`]) and connections;
//! - [`connection`] — ConnectionActor: one SMTP session, bounce classes ([`bounce`]);
//! - [`classifier`] — ClassifierActor: every reply, against the automation rules
//!   ([`automation`]);
//! - [`suspension_register`] — SuspensionRegister: suspensions, throttles ([`throttle`]),
//!   bounce orders ([`timed_bounce`]) and shaping overrides, durable and self-expiring, read by the others through
//!   [`suspension::SuspensionView`];
//! - [`tenant`], [`campaign`] — TenantActor, CampaignActor: a tenant's campaigns and a
//!   campaign's scheduled queues, to which they pass what concerns them all.
//!
//! What they say to each other is in [`messages`]; what they are is in [`message`]
//! (queued messages, replies) and [`record`] (log records); how they find each other is
//! in [`registry`]. The actors reach spool, log, DNS and network only through the traits
//! of [`ports`], so they can be run and tested without sockets ([`memory`] has in-memory
//! ports; `actors/tests/` uses them).
//!
//! Modules depend on each other only in the direction of the mail — engine → tenant →
//! campaign → scheduled queue → ready queue → connection — never back: answers travel as
//! `Recipient`s of message types. `scripts/module-cycles.py` checks it in CI.

pub mod automation;
pub mod bounce;
pub mod campaign;
pub mod classifier;
pub mod cluster;
pub mod connection;
pub mod engine;
pub mod limits;
pub mod memory;
pub mod message;
pub mod messages;
pub mod mta_sts;
pub mod pool;
pub mod ports;
pub mod queue_policy;
pub mod ready_queue;
pub mod record;
pub mod registry;
pub mod scheduled_queue;
pub mod shaping;
pub mod suspension;
pub mod suspension_register;
pub mod tenant;
pub mod test_hooks;
pub mod throttle;
pub mod timed_bounce;
