//! Prometheus metrics export: installs the global `metrics` recorder and renders it.
//!
//! Code everywhere records with the `metrics` macros under the names of CONTRACT.md; the
//! HTTP server's `/metrics` route calls [`Telemetry::render`].

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

/// Latency buckets in seconds: from a sub-millisecond spool commit up to a slow remote MTA.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// A gauge nobody has set for this long disappears from `/metrics` (at the next scrape):
/// four times `refresh`, the period at which every gauge owner publishes again while it
/// lives (`switchyard_actors::registry::gauge_refresh`, from `[queue] reap_after`), and at
/// least 10 s. So only the series of reaped queues and ended suspensions go — soon, not
/// ten minutes later with the memory of 100,000 dead queues' series kept meanwhile.
pub fn gauge_idle_timeout(refresh: Duration) -> Duration {
    (refresh * 4).max(Duration::from_secs(10))
}

/// Actors gone since the last trim that make the next one worthwhile.
const TRIM_AFTER_REAPED: usize = 10_000;

/// glibc's malloc keeps freed memory in its arenas for reuse: after a wave of 100,000
/// queues is reaped, RSS would stay at the wave's peak. [`HeapTrim::due`] says when
/// `malloc_trim` should return the free pages: once [`TRIM_AFTER_REAPED`] actors have gone
/// since the last time, and at least every `every` — the gauge idle timeout, so that the
/// series of reaped queues, dropped at the scrape after it, come back too, and the storage
/// engine's flushed memtables, freed with no actor going (measured in tests/memory.rs and
/// bench/soak.sh).
pub struct HeapTrim {
    every: Duration,
    last: std::time::Instant,
    /// The most actors live since the last trim.
    peak: usize,
}

impl HeapTrim {
    /// Trims at least `every`.
    pub fn new(every: Duration) -> HeapTrim {
        HeapTrim {
            every,
            last: std::time::Instant::now(),
            peak: 0,
        }
    }

    /// With `live` actors now: trim now? (Then the next one counts from here.)
    pub fn due(&mut self, live: usize) -> bool {
        self.peak = self.peak.max(live);
        if self.peak - live < TRIM_AFTER_REAPED && self.last.elapsed() < self.every {
            return false;
        }
        self.last = std::time::Instant::now();
        self.peak = live;
        true
    }
}

/// Return the allocator's free pages to the kernel. Blocking: run off the async workers.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let started = std::time::Instant::now();
        // SAFETY: a plain glibc call with no pointers handed over.
        unsafe { libc::malloc_trim(0) };
        tracing::debug!(took = ?started.elapsed(), "gave free heap back");
    }
}

/// Handle on the installed recorder.
#[derive(Clone)]
pub struct Telemetry {
    handle: PrometheusHandle,
}

static INSTALLED: OnceLock<Telemetry> = OnceLock::new();

