//! The actors' behaviour without sockets: the engine over in-memory ports (`memory.rs`),
//! each test a few milliseconds — delivery and settlement, batching, holds and their
//! release, pulling back from ready queues, reaping, and threshold rules.

mod common;

use common::{engine, message, plain_settings, reply, settings};
use std::time::Duration;
use switchyard_actors::automation::{Action, Rule, RuleBook, Scope, Trigger};
use switchyard_actors::memory::{ScriptedConnector, SpoolCall};
use switchyard_actors::message::now_ms;
use switchyard_actors::record::RecordKind;
use switchyard_actors::shaping::Shaping;
use switchyard_actors::suspension::{Suspension, SuspensionKind};

const SOON: Duration = Duration::from_secs(5);

fn count(records: &[switchyard_actors::record::LogRecord], kind: RecordKind) -> usize {
    records.iter().filter(|r| r.kind == kind).count()
}

fn tenant_suspension(tenant: &str, minutes: u64) -> Suspension {
    Suspension {
        id: String::new(),
        kind: SuspensionKind::Tenant,
        tenant: Some(tenant.into()),
        campaign: None,
        domain: None,
        site: None,
        source: None,
        reason: "test".into(),
        rule: None,
        created_ms: 0,
        expires_ms: now_ms() + minutes * 60_000,
        updated_ms: 0,
    }
}

#[actix::test]
async fn each_message_is_delivered_and_settled_once() {
    let (engine, mem) = engine(ScriptedConnector::accepting(), plain_settings());
    for n in 0..3 {
        engine.submit(message(&mem, n, "acme", &["u@a.test"])).await;
    }
    let records = mem
        .events
        .wait(SOON, |r| count(r, RecordKind::Delivery) == 3)
        .await
        .expect("3 deliveries");
    assert!(records
        .iter()
        .all(|r| r.queue.as_deref() == Some("spring:acme@a.test")));
    let removed = mem
        .spool
        .calls()
        .iter()
        .filter(|c| matches!(c, SpoolCall::Remove(_)))
        .count();
    assert_eq!(removed, 3, "each delivered recipient leaves the spool");
}

#[actix::test]
async fn a_message_leaves_in_one_transaction_and_each_recipient_keeps_its_reply() {
    let refuse = "u2@b.test";
    let (engine, mem) = engine(
        ScriptedConnector::new(move |rcpt| {
            if rcpt == refuse {
                reply(550, "5.1.1", "no such user")
            } else {
                reply(250, "2.0.0", "ok")
            }
        }),
        plain_settings(),
    );
    let rcpts: Vec<String> = (0..5).map(|i| format!("u{i}@b.test")).collect();
    let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    engine.submit(message(&mem, 1, "acme", &rcpts)).await;
    let records = mem
        .events
        .wait(SOON, |r| {
            count(r, RecordKind::Delivery) + count(r, RecordKind::Bounce) == 5
        })
        .await
        .expect("5 settlements");
    let t = mem.connector.transactions();
    assert_eq!(t.len(), 1, "{t:?}");
    assert_eq!(
        t[0].recipients,
        ["u0@b.test", "u1@b.test", "u3@b.test", "u4@b.test"]
    );
    let bounce: Vec<_> = records
        .iter()
        .filter(|r| r.kind == RecordKind::Bounce)
        .collect();
    assert_eq!(bounce.len(), 1);
    assert_eq!(bounce[0].recipient.as_deref(), Some(refuse));
    assert_eq!(bounce[0].response.as_ref().map(|r| r.code), Some(550));
}

#[actix::test]
async fn a_held_tenant_sends_nothing_and_its_release_counts_no_attempt() {
    let (engine, mem) = engine(ScriptedConnector::accepting(), plain_settings());
    let held = engine.suspend(tenant_suspension("bad", 60)).await.unwrap();
    engine.submit(message(&mem, 1, "bad", &["u@c.test"])).await;
    engine.submit(message(&mem, 2, "good", &["u@c.test"])).await;
    mem.events
        .wait(SOON, |r| count(r, RecordKind::Delivery) == 1)
        .await
        .expect("the other tenant's mail goes");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        mem.connector.transactions().len(),
        1,
        "the held tenant sent nothing"
    );
    let (scheduled, _) = engine.queues().await;
    let bad = scheduled.iter().find(|q| q.tenant == "bad").unwrap();
    assert!(bad.suspended && bad.messages == 1, "{bad:?}");

    assert_eq!(engine.resume(held.id).await, Ok(true));
    let records = mem
        .events
        .wait(SOON, |r| count(r, RecordKind::Delivery) == 2)
        .await
        .expect("released mail goes at once");
    let delivered = records
        .iter()
        .find(|r| r.kind == RecordKind::Delivery && r.tenant.as_deref() == Some("bad"))
        .unwrap();
    assert_eq!(delivered.attempts, Some(1), "the hold cost no attempt");
    let rescheduled_held = mem
        .spool
        .calls()
        .iter()
        .any(|c| matches!(c, SpoolCall::Reschedule(_, 0, _, held) if *held > 0));
    assert!(rescheduled_held, "held time is written down, for max_age");
}

