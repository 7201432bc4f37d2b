//! Wiring the delivery engine: settings from the config, the ports over spool, log, DNS and
//! outbound SMTP, shaping with its MX-rollup sites, suspensions restored from the spool,
//! and spool recovery at start.

use crate::config::LoadedConfig;
use crate::dns::Dns;
use crate::https::HttpsClient;
use crate::logs::EventLog;
use crate::mta_sts::MtaSts;
use crate::outbound::{verified_tls_config, Connector};
use crate::spool::{Spool, SpoolError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use switchyard_actors::cluster::{ClusterPort, PolicyKind};
use switchyard_actors::engine::{Engine, EngineSettings, Submission};
use switchyard_actors::messages::Restore;
use switchyard_actors::pool::{Pool, Pools};
use switchyard_actors::ports::{EgressSource, Ports};
use switchyard_actors::suspension_register::TOMBSTONE_PREFIX;

/// How often the MX-rollup sites of the shaping blocks are looked up again (answers come
/// from the DNS cache until their TTL runs out, so this follows the TTLs).
const SITE_REFRESH: Duration = Duration::from_secs(60);

/// Messages handed to the engine per batch during recovery.
const RECOVERY_BATCH: usize = 10_000;

/// Pools of the config; with none configured, pool "default" holds one source on the
/// system's default route, named "default", saying EHLO with `hostname`.
pub fn pools(loaded: &LoadedConfig) -> HashMap<String, Arc<Pool>> {
    let c = &loaded.config;
    let sources: HashMap<&str, Arc<EgressSource>> = c
        .source
        .iter()
        .map(|s| {
            let name = s.name.get_ref().as_str();
            let source = EgressSource {
                name: name.into(),
                address: Some(s.address),
                ehlo: s.ehlo.clone().unwrap_or_else(|| c.hostname.clone()),
            };
            (name, Arc::new(source))
        })
        .collect();
    let mut pools: HashMap<String, Arc<Pool>> = c
        .pool
        .iter()
        .map(|p| {
            let members = p
                .sources
                .iter()
                .filter_map(|m| {
                    sources
                        .get(m.source.get_ref().as_str())
                        .map(|s| (s.clone(), m.weight))
                })
                .collect();
            let name = p.name.get_ref().clone();
            (
                name.clone(),
                Arc::new(Pool {
                    name: name.into(),
                    members,
                }),
            )
        })
        .collect();
    if pools.is_empty() {
        let source = Arc::new(EgressSource {
            name: "default".into(),
            address: None,
            ehlo: c.hostname.clone(),
        });
        pools.insert(
            "default".into(),
            Arc::new(Pool {
                name: "default".into(),
                members: vec![(source, 1)],
            }),
        );
    }
    pools
}

/// Engine settings from the config (shaping files already validated by the loader).
pub fn engine_settings(loaded: &LoadedConfig) -> anyhow::Result<EngineSettings> {
    let c = &loaded.config;
    let shaping = crate::shaping::load(loaded).map_err(|e| {
        anyhow::anyhow!(e
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n"))
    })?;
    for w in &shaping.warnings {
        tracing::warn!("{w}");
    }
    Ok(EngineSettings {
        policies: c.queue.policies(),
        pools: Pools {
            pools: pools(loaded),
            tenant_pools: c
                .tenant
                .iter()
                .filter_map(|(t, cfg)| cfg.pool.as_ref().map(|p| (t.clone(), p.get_ref().clone())))
                .collect(),
        },
        shaping: Arc::new(shaping.shaping),
        rules: Arc::new(shaping.rules),
        tenant_rates: c
            .tenant
            .iter()
            .filter_map(|(t, cfg)| cfg.max_message_rate.map(|r| (t.clone(), r)))
            .collect(),
        reap_after: c.queue.reap_after.0,
        campaign_labels: c.metrics.campaign_labels,
        arbiters: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
    })
}

/// Start the engine over the spool and log; returns it with the resolver and the HTTPS
/// client (MTA-STS fetches, webhooks). Must run on the daemon's tokio runtime.
pub fn start_engine(
    loaded: &LoadedConfig,
    spool: &Spool,
    log: &EventLog,
    cluster: Option<Arc<dyn ClusterPort>>,
) -> anyhow::Result<(Arc<Engine>, Dns, HttpsClient)> {
    let c = &loaded.config;
    let routes = c
        .routes
        .iter()
        .filter_map(|(d, t)| {
            crate::config::split_host_port(t.get_ref()).map(|hp| (d.to_ascii_lowercase(), hp))
        })
        .collect();
    let dns = Dns::new(&c.dns.nameservers.values, routes)?;
    // One verifying TLS configuration for MTA-STS fetches, webhooks and outbound SMTP.
    let verified = verified_tls_config(loaded.trust_roots()?)?;
    let https = HttpsClient::new(verified.clone(), dns.resolver());
    dns.enable_mta_sts(MtaSts::new(
        dns.resolver(),
        https.clone(),
        spool.state_entries(crate::mta_sts::STATE_PREFIX)?,
        Arc::new(spool.clone()),
    ));
    let ports = Ports {
        spool: Arc::new(spool.clone()),
        events: Arc::new(log.clone()),
        resolver: Arc::new(dns.clone()),
        connector: Arc::new(Connector::new(verified)?),
        cluster,
    };
    let bounces = crate::shaping::bounce_classifier(loaded).map_err(|e| anyhow::anyhow!("{e}"))?;
    let engine = Arc::new(Engine::start(engine_settings(loaded)?, ports, bounces)?);
    let (for_sites, refresh_dns) = (engine.clone(), dns.clone());
    tokio::spawn(async move {
        let mut first = true;
        loop {
            for w in crate::shaping::resolve_sites(&for_sites.shaping(), &refresh_dns).await {
                if first {
                    tracing::warn!("{w}");
                }
            }
            first = false;
            tokio::time::sleep(SITE_REFRESH).await;
        }
    });
    Ok((engine, dns, https))
}

/// Put the suspensions, throttles, bounce orders, overrides and automation threshold
/// windows stored in the spool back into effect.
/// Awaited before recovery, so held mail is held from its first moment back in a queue.
pub async fn restore_suspensions(spool: &Spool, engine: &Engine) -> anyhow::Result<()> {
    fn read<T: serde::de::DeserializeOwned>(spool: &Spool, prefix: &str) -> anyhow::Result<Vec<T>> {
        Ok(spool
            .read_state(prefix)?
            .into_iter()
            .map(|(_, _, x)| x)
            .collect())
    }
    let restore = Restore {
        suspensions: read(
            spool,
            &format!("{}/", PolicyKind::Suspension.state_prefix()),
        )?,
        overrides: read(spool, &format!("{}/", PolicyKind::Override.state_prefix()))?,
        throttles: read(spool, &format!("{}/", PolicyKind::Throttle.state_prefix()))?,
        bounces: read(spool, &format!("{}/", PolicyKind::Bounce.state_prefix()))?,
        tombstones: read(spool, &format!("{TOMBSTONE_PREFIX}/"))?,
    };
    let (s, o, t, b) = (
        restore.suspensions.len(),
        restore.overrides.len(),
        restore.throttles.len(),
        restore.bounces.len(),
    );
    if s + o + t + b > 0 {
        tracing::info!(
            suspensions = s,
            overrides = o,
            throttles = t,
            bounces = b,
            "restored from the spool"
        );
    }
    let windows: Vec<switchyard_actors::classifier::StoredWindow> = read(spool, "threshold/")?;
    if !windows.is_empty() {
        tracing::info!(
            windows = windows.len(),
            "threshold windows restored from the spool"
        );
    }
    engine
        .restore_windows(windows)
        .await
        .ok_or_else(|| anyhow::anyhow!("the classifier did not start"))?;
    engine
        .restore(restore)
        .await
        .ok_or_else(|| anyhow::anyhow!("the suspension register did not start"))
}

/// Hand every spooled recipient back to its scheduled queue, attempts and due time intact.
/// Returns how many were recovered.
pub async fn recover(spool: Spool, engine: Arc<Engine>) -> Result<usize, SpoolError> {
    let orphans = spool.remove_orphans()?;
    if orphans > 0 {
        tracing::info!(
            orphans,
            "removed messages left without recipients by a crash"
        );
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Submission>>(4);
    let reader = tokio::task::spawn_blocking(move || -> Result<usize, SpoolError> {
        let mut batch = Vec::with_capacity(RECOVERY_BATCH);
        let mut total = 0;
        for entry in spool.queue_entries() {
            let (id, index, e) = entry?;
            batch.push(e.submission(crate::spool::entry_key(id, index)));
            total += 1;
            if batch.len() == RECOVERY_BATCH
                && tx.blocking_send(std::mem::take(&mut batch)).is_err()
            {
                return Ok(total);
            }
        }
        if !batch.is_empty() {
            let _ = tx.blocking_send(batch);
        }
        Ok(total)
    });
    while let Some(batch) = rx.recv().await {
        engine.submit(batch).await;
    }
    reader
        .await
        .map_err(|e| SpoolError::Storage(e.to_string()))?
}
