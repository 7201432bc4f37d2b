//! When a scheduled queue's messages are due: the retry schedule (exponential backoff with
//! jitter, capped, and expiry at `max_age`), the queue's wake-up timer, and holds.
//!
//! A hold is a tenant or campaign suspension that covers this queue's domain or the site its
//! route goes to; the [`crate::suspension::SuspensionView`] says which are in force. While
//! held, nothing is offered, messages already with ready queues are pulled back (attempts
//! unchanged), and the held time is added to each message's `held_ms`, which `max_age` does
//! not count. When the hold ends every held message is due at once.

use super::ScheduledQueueActor;
use crate::limits::Limiter;
use crate::message::{now_ms, MessageKey, QueuedMessage};
use crate::messages::Withdraw;
use crate::ready_queue::ReadyQueueActor;
use actix::prelude::*;
use std::sync::Arc;
use std::time::Duration;

/// Bytes of in-memory content one scheduled queue may hold for messages waiting in its
/// schedule (a quarter of ingress's budget): a queue with a backlog — a stuck site, a burst
/// — cannot take the memory that other queues' fresh mail needs.
const HOT_SHARE: usize = 32 << 20;

pub use crate::queue_policy::RetryPolicy;

impl ScheduledQueueActor {
    /// Keep `m` until it is due.
    pub(super) fn schedule(&mut self, mut m: QueuedMessage) {
        if let Some(hot) = &m.hot {
            let n = hot.content.body.len();
            if self.held_since.is_some() || self.hot_bytes + n > HOT_SHARE {
                // It will wait, or this queue has its share: its content waits in the
                // spool, and the memory budget stays for mail of other queues.
                m.hot = None;
            } else {
                self.hot_bytes += n;
            }
        }
        self.scheduled.insert((m.due_ms, m.key), m);
    }

    /// `m` left the schedule: its content no longer counts against the queue's share.
    pub(super) fn unscheduled(&mut self, m: &QueuedMessage) {
        if let Some(hot) = &m.hot {
            self.hot_bytes = self.hot_bytes.saturating_sub(hot.content.body.len());
        }
    }

    /// Everything leaves the schedule at once.
    pub(super) fn take_schedule(&mut self) -> Vec<QueuedMessage> {
        self.hot_bytes = 0;
        std::mem::take(&mut self.scheduled).into_values().collect()
    }

    /// Arrange a pump at `due_ms` unless one is already set for then or earlier.
    pub(super) fn wake_at(&mut self, due_ms: u64, ctx: &mut Context<Self>) {
        if let Some((at, handle)) = self.wake {
            if at <= due_ms {
                return;
            }
            ctx.cancel_future(handle);
        }
        let delay = Duration::from_millis(due_ms.saturating_sub(now_ms()));
        let handle = ctx.run_later(delay, |act, ctx| {
            act.wake = None;
            act.pump(ctx);
        });
        self.wake = Some((due_ms, handle));
    }

    /// Whether a suspension holds the queue while its route goes to `site` (looked up
    /// again only when the suspensions in force have changed).
    pub(super) fn held(&mut self, site: &Arc<str>) -> bool {
        let version = self.all.view.version();
        if let Some((v, s, held)) = &self.hold_seen {
            if *v == version && Arc::ptr_eq(s, site) {
                return *held;
            }
        }
        let held = self
            .all
            .view
            .hold_for(
                &self.id.tenant,
                self.id.campaign.as_deref(),
                &self.id.domain,
                site,
            )
            .is_some();
        self.hold_seen = Some((version, site.clone(), held));
        held
    }

    /// The limiters of the throttles pacing this queue towards `site` (looked up again only
    /// after the view changed).
    pub(super) fn throttles(&mut self, site: &Arc<str>) -> Arc<[Arc<Limiter>]> {
        let version = self.all.view.version();
        if let Some((v, s, limiters)) = &self.throttles_seen {
            if *v == version && Arc::ptr_eq(s, site) {
                return limiters.clone();
            }
        }
        let limiters: Arc<[Arc<Limiter>]> = self
            .all
            .view
            .throttles_for(
                &self.id.tenant,
                self.id.campaign.as_deref(),
                &self.id.domain,
                site,
            )
            .into();
        self.throttles_seen = Some((version, site.clone(), limiters.clone()));
        limiters
    }

    /// If a bounce order covers this queue towards `site`, bounce everything it holds (each
    /// with an AdminBounce record naming the order's reason) and say so.
    pub(super) fn bounce_if_ordered(&mut self, site: &Arc<str>) -> bool {
        let version = self.all.view.version();
        let order = match &self.bounce_seen {
            Some((v, s, order)) if *v == version && Arc::ptr_eq(s, site) => order.clone(),
            _ => {
                let order = self.all.view.bounce_for(
                    &self.id.tenant,
                    self.id.campaign.as_deref(),
                    &self.id.domain,
                    site,
                );
                self.bounce_seen = Some((version, site.clone(), order.clone()));
                order
            }
        };
        let Some(order) = order.filter(|o| o.expires_ms > now_ms()) else {
            return false;
        };
        for m in self.take_schedule() {
            self.admin_bounce(m, &order.reason);
        }
        self.publish();
        true
    }

    /// A suspension now holds the queue: stop, and pull back what ready queues still have.
    pub(super) fn enter_hold(&mut self, ctx: &mut Context<Self>) {
        if self.held_since.is_some() {
            return;
        }
        self.held_since = Some(now_ms());
        // Held mail may wait long: its content waits in the spool, not in memory.
        for m in self.scheduled.values_mut() {
            m.hot = None;
        }
        self.hot_bytes = 0;
        if let Some((_, handle)) = self.wake.take() {
            ctx.cancel_future(handle);
        }
        self.withdraw_all(ctx);
    }

    /// Ask every ready queue for this queue's messages back; they return to the schedule,
    /// attempts unchanged.
    fn withdraw_all(&mut self, ctx: &mut Context<Self>) {
        let readies: Vec<Addr<ReadyQueueActor>> = self.offered_to.drain().map(|(_, r)| r).collect();
        for ready in readies {
            ctx.spawn(
                ready
                    .send(Withdraw {
                        queue: self.id.clone(),
                    })
                    .into_actor(self)
                    .map(move |keys, act, ctx| act.take_back(keys.unwrap_or_default(), None, ctx)),
            );
        }
    }

    /// Messages handed back by a ready queue: rescheduled due now, or bounced.
    pub(super) fn take_back(
        &mut self,
        keys: Vec<MessageKey>,
        bounce: Option<&str>,
        ctx: &mut Context<Self>,
    ) {
        let now = now_ms();
        for key in keys {
            let Some(mut m) = self.in_flight.remove(&key) else {
                continue;
            };
            match bounce {
                Some(reason) => self.admin_bounce(m, reason),
                None => {
                    m.due_ms = m.due_ms.min(now);
                    self.schedule(m);
                }
            }
        }
        self.pump(ctx);
    }

    /// The hold is gone: count the held time and make every held message due now.
    pub(super) fn leave_hold(&mut self, ctx: &mut Context<Self>) {
        let Some(since) = self.held_since.take() else {
            return;
        };
        let now = now_ms();
        let held = self.take_schedule();
        for mut m in held {
            m.held_ms += now.saturating_sub(since.max(m.created_ms));
            m.due_ms = now;
            self.all
                .ports
                .spool
                .reschedule(m.key, m.attempts, m.due_ms, m.held_ms);
            self.schedule(m);
        }
        self.pump(ctx);
    }
}
