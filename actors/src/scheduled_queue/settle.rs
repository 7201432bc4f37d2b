//! What an attempt's reply means for a message of a scheduled queue: delivered (2xx),
//! bounced (5xx), deferred with its next retry (4xx), or expired when that retry would pass
//! `max_age` — or bounced by an operator or a rule (AdminBounce), which is no attempt.
//!
//! Each settlement writes one log record, tells the spool (reschedule; or remove, which the
//! event log does only once the final record is written — see `EventSink::write_final`),
//! and counts in this queue's own series: `switchyard_delivery_total{tenant, campaign, outcome}`
//! and `switchyard_scheduled_messages{tenant, campaign, domain}` — handles built once per
//! queue, not looked up by labels per message.

use super::ScheduledQueueActor;
use crate::message::{message_id_hex, now_ms, Peer, QueueIdentity, QueuedMessage, Reply};
use crate::mta_sts::StsApplied;
use crate::record::{LogRecord, RecordKind};
use metrics::{Counter, Gauge};
use std::collections::HashMap;
use std::sync::Arc;

/// What is known about an attempt besides its reply.
#[derive(Default)]
pub(crate) struct Settlement {
    pub source: Option<Arc<str>>,
    pub site: Option<Arc<str>>,
    pub peer: Option<Peer>,
    pub sender: Option<String>,
    pub size: Option<u64>,
    pub bounce_class: Option<String>,
    /// The MTA-STS policy the attempt went under.
    pub mta_sts: Option<Arc<StsApplied>>,
    /// An administrative bounce (API or automation), not an attempt.
    pub admin: bool,
}

/// The fates a settlement can give, as logged and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Fate {
    Delivered,
    Transient,
    Bounced,
    Expired,
    AdminBounced,
}

impl Fate {
    const ALL: [Fate; 5] = [
        Fate::Delivered,
        Fate::Transient,
        Fate::Bounced,
        Fate::Expired,
        Fate::AdminBounced,
    ];

    /// The outcome label.
    pub(crate) fn outcome(self) -> &'static str {
        match self {
            Fate::Delivered => "delivered",
            Fate::Transient => "transient",
            Fate::Bounced => "bounced",
            Fate::Expired => "expired",
            Fate::AdminBounced => "admin_bounced",
        }
    }

    fn record(self) -> RecordKind {
        match self {
            Fate::Delivered => RecordKind::Delivery,
            Fate::Transient => RecordKind::TransientFailure,
            Fate::Bounced => RecordKind::Bounce,
            Fate::Expired => RecordKind::Expiration,
            Fate::AdminBounced => RecordKind::AdminBounce,
        }
    }
}

/// A scheduled queue's own metric series.
pub(crate) struct Counters {
    /// `switchyard_scheduled_messages` of this queue.
    pub queued: Gauge,
    labels: Vec<(&'static str, String)>,
    delivery: HashMap<Fate, Counter>,
    ready_delivery: HashMap<(Arc<str>, Arc<str>, Fate), Counter>,
}

impl Counters {
    /// The queue's series; every outcome, and every bounce class of its tenant, exported at
    /// 0 from the start so that `increase()` sees the first one.
    pub fn new(id: &QueueIdentity, campaign_labels: bool, bounce_classes: &[String]) -> Counters {
        let mut labels = vec![("tenant", id.tenant.to_string())];
        if campaign_labels {
            labels.push(("campaign", id.campaign.as_deref().unwrap_or("").to_string()));
        }
        let mut gauge_labels = labels.clone();
        gauge_labels.push(("domain", id.domain.to_string()));
        let delivery = Fate::ALL
            .iter()
            .map(|&fate| {
                let mut l = labels.clone();
                l.push(("outcome", fate.outcome().to_string()));
                let c = metrics::counter!("switchyard_delivery_total", &l);
                c.increment(0);
                (fate, c)
            })
            .collect();
        for class in bounce_classes {
            metrics::counter!("switchyard_bounce_class_total", "tenant" => id.tenant.to_string(), "class" => class.clone())
                .increment(0);
        }
        Counters {
            queued: metrics::gauge!("switchyard_scheduled_messages", &gauge_labels),
            labels,
            delivery,
            ready_delivery: HashMap::new(),
        }
    }

