//! Throttles: a tenant's (or one campaign's) mail to a site paced at a rate for a while —
//! the gentler answer to a provider's "you are sending too fast" (`421 4.7.28`), for that
//! tenant only.
//!
//! A throttle is created by an automation rule (`action = { ThrottleTenant = "100/h" }`, or
//! `ThrottleCampaign`) or by MailOps (`POST /api/v1/throttles`, `ctl throttle`). Like a
//! suspension, the [`crate::suspension_register::SuspensionRegister`] owns it: gives it an
//! id, stores it in the spool's `state` keyspace (`throttle/ID`), logs `Throttle` and
//! `ThrottleEnd` records, and puts it into the [`crate::suspension::SuspensionView`] with
//! its limiter. Every scheduled queue of the tenant (campaign) whose route goes to the site
//! takes from that one limiter before it hands a message to a ready queue, so the rate is
//! the tenant's towards the site, whatever its number of queues and sources. Throttled mail
//! keeps flowing, so its time counts toward `max_age` (held mail's does not). A tenant's
//! `[tenant."x"] max_message_rate` still applies: a throttle comes on top of it.
//!
//! The same target throttled again while active keeps its id: the expiry is extended and
//! the rate replaced.

use crate::limits::Limiter;
use crate::record::{rfc3339_ms, LogRecord, RecordKind};
use crate::shaping::Rate;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::sync::Arc;

/// One throttle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Throttle {
    /// Id (given by the register).
    pub id: String,
    /// The tenant.
    pub tenant: String,
    /// Only this campaign's mail (ThrottleCampaign).
    pub campaign: Option<String>,
    /// Only mail to this destination domain.
    pub domain: Option<String>,
    /// Only mail to this site.
    pub site: Option<String>,
    /// The pace.
    #[serde(serialize_with = "rate_out", deserialize_with = "rate_in")]
    pub rate: Rate,
    /// Why: the reply that fired the rule, or the operator's reason.
    pub reason: String,
    /// The rule that fired, for automatic throttles.
    pub rule: Option<String>,
    /// Created, ms since the epoch.
    pub created_ms: u64,
    /// Ends, ms since the epoch.
    pub expires_ms: u64,
    /// Last changed, ms since the epoch: in a cluster, the newest change wins.
    #[serde(default)]
    pub updated_ms: u64,
}

fn rate_out<S: Serializer>(rate: &Rate, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rate.to_string())
}

fn rate_in<'de, D: Deserializer<'de>>(d: D) -> Result<Rate, D::Error> {
    Rate::deserialize(d)
}

impl Throttle {
    pub(crate) fn same_target(&self, o: &Throttle) -> bool {
        (&self.tenant, &self.campaign, &self.domain, &self.site)
            == (&o.tenant, &o.campaign, &o.domain, &o.site)
    }

    /// Whether it paces the scheduled queue of (tenant, campaign, domain) whose route goes
    /// to `site`.
    pub fn applies(&self, tenant: &str, campaign: Option<&str>, domain: &str, site: &str) -> bool {
        self.tenant == tenant
            && self.campaign.as_deref().is_none_or(|c| Some(c) == campaign)
            && self.domain.as_deref().is_none_or(|d| d == domain)
            && self.site.as_deref().is_none_or(|s| s == site)
    }

    /// The `site` label of its gauges: the site, else the domain, else `*`.
    fn site_label(&self) -> String {
        self.site
            .clone()
            .or_else(|| self.domain.clone())
            .unwrap_or_else(|| "*".into())
    }

    /// The automation action that creates this kind.
    pub fn action(&self) -> &'static str {
        if self.campaign.is_some() {
            "ThrottleCampaign"
        } else {
            "ThrottleTenant"
        }
    }

    /// Its gauges: the rate in messages per second,
    /// `switchyard_tenant_throttle_rate{tenant,site}` (or
    /// `switchyard_campaign_throttle_rate{tenant,campaign,site}`), and
    /// `switchyard_throttle_expires_timestamp_seconds{id,tenant,campaign,site,rule}` for the
    /// dashboard's table; 0 once it has ended.
    pub(crate) fn publish(&self, active: bool) {
        let rate = if active { self.rate.per_second() } else { 0.0 };
        let site = self.site_label();
        match &self.campaign {
            None => metrics::gauge!("switchyard_tenant_throttle_rate", "tenant" => self.tenant.clone(), "site" => site.clone())
                .set(rate),
            Some(c) => metrics::gauge!("switchyard_campaign_throttle_rate", "tenant" => self.tenant.clone(), "campaign" => c.clone(), "site" => site.clone())
                .set(rate),
        }
        let expires = if active {
            self.expires_ms as f64 / 1000.0
        } else {
            0.0
        };
        metrics::gauge!(
            "switchyard_throttle_expires_timestamp_seconds",
            "id" => self.id.clone(),
            "tenant" => self.tenant.clone(),
            "campaign" => self.campaign.clone().unwrap_or_default(),
            "site" => site,
            "rule" => self.rule.clone().unwrap_or_else(|| "manual".into())
        )
        .set(expires);
    }

    pub(crate) fn record(&self, kind: RecordKind) -> LogRecord {
        LogRecord {
            id: Some(self.id.clone()),
            tenant: Some(self.tenant.clone()),
            campaign: self.campaign.clone(),
            domain: self.domain.clone(),
            site: self.site.clone(),
            rule: self.rule.clone(),
            action: Some(self.action().to_string()),
            rate: Some(self.rate.to_string()),
            reason: Some(self.reason.clone()),
            expires: Some(rfc3339_ms(self.expires_ms)),
            ..LogRecord::new(kind)
        }
    }
}

/// A throttle in force with the limiter every queue it paces takes from.
#[derive(Clone)]
pub struct ThrottleInForce {
    /// The throttle.
    pub throttle: Arc<Throttle>,
    /// Its limiter, shared by the queues it paces.
    pub limiter: Arc<Limiter>,
}
