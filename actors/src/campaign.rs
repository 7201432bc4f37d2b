//! CampaignActor: one tenant's campaign (or its mail without a campaign), and the scheduled
//! queues under it, one per destination domain.
//!
//! It is not on the way of every message: ingress hands mail straight to the scheduled
//! queue. A queue registers here when it starts ([`QueueStarted`]) and leaves when it is
//! reaped ([`QueueGone`]); the campaign passes on what concerns all its queues — a change of
//! the suspensions in force ([`Recheck`]), an administrative bounce, a request for the queue
//! list — and registers itself with its tenant in turn. It exports
//! `switchyard_campaign_queues{tenant,campaign}`, its live scheduled queues. With no queues
//! left for `reap_after`, it is reaped the same way queues are (see [`crate::registry`]).

use crate::messages::{
    gather_infos, sum_counts, AdminBounce, CampaignGone, QueueGone, QueueInfo, Recheck,
    ScheduledInfo,
};
use crate::registry::{gauge_refresh, Arbiters, Children, Lease, Registry};
use crate::scheduled_queue::ScheduledQueueActor;
use actix::prelude::*;
use std::sync::Arc;
use std::time::Duration;

/// (tenant, campaign) of a campaign actor.
pub type CampaignKey = (Arc<str>, Option<Arc<str>>);

/// Every campaign actor, and what starting one needs.
pub struct Campaigns {
    /// The live ones.
    pub registry: Registry<CampaignKey, CampaignActor>,
    /// Threads to spread them over.
    pub arbiters: Arc<Arbiters>,
    /// An idle campaign is reaped after this.
    pub reap_after: Duration,
}

impl Campaigns {
    /// The campaign of `key` for one [`QueueStarted`] (leased), started when there is none;
    /// `parent` gives the tenant to tell when it goes.
    pub fn lease(
        self: &Arc<Self>,
        key: &CampaignKey,
        parent: impl FnOnce() -> Recipient<CampaignGone>,
    ) -> Lease<CampaignActor> {
        self.registry.lease(key, |serial| {
            let (key, all, parent) = (key.clone(), self.clone(), parent());
            let gauge = metrics::gauge!(
                "switchyard_campaign_queues",
                "tenant" => key.0.to_string(),
                "campaign" => key.1.as_deref().unwrap_or("").to_string()
            );
            CampaignActor::start_in_arbiter(&self.arbiters.next(), move |_| CampaignActor {
                key,
                all,
                parent,
                serial,
                queues: Children::new(gauge),
            })
        })
    }
}

/// One campaign of one tenant.
pub struct CampaignActor {
    key: CampaignKey,
    all: Arc<Campaigns>,
    parent: Recipient<CampaignGone>,
    serial: u64,
    /// Its live scheduled queues, by domain.
    queues: Children<Arc<str>, ScheduledQueueActor>,
}

impl Actor for CampaignActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(gauge_refresh(self.all.reap_after), |act, ctx| {
            if act.queues.idle_for(act.all.reap_after)
                && act
                    .all
                    .registry
                    .retire(&act.key, act.serial, act.queues.registrations)
            {
                act.parent.do_send(CampaignGone {
                    campaign: act.key.1.clone(),
                    serial: act.serial,
                });
                ctx.stop();
            }
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.queues.clear_gauge();
    }
}

/// A scheduled queue of this campaign started.
#[derive(Message)]
#[rtype(result = "()")]
pub struct QueueStarted {
    /// Its domain.
    pub domain: Arc<str>,
    /// Its serial number.
    pub serial: u64,
    /// The queue.
    pub addr: Addr<ScheduledQueueActor>,
}

impl Handler<QueueStarted> for CampaignActor {
    type Result = ();

    fn handle(&mut self, q: QueueStarted, _: &mut Context<Self>) {
        // A suspension may have begun between the queue's start and now.
        q.addr.do_send(Recheck);
        self.queues.started(q.domain, q.addr, q.serial);
    }
}

impl Handler<QueueGone> for CampaignActor {
    type Result = ();

    fn handle(&mut self, gone: QueueGone, _: &mut Context<Self>) {
        self.queues.gone(&gone.domain, gone.serial);
    }
}

impl Handler<Recheck> for CampaignActor {
    type Result = ();

    fn handle(&mut self, _: Recheck, _: &mut Context<Self>) {
        self.queues.tell(Recheck);
    }
}

impl Handler<AdminBounce> for CampaignActor {
    type Result = ResponseFuture<usize>;

    fn handle(&mut self, msg: AdminBounce, _: &mut Context<Self>) -> Self::Result {
        let sends: Vec<_> = self
            .queues
            .iter()
            .filter(|(d, _)| msg.domain.as_deref().is_none_or(|want| want == &***d))
            .map(|(_, addr)| addr.send(msg.clone()))
            .collect();
        Box::pin(sum_counts(sends))
    }
}

impl Handler<QueueInfo> for CampaignActor {
    type Result = ResponseFuture<Vec<ScheduledInfo>>;

    fn handle(&mut self, msg: QueueInfo, _: &mut Context<Self>) -> Self::Result {
        let asks: Vec<_> = self.queues.iter().map(|(_, a)| a.send(msg)).collect();
        Box::pin(gather_infos(asks))
    }
}
