//! Every message the actors send each other, in one place: a reader sees here the whole
//! conversation of the delivery engine, and no actor module needs another's to name them.
//!
//! The messages are data. A message that must be answered carries a `Recipient` of another
//! message type from this file, never an actor's address type, so the modules of the actors
//! depend on each other only in the direction of the mail (see `lib.rs`).
//!
//! In the order a message meets them:
//!
//! - ingress → scheduled queue: [`Enqueue`];
//! - scheduled queue → ready queue: [`Offer`] (of [`ReadyItem`]s), [`Withdraw`]; back:
//!   [`ReadyRoom`], [`BackToSchedule`];
//! - connection → ready queue: [`NextMessage`], [`ConnectResult`], [`ConnectionClosed`];
//! - connection → scheduled queue: [`DeliveryOutcome`]; → classifier: [`ReplySeen`];
//! - suspension register → tenant → campaign → scheduled queue: [`Recheck`];
//!   → ready queue: [`SourceSuspension`], [`Reshape`];
//! - classifier → register: [`Suspend`], [`SetThrottle`], [`SetBounce`], [`SetOverride`];
//!   → tenant: [`AdminBounce`];
//! - admin API → actors: [`QueueInfo`], [`ReadyQueueInfo`], [`AdminBounce`], [`Suspend`],
//!   [`SetThrottle`], [`SetBounce`], [`Resume`], [`ListSuspensions`], [`ListThrottles`],
//!   [`ListBounces`], [`ListOverrides`], [`Restore`].

use crate::message::{MessageKey, Peer, QueueIdentity, QueuedMessage, Reply};
use crate::mta_sts::{StsApplied, StsPolicy};
use crate::ports::MxHost;
use crate::suspension::{Override, Suspension};
use crate::throttle::Throttle;
use crate::timed_bounce::TimedBounce;
use actix::prelude::*;
use std::sync::Arc;

/// New messages for a scheduled queue.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Enqueue {
    /// The messages.
    pub messages: Vec<QueuedMessage>,
    /// The sender's place among the batches waiting for the queue (see
    /// [`crate::registry::Lease`]); given back when the queue has taken the messages.
    pub room: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// How ready queues and connections reach a scheduled queue (one per queue, shared by
/// every message it hands out).
pub struct QueueLine {
    /// Where an attempt's outcome goes.
    pub outcome: Recipient<DeliveryOutcome>,
    /// Where messages handed back undelivered go.
    pub back: Recipient<BackToSchedule>,
    /// Where "there is room again" goes after an offer was refused in part.
    pub room: Recipient<ReadyRoom>,
}

/// A message handed to a ready queue, with where its outcome goes.
pub struct ReadyItem {
    /// The message.
    pub message: QueuedMessage,
    /// Its scheduled queue's identity.
    pub queue: Arc<QueueIdentity>,
    /// Its scheduled queue.
    pub to: Arc<QueueLine>,
}

/// Messages offered by a scheduled queue; the reply is how many (from the front) were taken.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Offer {
    /// The messages, in order.
    pub items: Vec<ReadyItem>,
    /// The site's current hosts.
    pub hosts: Arc<[MxHost]>,
    /// The domain's MTA-STS policy, when it has one (under `enforce` or `testing` its lane
    /// is its own).
    pub mta_sts: Option<Arc<StsPolicy>>,
    /// The offering scheduled queue's name.
    pub queue: Arc<str>,
    /// The offering scheduled queue.
    pub from: Arc<QueueLine>,
}

/// A ready queue that refused a scheduled queue's messages has room again.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReadyRoom;

/// Give back the messages of one scheduled queue (it is held by a suspension, or bouncing).
#[derive(Message)]
#[rtype(result = "Vec<MessageKey>")]
pub struct Withdraw {
    /// Whose messages.
    pub queue: Arc<QueueIdentity>,
}

