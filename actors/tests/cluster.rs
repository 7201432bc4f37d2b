//! The suspension register in a cluster, with a port that records what it is told to share
//! (and answers nothing else): changes are shared in order, the newest wins, a resume is a
//! tombstone an older copy cannot undo, two nodes' suspensions of one target merge, and of
//! two changes made in the same millisecond Redis's copy wins.

mod common;

use common::{engine_on, plain_settings};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchyard_actors::cluster::{
    Answer, ClusterPort, LeaseId, PolicyChange, PolicyKind, Taken, Unreachable,
};
use switchyard_actors::memory::{MemoryEvents, MemoryPorts, ScriptedConnector};
use switchyard_actors::message::now_ms;
use switchyard_actors::suspension::{Suspension, SuspensionKind};

/// Records each `share` call; Redis "does not answer" the rest.
#[derive(Default)]
struct Recorder {
    shared: Mutex<Vec<Vec<PolicyChange>>>,
}

impl ClusterPort for Recorder {
    fn node(&self) -> &str {
        "a"
    }
    fn share(&self, changes: Vec<PolicyChange>) {
        self.shared.lock().unwrap().push(changes);
    }
    fn take(
        &self,
        _: String,
        _: Duration,
        _: u64,
        _: u32,
        answer: Answer<Result<Taken, Unreachable>>,
    ) {
        answer(Err(Unreachable))
    }
    fn lease(&self, _: Vec<(String, usize)>, answer: Answer<Result<Option<LeaseId>, Unreachable>>) {
        answer(Err(Unreachable))
    }
    fn release(&self, _: LeaseId) {}
    fn count_match(
        &self,
        _: String,
        _: u32,
        _: Duration,
        answer: Answer<Result<bool, Unreachable>>,
    ) {
        answer(Err(Unreachable))
    }
    fn nodes(&self) -> usize {
        2
    }
}

fn clustered() -> (switchyard_actors::engine::Engine, Arc<Recorder>) {
    let (e, rec, _) = clustered_with_log();
    (e, rec)
}

/// [`clustered`], and the engine's event log.
fn clustered_with_log() -> (
    switchyard_actors::engine::Engine,
    Arc<Recorder>,
    Arc<MemoryEvents>,
) {
    let recorder = Arc::new(Recorder::default());
    let mut mem = MemoryPorts::new(ScriptedConnector::accepting());
    mem.ports.cluster = Some(recorder.clone());
    (
        engine_on(&mem, plain_settings()),
        recorder,
        mem.events.clone(),
    )
}

fn suspension(id: &str, reason: &str, minutes: u64, updated_ms: u64) -> Suspension {
    Suspension {
        id: id.into(),
        kind: SuspensionKind::Tenant,
        tenant: Some("acme".into()),
        campaign: None,
        domain: None,
        site: Some("mx.gmail.test".into()),
        source: None,
        reason: reason.into(),
        rule: None,
        created_ms: 1,
        expires_ms: now_ms() + minutes * 60_000,
        updated_ms,
    }
}

fn change(s: &Suspension, deleted: bool, updated_ms: u64) -> PolicyChange {
    PolicyChange {
        kind: PolicyKind::Suspension,
        id: s.id.clone(),
        updated_ms,
        expires_ms: s.expires_ms,
        node: "b".into(),
        object: (!deleted).then(|| serde_json::to_value(s).unwrap()),
    }
}

/// The register's list once it has handled what was sent before (a request after them).
async fn listed(e: &switchyard_actors::engine::Engine) -> Vec<Suspension> {
    e.suspensions().await.unwrap()
}

