//! Live reload (`SIGHUP`, `POST /api/v1/reload`): read the config and its shaping files
//! again and put the new shaping and automation rules, the queue policies (`[queue]` and
//! its scopes, applied to queues that exist at their next decision), the `[[dkim]]` keys
//! (read from disk again) and the `[[webhook]]` endpoints (added, changed from their cursor,
//! removed), in force.
//!
//! Nothing is dropped: scheduled and ready queues keep their messages, suspensions and
//! overrides stay, ready queues reshape to the new options. A file with an error is
//! reported (`file:line:col`) and the running config stays as it was. Settings that shape
//! the process itself — listeners, spool, sources and pools, tenants — are read at start;
//! a reload that changes them says a restart is needed.

use crate::config::{self, LoadedConfig};
use crate::dns::Dns;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use switchyard_actors::engine::Engine;

/// What a reload did.
#[derive(Debug, Serialize)]
pub struct ReloadReport {
    /// Automation rules now in force.
    pub rules: usize,
    /// Shaping warnings (unapplied options, DNS).
    pub warnings: Vec<String>,
    /// Sections that changed but only take effect after a restart.
    pub restart_needed: Vec<String>,
}

/// Re-reads the config the daemon was started with.
pub struct Reloader {
    path: Option<PathBuf>,
    started_with: Vec<(&'static str, String)>,
    engine: Arc<Engine>,
    dns: Dns,
    dkim: Arc<crate::dkim::DkimKeys>,
    webhooks: Arc<crate::webhooks::Webhooks>,
    lock: tokio::sync::Mutex<()>,
}

/// `Debug` text without the positions of `Spanned` values, which move with every edit.
fn without_spans(text: String) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(i) = rest.find("span: ") {
        out.push_str(&rest[..i]);
        rest = &rest[i + 6..];
        let end = rest.find(", ").map(|e| e + 2).unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// The parts of a config only a restart applies, as text for comparison.
fn restart_only(c: &LoadedConfig) -> Vec<(&'static str, String)> {
    let c = &c.config;
    let v = vec![
        ("smtp", format!("{:?}", c.smtp)),
        ("http", format!("{:?}", c.http)),
        ("source", format!("{:?}", c.source)),
        ("pool", format!("{:?}", c.pool)),
        ("tenant", format!("{:?}", c.tenant)),
        ("queue", format!("reap_after {:?}", c.queue.reap_after)),
        ("spool", format!("{:?}", c.spool)),
        ("dns", format!("{:?}", c.dns)),
        ("data_dir", format!("{:?}", c.data_dir)),
        ("cluster", format!("{:?}", c.cluster)),
    ];
    v.into_iter().map(|(k, t)| (k, without_spans(t))).collect()
}

impl Reloader {
    /// A reloader for the config at `path` (the embedded default when `None`).
    pub fn new(
        path: Option<PathBuf>,
        running: &LoadedConfig,
        engine: Arc<Engine>,
        dns: Dns,
        dkim: Arc<crate::dkim::DkimKeys>,
        webhooks: Arc<crate::webhooks::Webhooks>,
    ) -> Self {
        Reloader {
            path,
            started_with: restart_only(running),
            engine,
            dns,
            dkim,
            webhooks,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Reload; on any error nothing changes and the errors come back.
    pub async fn reload(&self) -> Result<ReloadReport, Vec<String>> {
        let _one_at_a_time = self.lock.lock().await;
        let path = self.path.clone();
        let loaded = tokio::task::spawn_blocking(move || config::load(path.as_deref()))
            .await
            .map_err(|e| vec![e.to_string()])?
            .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        let shaping = crate::shaping::load(&loaded)
            .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        let signers = crate::dkim::Signers::load(&loaded).map_err(|e| vec![e])?;
        let mut warnings: Vec<String> = shaping.warnings.iter().map(ToString::to_string).collect();
        warnings.extend(crate::shaping::resolve_sites(&shaping.shaping, &self.dns).await);
        let rules = shaping.rules.rules().len();
        self.engine
            .replace_shaping(Arc::new(shaping.shaping), Arc::new(shaping.rules));
        self.engine
            .replace_queue_policies(loaded.config.queue.policies());
        // Keys read again: a key swapped on disk is in force from now on.
        self.dkim.replace(signers);
        self.webhooks.apply(&loaded).await;
        let restart_needed = restart_only(&loaded)
            .iter()
            .zip(&self.started_with)
            .filter(|(now, before)| now.1 != before.1)
            .map(|(now, _)| now.0.to_string())
            .collect();
        tracing::info!(rules, "reloaded shaping and automation rules");
        Ok(ReloadReport {
            rules,
            warnings,
            restart_needed,
        })
    }
}
