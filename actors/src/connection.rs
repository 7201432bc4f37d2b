//! ConnectionActor: one outbound SMTP session from one egress source to one site.
//!
//! It asks its ReadyQueueActor for a message, connects (trying the site's hosts in order),
//! then sends message after message over the same session — RSET between them is the
//! session's business — up to `max_deliveries_per_connection`, waiting up to the idle
//! timeout for more. Each message goes to all its recipients waiting here at once, in one
//! transaction, and each recipient is settled by its own reply. Each reply's bounce class is worked out here, where the reply is read
//! (the rules are pure and shared); the outcome goes to the message's scheduled queue, and
//! while automation rules are in force the reply is reported to the ClassifierActor without
//! waiting for it. Only a full mailbox makes the connection wait: that is the bound. A fresh
//! message's content came along from ingress; a retried one's is read from the spool now,
//! on the blocking pool.
//!
//! It runs on its ready queue's thread and knows the ready queue only by the [`ReadyLine`]
//! of messages it sends there. It exports its own series, by source, site and MX host:
//! `switchyard_connection_sessions_total` (sessions opened),
//! `switchyard_connection_replies_total{class="2xx|4xx|5xx"}`, and
//! `switchyard_connection_failures_total{source,site}` (connections that failed).

use crate::automation::RulesInForce;
use crate::bounce::BounceClassifier;
use crate::message::{LoadedMessage, Peer, Reply};
use crate::messages::{
    tell, Batch, ConnectResult, ConnectionClosed, DeliveryOutcome, NextMessage, ReadyItem,
    ReplySeen,
};
use crate::mta_sts::{StsApplied, StsMode, StsPolicy};
use crate::ports::{ConnectTarget, Ports};
use actix::prelude::*;
use std::sync::Arc;

/// What every connection shares.
pub struct ConnectionKit {
    /// Spool and connector.
    pub ports: Ports,
    /// Bounce classes of failure replies.
    pub bounces: Arc<BounceClassifier>,
    /// Whether automation rules are in force (replies are reported only then).
    pub rules: Arc<RulesInForce>,
    /// Where replies are reported.
    pub classifier: Recipient<ReplySeen>,
}

/// The ready queue, as its connections talk to it.
#[derive(Clone)]
pub struct ReadyLine {
    /// Asks for the next message.
    pub next: Recipient<NextMessage>,
    /// Says whether connecting worked.
    pub connected: Recipient<ConnectResult>,
    /// Says the connection ended.
    pub closed: Recipient<ConnectionClosed>,
}

/// One SMTP session's worth of deliveries.
pub struct ConnectionActor {
    /// The ready queue it serves.
    pub ready: ReadyLine,
    /// What connections share.
    pub kit: Arc<ConnectionKit>,
    /// Whom to reach, how.
    pub target: ConnectTarget,
    /// Site name, for outcomes.
    pub site: Arc<str>,
    /// Messages per session.
    pub max_deliveries: usize,
    /// The destination domain's MTA-STS policy, when one applies (the ready queue has
    /// already kept only the MX hosts an `enforce` policy lists, and asked for TLS).
    pub mta_sts: Option<Arc<StsPolicy>>,
}

impl Actor for ConnectionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let reporter = Reporter {
            kit: self.kit.clone(),
            source: self.target.source.name.clone(),
            site: self.site.clone(),
            mta_sts: None,
        };
        let work = deliver_loop(
            self.ready.clone(),
            reporter,
            self.target.clone(),
            self.max_deliveries,
            self.mta_sts.clone(),
        );
        ctx.spawn(work.into_actor(self).map(|_, _, ctx| ctx.stop()));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        // One per connection, so the ready queue's mailbox stays bounded by its connections.
        self.ready.closed.do_send(ConnectionClosed);
    }
}

async fn next(ready: &ReadyLine, first: bool) -> Option<Batch> {
    ready.next.send(NextMessage { first }).await.ok().flatten()
}

/// The content of a batch's message: carried from ingress when it is fresh, else read from
/// the spool on the blocking pool.
async fn content(kit: &ConnectionKit, batch: &Batch) -> Result<LoadedMessage, Reply> {
    if let Some(hot) = batch.first().and_then(|i| i.message.hot.as_ref()) {
        return Ok(hot.content.clone());
    }
    let key = batch.first().map(|i| i.message.key).unwrap_or_default();
    let spool = kit.ports.spool.clone();
    match tokio::task::spawn_blocking(move || spool.load(&key)).await {
        Ok(Ok(m)) => Ok(m),
        Ok(Err(e)) => Err(Reply::internal(
            451,
            "4.3.0",
            format!("cannot read the message from the spool: {e}"),
        )),
        Err(e) => Err(Reply::internal(
            451,
            "4.3.0",
            format!("spool reader failed: {e}"),
        )),
    }
}

