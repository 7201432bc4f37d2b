//! TenantActor: one sending customer, and its campaigns.
//!
//! Like the campaign, it is not on the way of every message. Its campaigns register here
//! when they start ([`CampaignStarted`]) and leave when reaped ([`CampaignGone`]). The
//! suspension register tells the tenant when the suspensions in force change
//! ([`Recheck`]; the tenant is started for it if need be); the tenant passes it to its
//! campaigns, which pass it to their scheduled queues, and each queue reads the register's
//! view to see whether it is held — so a provider's verdict on one tenant holds that
//! tenant's mail and nobody else's. Administrative bounces of the tenant's mail
//! ([`AdminBounce`]) travel the same way.
//!
//! It exports its own series: `switchyard_tenant_suspended{tenant,site}` and
//! `switchyard_campaign_suspended{tenant,campaign,site}` (1 while a suspension of the
//! tenant, or of one of its campaigns, is in force) and `switchyard_tenant_campaigns`.
//! With no campaigns and no suspension left for `reap_after`, the tenant is reaped (see
//! [`crate::registry`]).

use crate::campaign::CampaignActor;
use crate::messages::{
    gather_infos, sum_counts, AdminBounce, CampaignGone, QueueInfo, Recheck, ScheduledInfo,
};
use crate::registry::{gauge_refresh, Arbiters, Children, Registry};
use crate::suspension::SuspensionView;
use actix::prelude::*;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// Every tenant actor, and what starting one needs.
pub struct Tenants {
    /// The live ones.
    pub registry: Registry<Arc<str>, TenantActor>,
    /// Threads to spread them over.
    pub arbiters: Arc<Arbiters>,
    /// An idle tenant is reaped after this.
    pub reap_after: Duration,
    /// The suspensions in force.
    pub view: Arc<SuspensionView>,
}

impl Tenants {
    /// The tenant actor of `tenant` for one [`CampaignStarted`] (leased), started when
    /// there is none.
    pub fn lease(self: &Arc<Self>, tenant: &Arc<str>) -> Addr<TenantActor> {
        self.registry
            .lease(tenant, |serial| self.start(tenant, serial))
            .addr
    }

    /// The tenant actor of `tenant`, started when there is none (for a [`Recheck`]).
    pub fn get_or_start(self: &Arc<Self>, tenant: &Arc<str>) -> Addr<TenantActor> {
        self.registry
            .get_or_start(tenant, |serial| self.start(tenant, serial))
    }

    fn start(self: &Arc<Self>, tenant: &Arc<str>, serial: u64) -> Addr<TenantActor> {
        let (tenant, all) = (tenant.clone(), self.clone());
        let gauge = metrics::gauge!("switchyard_tenant_campaigns", "tenant" => tenant.to_string());
        TenantActor::start_in_arbiter(&self.arbiters.next(), move |_| TenantActor {
            tenant,
            all,
            serial,
            campaigns: Children::new(gauge),
            suspended: HashSet::new(),
        })
    }
}

/// One tenant.
pub struct TenantActor {
    tenant: Arc<str>,
    all: Arc<Tenants>,
    serial: u64,
    /// Its live campaigns.
    campaigns: Children<Option<Arc<str>>, CampaignActor>,
    /// The suspension gauges it has set to 1: (metric, labels).
    suspended: HashSet<(&'static str, Vec<(&'static str, String)>)>,
}

impl TenantActor {
    /// Set its suspension gauges from the suspensions in force.
    fn publish(&mut self) {
        let now: HashSet<_> = self
            .all
            .view
            .holds_of(&self.tenant)
            .iter()
            .map(|s| s.gauge_labels())
            .collect();
        for (name, labels) in self.suspended.difference(&now) {
            metrics::gauge!(*name, labels).set(0.0);
        }
        for (name, labels) in &now {
            metrics::gauge!(*name, labels).set(1.0);
        }
        self.suspended = now;
    }
}

impl Actor for TenantActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.publish();
        ctx.run_interval(gauge_refresh(self.all.reap_after), |act, ctx| {
            act.publish();
            if act.suspended.is_empty()
                && act.campaigns.idle_for(act.all.reap_after)
                && act
                    .all
                    .registry
                    .retire(&act.tenant, act.serial, act.campaigns.registrations)
            {
                ctx.stop();
            }
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.campaigns.clear_gauge();
    }
}

/// A campaign of this tenant started.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CampaignStarted {
    /// Its campaign.
    pub campaign: Option<Arc<str>>,
    /// Its serial number.
    pub serial: u64,
    /// The campaign actor.
    pub addr: Addr<CampaignActor>,
}

impl Handler<CampaignStarted> for TenantActor {
    type Result = ();

    fn handle(&mut self, c: CampaignStarted, _: &mut Context<Self>) {
        c.addr.do_send(Recheck);
        self.campaigns.started(c.campaign, c.addr, c.serial);
    }
}

impl Handler<CampaignGone> for TenantActor {
    type Result = ();

    fn handle(&mut self, gone: CampaignGone, _: &mut Context<Self>) {
        self.campaigns.gone(&gone.campaign, gone.serial);
    }
}

impl Handler<Recheck> for TenantActor {
    type Result = ();

    fn handle(&mut self, _: Recheck, _: &mut Context<Self>) {
        self.publish();
        self.campaigns.tell(Recheck);
    }
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
        let asks: Vec<_> = self.campaigns.iter().map(|(_, a)| a.send(msg)).collect();
        Box::pin(gather_infos(asks))
    }
}
