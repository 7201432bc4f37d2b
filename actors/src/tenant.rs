//! TenantActor: state about one sending customer — its egress pool and its campaigns.
//!
//! Mail for a tenant enters here and is passed to the CampaignActor of its campaign (created
//! on demand). Tenant suspensions and the tenant's QoS rate (issue 4) live here, so that a
//! provider's verdict on one tenant holds that tenant's mail and nobody else's.

use crate::campaign::{CampaignActor, EnqueueCampaign};
use crate::engine::Shared;
use crate::message::{ForCampaign, ForTenant};
use crate::pool::Pool;
use actix::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

/// One tenant.
pub struct TenantActor {
    tenant: Arc<str>,
    shared: Arc<Shared>,
    pool: Arc<Pool>,
    campaigns: HashMap<Option<Arc<str>>, Addr<CampaignActor>>,
}

impl TenantActor {
    /// A tenant using `pool`.
    pub fn new(tenant: Arc<str>, shared: Arc<Shared>, pool: Arc<Pool>) -> Self {
        TenantActor {
            tenant,
            shared,
            pool,
            campaigns: HashMap::new(),
        }
    }
}

impl Actor for TenantActor {
    type Context = Context<Self>;
}

/// New messages for this tenant: (campaign, domain, message).
#[derive(Message)]
#[rtype(result = "()")]
pub struct EnqueueTenant {
    /// The messages.
    pub messages: Vec<ForTenant>,
}

impl Handler<EnqueueTenant> for TenantActor {
    type Result = ();

    fn handle(&mut self, msg: EnqueueTenant, _: &mut Context<Self>) {
        let mut by_campaign: HashMap<Option<Arc<str>>, Vec<ForCampaign>> = HashMap::new();
        for (campaign, domain, m) in msg.messages {
            by_campaign.entry(campaign).or_default().push((domain, m));
        }
        for (campaign, messages) in by_campaign {
            let addr = self.campaigns.entry(campaign.clone()).or_insert_with(|| {
                let (tenant, shared, pool) =
                    (self.tenant.clone(), self.shared.clone(), self.pool.clone());
                CampaignActor::start_in_arbiter(&self.shared.arbiter(), move |_| {
                    CampaignActor::new(tenant, campaign, shared, pool)
                })
            });
            addr.do_send(EnqueueCampaign { messages });
        }
    }
}
