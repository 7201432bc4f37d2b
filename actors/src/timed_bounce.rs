//! Bounces that last: an order to bounce matching mail — what is queued now and what
//! arrives until the order expires — as KumoMTA's `kcli bounce --duration` does.
//!
//! Created by an automation rule (`Bounce`: every tenant's mail to the reply's destination
//! domain; `BounceTenant` / `BounceCampaign`: the tenant's / campaign's mail to the reply's
//! site — each for the rule's `duration`) or by MailOps (`POST /api/v1/bounces` with a
//! `duration`). The [`crate::suspension_register::SuspensionRegister`] owns it like a
//! suspension: an id, `bounce/ID` in the spool's `state`, an expiry timer, and a place in the
//! [`crate::suspension::SuspensionView`]. A scheduled queue that an order covers bounces
//! every message it holds with an `AdminBounce` record naming the rule or the operator's
//! reason, whenever it would otherwise send them.

use crate::record::rfc3339_ms;
use serde::{Deserialize, Serialize};

/// One bounce order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimedBounce {
    /// Id (given by the register).
    pub id: String,
    /// Only this tenant's mail.
    pub tenant: Option<String>,
    /// Only this campaign's mail (with its tenant).
    pub campaign: Option<String>,
    /// Only mail to this destination domain.
    pub domain: Option<String>,
    /// Only mail routed to this site.
    pub site: Option<String>,
    /// Why, in each AdminBounce record: the rule and its reply, or the operator's reason.
    pub reason: String,
    /// The rule that fired, for automatic orders.
    pub rule: Option<String>,
    /// Created, ms since the epoch.
    pub created_ms: u64,
    /// Ends, ms since the epoch.
    pub expires_ms: u64,
    /// Last changed, ms since the epoch: in a cluster, the newest change wins.
    #[serde(default)]
    pub updated_ms: u64,
}

impl TimedBounce {
    pub(crate) fn same_target(&self, o: &TimedBounce) -> bool {
        (&self.tenant, &self.campaign, &self.domain, &self.site)
            == (&o.tenant, &o.campaign, &o.domain, &o.site)
    }

    /// Whether it covers the scheduled queue of (tenant, campaign, domain) whose route goes
    /// to `site`.
    pub fn applies(&self, tenant: &str, campaign: Option<&str>, domain: &str, site: &str) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == tenant)
            && self.campaign.as_deref().is_none_or(|c| Some(c) == campaign)
            && self.domain.as_deref().is_none_or(|d| d == domain)
            && self.site.as_deref().is_none_or(|s| s == site)
    }

    /// `switchyard_bounce_expires_timestamp_seconds{id,tenant,campaign,domain,site,rule}`:
    /// one series per order for the dashboard; 0 once it has ended.
    pub(crate) fn publish(&self, active: bool) {
        let s = |o: &Option<String>| o.clone().unwrap_or_else(|| "*".into());
        let value = if active {
            self.expires_ms as f64 / 1000.0
        } else {
            0.0
        };
        metrics::gauge!(
            "switchyard_bounce_expires_timestamp_seconds",
            "id" => self.id.clone(),
            "tenant" => s(&self.tenant),
            "campaign" => s(&self.campaign),
            "domain" => s(&self.domain),
            "site" => s(&self.site),
            "rule" => self.rule.clone().unwrap_or_else(|| "manual".into())
        )
        .set(value);
    }

    /// When it ends, RFC 3339.
    pub fn expires(&self) -> String {
        rfc3339_ms(self.expires_ms)
    }
}