#[actix::test]
async fn a_resume_is_shared_as_a_tombstone_that_an_older_copy_cannot_undo() {
    let (e, rec) = clustered();
    let s = e.suspend(suspension("", "local", 60, 0)).await.unwrap();
    assert!(s.updated_ms > 0);
    assert!(e.resume(s.id.clone()).await.unwrap());
    let shared = rec.shared.lock().unwrap().clone();
    assert_eq!(shared.len(), 2, "{shared:?}");
    assert!(shared[0][0].object.is_some() && shared[0][0].id == s.id);
    let tombstone = &shared[1][0];
    assert!(tombstone.is_tombstone() && tombstone.id == s.id);
    assert!(tombstone.updated_ms > s.updated_ms);
    // Another node's older copy arrives: it stays resumed.
    e.apply_shared(vec![change(&s, false, s.updated_ms)]);
    assert!(listed(&e).await.is_empty());
    // And a newer change of it (suspended again there later) wins.
    e.apply_shared(vec![change(&s, false, tombstone.updated_ms + 1)]);
    assert_eq!(listed(&e).await.len(), 1);
    // A newer tombstone from elsewhere ends it here too, without sharing anything.
    let before = rec.shared.lock().unwrap().len();
    e.apply_shared(vec![change(&s, true, tombstone.updated_ms + 2)]);
    assert!(listed(&e).await.is_empty());
    assert_eq!(rec.shared.lock().unwrap().len(), before);
}

#[actix::test]
async fn two_nodes_suspensions_of_one_target_merge_into_the_smaller_id() {
    let (e, rec) = clustered();
    let mine = e.suspend(suspension("", "mine", 60, 0)).await.unwrap();
    // b made one for the same target at the same time, under an id that sorts first,
    // changed later, ending later.
    let theirs = suspension("0", "theirs", 120, mine.updated_ms + 5);
    e.apply_shared(vec![change(&theirs, false, theirs.updated_ms)]);
    let now = listed(&e).await;
    assert_eq!(now.len(), 1, "{now:?}");
    assert_eq!(now[0].id, "0");
    assert_eq!(now[0].reason, "theirs", "the contents changed last");
    assert_eq!(now[0].expires_ms, theirs.expires_ms, "the later expiry");
    // Shared in one call, in order: the kept one, then mine deleted.
    let last = rec.shared.lock().unwrap().last().unwrap().clone();
    assert_eq!(last.len(), 2, "{last:?}");
    assert_eq!((last[0].id.as_str(), last[0].is_tombstone()), ("0", false));
    assert_eq!(
        (last[1].id.clone(), last[1].is_tombstone()),
        (mine.id.clone(), true)
    );
    // The same merge seen again (b's own tombstone of mine, older) changes nothing.
    e.apply_shared(vec![change(&mine, true, mine.updated_ms)]);
    assert_eq!(listed(&e).await.len(), 1);
}

#[actix::test]
async fn of_two_changes_in_the_same_millisecond_the_copy_redis_kept_wins_once() {
    let (e, rec, log) = clustered_with_log();
    let mine = e.suspend(suspension("", "mine", 60, 0)).await.unwrap();
    let at = mine.updated_ms;
    // b changed the same suspension in the same millisecond, and Redis kept b's: it wins
    // here too (before, each node kept its own for ever).
    let mut theirs = mine.clone();
    theirs.reason = "theirs".into();
    e.apply_shared(vec![change(&theirs, false, at)]);
    let now = listed(&e).await;
    assert_eq!(
        (now.len(), now[0].reason.as_str()),
        (1, "theirs"),
        "{now:?}"
    );
    // Heard again at every reconciliation: nothing more is logged, stored or shared.
    let (records, shared) = (log.records().len(), rec.shared.lock().unwrap().len());
    for _ in 0..3 {
        e.apply_shared(vec![change(&theirs, false, at)]);
    }
    assert_eq!(listed(&e).await[0].reason, "theirs");
    assert_eq!(log.records().len(), records, "{:?}", log.records());
    assert_eq!(rec.shared.lock().unwrap().len(), shared);
    // A resume made elsewhere in that same millisecond, kept by Redis, ends it; heard
    // again, it is nothing new.
    e.apply_shared(vec![change(&theirs, true, at)]);
    assert!(listed(&e).await.is_empty());
    let records = log.records().len();
    e.apply_shared(vec![change(&theirs, true, at)]);
    assert!(listed(&e).await.is_empty());
    assert_eq!(log.records().len(), records);
}
