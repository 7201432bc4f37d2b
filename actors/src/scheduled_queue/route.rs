//! Where a scheduled queue's due messages go: the domain's route, an egress source, and an
//! offer to that (source, site)'s ready queue.
//!
//! The route (site and MX hosts) comes from the resolver and is kept until its TTL runs
//! out; a failed lookup settles every due message with the lookup's reply (bounce or
//! deferral). Sources are picked from the tenant's pool by smooth weighted round robin,
//! skipping those suspended towards the site; with none left the queue waits for the first
//! suspension to end. A tenant with a QoS rate paces how fast its queues release messages,
//! and so does a throttle of the tenant (or campaign) towards the site.
//!
//! Offers are bounded: a pump hands out at most `offer_size` messages (up to
//! [`PUMP_BATCH`]) and the next pump waits until every ready queue has answered. A ready
//! queue that is full takes only part of an offer; the rest goes back to the schedule
//! (its content to the spool: it may wait long), the queue waits for that ready queue's
//! [`crate::messages::ReadyRoom`] call (or, if none comes, a fallback timer), and offers
//! only as many as were taken next time, doubling again while offers are taken whole — so
//! a full ready queue that frees one place a time costs one message a time, not a batch.

use super::{Pump, ScheduledQueueActor};
use crate::message::{now_ms, MessageKey, QueuedMessage};
use crate::messages::{Offer, ReadyItem};
use crate::mta_sts::StsMode;
use crate::ports::{EgressSource, Route, RouteError};
use actix::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most messages moved to ready queues in one pump.
pub(super) const PUMP_BATCH: usize = 512;
/// A queue refused by a full ready queue waits for that queue's `ReadyRoom` call; if none
/// comes (the ready queue went away), it offers again after this long anyway.
const READY_FULL_FALLBACK: Duration = Duration::from_secs(30);
/// With every source of the pool suspended towards the site, look again after at most this.
const ALL_SOURCES_SUSPENDED_RECHECK: Duration = Duration::from_secs(5);

