//! `switchyard serve`: wires config, spool, logs, ingress and HTTP together and runs them
//! until SIGTERM/SIGINT.

use crate::config::LoadedConfig;
use crate::delivery;
use crate::http::{self, HttpState};
use crate::ingress::Ingress;
use crate::logs::{EventLog, LogSettings};
use crate::reload::Reloader;
use crate::spool::Spool;
use crate::telemetry::{HeapTrim, Telemetry};
use anyhow::Context;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

/// SIGTERM: close the listeners; sessions end between transactions with `421 4.3.2` (a
/// transaction under way finishes and gets its reply); outbound connections end with QUIT
/// after their current transaction, whose outcome is settled; what waits stays spooled.
/// Gives up waiting after `timeout` (what is cut then is still spooled, never lost).
async fn shutdown(
    ingress: &Ingress,
    listeners: &[tokio::task::JoinHandle<()>],
    engine: &switchyard_actors::engine::Engine,
    timeout: Duration,
) {
    for t in listeners {
        t.abort();
    }
    ingress.stop();
    engine.drain();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let sessions = ingress.open_sessions();
        let connections = engine.open_connections().await;
        if sessions == 0 && connections == 0 {
            // One more round trip through every scheduled queue: a connection's last
            // settlement, sent before it closed, has then been handled (mailboxes are FIFO).
            engine.queues().await;
            tracing::info!("shutdown: every session and connection ended");
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                sessions,
                connections,
                "shutdown_timeout reached; exiting anyway (the spool keeps every accepted message)"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Raise the open-files limit to its hard maximum (every SMTP session, outbound connection,
/// spool and log file is a descriptor), and say what it is; the limit now, if it could be
/// read.
pub fn raise_open_files() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a properly sized out-parameter for getrlimit/setrlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        tracing::warn!("cannot read the open-files limit");
        return None;
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            tracing::warn!(open_files = before, "cannot raise the open-files limit");
            return Some(before);
        }
    }
    tracing::info!(from = before, open_files = lim.rlim_cur, "open-files limit");
    Some(lim.rlim_cur)
}

/// Every `refresh`: publish the gauges that change only now and then (or they vanish from
/// /metrics, see `telemetry::gauge_idle_timeout`), let the spool flush what an empty spool
/// keeps in memory, forget expired MTA-STS policies, and give free heap back to the kernel
/// when it is worth it.
async fn upkeep(
    refresh: Duration,
    engine: Arc<switchyard_actors::engine::Engine>,
    spool: Spool,
    ingress: Arc<Ingress>,
    dns: crate::dns::Dns,
) {
    let mut tick = tokio::time::interval(refresh);
    let mut trim = HeapTrim::new(crate::telemetry::gauge_idle_timeout(refresh));
    loop {
        tick.tick().await;
        engine.publish_gauges();
        spool.upkeep();
        ingress.publish_gauges();
        dns.upkeep();
        let (tenants, campaigns, queues, ready) = engine.live();
        if trim.due(tenants + campaigns + queues + ready) {
            let _ = tokio::task::spawn_blocking(crate::telemetry::trim_heap).await;
        }
    }
}

