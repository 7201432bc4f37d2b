//! How long the ClassifierActor's rule matching takes for one reply, against every
//! automation rule of KumoMTA's `shaping.toml` and `community/shaping.toml` (read from
//! `../shared/data/kumomta`; skipped with a message when that folder is absent).
//!
//! `cargo bench -p switchyard-actors --bench classify`. Target: ≤ 2 µs per reply.
//!
//! Only the patterns and scopes matter for the cost, so the rules are read here with plain
//! `toml` (the daemon's loader, with positions and checks, lives in the `switchyard` crate).

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;
use switchyard_actors::automation::{Action, Rule, RuleBook, Scope, Trigger};
use switchyard_actors::shaping::{Provider, ProviderMatch, Shaping};

fn patterns(v: &toml::Value) -> Vec<String> {
    match v.get("regex") {
        Some(toml::Value::String(s)) => vec![s.clone()],
        Some(toml::Value::Array(a)) => a
            .iter()
            .filter_map(|p| p.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    }
}

fn rules_of(scope: Scope, block: &toml::Value, out: &mut Vec<Rule>) {
    let Some(toml::Value::Array(rules)) = block.get("automation") else {
        return;
    };
    for (i, r) in rules.iter().enumerate() {
        out.push(Rule {
            name: format!("{scope}#{i}").into(),
            scope: scope.clone(),
            patterns: patterns(r),
            actions: vec![Action::Suspend],
            trigger: Trigger::Immediate,
            duration: Duration::from_secs(60),
            match_internal: false,
        });
    }
}

fn load() -> Option<(Shaping, RuleBook)> {
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/kumomta");
    let base = if base.exists() {
        base
    } else {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/kumomta")
    };
    let mut shaping = Shaping::default();
    let mut rules = Vec::new();
    for f in ["shaping.toml", "community/shaping.toml"] {
        let text = std::fs::read_to_string(base.join(f)).ok()?;
        let doc: toml::Table = toml::from_str(&text).ok()?;
        for (name, block) in &doc {
            if name == "provider" {
                for (p, pb) in block.as_table()? {
                    rules_of(Scope::Provider(p.as_str().into()), pb, &mut rules);
                    let matches: Vec<ProviderMatch> = pb
                        .get("match")
                        .and_then(|m| m.as_array())
                        .map(|a| {
                            a.iter()
                                .filter_map(|m| m.get("MXSuffix")?.as_str())
                                .map(|s| ProviderMatch::MxSuffix(s.trim_end_matches('.').into()))
                                .collect()
                        })
                        .unwrap_or_default();
                    if !matches.is_empty() {
                        shaping.providers.push(Arc::new(Provider {
                            name: p.as_str().into(),
                            matches,
                            ..Default::default()
                        }));
                    }
                }
            } else if name == "default" {
                rules_of(Scope::Default, block, &mut rules);
            } else {
                rules_of(Scope::Domain(name.clone()), block, &mut rules);
            }
        }
    }
    let book = RuleBook::new(rules).ok()?;
    Some((shaping, book))
}

fn classify(c: &mut Criterion) {
    let Some((shaping, book)) = load() else {
        eprintln!("skipped: ../shared/data/kumomta/shaping.toml is not here");
        return;
    };
    eprintln!("{} rules", book.rules().len());
    let site = "mta5.am0.yahoodns.net,mta6.am0.yahoodns.net,mta7.am0.yahoodns.net";
    let scopes = book.scopes_for(&shaping, "yahoo.com", site);
    let deferral = "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes";
    let success = "250 2.0.0 ok dirdel 1/0";
    assert!(!book.matching(&scopes, deferral, false).is_empty());
    c.bench_function("match a Yahoo [TSS04] deferral (full rule set)", |b| {
        b.iter(|| book.matching(black_box(&scopes), black_box(deferral), false))
    });
    c.bench_function("match a 250 reply (full rule set)", |b| {
        b.iter(|| book.matching(black_box(&scopes), black_box(success), false))
    });
    let all = book.all_scopes();
    c.bench_function("match a deferral against every rule of every scope", |b| {
        b.iter(|| book.matching(black_box(&all), black_box(deferral), false))
    });
    c.bench_function("scopes for a new (site, domain) (cached after)", |b| {
        b.iter(|| book.scopes_for(&shaping, black_box("yahoo.com"), black_box(site)))
    });
}

criterion_group!(benches, classify);
criterion_main!(benches);
