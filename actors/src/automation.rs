//! Automation rules (`[["scope".automation]]` in the shaping files), compiled for the
//! ClassifierActor.
//!
//! A rule has patterns, a trigger, actions and a duration. The patterns of all rules of
//! one scope (`default`, a destination, a provider) are compiled into one
//! [`regex::RegexSet`], so a reply is matched against a whole scope in one pass; a pattern
//! `regex` cannot take (lookaround, backreferences — KumoMTA's own file has one) is compiled
//! with `fancy-regex` and tried on its own. Which scopes apply to a reply depends on its
//! site: see [`RuleBook::scopes_for`].

use crate::shaping::{OptionValue, Rate, Shaping, ShapingOptions};
use regex::RegexSet;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// Where a rule was written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `["default"]`: every reply.
    Default,
    /// `["domain"]`: replies for that domain, or its site when the block rolls up.
    Domain(String),
    /// `[provider."name"]`: replies from the provider's sites.
    Provider(Arc<str>),
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Default => f.write_str("default"),
            Scope::Domain(d) => f.write_str(d),
            Scope::Provider(p) => write!(f, "provider.{p}"),
        }
    }
}

/// What a rule does when it fires.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Suspend the (source, site) ready queue; its mail goes to the pool's other sources.
    Suspend,
    /// Hold the tenant's mail to the site.
    SuspendTenant,
    /// Hold the campaign's mail to the site (the tenant's when there is no campaign).
    SuspendCampaign,
    /// A time-limited shaping override for the (source, site) ready queue.
    SetConfig {
        /// Option name.
        name: String,
        /// Its value.
        value: OptionValue,
    },
    /// A time-limited shaping override for every source's ready queue of the site.
    SetDomainConfig {
        /// Option name.
        name: String,
        /// Its value.
        value: OptionValue,
    },
    /// Bounce every tenant's mail to the destination domain, for the rule's duration.
    Bounce,
    /// Bounce the tenant's mail to the site, for the rule's duration.
    BounceTenant,
    /// Bounce the campaign's mail to the site (the tenant's when there is no campaign),
    /// for the rule's duration.
    BounceCampaign,
    /// Pace the tenant's mail to the site at this rate.
    ThrottleTenant(Rate),
    /// Pace the campaign's mail to the site (the tenant's when there is no campaign).
    ThrottleCampaign(Rate),
}

/// The action names a shaping file may use.
pub const ACTION_NAMES: &[&str] = &[
    "Suspend",
    "SuspendTenant",
    "SuspendCampaign",
    "SetConfig",
    "SetDomainConfig",
    "Bounce",
    "BounceTenant",
    "BounceCampaign",
    "ThrottleTenant",
    "ThrottleCampaign",
];

impl Action {
    /// The action's name, as written and as the `action` metric label.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Suspend => "Suspend",
            Action::SuspendTenant => "SuspendTenant",
            Action::SuspendCampaign => "SuspendCampaign",
            Action::SetConfig { .. } => "SetConfig",
            Action::SetDomainConfig { .. } => "SetDomainConfig",
            Action::Bounce => "Bounce",
            Action::BounceTenant => "BounceTenant",
            Action::BounceCampaign => "BounceCampaign",
            Action::ThrottleTenant(_) => "ThrottleTenant",
            Action::ThrottleCampaign(_) => "ThrottleCampaign",
        }
    }

    /// A simple action from its name.
    pub fn simple(name: &str) -> Option<Action> {
        Some(match name {
            "Suspend" => Action::Suspend,
            "SuspendTenant" => Action::SuspendTenant,
            "SuspendCampaign" => Action::SuspendCampaign,
            "Bounce" => Action::Bounce,
            "BounceTenant" => Action::BounceTenant,
            "BounceCampaign" => Action::BounceCampaign,
            _ => return None,
        })
    }

    /// A SetConfig/SetDomainConfig action from the option's name and value.
    pub fn set_config(domain: bool, name: &str, value: &OptionValue) -> Result<Action, String> {
        if !ShapingOptions::default().set(name, value)? {
            return Err(format!("{name} is not a shaping option switchyard can set"));
        }
        let (name, value) = (name.to_string(), value.clone());
        Ok(if domain {
            Action::SetDomainConfig { name, value }
        } else {
            Action::SetConfig { name, value }
        })
    }

    /// How it is logged: the name, with the setting for SetConfig.
    pub fn describe(&self) -> String {
        match self {
            Action::SetConfig { name, value } | Action::SetDomainConfig { name, value } => {
                format!("{}({name}={value})", self.name())
            }
            Action::ThrottleTenant(rate) | Action::ThrottleCampaign(rate) => {
                format!("{}({rate})", self.name())
            }
            other => other.name().to_string(),
        }
    }
}