/// Run the daemon on `loaded` (read from `path`, or the embedded default) until a stop
/// signal; SIGHUP reloads.
pub async fn run(loaded: LoadedConfig, path: Option<PathBuf>) -> anyhow::Result<()> {
    let c = &loaded.config;
    let refresh = switchyard_actors::registry::gauge_refresh(c.queue.reap_after.0);
    let telemetry = Telemetry::install(crate::telemetry::gauge_idle_timeout(refresh))?;
    raise_open_files();
    telemetry.spawn_upkeep();
    let data_dir = &c.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data_dir {}", data_dir.display()))?;
    let spool = tokio::task::block_in_place(|| {
        Spool::open_with_delay(
            &data_dir.join("spool"),
            c.spool.min_free_space.0,
            c.spool.commit_delay.0,
        )
    })
    .context("cannot open the spool")?;
    tracing::info!(
        messages = spool.message_count(),
        "spool open at {}",
        data_dir.join("spool").display()
    );
    let log_settings = LogSettings {
        max_segment_size: c.logs.max_segment_size.0,
        compress: c.logs.compress,
    };
    // Reception records a crash kept from the log: looked for before the log starts (and
    // cuts a torn last line), written first.
    let unlogged = spool
        .unlogged_receptions()
        .context("cannot read the spool's Reception records")?;
    let (logged, missing) = crate::logs::missing_receptions(&data_dir.join("logs"), unlogged);
    let log = EventLog::start(&data_dir.join("logs"), log_settings)
        .context("cannot start the event log")?;
    if !missing.is_empty() {
        tracing::warn!(
            recovered = missing.len(),
            "Reception records lost by a crash before the log wrote them: written now from the spool, with \"recovered\": true"
        );
    }
    spool.receptions_logged(logged);
    for (id, stored) in missing {
        log.write_reception(crate::logs::Reception::recovered(
            id,
            &stored,
            spool.clone(),
        ));
    }
    // The cluster is joined first: the engine's limits and policy are shared through it.
    let started: Arc<std::sync::OnceLock<Arc<switchyard_actors::engine::Engine>>> = Arc::default();
    let cluster = match &c.cluster {
        Some(cc) => {
            let settings = crate::cluster::Settings {
                redis: cc.redis.get_ref().clone(),
                node: cc
                    .node
                    .as_ref()
                    .map(|n| n.get_ref().clone())
                    .unwrap_or_else(crate::cluster::hostname),
                key_prefix: cc.key_prefix.clone(),
                lease_ttl: cc.lease_ttl.get_ref().0,
            };
            let for_counts = started.clone();
            let counts: crate::cluster::Counts = Arc::new(move || {
                let engine = for_counts.get().cloned();
                Box::pin(async move {
                    let Some(engine) = engine else {
                        return (0, 0);
                    };
                    let (_, _, queues, _) = engine.live();
                    (queues as u64, engine.open_connections().await as u64)
                })
            });
            Some(crate::cluster::Cluster::join(settings, counts).await?)
        }
        None => None,
    };
    let port = cluster
        .clone()
        .map(|c| c as Arc<dyn crate::cluster::ClusterPort>);
    let (engine, dns, https) = delivery::start_engine(&loaded, &spool, &log, port)
        .context("cannot start the delivery engine")?;
    let _ = started.set(engine.clone());
    delivery::restore_suspensions(&spool, &engine).await?;
    if let Some(cluster) = &cluster {
        cluster.share_policy(engine.clone());
    }
    let recovering = tokio::spawn(delivery::recover(spool.clone(), engine.clone()));
    tokio::spawn(async move {
        match recovering.await {
            Ok(Ok(n)) => tracing::info!(recipients = n, "spool recovered"),
            Ok(Err(e)) => tracing::error!("spool recovery failed: {e}"),
            Err(e) => tracing::error!("spool recovery task failed: {e}"),
        }
    });
    let ingress = Ingress::new(&loaded, spool.clone(), log.clone(), engine.clone())?;
    let webhooks = crate::webhooks::Webhooks::start(
        &loaded,
        https,
        &data_dir.join("logs"),
        log.latest_segment(),
        spool.state_entries(crate::webhooks::CURSOR_PREFIX)?,
        Arc::new(spool.clone()),
    )
    .await;
    tokio::spawn(upkeep(
        refresh,
        engine.clone(),
        spool.clone(),
        ingress.clone(),
        dns.clone(),
    ));
    let reloader = Arc::new(Reloader::new(
        path,
        &loaded,
        engine.clone(),
        dns,
        ingress.dkim.clone(),
        webhooks.clone(),
    ));
    let on_hup = reloader.clone();
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match on_hup.reload().await {
                Ok(r) => {
                    tracing::info!(rules = r.rules, restart_needed = ?r.restart_needed, "SIGHUP: reloaded")
                }
                Err(errors) => {
                    for e in errors {
                        tracing::error!("SIGHUP: reload refused, the running config stays: {e}");
                    }
                }
            }
        }
    });
    let listeners = ingress.bind().await?;
    let http_listener = tokio::net::TcpListener::bind(c.http.listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", c.http.listen))?;
    let mut tasks = Vec::new();
    for l in listeners {
        tasks.push(tokio::spawn(ingress.clone().serve(l)));
    }
    let http_engine = engine.clone();
    let http_state = HttpState {
        telemetry,
        engine,
        ingress: ingress.clone(),
        reloader,
        token: c.http.token.as_deref().map(Into::into),
        webhooks: webhooks.clone(),
        cluster: cluster.clone(),
    };
    tokio::spawn(async move {
        if let Err(e) = http::serve(http_listener, http_state).await {
            tracing::error!("HTTP server stopped: {e}");
        }
    });
    tracing::info!("switchyard ready");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    shutdown(&ingress, &tasks, &http_engine, c.smtp.shutdown_timeout.0).await;
    webhooks.stop();
    if let Some(cluster) = &cluster {
        cluster.leave().await;
    }
    // The last settlements: their records into the log, then their removals into the spool,
    // fsynced — so a restart repeats nothing that was finished.
    log.sync().await;
    spool.sync().await;
    drop(ingress);
    drop(spool);
    Ok(())
}