impl Telemetry {
    /// Install the process-wide recorder (once; later calls return the same handle); a
    /// gauge not set for `gauge_idle_timeout` disappears.
    pub fn install(gauge_idle_timeout: Duration) -> anyhow::Result<Telemetry> {
        if let Some(t) = INSTALLED.get() {
            return Ok(t.clone());
        }
        let handle = PrometheusBuilder::new()
            .idle_timeout(
                metrics_util::MetricKindMask::GAUGE,
                Some(gauge_idle_timeout),
            )
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
            .install_recorder()?;
        let t = Telemetry { handle };
        let _ = INSTALLED.set(t.clone());
        describe();
        Ok(INSTALLED.get().cloned().unwrap_or(t))
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Periodic housekeeping the exporter needs (histogram buffers); run on the runtime.
    pub fn spawn_upkeep(&self) {
        let handle = self.handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        });
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "switchyard_received_total",
        "Messages accepted for delivery, by tenant."
    );
    describe_gauge!("switchyard_spool_messages", "Messages in the spool.");
    describe_gauge!(
        "switchyard_spool_bytes",
        Unit::Bytes,
        "Bytes of message records in the spool."
    );
    describe_gauge!("switchyard_smtp_sessions", "Open SMTP injection sessions.");
    describe_histogram!(
        "switchyard_injection_seconds",
        Unit::Seconds,
        "Time from DATA to the 250 reply, spool fsync included."
    );
    describe_counter!(
        "switchyard_smtp_rejections_total",
        "SMTP commands refused, by reply code."
    );
    describe_counter!(
        "switchyard_delivery_total",
        "Recipients settled, by tenant, campaign and outcome."
    );
    describe_counter!(
        "switchyard_ready_delivery_total",
        "Delivery attempts, by egress source, site and outcome."
    );
    describe_gauge!(
        "switchyard_scheduled_messages",
        "Recipients in a scheduled queue (tenant, campaign, domain)."
    );
    describe_gauge!(
        "switchyard_ready_messages",
        "Messages waiting in a ready queue (source, site)."
    );
    describe_gauge!(
        "switchyard_connections",
        "Open outbound connections (source, site)."
    );
    describe_gauge!(
        "switchyard_tenant_suspended",
        "1 while a suspension holds the tenant's mail to the site."
    );
    describe_gauge!(
        "switchyard_campaign_suspended",
        "1 while a suspension holds the campaign's mail to the site."
    );
    describe_gauge!(
        "switchyard_source_suspended",
        "1 while the egress source is suspended towards the site."
    );
    describe_gauge!(
        "switchyard_suspension_expires_timestamp_seconds",
        "When each active suspension ends (Unix time), with its rule; 0 once ended."
    );
    describe_gauge!(
        "switchyard_tenant_throttle_rate",
        "Messages per second a throttle allows the tenant towards the site; 0 once ended."
    );
    describe_gauge!(
        "switchyard_campaign_throttle_rate",
        "Messages per second a throttle allows the campaign towards the site; 0 once ended."
    );
    describe_gauge!(
        "switchyard_throttle_expires_timestamp_seconds",
        "When each active throttle ends (Unix time), with its rule; 0 once ended."
    );
    describe_gauge!(
        "switchyard_override_expires_timestamp_seconds",
        "When each active shaping override ends (Unix time), with its rule; 0 once ended."
    );
    describe_gauge!(
        "switchyard_bounce_expires_timestamp_seconds",
        "When each bounce order ends (Unix time), with its rule; 0 once ended."
    );
    describe_counter!(
        "switchyard_automation_fired_total",
        "Automation rules fired, by rule and action."
    );
    describe_counter!(
        "switchyard_bounce_class_total",
        "Bounces by tenant and bounce class."
    );
    describe_histogram!(
        "switchyard_delivery_seconds",
        Unit::Seconds,
        "Time from reception to delivery."
    );
    describe_gauge!(
        "switchyard_scheduled_queues",
        "Live scheduled-queue actors."
    );
    describe_gauge!("switchyard_ready_queues", "Live ready-queue actors.");
    describe_gauge!("switchyard_tenants", "Live tenant actors.");
    describe_gauge!("switchyard_campaigns", "Live campaign actors.");
    describe_gauge!(
        "switchyard_tenant_campaigns",
        "Live campaigns of a tenant (its tenant actor's series)."
    );
    describe_gauge!(
        "switchyard_campaign_queues",
        "Live scheduled queues of a campaign (its campaign actor's series)."
    );
    describe_counter!(
        "switchyard_connection_sessions_total",
        "Outbound SMTP sessions opened, by source, site and MX host."
    );
    describe_counter!(
        "switchyard_connection_replies_total",
        "Replies to recipients on outbound sessions, by source, site, MX host and class."
    );
    describe_counter!(
        "switchyard_connection_failures_total",
        "Outbound connections that failed (no session), by source and site."
    );
    describe_counter!(
        "switchyard_classifier_matches_total",
        "Replies an automation rule matched (before its trigger decides), by rule."
    );
    describe_gauge!(
        "switchyard_cluster_up",
        "1 when Redis answers this node's heartbeat ([cluster]), 0 when it goes on alone."
    );
    describe_gauge!(
        "switchyard_cluster_nodes",
        "Nodes heard from in the last 5 s (1 while Redis does not answer)."
    );
    describe_counter!(
        "switchyard_webhook_records_total",
        "Event-log records a webhook endpoint took (delivered), refused with a 4xx (rejected) or that aged out (expired), by webhook."
    );
    describe_gauge!(
        "switchyard_webhook_lag_seconds",
        "Age of the oldest record not yet delivered to a webhook endpoint (0 when caught up)."
    );
    describe_counter!(
        "switchyard_webhook_failures_total",
        "Failed webhook attempts (each retried, or skipped on a 4xx), by webhook and reason."
    );
    describe_gauge!(
        "switchyard_mta_sts_policies",
        "Destination domains whose MTA-STS policy is cached, by mode."
    );
    describe_counter!(
        "switchyard_mta_sts_failures_total",
        "MTA-STS lookups, fetches and policies that failed, and mail an enforce policy held back or a testing policy would have, by reason."
    );
}