#[actix::test]
async fn a_hold_pulls_back_what_the_ready_queue_still_has() {
    let mut shaping = Shaping::default();
    shaping.default.connection_limit = Some(switchyard_actors::shaping::Limit {
        count: 1,
        local: false,
    });
    let (engine, mem) = engine(
        ScriptedConnector::accepting(),
        settings(shaping, RuleBook::default(), Duration::from_secs(60)),
    );
    // The one connection waits at the gate with the first message; the others wait in
    // the ready queue.
    mem.connector.close_gate();
    for n in 0..4 {
        engine.submit(message(&mem, n, "acme", &["u@d.test"])).await;
    }
    let waiting =
        |ready: &[switchyard_actors::messages::ReadyInfo]| ready.first().map_or(0, |r| r.messages);
    let deadline = std::time::Instant::now() + SOON;
    while waiting(&engine.queues().await.1) < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "ready queue never filled"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    engine.suspend(tenant_suspension("acme", 60)).await.unwrap();
    let deadline = std::time::Instant::now() + SOON;
    loop {
        let (scheduled, ready) = engine.queues().await;
        if waiting(&ready) == 0 && scheduled.iter().all(|q| q.suspended) {
            assert_eq!(scheduled[0].messages, 4, "pulled back, not lost");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not pulled back");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    mem.connector.open();
}

#[actix::test]
async fn idle_queues_campaigns_and_tenants_are_reaped() {
    // Connections close after 50 ms without mail; then the ready queues are idle too.
    let mut shaping = Shaping::default();
    shaping.default.idle_timeout = Some(Duration::from_millis(50));
    let (engine, mem) = engine(
        ScriptedConnector::accepting(),
        settings(shaping, RuleBook::default(), Duration::from_millis(100)),
    );
    engine
        .submit(message(&mem, 1, "acme", &["u@e.test", "v@f.test"]))
        .await;
    mem.events
        .wait(SOON, |r| count(r, RecordKind::Delivery) == 2)
        .await
        .expect("delivered");
    assert_eq!(engine.live().0, 1, "a tenant while it has mail");
    let deadline = std::time::Instant::now() + SOON;
    while engine.live() != (0, 0, 0, 0) {
        assert!(
            std::time::Instant::now() < deadline,
            "still live: {:?}",
            engine.live()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // And they come back for new mail.
    engine.submit(message(&mem, 2, "acme", &["u@e.test"])).await;
    mem.events
        .wait(SOON, |r| count(r, RecordKind::Delivery) == 3)
        .await
        .expect("delivered after the reaping");
}

#[actix::test]
async fn a_threshold_rule_fires_on_the_third_match_within_its_period() {
    let rules = RuleBook::new(vec![Rule {
        name: "tss".into(),
        scope: Scope::Default,
        patterns: vec!["TSS04".into()],
        actions: vec![Action::SuspendTenant],
        trigger: Trigger::Threshold {
            count: 3,
            period: Duration::from_secs(60),
        },
        duration: Duration::from_secs(3600),
        match_internal: false,
    }])
    .unwrap();
    let (engine, mem) = engine(
        ScriptedConnector::new(|_| reply(421, "4.7.0", "[TSS04] try later")),
        settings(Shaping::default(), rules, Duration::from_secs(60)),
    );
    for n in 0..2 {
        engine.submit(message(&mem, n, "acme", &["u@g.test"])).await;
    }
    mem.events
        .wait(SOON, |r| count(r, RecordKind::TransientFailure) == 2)
        .await
        .expect("two deferrals");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        engine.suspensions().await.unwrap().is_empty(),
        "2 of 3: no firing"
    );
    engine.submit(message(&mem, 2, "acme", &["u@g.test"])).await;
    let records = mem
        .events
        .wait(SOON, |r| count(r, RecordKind::Suspension) == 1)
        .await
        .expect("the third match fires");
    assert_eq!(count(&records, RecordKind::AutomationFired), 1);
    let s = engine.suspensions().await.unwrap();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].rule.as_deref(), Some("tss"));
    assert_eq!(s[0].tenant.as_deref(), Some("acme"));
}
