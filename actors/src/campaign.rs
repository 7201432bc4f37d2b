//! CampaignActor: one tenant's campaign (or its mail without a campaign), and the scheduled
//! queues under it, one per destination domain.
//!
//! It creates QueueActors on demand, spread over the arbiters, and reaps them: a queue that
//! reports itself idle is stopped only if every batch sent to it has arrived (the counts
//! match), so no message can be sent to a queue that is going away. The suspensions that
//! concern the campaign (the tenant's and its own) are kept here and passed to every queue,
//! including queues created while they last.

use crate::engine::Shared;
use crate::message::{ForCampaign, QueueIdentity, QueuedMessage};
use crate::pool::Pool;
use crate::queue::{gather_infos, sum_counts, Enqueue, QueueActor, QueueInfo, Reap, ScheduledInfo};
use crate::suspensions::Suspension;
use crate::tenant::{AdminBounce, Hold, Release};
use actix::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

/// One campaign of one tenant.
pub struct CampaignActor {
    tenant: Arc<str>,
    campaign: Option<Arc<str>>,
    shared: Arc<Shared>,
    pool: Arc<Pool>,
    queues: HashMap<Arc<str>, (Addr<QueueActor>, u64)>,
    holds: Vec<Arc<Suspension>>,
}

impl CampaignActor {
    /// A campaign with no queues yet.
    pub fn new(
        tenant: Arc<str>,
        campaign: Option<Arc<str>>,
        shared: Arc<Shared>,
        pool: Arc<Pool>,
        holds: Vec<Arc<Suspension>>,
    ) -> Self {
        CampaignActor {
            tenant,
            campaign,
            shared,
            pool,
            queues: HashMap::new(),
            holds,
        }
    }
}

impl Actor for CampaignActor {
    type Context = Context<Self>;
}

/// New messages for this campaign: (domain, message).
#[derive(Message)]
#[rtype(result = "()")]
pub struct EnqueueCampaign {
    /// The messages with their destination domains.
    pub messages: Vec<ForCampaign>,
}

impl Handler<EnqueueCampaign> for CampaignActor {
    type Result = ();

    fn handle(&mut self, msg: EnqueueCampaign, ctx: &mut Context<Self>) {
        let mut by_domain: HashMap<Arc<str>, Vec<QueuedMessage>> = HashMap::new();
        for (domain, m) in msg.messages {
            by_domain.entry(domain).or_default().push(m);
        }
        for (domain, messages) in by_domain {
            let (addr, sent) = self.queues.entry(domain.clone()).or_insert_with(|| {
                let id = Arc::new(QueueIdentity {
                    tenant: self.tenant.clone(),
                    campaign: self.campaign.clone(),
                    domain: domain.clone(),
                });
                let (shared, pool, parent, holds) = (
                    self.shared.clone(),
                    self.pool.clone(),
                    ctx.address(),
                    self.holds.clone(),
                );
                let addr = QueueActor::start_in_arbiter(&self.shared.arbiter(), move |_| {
                    QueueActor::new(id, shared, pool, parent, holds)
                });
                (addr, 0)
            });
            *sent += 1;
            addr.do_send(Enqueue { messages });
        }
    }
}

/// A queue has been empty, with nothing in flight, for the reap period.
#[derive(Message)]
#[rtype(result = "()")]
pub struct QueueIdle {
    /// The queue's domain.
    pub domain: Arc<str>,
    /// Enqueue batches it had received when it reported.
    pub batches_received: u64,
}

impl Handler<QueueIdle> for CampaignActor {
    type Result = ();

    fn handle(&mut self, idle: QueueIdle, _: &mut Context<Self>) {
        let in_step = self
            .queues
            .get(&idle.domain)
            .is_some_and(|(_, sent)| *sent == idle.batches_received);
        if in_step {
            if let Some((addr, _)) = self.queues.remove(&idle.domain) {
                addr.do_send(Reap);
            }
        }
    }
}

impl Handler<Hold> for CampaignActor {
    type Result = ();

    fn handle(&mut self, hold: Hold, _: &mut Context<Self>) {
        self.holds.retain(|s| s.id != hold.0.id);
        self.holds.push(hold.0.clone());
        for (addr, _) in self.queues.values() {
            addr.do_send(hold.clone());
        }
    }
}

impl Handler<Release> for CampaignActor {
    type Result = ();

    fn handle(&mut self, release: Release, _: &mut Context<Self>) {
        self.holds.retain(|s| s.id != release.id);
        for (addr, _) in self.queues.values() {
            addr.do_send(release.clone());
        }
    }
}

impl Handler<AdminBounce> for CampaignActor {
    type Result = ResponseFuture<usize>;

    fn handle(&mut self, msg: AdminBounce, _: &mut Context<Self>) -> Self::Result {
        let sends: Vec<_> = self
            .queues
            .iter()
            .filter(|(d, _)| msg.domain.as_deref().is_none_or(|want| want == &***d))
            .map(|(_, (addr, _))| addr.send(msg.clone()))
            .collect();
        Box::pin(sum_counts(sends))
    }
}

impl Handler<QueueInfo> for CampaignActor {
    type Result = ResponseFuture<Vec<ScheduledInfo>>;

    fn handle(&mut self, msg: QueueInfo, _: &mut Context<Self>) -> Self::Result {
        let asks: Vec<_> = self.queues.values().map(|(a, _)| a.send(msg)).collect();
        Box::pin(gather_infos(asks))
    }
}
