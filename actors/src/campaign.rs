//! CampaignActor: one tenant's campaign (or its mail without a campaign), and the scheduled
//! queues under it, one per destination domain.
//!
//! It creates QueueActors on demand, spread over the arbiters, and reaps them: a queue that
//! reports itself idle is stopped only if every batch sent to it has arrived (the counts
//! match), so no message can be sent to a queue that is going away. Campaign suspensions
//! (issue 4) live here.

use crate::engine::Shared;
use crate::message::{ForCampaign, QueueIdentity, QueuedMessage};
use crate::pool::Pool;
use crate::queue::{Enqueue, QueueActor, Reap};
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
}

impl CampaignActor {
    /// A campaign with no queues yet.
    pub fn new(
        tenant: Arc<str>,
        campaign: Option<Arc<str>>,
        shared: Arc<Shared>,
        pool: Arc<Pool>,
    ) -> Self {
        CampaignActor {
            tenant,
            campaign,
            shared,
            pool,
            queues: HashMap::new(),
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
                let (shared, pool, parent) =
                    (self.shared.clone(), self.pool.clone(), ctx.address());
                let addr = QueueActor::start_in_arbiter(&self.shared.arbiter(), move |_| {
                    QueueActor::new(id, shared, pool, parent)
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