/// Messages a ready queue hands back undelivered (its source was suspended, or a Bounce
/// rule fired): rescheduled due now, attempts unchanged — or bounced.
#[derive(Message)]
#[rtype(result = "()")]
pub struct BackToSchedule {
    /// Which messages.
    pub keys: Vec<MessageKey>,
    /// Bounce them with this reason instead.
    pub bounce: Option<String>,
}

/// Recipients of one message at one site, sent in one transaction (up to
/// `max_recipients_per_batch`); never empty.
pub type Batch = Vec<ReadyItem>;

/// A connection asks for its next message (a batch of its recipients); `None` after the
/// idle timeout.
#[derive(Message)]
#[rtype(result = "Option<Batch>")]
pub struct NextMessage {
    /// The connection's first request (it was counted as starting).
    pub first: bool,
}

/// A connection attempt's result: `None` when it connected, else the failure's reply.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ConnectResult(pub Option<Reply>);

/// A connection ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ConnectionClosed;

/// The outcome of one delivery attempt, for the message's scheduled queue.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DeliveryOutcome {
    /// Which message.
    pub key: MessageKey,
    /// The reply that decides it.
    pub reply: Reply,
    /// Who answered.
    pub peer: Option<Peer>,
    /// From which source.
    pub source: Arc<str>,
    /// To which site.
    pub site: Arc<str>,
    /// Envelope sender, when the message was read.
    pub sender: Option<String>,
    /// Size sent.
    pub size: Option<u64>,
    /// Bounce class of a failure.
    pub bounce_class: Option<String>,
    /// The MTA-STS policy the attempt went under.
    pub mta_sts: Option<Arc<StsApplied>>,
}

/// A reply seen by a connection, with whose mail it was about, for automation.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct ReplySeen {
    /// The reply.
    pub reply: Reply,
    /// Whose message it answered.
    pub queue: Arc<QueueIdentity>,
    /// From which source.
    pub source: Arc<str>,
    /// To which site.
    pub site: Arc<str>,
}

/// The suspensions in force changed: look again whether one holds you (and tell your
/// scheduled queues). The suspension register is the truth; this only says "now".
#[derive(Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct Recheck;

/// The source was suspended towards this ready queue's site (hand everything back, take
/// nothing), or the suspension ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SourceSuspension {
    /// Suspended now.
    pub suspended: bool,
}

/// The overrides for a site, or the shaping files (reload), changed: recompute the settings.
#[derive(Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct Reshape;

/// Bounce queued mail with AdminBounce records: one tenant's (optionally only one
/// campaign's, one domain's or one site's); the reply is how many recipients were bounced.
#[derive(Message, Clone)]
#[rtype(result = "usize")]
pub struct AdminBounce {
    /// Only this campaign (`Some(None)`: only mail without a campaign).
    pub campaign: Option<Option<String>>,
    /// Only mail to this domain.
    pub domain: Option<String>,
    /// Only mail routed to this site.
    pub site: Option<String>,
    /// Why, for the records.
    pub reason: String,
}

/// Suspend (or extend the suspension of) a target; the reply is the suspension as stored.
#[derive(Message)]
#[rtype(result = "Suspension")]
pub struct Suspend(pub Suspension);

/// End a suspension, throttle or override now; `true` when the id existed.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Resume {
    /// Its id.
    pub id: String,
}

/// Every active suspension, oldest first.
#[derive(Message)]
#[rtype(result = "Vec<Suspension>")]
pub struct ListSuspensions;

/// Set (or extend) a shaping override.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetOverride(pub Override);

/// Every active shaping override, oldest first.
#[derive(Message)]
#[rtype(result = "Vec<Override>")]
pub struct ListOverrides;

/// Throttle (or re-throttle) a tenant or campaign; the reply is the throttle as stored.
#[derive(Message)]
#[rtype(result = "Throttle")]
pub struct SetThrottle(pub Throttle);

/// Every active throttle, oldest first.
#[derive(Message)]
#[rtype(result = "Vec<Throttle>")]
pub struct ListThrottles;

/// Start (or extend) a bounce order; the reply is the order as stored.
#[derive(Message)]
#[rtype(result = "TimedBounce")]
pub struct SetBounce(pub TimedBounce);

