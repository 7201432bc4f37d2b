//! What the actor tests share: an engine over in-memory ports, and messages to give it.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use switchyard_actors::automation::RuleBook;
use switchyard_actors::engine::{Engine, EngineSettings, Submission};
use switchyard_actors::memory::{MemoryPorts, ScriptedConnector};
use switchyard_actors::message::{now_ms, LoadedMessage, QueueIdentity, QueuedMessage, Reply};
use switchyard_actors::pool::{Pool, Pools};
use switchyard_actors::ports::EgressSource;
use switchyard_actors::queue_policy::{QueuePolicies, RetryPolicy};
use switchyard_actors::shaping::Shaping;

/// Settings for tests: one source, retries after a minute, reaping after `reap_after`.
pub fn settings(shaping: Shaping, rules: RuleBook, reap_after: Duration) -> EngineSettings {
    let source = Arc::new(EgressSource {
        name: "ip-1".into(),
        address: None,
        ehlo: "mta.test".into(),
    });
    let mut pools = HashMap::new();
    pools.insert(
        "default".to_string(),
        Arc::new(Pool {
            name: "default".into(),
            members: vec![(source, 1)],
        }),
    );
    EngineSettings {
        policies: QueuePolicies::uniform(RetryPolicy {
            retry_interval: Duration::from_secs(60),
            max_retry_interval: Duration::from_secs(600),
            max_age: Duration::from_secs(3600),
        }),
        pools: Pools {
            pools,
            tenant_pools: HashMap::new(),
        },
        shaping: Arc::new(shaping),
        rules: Arc::new(rules),
        tenant_rates: HashMap::new(),
        reap_after,
        campaign_labels: true,
        arbiters: 2,
    }
}

/// [`settings`] with no shaping, no rules, and reaping after a minute.
pub fn plain_settings() -> EngineSettings {
    settings(
        Shaping::default(),
        RuleBook::default(),
        Duration::from_secs(60),
    )
}

/// An engine over in-memory ports whose receivers answer as `connector` says.
pub fn engine(connector: ScriptedConnector, settings: EngineSettings) -> (Engine, MemoryPorts) {
    let mem = MemoryPorts::new(connector);
    (engine_on(&mem, settings), mem)
}

/// An engine over `mem`'s ports (as the test set them).
pub fn engine_on(mem: &MemoryPorts, settings: EngineSettings) -> Engine {
    Engine::start(
        settings,
        mem.ports.clone(),
        switchyard_actors::bounce::BounceClassifier::empty(),
    )
    .unwrap()
}

/// Message `n`'s recipients `rcpts`, as ingress hands them over (its content in the spool).
pub fn message(mem: &MemoryPorts, n: u8, tenant: &str, rcpts: &[&str]) -> Vec<Submission> {
    let mut id = [0u8; 16];
    id[0] = n;
    id[15] = 1;
    mem.spool.put(
        id,
        LoadedMessage {
            sender: "news@sender.test".into(),
            body: bytes::Bytes::from_static(b"Subject: hi\r\n\r\nhello\r\n"),
            stuffed: true,
        },
    );
    let now = now_ms();
    rcpts
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut key = [0u8; 20];
            key[..16].copy_from_slice(&id);
            key[16..].copy_from_slice(&(i as u32).to_be_bytes());
            let domain = r.split('@').nth(1).unwrap_or_default();
            Submission {
                queue: QueueIdentity {
                    tenant: tenant.into(),
                    campaign: Some("spring".into()),
                    domain: domain.into(),
                },
                message: QueuedMessage {
                    key,
                    recipient: (*r).into(),
                    attempts: 0,
                    due_ms: now,
                    created_ms: now,
                    held_ms: 0,
                    hot: None,
                },
            }
        })
        .collect()
}

/// A reply of a remote server.
pub fn reply(code: u16, enhanced: &str, text: &str) -> Reply {
    Reply {
        code,
        enhanced: Some(enhanced.into()),
        text: text.into(),
        internal: false,
    }
}