/// The closest action name to a misspelt one, for "did you mean".
pub fn closest_action(name: &str) -> Option<&'static str> {
    ACTION_NAMES
        .iter()
        .map(|a| (edit_distance(&a.to_lowercase(), &name.to_lowercase()), *a))
        .filter(|(d, a)| *d <= 3.max(a.len() / 3))
        .min()
        .map(|(_, a)| a)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// When a rule fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// On the first match.
    Immediate,
    /// On the `count`-th match within `period`, counted per source × site.
    Threshold {
        /// Matches needed.
        count: u32,
        /// Window.
        period: Duration,
    },
}

impl Trigger {
    /// Parse `"N/period"` (`"3/1m"`, `"2/hr"`, `"5/hour"`).
    pub fn threshold(s: &str) -> Result<Trigger, String> {
        let bad = || {
            format!("invalid threshold {s:?}; expected \"N/period\" such as \"3/1m\" or \"5/hr\"")
        };
        let (n, period) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(bad());
        }
        let period = period.trim();
        let period = if period.starts_with(|c: char| c.is_ascii_digit()) {
            humantime::parse_duration(period).map_err(|_| bad())?
        } else {
            humantime::parse_duration(&format!("1{period}")).map_err(|_| bad())?
        };
        if period.is_zero() {
            return Err(bad());
        }
        Ok(Trigger::Threshold { count, period })
    }
}

/// One automation rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Its name (`name = ...`, else `scope#index`).
    pub name: Arc<str>,
    /// Where it was written.
    pub scope: Scope,
    /// Patterns (any matching fires the rule).
    pub patterns: Vec<String>,
    /// What it does.
    pub actions: Vec<Action>,
    /// When it fires.
    pub trigger: Trigger,
    /// How long its effect lasts.
    pub duration: Duration,
    /// Whether switchyard's own synthetic replies may match.
    pub match_internal: bool,
}

/// One compiled pattern.
pub enum Pattern {
    /// Plain regex syntax: goes into its scope's RegexSet.
    Plain(String),
    /// Needs fancy-regex (lookaround, backreferences).
    Fancy(fancy_regex::Regex),
}

/// Compile a pattern: plain `regex` when it can, else fancy-regex; the error is fancy's.
pub fn compile_pattern(p: &str) -> Result<Pattern, String> {
    if regex::Regex::new(p).is_ok() {
        return Ok(Pattern::Plain(p.to_string()));
    }
    fancy_regex::Regex::new(p)
        .map(Pattern::Fancy)
        .map_err(|e| e.to_string())
}

struct CompiledScope {
    scope: Scope,
    set: RegexSet,
    /// RegexSet pattern index → rule index.
    set_rules: Vec<usize>,
    fancy: Vec<(fancy_regex::Regex, usize)>,
}

/// The shaping and the automation rules in force; a reload replaces both at once.
pub struct RulesInForce {
    current: std::sync::RwLock<(Arc<Shaping>, Arc<RuleBook>)>,
}

impl RulesInForce {
    /// These in force.
    pub fn new(shaping: Arc<Shaping>, rules: Arc<RuleBook>) -> RulesInForce {
        rules.export_counters();
        RulesInForce {
            current: std::sync::RwLock::new((shaping, rules)),
        }
    }

    /// The shaping in force.
    pub fn shaping(&self) -> Arc<Shaping> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// The automation rules in force.
    pub fn rules(&self) -> Arc<RuleBook> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    /// Whether any automation rule is in force (replies need not be reported otherwise).
    pub fn automating(&self) -> bool {
        !self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .rules
            .is_empty()
    }

