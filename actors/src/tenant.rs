//! TenantActor: state about one sending customer — its egress pool, its suspensions and its
//! campaigns.
//!
//! Mail for a tenant enters here and is passed to the CampaignActor of its campaign (created
//! on demand). Suspensions of the tenant (or of one of its campaigns) arrive from the
//! SuspensionsActor as [`Hold`] and leave as [`Release`]; the tenant keeps them and passes
//! them to its campaigns, which pass them to their scheduled queues — so a provider's verdict
//! on one tenant holds that tenant's mail and nobody else's. Administrative bounces of the
//! tenant's mail ([`AdminBounce`]) travel the same way.

use crate::campaign::{CampaignActor, EnqueueCampaign};
use crate::engine::Shared;
use crate::message::{ForCampaign, ForTenant};
use crate::pool::Pool;
use crate::queue::{gather_infos, sum_counts, QueueInfo, ScheduledInfo};
use crate::suspensions::{Suspension, SuspensionKind};
use actix::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

/// One tenant.
pub struct TenantActor {
    tenant: Arc<str>,
    shared: Arc<Shared>,
    pool: Arc<Pool>,
    campaigns: HashMap<Option<Arc<str>>, Addr<CampaignActor>>,
    holds: Vec<Arc<Suspension>>,
}

impl TenantActor {
    /// A tenant using `pool`.
    pub fn new(tenant: Arc<str>, shared: Arc<Shared>, pool: Arc<Pool>) -> Self {
        TenantActor {
            tenant,
            shared,
            pool,
            campaigns: HashMap::new(),
            holds: Vec::new(),
        }
    }
}

/// Whether suspension `s` concerns the campaign `campaign` of its tenant.
pub fn concerns(s: &Suspension, campaign: Option<&str>) -> bool {
    s.kind != SuspensionKind::Campaign || s.campaign.as_deref() == campaign
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
                let holds: Vec<Arc<Suspension>> = self
                    .holds
                    .iter()
                    .filter(|s| concerns(s, campaign.as_deref()))
                    .cloned()
                    .collect();
                CampaignActor::start_in_arbiter(&self.shared.arbiter(), move |_| {
                    CampaignActor::new(tenant, campaign, shared, pool, holds)
                })
            });
            addr.do_send(EnqueueCampaign { messages });
        }
    }
}

/// A suspension now holds (some of) this tenant's mail.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Hold(pub Arc<Suspension>);

impl Handler<Hold> for TenantActor {
    type Result = ();

    fn handle(&mut self, hold: Hold, _: &mut Context<Self>) {
        self.holds.retain(|s| s.id != hold.0.id);
        self.holds.push(hold.0.clone());
        for (campaign, addr) in &self.campaigns {
            if concerns(&hold.0, campaign.as_deref()) {
                addr.do_send(hold.clone());
            }
        }
    }
}

/// A suspension has ended: its held mail is due now.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Release {
    /// The suspension's id.
    pub id: String,
}

impl Handler<Release> for TenantActor {
    type Result = ();

    fn handle(&mut self, release: Release, _: &mut Context<Self>) {
        self.holds.retain(|s| s.id != release.id);
        for addr in self.campaigns.values() {
            addr.do_send(release.clone());
        }
    }
}

/// Bounce this tenant's queued mail (optionally only one campaign's, one domain's or one
/// site's) with AdminBounce records; the reply is how many recipients were bounced.
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

impl Handler<AdminBounce> for TenantActor {
    type Result = ResponseFuture<usize>;

    fn handle(&mut self, msg: AdminBounce, _: &mut Context<Self>) -> Self::Result {
        let sends: Vec<_> = self
            .campaigns
            .iter()
            .filter(|(c, _)| {
                msg.campaign
                    .as_ref()
                    .is_none_or(|want| want.as_deref() == c.as_deref())
            })
            .map(|(_, addr)| addr.send(msg.clone()))
            .collect();
        Box::pin(sum_counts(sends))
    }
}

impl Handler<QueueInfo> for TenantActor {
    type Result = ResponseFuture<Vec<ScheduledInfo>>;

    fn handle(&mut self, msg: QueueInfo, _: &mut Context<Self>) -> Self::Result {
        let asks: Vec<_> = self.campaigns.values().map(|a| a.send(msg)).collect();
        Box::pin(gather_infos(asks))
    }
}