/// Every active bounce order, oldest first.
#[derive(Message)]
#[rtype(result = "Vec<TimedBounce>")]
pub struct ListBounces;

/// Suspensions, throttles and overrides read back from the spool at start: put back into
/// effect with their remaining time (those already past end at once, with their end
/// record).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Restore {
    /// Suspensions.
    pub suspensions: Vec<Suspension>,
    /// Overrides.
    pub overrides: Vec<Override>,
    /// Throttles.
    pub throttles: Vec<Throttle>,
    /// Bounce orders.
    pub bounces: Vec<TimedBounce>,
    /// Deletions kept for the cluster (`tombstone/ID`).
    pub tombstones: Vec<crate::cluster::PolicyChange>,
}

/// Changes of the shared policy made on other nodes (newest wins).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ApplyShared(pub Vec<crate::cluster::PolicyChange>);

/// Everything the suspension register knows, live or deleted, to reconcile with the
/// cluster.
#[derive(Message)]
#[rtype(result = "Vec<crate::cluster::PolicyChange>")]
pub struct SharedSnapshot;

/// A scheduled queue went away (reaped); its campaign forgets it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct QueueGone {
    /// Its domain.
    pub domain: Arc<str>,
    /// Its serial number (a newer queue for the same domain may be registered already).
    pub serial: u64,
}

/// A campaign went away (reaped); its tenant forgets it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CampaignGone {
    /// Its campaign.
    pub campaign: Option<Arc<str>>,
    /// Its serial number.
    pub serial: u64,
}

/// What a scheduled queue holds, for `GET /api/v1/queues`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScheduledInfo {
    /// `campaign:tenant@domain`.
    pub name: String,
    /// Tenant.
    pub tenant: String,
    /// Campaign.
    pub campaign: Option<String>,
    /// Destination domain.
    pub domain: String,
    /// Messages waiting or in flight.
    pub messages: usize,
    /// Held by a suspension.
    pub suspended: bool,
}

/// Describe the scheduled queue(s) under the receiver.
#[derive(Message, Clone, Copy)]
#[rtype(result = "Vec<ScheduledInfo>")]
pub struct QueueInfo;

/// What a ready queue holds, for `GET /api/v1/queues`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReadyInfo {
    /// `source->site`.
    pub name: String,
    /// Egress source.
    pub source: String,
    /// Site.
    pub site: String,
    /// Messages waiting for a connection.
    pub messages: usize,
    /// Open connections.
    pub connections: usize,
    /// The source is suspended towards the site.
    pub suspended: bool,
}

/// Describe the ready queue.
#[derive(Message)]
#[rtype(result = "ReadyInfo")]
pub struct ReadyQueueInfo;

/// Tell an actor without waiting for it: only a full mailbox makes the sender wait for
/// room (the bound on every hand-off). `Err` gives the message back if the actor is gone.
pub async fn tell<M>(to: &Recipient<M>, msg: M) -> Result<(), ()>
where
    M: Message + Send + 'static,
    M::Result: Send,
{
    match to.try_send(msg) {
        Ok(()) => Ok(()),
        Err(SendError::Full(msg)) => to.send(msg).await.map(|_| ()).map_err(|_| ()),
        Err(SendError::Closed(_)) => Err(()),
    }
}

/// Gather the answers of several actors asked for [`QueueInfo`] (a gone actor adds none).
pub async fn gather_infos<F>(asks: Vec<F>) -> Vec<ScheduledInfo>
where
    F: std::future::Future<Output = Result<Vec<ScheduledInfo>, MailboxError>>,
{
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flat_map(|r| r.unwrap_or_default())
        .collect()
}

/// Add up the counts of several actors asked for an [`AdminBounce`].
pub async fn sum_counts<F>(asks: Vec<F>) -> usize
where
    F: std::future::Future<Output = Result<usize, MailboxError>>,
{
    futures::future::join_all(asks)
        .await
        .into_iter()
        .map(|r| r.unwrap_or(0))
        .sum()
}