    /// Put reloaded shaping and rules in force.
    pub fn replace(&self, shaping: Arc<Shaping>, rules: Arc<RuleBook>) {
        rules.export_counters();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = (shaping, rules);
    }
}

/// A scope being compiled: its plain patterns with their rules, and its fancy ones.
type ScopeParts = (
    Scope,
    Vec<String>,
    Vec<usize>,
    Vec<(fancy_regex::Regex, usize)>,
);

/// Every rule, compiled by scope.
#[derive(Default)]
pub struct RuleBook {
    rules: Vec<Rule>,
    scopes: Vec<CompiledScope>,
}

impl std::fmt::Debug for RuleBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleBook")
            .field("rules", &self.rules.len())
            .finish()
    }
}

impl RuleBook {
    /// Compile `rules`; the error names the rule, the pattern and why.
    pub fn new(rules: Vec<Rule>) -> Result<RuleBook, String> {
        let mut scopes: Vec<ScopeParts> = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let at = match scopes.iter().position(|s| s.0 == rule.scope) {
                Some(at) => at,
                None => {
                    scopes.push((rule.scope.clone(), Vec::new(), Vec::new(), Vec::new()));
                    scopes.len() - 1
                }
            };
            let slot = &mut scopes[at];
            for p in &rule.patterns {
                match compile_pattern(p)
                    .map_err(|e| format!("rule {}: bad regex {p:?}: {e}", rule.name))?
                {
                    Pattern::Plain(p) => {
                        slot.1.push(p);
                        slot.2.push(i);
                    }
                    Pattern::Fancy(re) => slot.3.push((re, i)),
                }
            }
        }
        let scopes = scopes
            .into_iter()
            .map(|(scope, patterns, set_rules, fancy)| {
                RegexSet::new(&patterns)
                    .map(|set| CompiledScope {
                        scope,
                        set,
                        set_rules,
                        fancy,
                    })
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        Ok(RuleBook { rules, scopes })
    }

    /// Export every rule's counters at 0 — `switchyard_classifier_matches_total{rule}` and
    /// `switchyard_automation_fired_total{rule,action}` for each of its actions — so that
    /// `increase()` and `rate()` see the first match and the first firing, not only the
    /// second.
    pub fn export_counters(&self) {
        for r in &self.rules {
            metrics::counter!("switchyard_classifier_matches_total", "rule" => r.name.to_string())
                .increment(0);
            for a in &r.actions {
                metrics::counter!("switchyard_automation_fired_total", "rule" => r.name.to_string(), "action" => a.name())
                    .increment(0);
            }
        }
    }

    /// The rules, by index.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Every scope's index (matching against all of them is the worst case).
    pub fn all_scopes(&self) -> Vec<usize> {
        (0..self.scopes.len()).collect()
    }

    /// Indexes of the scopes whose rules apply to a reply for `domain` from `site`:
    /// `default`, the destination block (the domain's own, or the rollup block of the
    /// site), and the providers of the site.
    pub fn scopes_for(&self, shaping: &Shaping, domain: &str, site: &str) -> Vec<usize> {
        let block = shaping
            .domain_block(domain, site)
            .map(|(n, _)| n.to_string());
        let providers = shaping.providers_for(domain, site);
        self.scopes
            .iter()
            .enumerate()
            .filter(|(_, s)| match &s.scope {
                Scope::Default => true,
                Scope::Domain(d) => block.as_deref() == Some(d.as_str()) || d == domain,
                Scope::Provider(p) => providers.iter().any(|x| &x.name == p),
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// Rules of `scopes` matching `text` (each once, in rule order). An `internal` reply
    /// (made up by switchyard) only matches rules with `match_internal`.
    pub fn matching(&self, scopes: &[usize], text: &str, internal: bool) -> Vec<usize> {
        let mut out = Vec::new();
        for &s in scopes {
            let Some(scope) = self.scopes.get(s) else {
                continue;
            };
            for m in scope.set.matches(text).iter() {
                out.push(scope.set_rules[m]);
            }
            for (re, rule) in &scope.fancy {
                if re.is_match(text).unwrap_or(false) {
                    out.push(*rule);
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out.retain(|&r| !internal || self.rules[r].match_internal);
        out
    }
}

/// Matches of one rule for one source × site within the rule's window, as wall-clock
/// milliseconds (so that they can be stored and outlive a restart).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ThresholdWindow {
    hits: VecDeque<u64>,
}

impl ThresholdWindow {
    /// Count a match at `now_ms`; true when it makes `count` within `period` (the window
    /// then starts afresh, so the next firing needs `count` new matches).
    pub fn hit(&mut self, now_ms: u64, count: u32, period: Duration) -> bool {
        let period = period.as_millis() as u64;
        while self
            .hits
            .front()
            .is_some_and(|t| now_ms.saturating_sub(*t) >= period)
        {
            self.hits.pop_front();
        }
        self.hits.push_back(now_ms);
        if self.hits.len() >= count as usize {
            self.hits.clear();
            true
        } else {
            false
        }
    }

    /// Whether it holds no recent matches (and can be dropped).
    pub fn is_stale(&self, now_ms: u64, period: Duration) -> bool {
        self.hits
            .back()
            .is_none_or(|t| now_ms.saturating_sub(*t) >= period.as_millis() as u64)
    }

    /// Whether it holds no matches.
    pub fn is_empty(&self) -> bool {
        self.hits.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, scope: Scope, patterns: &[&str]) -> Rule {
        Rule {
            name: name.into(),
            scope,
            patterns: patterns.iter().map(|p| p.to_string()).collect(),
            actions: vec![Action::SuspendTenant],
            trigger: Trigger::Immediate,
            duration: Duration::from_secs(60),
            match_internal: false,
        }
    }

    #[test]
    fn matches_by_scope_with_fancy_patterns() {
        let book = RuleBook::new(vec![
            rule(
                "a",
                Scope::Default,
                &["temporarily deferred", "rate limited"],
            ),
            rule(
                "b",
                Scope::Domain("comcast.net".into()),
                &["^(?!.*internal).*RL000010"],
            ),
            rule("c", Scope::Domain("gmail.com".into()), &["5\\.7\\.26"]),
        ])
        .unwrap();
        let shaping = Shaping::default();
        let comcast = book.scopes_for(&shaping, "comcast.net", "mx.comcast.net");
        assert_eq!(
            book.matching(&comcast, "421 RL000010 slow down", false),
            vec![1]
        );
        assert!(book
            .matching(&comcast, "421 internal RL000010", false)
            .is_empty());
        assert_eq!(book.matching(&comcast, "451 rate limited", false), vec![0]);
        let gmail = book.scopes_for(&shaping, "gmail.com", "mx.google.com");
        assert_eq!(book.matching(&gmail, "550 5.7.26 no auth", false), vec![2]);
        assert!(book.matching(&gmail, "550 5.7.26 no auth", true).is_empty());
        assert!(book
            .matching(&comcast, "550 5.7.26 no auth", false)
            .is_empty());
    }

    #[test]
    fn thresholds_count_within_the_window() {
        let t = Trigger::threshold("3/1m").unwrap();
        assert_eq!(
            t,
            Trigger::Threshold {
                count: 3,
                period: Duration::from_secs(60)
            }
        );
        assert!(Trigger::threshold("2/hr").is_ok());
        assert!(Trigger::threshold("two/hr").is_err());
        let mut w = ThresholdWindow::default();
        let t0 = 1_000_000;
        assert!(!w.hit(t0, 3, Duration::from_secs(60)));
        assert!(!w.hit(t0 + 70_000, 3, Duration::from_secs(60)));
        assert!(!w.hit(t0 + 80_000, 3, Duration::from_secs(60)));
        assert!(w.hit(t0 + 90_000, 3, Duration::from_secs(60)));
    }

    #[test]
    fn did_you_mean() {
        assert_eq!(closest_action("SuspendTennant"), Some("SuspendTenant"));
        assert_eq!(closest_action("suspend"), Some("Suspend"));
        assert_eq!(closest_action("Explode"), None);
    }
}
