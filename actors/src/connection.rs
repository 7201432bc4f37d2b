//! ConnectionActor: one outbound SMTP session from one egress source to one site.
//!
//! It asks its ReadyQueueActor for a message, connects (trying the site's hosts in order),
//! then sends message after message over the same session — RSET between them is the
//! session's business — up to `max_deliveries_per_connection`, waiting up to the idle
//! timeout for more. Every reply goes to the ClassifierActor and the outcome to the message's
//! QueueActor. A body is read from the spool only now, on the blocking pool.

use crate::classifier::{ClassifierActor, ClassifyReply};
use crate::message::{Peer, Reply};
use crate::ports::{ConnectTarget, Ports};
use crate::queue::DeliveryOutcome;
use crate::ready_queue::{
    ConnectResult, ConnectionClosed, NextMessage, ReadyItem, ReadyQueueActor,
};
use actix::prelude::*;
use std::sync::Arc;

/// One SMTP session's worth of deliveries.
pub struct ConnectionActor {
    /// The ready queue it serves.
    pub ready: Addr<ReadyQueueActor>,
    /// Where replies are classified.
    pub classifier: Addr<ClassifierActor>,
    /// Spool, connector.
    pub ports: Ports,
    /// Whom to reach, how.
    pub target: ConnectTarget,
    /// Site name, for outcomes.
    pub site: Arc<str>,
    /// Messages per session.
    pub max_deliveries: usize,
}

impl Actor for ConnectionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let work = deliver_loop(
            self.ready.clone(),
            self.classifier.clone(),
            self.ports.clone(),
            self.target.clone(),
            self.site.clone(),
            self.max_deliveries,
        );
        ctx.spawn(work.into_actor(self).map(|_, _, ctx| ctx.stop()));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.ready.do_send(ConnectionClosed);
    }
}

async fn next(ready: &Addr<ReadyQueueActor>, first: bool) -> Option<ReadyItem> {
    ready.send(NextMessage { first }).await.ok().flatten()
}

async fn deliver_loop(
    ready: Addr<ReadyQueueActor>,
    classifier: Addr<ClassifierActor>,
    ports: Ports,
    target: ConnectTarget,
    site: Arc<str>,
    max_deliveries: usize,
) {
    let Some(first) = next(&ready, true).await else {
        return;
    };
    let source = target.source.name.clone();
    let mut session = match ports.connector.connect(target).await {
        Ok(s) => {
            ready.do_send(ConnectResult(None));
            s
        }
        Err(failure) => {
            ready.do_send(ConnectResult(Some(failure.reply.clone())));
            report(
                &classifier,
                &source,
                &site,
                first,
                failure.reply,
                failure.peer,
                None,
            )
            .await;
            return;
        }
    };
    let mut item = Some(first);
    let mut sent = 0;
    while let Some(it) = item.take() {
        let spool = ports.spool.clone();
        let key = it.message.key;
        let loaded = tokio::task::spawn_blocking(move || spool.load(&key)).await;
        let (reply, sent_as) = match loaded {
            Ok(Ok(m)) => {
                let size = m.body.len() as u64;
                let reply = session.send(&m.sender, &it.message.recipient, m.body).await;
                (reply, Some((m.sender, size)))
            }
            Ok(Err(e)) => (
                Reply::internal(
                    451,
                    "4.3.0",
                    format!("cannot read the message from the spool: {e}"),
                ),
                None,
            ),
            Err(e) => (
                Reply::internal(451, "4.3.0", format!("spool reader failed: {e}")),
                None,
            ),
        };
        let peer = Some(session.peer().clone());
        report(&classifier, &source, &site, it, reply, peer, sent_as).await;
        sent += 1;
        if sent >= max_deliveries || !session.usable() {
            break;
        }
        item = next(&ready, false).await;
    }
    session.close().await;
}

async fn report(
    classifier: &Addr<ClassifierActor>,
    source: &Arc<str>,
    site: &Arc<str>,
    item: ReadyItem,
    reply: Reply,
    peer: Option<Peer>,
    sent: Option<(String, u64)>,
) {
    let bounce_class = classifier
        .send(ClassifyReply {
            reply: reply.clone(),
            queue: item.queue.clone(),
            source: source.clone(),
            site: site.clone(),
        })
        .await
        .ok()
        .flatten();
    let (sender, size) = match sent {
        Some((s, n)) => (Some(s), Some(n)),
        None => (None, None),
    };
    item.outcome_to.do_send(DeliveryOutcome {
        key: item.message.key,
        reply,
        peer,
        source: source.clone(),
        site: site.clone(),
        sender,
        size,
        bounce_class,
    });
}