async fn deliver_loop(
    ready: ReadyLine,
    mut reporter: Reporter,
    target: ConnectTarget,
    max_deliveries: usize,
    mta_sts: Option<Arc<StsPolicy>>,
) {
    let Some(first) = next(&ready, true).await else {
        return;
    };
    let (kit, source, site) = (
        reporter.kit.clone(),
        reporter.source.clone(),
        reporter.site.clone(),
    );
    let mut session = match kit.ports.connector.connect(target).await {
        Ok(s) => {
            let _ = tell(&ready.connected, ConnectResult(None)).await;
            s
        }
        Err(mut failure) => {
            metrics::counter!("switchyard_connection_failures_total", "source" => source.to_string(), "site" => site.to_string()).increment(1);
            if let Some(policy) = &mta_sts {
                reporter.mta_sts = Some(Arc::new(policy.applied(None)));
                enforced_tls_failure(policy, &mut failure.reply);
            }
            let _ = tell(&ready.connected, ConnectResult(Some(failure.reply.clone()))).await;
            for item in first {
                let (reply, peer) = (failure.reply.clone(), failure.peer.clone());
                reporter.report(item, reply, peer, None).await;
            }
            return;
        }
    };
    reporter.mta_sts = mta_sts.map(|policy| Arc::new(session_under(&policy, session.peer())));
    let counters = SessionCounters::new(&source, &site, &session.peer().host);
    let mut batch = Some(first);
    let mut sent = 0;
    while let Some(items) = batch.take() {
        let (replies, sent_as) = match content(&kit, &items).await {
            Ok(m) => {
                let recipients: Vec<&str> = items.iter().map(|i| &*i.message.recipient).collect();
                crate::test_hooks::hop(&items[0].message.key, "connection-send");
                let replies = session.send(&m.sender, &recipients, &m).await;
                crate::test_hooks::hop(&items[0].message.key, "remote-reply");
                (replies, Some((m.sender.clone(), m.body.len() as u64)))
            }
            Err(reply) => (vec![reply; items.len()], None),
        };
        let peer = Some(session.peer().clone());
        for (item, reply) in items.into_iter().zip(replies) {
            counters.count(&reply);
            reporter
                .report(item, reply, peer.clone(), sent_as.clone())
                .await;
        }
        sent += 1;
        if sent >= max_deliveries || !session.usable() {
            break;
        }
        batch = next(&ready, false).await;
    }
    session.close().await;
}

/// A session's own counters, built once for it.
struct SessionCounters {
    ok: metrics::Counter,
    transient: metrics::Counter,
    permanent: metrics::Counter,
}

impl SessionCounters {
    fn new(source: &str, site: &str, mx: &str) -> SessionCounters {
        let labels = |class: &'static str| {
            [
                ("source", source.to_string()),
                ("site", site.to_string()),
                ("mx", mx.to_string()),
                ("class", class.to_string()),
            ]
        };
        metrics::counter!("switchyard_connection_sessions_total", "source" => source.to_string(), "site" => site.to_string(), "mx" => mx.to_string()).increment(1);
        SessionCounters {
            ok: metrics::counter!("switchyard_connection_replies_total", &labels("2xx")),
            transient: metrics::counter!("switchyard_connection_replies_total", &labels("4xx")),
            permanent: metrics::counter!("switchyard_connection_replies_total", &labels("5xx")),
        }
    }

    fn count(&self, reply: &Reply) {
        match reply.code {
            200..=299 => self.ok.increment(1),
            500.. => self.permanent.increment(1),
            _ => self.transient.increment(1),
        }
    }
}

/// An `enforce` policy asked for verified TLS: a TLS failure (`4.7.x`) is the policy's,
/// and says so.
fn enforced_tls_failure(policy: &StsPolicy, reply: &mut Reply) {
    let tls = reply
        .enhanced
        .as_deref()
        .is_some_and(|e| e.starts_with("4.7."));
    if policy.mode == StsMode::Enforce && tls {
        metrics::counter!("switchyard_mta_sts_failures_total", "reason" => "tls").increment(1);
        reply.text = format!(
            "MTA-STS policy (enforce, id {}) requires verified TLS: {}",
            policy.id, reply.text
        );
    }
}

/// What the session with `peer` went under. A `testing` policy only watches: a session that
/// `enforce` would have refused (an MX host it does not list, TLS missing or unverified) is
/// logged and counted, and its mail goes anyway.
fn session_under(policy: &StsPolicy, peer: &Peer) -> StsApplied {
    let verified = peer.tls.as_ref().is_some_and(|t| t.verified);
    let would_fail = match policy.mode {
        StsMode::Testing if !policy.mx_matches(&peer.host) => Some("mx_mismatch"),
        StsMode::Testing if !verified => Some("tls"),
        _ => None,
    };
    if let Some(reason) = would_fail {
        metrics::counter!("switchyard_mta_sts_failures_total", "reason" => reason).increment(1);
        tracing::warn!(
            host = %peer.host,
            addr = %peer.addr,
            policy = %policy.id,
            reason,
            "MTA-STS testing policy: this session would fail under enforce; delivering anyway"
        );
    }
    policy.applied(would_fail)
}

/// Where a connection's outcomes go, and what they share.
struct Reporter {
    kit: Arc<ConnectionKit>,
    source: Arc<str>,
    site: Arc<str>,
    /// The MTA-STS policy the session went under.
    mta_sts: Option<Arc<StsApplied>>,
}

impl Reporter {
    /// Classify the reply, tell the classifier (while rules are in force) and the message's
    /// scheduled queue.
    async fn report(
        &self,
        item: ReadyItem,
        reply: Reply,
        peer: Option<Peer>,
        sent: Option<(String, u64)>,
    ) {
        let kit = &self.kit;
        let bounce_class =
            (!reply.is_success()).then(|| kit.bounces.classify(&reply.match_text()).to_string());
        if kit.rules.automating() {
            let seen = ReplySeen {
                reply: reply.clone(),
                queue: item.queue.clone(),
                source: self.source.clone(),
                site: self.site.clone(),
            };
            let _ = tell(&kit.classifier, seen).await;
        }
        let (sender, size) = match sent {
            Some((s, n)) => (Some(s), Some(n)),
            None => (None, None),
        };
        let outcome = DeliveryOutcome {
            key: item.message.key,
            reply,
            peer,
            source: self.source.clone(),
            site: self.site.clone(),
            sender,
            size,
            bounce_class,
            mta_sts: self.mta_sts.clone(),
        };
        if tell(&item.to.outcome, outcome).await.is_err() {
            tracing::error!("a scheduled queue went away with a message in flight; the spool keeps it for the next start");
        }
    }
}