    fn count(&mut self, fate: Fate, path: Option<(&Arc<str>, &Arc<str>)>) {
        let labels = &self.labels;
        self.delivery
            .entry(fate)
            .or_insert_with(|| {
                let mut l = labels.clone();
                l.push(("outcome", fate.outcome().to_string()));
                metrics::counter!("switchyard_delivery_total", &l)
            })
            .increment(1);
        if let Some((source, site)) = path {
            self.ready_delivery
                .entry((source.clone(), site.clone(), fate))
                .or_insert_with(|| {
                    metrics::counter!("switchyard_ready_delivery_total", "source" => source.to_string(), "site" => site.to_string(), "outcome" => fate.outcome())
                })
                .increment(1);
        }
    }
}

impl ScheduledQueueActor {
    /// Bounce one message on an operator's or a rule's order.
    pub(super) fn admin_bounce(&mut self, m: QueuedMessage, reason: &str) {
        let reply = Reply::internal(550, "5.0.0", format!("bounced by administrator: {reason}"));
        self.settle(
            m,
            &reply,
            Settlement {
                admin: true,
                ..Default::default()
            },
        );
    }

    /// Decide a message's fate from `reply`, log it, count it, and tell the spool.
    pub(super) fn settle(&mut self, mut m: QueuedMessage, reply: &Reply, s: Settlement) {
        if !s.admin {
            m.attempts += 1;
        }
        self.refresh_policy();
        let now = now_ms();
        let jitter = rand::random::<f64>() * 2.0 - 1.0;
        let (fate, next_due) = if s.admin {
            (Fate::AdminBounced, None)
        } else if reply.is_success() {
            (Fate::Delivered, None)
        } else if reply.is_permanent() {
            (Fate::Bounced, None)
        } else {
            match self
                .policy
                .1
                .retry
                .next_due(m.attempts, now, m.created_ms, m.held_ms, jitter)
            {
                Some(due) => (Fate::Transient, Some(due)),
                None => (Fate::Expired, None),
            }
        };
        self.counters
            .count(fate, s.source.as_ref().zip(s.site.as_ref()));
        if fate == Fate::Bounced {
            let class = s
                .bounce_class
                .clone()
                .unwrap_or_else(|| crate::bounce::UNCATEGORIZED.to_string());
            metrics::counter!("switchyard_bounce_class_total", "tenant" => self.id.tenant.to_string(), "class" => class).increment(1);
        }
        if fate == Fate::Delivered {
            metrics::histogram!("switchyard_delivery_seconds")
                .record(now.saturating_sub(m.created_ms) as f64 / 1000.0);
        }
        let record = LogRecord {
            id: Some(message_id_hex(&m.key)),
            tenant: Some(self.id.tenant.to_string()),
            campaign: self.id.campaign.as_deref().map(str::to_string),
            sender: s.sender,
            recipient: Some(m.recipient.to_string()),
            domain: Some(self.id.domain.to_string()),
            queue: Some(self.name.clone()),
            source: s.source.as_deref().map(str::to_string),
            site: s.site.as_deref().map(str::to_string),
            tls: s.peer.as_ref().and_then(|p| p.tls.clone()),
            mta_sts: s.mta_sts,
            peer: s.peer,
            response: Some(reply.into()),
            attempts: Some(m.attempts),
            bounce_class: if reply.is_success() {
                None
            } else {
                s.bounce_class
            },
            size: s.size,
            hops: crate::test_hooks::hops(&m.key),
            ..LogRecord::new(fate.record())
        };
        match next_due {
            Some(due) => {
                self.all.ports.events.write(record);
                // A retry is minutes away: its content waits in the spool, not in memory.
                m.hot = None;
                m.due_ms = due;
                self.all
                    .ports
                    .spool
                    .reschedule(m.key, m.attempts, due, m.held_ms);
                self.schedule(m);
            }
            None => {
                let spool = self.all.ports.spool.clone();
                self.all.ports.events.write_final(record, m.key, spool);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Fate;

    #[test]
    fn the_outcome_labels_are_the_records_list() {
        let labels: Vec<&str> = Fate::ALL.iter().map(|f| f.outcome()).collect();
        assert_eq!(labels, crate::record::OUTCOMES);
    }
}