impl ScheduledQueueActor {
    /// Move due messages towards their ready queues.
    pub(super) fn pump(&mut self, ctx: &mut Context<Self>) {
        let now = now_ms();
        let Some(&(first_due, _)) = self.scheduled.keys().next() else {
            return self.publish();
        };
        if first_due > now {
            self.wake_at(first_due, ctx);
            return self.publish();
        }
        if self.offers_out > 0 {
            // The answers pump again.
            return self.publish();
        }
        if let Some(until) = self.blocked_until {
            let left = until.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                // Whatever woke us, the fallback must stay armed.
                self.wake_at(now + left.as_millis() as u64 + 1, ctx);
                return self.publish();
            }
            self.blocked_until = None;
        }
        let route = match &self.route {
            Some(r) if self.fresh_route || r.expires > Instant::now() => r.clone(),
            _ => return self.resolve(ctx),
        };
        self.fresh_route = false;
        self.refresh_policy();
        if self.bounce_if_ordered(&route.site) {
            return;
        }
        if self.held(&route.site) {
            // Released by a Recheck, not by a timer.
            self.enter_hold(ctx);
            return self.publish();
        }
        let (all, pool) = (self.all.clone(), self.pool.clone());
        let mut by_source: HashMap<Arc<str>, (Arc<EgressSource>, Vec<QueuedMessage>)> =
            HashMap::new();
        let mut wait: Option<Duration> = None;
        let throttles = self.throttles(&route.site);
        for _ in 0..self.offer_size {
            let Some(entry) = self.scheduled.first_entry() else {
                break;
            };
            if entry.key().0 > now {
                break;
            }
            if let Some(not_yet) = self
                .tenant_limiter
                .iter()
                .chain(throttles.iter())
                .map(|l| &**l)
                .chain(self.queue_limiter.iter())
                .find_map(|limiter| limiter.check().err())
            {
                wait = Some(not_yet);
                break;
            }
            let picked = self.cursor.pick(&pool, |s| {
                all.view.source_suspended(&s.name, &route.site).is_none()
            });
            match picked {
                Some(source) => {
                    let m = entry.remove();
                    self.unscheduled(&m);
                    by_source
                        .entry(source.name.clone())
                        .or_insert_with(|| (source.clone(), Vec::new()))
                        .1
                        .push(m)
                }
                None => {
                    // Every source is suspended towards this site (or the pool is empty):
                    // wait for the first suspension to end.
                    let until = pool
                        .members
                        .iter()
                        .filter_map(|(s, _)| all.view.source_suspended(&s.name, &route.site))
                        .min()
                        .map(|t| Duration::from_millis(t.saturating_sub(now) + 1))
                        .unwrap_or(ALL_SOURCES_SUSPENDED_RECHECK);
                    wait = Some(until.min(ALL_SOURCES_SUSPENDED_RECHECK));
                    break;
                }
            }
        }
        for (_, (source, messages)) in by_source {
            self.offer(source, &route, messages, ctx);
        }
        match (self.scheduled.keys().next(), wait) {
            (Some(_), Some(wait)) => self.wake_at(now + wait.as_millis() as u64 + 1, ctx),
            (Some(&(due, _)), None) if due <= now && self.offers_out == 0 => ctx.notify(Pump),
            (Some(&(due, _)), None) if due > now => self.wake_at(due, ctx),
            _ => {}
        }
        self.publish();
    }

    /// Offer `messages` to the ready queue of (`source`, the route's site).
    fn offer(
        &mut self,
        source: Arc<EgressSource>,
        route: &Route,
        messages: Vec<QueuedMessage>,
        ctx: &mut Context<Self>,
    ) {
        let Some(line) = self.line.clone() else {
            for m in messages {
                self.schedule(m);
            }
            return;
        };
        // A domain goes alone (a ready queue of its own) when its block says
        // `mx_rollup = false` or a SetDomainConfig override for it is in force.
        // So does a domain under an MTA-STS policy: the policy is the domain's, not its site's.
        let alone = self
            .mta_sts
            .as_ref()
            .is_some_and(|p| p.mode != StsMode::None)
            || self.all.ready.rules.shaping().alone(&self.id.domain)
            || self
                .all
                .view
                .domain_alone(&source.name, &route.site, &self.id.domain);
        let ready = self.all.ready.ready_queue(
            &source,
            &route.site,
            &route.hosts,
            &self.mta_sts,
            &self.id.domain,
            alone,
        );
        // Keyed by source and lane: a domain may have offered to both its site's shared
        // ready queue and its own, and a hold must pull back from each.
        let offered_key: Arc<str> = format!("{}/{alone}", source.name).into();
        self.offered_to.insert(offered_key.clone(), ready.clone());
        let keys: Vec<MessageKey> = messages.iter().map(|m| m.key).collect();
        let items = messages
            .iter()
            .map(|m| ReadyItem {
                message: m.clone(),
                queue: self.id.clone(),
                to: line.clone(),
            })
            .collect();
        for mut m in messages {
            // The ready queue's copy carries the content; this one is for the outcome.
            m.hot = None;
            self.in_flight.insert(m.key, m);
        }
        let offer = Offer {
            items,
            hosts: route.hosts.clone(),
            mta_sts: self.mta_sts.clone(),
            queue: self.name.as_str().into(),
            from: line,
        };
        let calls_before = self.room_calls;
        let (source_name, site) = (source.name.clone(), route.site.clone());
        self.offers_out += 1;
        ctx.spawn(
            ready
                .send(offer)
                .into_actor(self)
                .map(move |answer, act, ctx| {
                    act.offers_out -= 1;
                    let gone = answer.is_err();
                    let taken = answer.unwrap_or(0);
                    act.offer_size = if taken < keys.len() {
                        taken.max(1)
                    } else {
                        (act.offer_size * 2).min(PUMP_BATCH)
                    };
                    if taken < keys.len() {
                        // Back to the schedule, due now; offered again when the ready queue
                        // says it has room (or after the fallback), not polled.
                        for key in &keys[taken..] {
                            if let Some(m) = act.in_flight.remove(key) {
                                act.schedule(m);
                            }
                        }
                        let suspended =
                            act.all.view.source_suspended(&source_name, &site).is_some();
                        if gone || suspended || act.room_calls != calls_before {
                            // The ready queue went away (the registry starts a new one),
                            // refused for a suspended source (pick another), or made room
                            // meanwhile: go again now.
                            if gone {
                                act.offered_to.remove(&offered_key);
                            }
                        } else {
                            act.blocked_until = Some(Instant::now() + READY_FULL_FALLBACK);
                            act.wake_at(now_ms() + READY_FULL_FALLBACK.as_millis() as u64, ctx);
                        }
                    }
                    act.pump(ctx);
                }),
        );
    }

    /// Whether the domain's MTA-STS policy applies to `route`: MX hosts from DNS (not an
    /// address literal, not the operator's `[routes]`) and `enable_mta_sts` on.
    fn mta_sts_eligible(&self, route: &Route) -> bool {
        !self.id.domain.starts_with('[')
            && route.hosts.iter().all(|h| !h.configured)
            && self
                .all
                .ready
                .rules
                .shaping()
                .mta_sts_wanted(&self.id.domain, &route.site)
    }

    fn use_route(&mut self, route: Route, ctx: &mut Context<Self>) {
        self.resolving = false;
        self.route = Some(route);
        self.fresh_route = true;
        self.pump(ctx);
    }

    /// Look the domain's route up; on failure every due message shares its fate.
    pub(super) fn resolve(&mut self, ctx: &mut Context<Self>) {
        if self.resolving {
            return;
        }
        self.resolving = true;
        let lookup = self.all.ports.resolver.resolve(self.id.domain.clone());
        ctx.spawn(lookup.into_actor(self).map(|result, act, ctx| {
            act.resolving = false;
            match result {
                Ok(route) => {
                    if !act.mta_sts_eligible(&route) {
                        act.mta_sts = None;
                        return act.use_route(route, ctx);
                    }
                    // The policy is looked up (from the cache, mostly) each time the route
                    // is: a changed TXT id is seen within the MX records' TTL.
                    act.resolving = true;
                    let lookup = act.all.ports.resolver.mta_sts(act.id.domain.clone());
                    ctx.spawn(lookup.into_actor(act).map(move |policy, act, ctx| {
                        // A `none` policy is kept too: it tells a lane of the domain's own
                        // (`mx_rollup = false`) that the domain withdrew its policy.
                        act.mta_sts = policy;
                        act.use_route(route, ctx);
                    }));
                }
                Err(RouteError::Permanent(reply)) | Err(RouteError::Transient(reply)) => {
                    // Every due message shares the domain's fate; each counts an attempt.
                    let now = now_ms();
                    let mut due = Vec::new();
                    while let Some(entry) = act.scheduled.first_entry() {
                        if entry.key().0 > now {
                            break;
                        }
                        let m = entry.remove();
                        act.unscheduled(&m);
                        due.push(m);
                    }
                    let class = act.all.bounces.classify(&reply.match_text()).to_string();
                    for m in due {
                        act.settle(
                            m,
                            &reply,
                            super::Settlement {
                                bounce_class: Some(class.clone()),
                                ..Default::default()
                            },
                        );
                    }
                    act.pump(ctx);
                }
            }
        }));
    }
}
