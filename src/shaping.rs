//! Loading traffic shaping and bounce classification files (KumoMTA's formats) into the
//! actors' types, with `file:line:col` on every error and warning.
//!
//! Shaping files are read with toml's spanned document parser, so every value keeps its
//! position. Blocks, in each file:
//!
//! - `["default"]`, `["domain"]` — options, `mx_rollup`, `replace_base`, `sources."name"`,
//!   and `[["scope".automation]]` rules;
//! - `[provider."name"]` — `match`, `provider_connection_limit`, `provider_max_message_rate`,
//!   options, sources and rules.
//!
//! Files layer in order: a later file's option wins, and `replace_base = true` drops what
//! earlier files said for that block (its rules too). An option switchyard does not apply
//! loads with one warning per option name. After loading, [`resolve_sites`] asks DNS which
//! site each MX-rollup block stands for; a failure there is a warning, not an error.

use crate::config::{ConfigError, LoadedConfig, SourceText};
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use switchyard_actors::automation::{
    closest_action, compile_pattern, Action, Rule, RuleBook, Scope, Trigger, ACTION_NAMES,
};
use switchyard_actors::bounce::{rules_from_toml, BounceClassifier};
use switchyard_actors::ports::MxResolver;
use switchyard_actors::shaping::{
    DomainShaping, Limit, OptionValue, Origin, Provider, ProviderMatch, Rate, Shaping,
    ShapingOptions,
};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// The rules switchyard ships, used when `[bounce_classifier] files` is empty.
pub const DEFAULT_BOUNCE_RULES: &str = include_str!("../config/bounce_rules.toml");

/// Shaping and automation as loaded, with the warnings met on the way.
#[derive(Debug, Default)]
pub struct LoadedShaping {
    /// The layered blocks.
    pub shaping: Shaping,
    /// The automation rules, compiled.
    pub rules: RuleBook,
    /// Options not applied, and the like (shown by `check`, logged by `serve`).
    pub warnings: Vec<ConfigError>,
}

/// Rules as read, by scope, before layering is done.
type RulesByScope = Vec<(Scope, Vec<Rule>)>;

struct Loader {
    shaping: Shaping,
    rules: RulesByScope,
    warnings: Vec<ConfigError>,
    warned: HashSet<String>,
    errors: Vec<ConfigError>,
}

/// Load shaping files given as (name, text), layered in order.
pub fn load_texts(files: &[(String, String)]) -> Result<LoadedShaping, Vec<ConfigError>> {
    let mut l = Loader {
        shaping: Shaping::default(),
        rules: Vec::new(),
        warnings: Vec::new(),
        warned: HashSet::new(),
        errors: Vec::new(),
    };
    for (name, text) in files {
        let src = SourceText { name, text };
        match DeTable::parse(text) {
            Ok(doc) => l.file(&src, doc.get_ref()),
            Err(e) => l
                .errors
                .push(src.error(e.span(), e.message().trim().to_string())),
        }
    }
    if !l.errors.is_empty() {
        return Err(l.errors);
    }
    let mut rules = Vec::new();
    for (scope, list) in l.rules {
        for (i, mut rule) in list.into_iter().enumerate() {
            if rule.name.is_empty() {
                rule.name = format!("{scope}#{i}").into();
            }
            rules.push(rule);
        }
    }
    let rules = RuleBook::new(rules).map_err(|e| {
        vec![ConfigError {
            file: files.first().map(|f| f.0.clone()).unwrap_or_default(),
            line: 1,
            col: 1,
            message: e,
        }]
    })?;
    Ok(LoadedShaping {
        shaping: l.shaping,
        rules,
        warnings: l.warnings,
    })
}

/// Load every shaping file of the config, layered.
pub fn load(loaded: &LoadedConfig) -> Result<LoadedShaping, Vec<ConfigError>> {
    let mut files = Vec::new();
    for path in loaded.shaping_files() {
        let text = std::fs::read_to_string(&path).map_err(|e| vec![io_error(&path, e)])?;
        files.push((path.display().to_string(), text));
    }
    load_texts(&files)
}

fn span_of<T>(v: &Spanned<T>) -> Option<Range<usize>> {
    Some(v.span())
}

/// A shaping value as an [`OptionValue`].
fn option_value(v: &DeValue) -> OptionValue {
    match v {
        DeValue::String(s) => OptionValue::String(s.to_string()),
        DeValue::Integer(i) => i64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
            .map(OptionValue::Integer)
            .unwrap_or(OptionValue::Other),
        DeValue::Boolean(b) => OptionValue::Bool(*b),
        DeValue::Array(items) => {
            OptionValue::List(items.iter().map(|v| option_value(v.get_ref())).collect())
        }
        _ => OptionValue::Other,
    }
}

impl Loader {
    fn file(&mut self, src: &SourceText, doc: &DeTable) {
        for (key, value) in doc {
            let name = key.get_ref().as_ref();
            let DeValue::Table(table) = value.get_ref() else {
                self.errors.push(src.error(
                    span_of(key),
                    format!("shaping block {name:?} must be a table, as in [\"{name}\"]"),
                ));
                continue;
            };
            if name == "provider" {
                for (pname, pvalue) in table {
                    match pvalue.get_ref() {
                        DeValue::Table(t) => self.provider(src, pname.get_ref(), t),
                        _ => self.errors.push(src.error(
                            span_of(pname),
                            format!("provider {:?} must be a table", pname.get_ref()),
                        )),
                    }
                }
            } else {
                self.domain(src, &name.to_ascii_lowercase(), table);
            }
        }
    }

    /// Note where `name` of `block` was set, for `explain`.
    fn origin(&mut self, src: &SourceText, block: &str, name: &str, v: &Spanned<DeValue>) {
        let at = src.error(span_of(v), "");
        self.shaping
            .origins
            .entry(block.to_string())
            .or_default()
            .insert(
                name.to_string(),
                Origin {
                    value: option_value(v.get_ref()).to_string(),
                    at: format!("{}:{}", at.file, at.line),
                },
            );
    }

    /// A block is replaced (`replace_base`): forget where its options and its sources' came
    /// from.
    fn forget_origins(&mut self, block: &str) {
        let sources = format!("{block}.sources.");
        self.shaping
            .origins
            .retain(|k, _| k != block && !k.starts_with(&sources));
    }

    /// Set options from a block's remaining keys; warn (once per name) about the others.
    fn options(
        &mut self,
        src: &SourceText,
        table: &DeTable,
        skip: &[&str],
        block: &str,
    ) -> ShapingOptions {
        let mut o = ShapingOptions::default();
        for (k, v) in table {
            let key = k.get_ref().as_ref();
            if skip.contains(&key) {
                continue;
            }
            match o.set(key, &option_value(v.get_ref())) {
                Ok(true) => self.origin(src, block, key, v),
                Ok(false) => {
                    if self.warned.insert(key.to_string()) {
                        self.warnings.push(src.error(
                            span_of(k),
                            format!("shaping option {key} is not applied by switchyard; ignored"),
                        ));
                    }
                }
                Err(e) => self.errors.push(src.error(span_of(v), e)),
            }
        }
        o
    }

    fn sources(
        &mut self,
        src: &SourceText,
        v: &Spanned<DeValue>,
        block: &str,
    ) -> HashMap<String, ShapingOptions> {
        let mut out = HashMap::new();
        let DeValue::Table(t) = v.get_ref() else {
            self.errors
                .push(src.error(span_of(v), "sources must be a table of source names"));
            return out;
        };
        for (name, table) in t {
            match table.get_ref() {
                DeValue::Table(b) => {
                    let o =
                        self.options(src, b, &[], &format!("{block}.sources.{}", name.get_ref()));
                    out.insert(name.get_ref().to_string(), o);
                }
                _ => self.errors.push(src.error(
                    span_of(name),
                    format!("sources.{:?} must be a table of options", name.get_ref()),
                )),
            }
        }
        out
    }

    fn domain(&mut self, src: &SourceText, name: &str, table: &DeTable) {
        const STRUCTURE: &[&str] = &["automation", "sources", "mx_rollup", "replace_base"];
        let replace = self.flag(src, table, "replace_base").unwrap_or(false);
        if replace {
            self.forget_origins(name);
        }
        let options = self.options(src, table, STRUCTURE, name);
        let mx_rollup = self.flag(src, table, "mx_rollup");
        let sources = match table.get("sources") {
            Some(v) => self.sources(src, v, name),
            None => HashMap::new(),
        };
        let scope = if name == "default" {
            Scope::Default
        } else {
            Scope::Domain(name.to_string())
        };
        if replace {
            self.rules.retain(|(s, _)| *s != scope);
        }
        if let Some(v) = table.get("automation") {
            self.automation(src, &scope, v);
        }
        if name == "default" {
            let s = &mut self.shaping;
            s.default = if replace {
                options
            } else {
                s.default.overlay(&options)
            };
            if replace {
                s.default_sources.clear();
            }
            for (k, o) in sources {
                let slot = s.default_sources.entry(k).or_default();
                *slot = slot.overlay(&o);
            }
            return;
        }
        let slot = self.shaping.domains.entry(name.to_string()).or_default();
        if replace {
            *slot = DomainShaping::default();
        }
        slot.options = slot.options.overlay(&options);
        if let Some(r) = mx_rollup {
            slot.mx_rollup = r;
        }
        for (k, o) in sources {
            let s = slot.sources.entry(k).or_default();
            *s = s.overlay(&o);
        }
    }

    fn provider(&mut self, src: &SourceText, name: &str, table: &DeTable) {
        const STRUCTURE: &[&str] = &[
            "automation",
            "sources",
            "match",
            "replace_base",
            "provider_connection_limit",
            "provider_max_message_rate",
        ];
        let block = format!("provider.{name}");
        let replace = self.flag(src, table, "replace_base").unwrap_or(false);
        if replace {
            self.forget_origins(&block);
        }
        let options = self.options(src, table, STRUCTURE, &block);
        for key in ["provider_connection_limit", "provider_max_message_rate"] {
            if let Some(v) = table.get(key) {
                self.origin(src, &block, key, v);
            }
        }
        let matches = table.get("match").map(|m| self.matches(src, m));
        let connection_limit = table.get("provider_connection_limit").and_then(|v| {
            match Limit::parse("provider_connection_limit", &option_value(v.get_ref())) {
                Ok(l) if l.count > 0 => Some(l),
                _ => {
                    self.errors.push(src.error(
                        span_of(v),
                        "provider_connection_limit must be a positive integer or \"local:N\"",
                    ));
                    None
                }
            }
        });
        let max_message_rate = table.get("provider_max_message_rate").and_then(|v| {
            match v.get_ref().as_str().map(str::parse::<Rate>) {
                Some(Ok(r)) => Some(r),
                Some(Err(e)) => {
                    self.errors.push(src.error(span_of(v), e));
                    None
                }
                None => {
                    self.errors.push(src.error(
                        span_of(v),
                        "provider_max_message_rate must be a rate such as \"100/s\"",
                    ));
                    None
                }
            }
        });
        let sources = match table.get("sources") {
            Some(v) => self.sources(src, v, &block),
            None => HashMap::new(),
        };
        let scope = Scope::Provider(name.into());
        if replace {
            self.rules.retain(|(s, _)| *s != scope);
        }
        if let Some(v) = table.get("automation") {
            self.automation(src, &scope, v);
        }
        let providers = &mut self.shaping.providers;
        let at = match providers.iter().position(|p| &*p.name == name) {
            Some(at) => at,
            None => {
                providers.push(Arc::new(Provider {
                    name: name.into(),
                    ..Default::default()
                }));
                providers.len() - 1
            }
        };
        let p = Arc::make_mut(&mut providers[at]);
        if replace {
            *p = Provider {
                name: name.into(),
                ..Default::default()
            };
        }
        p.options = p.options.overlay(&options);
        if let Some(m) = matches {
            p.matches = m;
        }
        p.connection_limit = connection_limit.or(p.connection_limit);
        p.max_message_rate = max_message_rate.or(p.max_message_rate);
        for (k, o) in sources {
            let s = p.sources.entry(k).or_default();
            *s = s.overlay(&o);
        }
    }

    fn matches(&mut self, src: &SourceText, v: &Spanned<DeValue>) -> Vec<ProviderMatch> {
        let mut out = Vec::new();
        let DeValue::Array(items) = v.get_ref() else {
            self.errors.push(src.error(
                span_of(v),
                "match must be a list such as [{MXSuffix=\".example.com\"}]",
            ));
            return out;
        };
        for item in items {
            let entry = match item.get_ref() {
                DeValue::Table(t) if t.len() == 1 => t.iter().next(),
                _ => None,
            };
            let Some((kind, value)) = entry else {
                self.errors.push(src.error(
                    span_of(item),
                    "each match is one of {MXSuffix=\"...\"}, {DomainSuffix=\"...\"}, {HostName=\"...\"}",
                ));
                continue;
            };
            let Some(text) = value.get_ref().as_str() else {
                self.errors
                    .push(src.error(span_of(value), "a match value must be a string"));
                continue;
            };
            let text = text.trim_end_matches('.').to_ascii_lowercase();
            match kind.get_ref().as_ref() {
                "MXSuffix" => out.push(ProviderMatch::MxSuffix(text)),
                "DomainSuffix" => out.push(ProviderMatch::DomainSuffix(text)),
                "HostName" => out.push(ProviderMatch::HostName(text)),
                other => self.errors.push(src.error(
                    span_of(kind),
                    format!("unknown match {other:?}; expected MXSuffix, DomainSuffix or HostName"),
                )),
            }
        }
        out
    }

    fn flag(&mut self, src: &SourceText, table: &DeTable, key: &str) -> Option<bool> {
        let v = table.get(key)?;
        match v.get_ref().as_bool() {
            Some(b) => Some(b),
            None => {
                self.errors
                    .push(src.error(span_of(v), format!("{key} must be true or false")));
                None
            }
        }
    }

    fn automation(&mut self, src: &SourceText, scope: &Scope, v: &Spanned<DeValue>) {
        let DeValue::Array(items) = v.get_ref() else {
            self.errors.push(src.error(
                span_of(v),
                "automation rules are written as [[\"scope\".automation]] tables",
            ));
            return;
        };
        for item in items {
            match item.get_ref() {
                DeValue::Table(t) => {
                    if let Some(rule) = self.rule(src, scope, item, t) {
                        match self.rules.iter_mut().find(|(s, _)| s == scope) {
                            Some((_, list)) => list.push(rule),
                            None => self.rules.push((scope.clone(), vec![rule])),
                        }
                    }
                }
                _ => self
                    .errors
                    .push(src.error(span_of(item), "an automation rule must be a table")),
            }
        }
    }

    fn rule(
        &mut self,
        src: &SourceText,
        scope: &Scope,
        at: &Spanned<DeValue>,
        t: &DeTable,
    ) -> Option<Rule> {
        let errors_before = self.errors.len();
        for (k, _) in t {
            let key = k.get_ref().as_ref();
            if ![
                "regex",
                "action",
                "trigger",
                "duration",
                "match_internal",
                "name",
            ]
            .contains(&key)
            {
                self.errors.push(src.error(
                    span_of(k),
                    format!("unknown key {key:?} in an automation rule (expected regex, action, trigger, duration, match_internal, name)"),
                ));
            }
        }
        let mut patterns = Vec::new();
        match t.get("regex") {
            None => self
                .errors
                .push(src.error(span_of(at), "automation rule without regex")),
            Some(v) => {
                for p in one_or_many(v) {
                    match p.get_ref().as_str() {
                        Some(text) => match compile_pattern(text) {
                            Ok(_) => patterns.push(text.to_string()),
                            Err(e) => self
                                .errors
                                .push(src.error(span_of(p), format!("bad regex: {e}"))),
                        },
                        None => self.errors.push(
                            src.error(span_of(p), "regex must be a string or a list of strings"),
                        ),
                    }
                }
            }
        }
        let mut actions = Vec::new();
        match t.get("action") {
            None => self
                .errors
                .push(src.error(span_of(at), "automation rule without action")),
            Some(v) => {
                for a in one_or_many(v) {
                    match action(a) {
                        Ok(action) => actions.push(action),
                        Err(e) => self.errors.push(src.error(span_of(a), e)),
                    }
                }
            }
        }
        let trigger = match t.get("trigger") {
            None => Trigger::Immediate,
            Some(v) => match trigger(v.get_ref()) {
                Ok(tr) => tr,
                Err(e) => {
                    self.errors.push(src.error(span_of(v), e));
                    Trigger::Immediate
                }
            },
        };
        let duration = match t.get("duration") {
            None => {
                self.errors.push(src.error(
                    span_of(at),
                    "automation rule without duration (e.g. duration = \"3 hours\")",
                ));
                Duration::ZERO
            }
            Some(v) => match v
                .get_ref()
                .as_str()
                .map(|s| humantime::parse_duration(s.trim()))
            {
                Some(Ok(d)) if !d.is_zero() => d,
                _ => {
                    self.errors.push(src.error(
                        span_of(v),
                        "duration must be a duration such as \"90m\" or \"3 hours\"",
                    ));
                    Duration::ZERO
                }
            },
        };
        let match_internal = self.flag(src, t, "match_internal").unwrap_or(false);
        let name = match t.get("name").map(|v| v.get_ref().as_str()) {
            None => String::new(),
            Some(Some(n)) => n.to_string(),
            Some(None) => {
                self.errors
                    .push(src.error(span_of(&t["name"]), "name must be a string"));
                String::new()
            }
        };
        (self.errors.len() == errors_before).then(|| Rule {
            name: name.into(),
            scope: scope.clone(),
            patterns,
            actions,
            trigger,
            duration,
            match_internal,
        })
    }
}

/// A value that may be written alone or as a list (`regex`, `action`).
fn one_or_many<'a, 'i>(v: &'a Spanned<DeValue<'i>>) -> Vec<&'a Spanned<DeValue<'i>>> {
    match v.get_ref() {
        DeValue::Array(a) => a.iter().collect(),
        _ => vec![v],
    }
}

/// One action: `"SuspendTenant"`, `{ThrottleTenant="100/h"}` or
/// `{SetConfig={name="...", value=...}}`.
fn action(v: &Spanned<DeValue>) -> Result<Action, String> {
    let unknown = |name: &str| match closest_action(name) {
        Some(close) => format!("unknown action {name:?}; did you mean {close:?}?"),
        None => format!(
            "unknown action {name:?}; expected one of {}",
            ACTION_NAMES.join(", ")
        ),
    };
    match v.get_ref() {
        DeValue::String(name) => match Action::simple(name) {
            Some(a) => Ok(a),
            None if name == "SetConfig" || name == "SetDomainConfig" => Err(format!(
                "{name} needs its setting: {{{name}={{name=\"max_message_rate\", value=\"1/minute\"}}}}"
            )),
            None if name == "ThrottleTenant" || name == "ThrottleCampaign" => Err(format!(
                "{name} needs its rate: {{{name}=\"100/h\"}}"
            )),
            None => Err(unknown(name)),
        },
        DeValue::Table(t) if t.len() == 1 => {
            let (k, inner) = t.iter().next().ok_or("empty action")?;
            let kind = k.get_ref().as_ref();
            if kind == "ThrottleTenant" || kind == "ThrottleCampaign" {
                let rate = inner
                    .get_ref()
                    .as_str()
                    .ok_or_else(|| format!("{kind} takes a rate: {{{kind}=\"100/h\"}}"))?
                    .parse()
                    .map_err(|e| format!("{kind}: {e}"))?;
                return Ok(if kind == "ThrottleTenant" {
                    Action::ThrottleTenant(rate)
                } else {
                    Action::ThrottleCampaign(rate)
                });
            }
            let domain = match kind {
                "SetConfig" => false,
                "SetDomainConfig" => true,
                other => return Err(unknown(other)),
            };
            let DeValue::Table(setting) = inner.get_ref() else {
                return Err(format!("{kind} takes {{name=..., value=...}}"));
            };
            let name = setting
                .get("name")
                .and_then(|n| n.get_ref().as_str())
                .ok_or_else(|| format!("{kind} needs name = \"option\""))?;
            let value = setting
                .get("value")
                .map(|v| option_value(v.get_ref()))
                .ok_or_else(|| format!("{kind} needs value = ..."))?;
            Action::set_config(domain, name, &value).map_err(|e| format!("{kind}: {e}"))
        }
        _ => Err(format!(
            "an action is a name ({}), {{ThrottleTenant=\"N/period\"}} or {{SetConfig={{name=..., value=...}}}}",
            ACTION_NAMES.join(", ")
        )),
    }
}

fn trigger(v: &DeValue) -> Result<Trigger, String> {
    match v {
        DeValue::String(s) if s == "Immediate" => Ok(Trigger::Immediate),
        DeValue::Table(t) if t.len() == 1 => match t.get("Threshold").map(|x| x.get_ref()) {
            Some(DeValue::String(s)) => Trigger::threshold(s),
            _ => Err("trigger is \"Immediate\" or {Threshold=\"N/period\"}".into()),
        },
        _ => Err("trigger is \"Immediate\" or {Threshold=\"N/period\"}".into()),
    }
}

/// Ask DNS which site each MX-rollup destination block stands for, and record it in the
/// shaping's site index. Failures and ambiguities come back as warnings.
pub async fn resolve_sites(shaping: &Shaping, resolver: &dyn MxResolver) -> Vec<String> {
    let blocks: Vec<&String> = shaping
        .domains
        .iter()
        .filter(|(name, d)| d.mx_rollup && looks_like_domain(name))
        .map(|(name, _)| name)
        .collect();
    let lookups = blocks.iter().map(|name| {
        tokio::time::timeout(
            Duration::from_secs(10),
            resolver.resolve((*name).as_str().into()),
        )
    });
    let results = futures::future::join_all(lookups).await;
    let mut warnings = Vec::new();
    for (name, result) in blocks.into_iter().zip(results) {
        match result {
            Ok(Ok(route)) => {
                if let Some(other) = shaping.sites.set(name, route.site.clone()) {
                    warnings.push(format!(
                        "shaping blocks {other:?} and {name:?} roll up to the same site ({}); {other:?} applies to it",
                        route.site
                    ));
                }
            }
            Ok(Err(e)) => warnings.push(format!(
                "mx_rollup: no MX for {name:?} ({}); the block applies to {name} alone until DNS answers",
                match e {
                    switchyard_actors::ports::RouteError::Permanent(r)
                    | switchyard_actors::ports::RouteError::Transient(r) => r.match_text(),
                }
            )),
            Err(_) => warnings.push(format!(
                "mx_rollup: DNS did not answer for {name:?}; the block applies to {name} alone until it does"
            )),
        }
    }
    warnings
}

fn looks_like_domain(name: &str) -> bool {
    name.contains('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
}

fn io_error(path: &Path, e: std::io::Error) -> ConfigError {
    ConfigError {
        file: path.display().to_string(),
        line: 1,
        col: 1,
        message: format!("cannot read: {e}"),
    }
}

/// Check and read one bounce rules file as (class, pattern) pairs.
pub fn bounce_rules(src: &SourceText) -> Result<Vec<(String, String)>, ConfigError> {
    let rules = rules_from_toml(src.text).map_err(|e| src.error(None, e))?;
    if let Err((i, why)) = BounceClassifier::new(&rules) {
        let pattern = &rules[i].1;
        let span = src
            .text
            .find(&pattern.replace('\\', "\\\\"))
            .map(|p| p..p + 1);
        return Err(src.error(span, format!("bad regex in rules.{}: {why}", rules[i].0)));
    }
    Ok(rules)
}

/// The bounce classifier of the config: its files in order, or the shipped rules.
pub fn bounce_classifier(loaded: &LoadedConfig) -> Result<BounceClassifier, ConfigError> {
    let mut rules = Vec::new();
    if loaded.config.bounce_classifier.files.is_empty() {
        rules = bounce_rules(&SourceText {
            name: "<embedded>/config/bounce_rules.toml",
            text: DEFAULT_BOUNCE_RULES,
        })?;
    }
    for f in &loaded.config.bounce_classifier.files {
        let path = loaded.resolve(Path::new(f.get_ref()));
        let text = std::fs::read_to_string(&path).map_err(|e| io_error(&path, e))?;
        let name = path.display().to_string();
        rules.extend(bounce_rules(&SourceText {
            name: &name,
            text: &text,
        })?);
    }
    BounceClassifier::new(&rules).map_err(|(_, why)| ConfigError {
        file: loaded.name.clone(),
        line: 1,
        col: 1,
        message: format!("bounce rules: {why}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_one(text: &str) -> Result<LoadedShaping, Vec<ConfigError>> {
        load_texts(&[("s.toml".to_string(), text.to_string())])
    }

    #[test]
    fn loads_the_kumomta_files_with_warnings_only() {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/kumomta");
        let (Ok(a), Ok(b)) = (
            std::fs::read_to_string(base.join("shaping.toml")),
            std::fs::read_to_string(base.join("community/shaping.toml")),
        ) else {
            eprintln!("skipped: ../shared/data/kumomta is not here");
            return;
        };
        let l = load_texts(&[("shaping.toml".into(), a), ("community.toml".into(), b)])
            .unwrap_or_else(|e| panic!("{e:?}"));
        let warned: Vec<String> = l.warnings.iter().map(|w| w.message.clone()).collect();
        assert_eq!(
            warned,
            vec!["shaping option system_shutdown_timeout is not applied by switchyard; ignored"]
        );
        assert!(l.rules.rules().len() > 50, "{}", l.rules.rules().len());
        let yahoo = l
            .shaping
            .providers
            .iter()
            .find(|p| &*p.name == "yahoo")
            .unwrap();
        assert_eq!(yahoo.options.max_deliveries_per_connection, Some(20));
        let google = l
            .shaping
            .providers
            .iter()
            .find(|p| &*p.name == "google")
            .unwrap();
        assert_eq!(google.connection_limit.map(|l| l.count), Some(5));
        // The community file's gmail rules exist although no [provider."gmail"] matches.
        assert!(l
            .rules
            .rules()
            .iter()
            .any(|r| &*r.name == "provider.gmail#0"));
        assert_eq!(
            l.shaping.domains["comcast.net"]
                .options
                .connection_limit
                .map(|l| l.count),
            Some(25)
        );
        assert!(!l.shaping.domains["example.com"].mx_rollup);
    }

    #[test]
    fn errors_point_at_the_value() {
        let e = load_one(
            "[[\"gmail.com\".automation]]\nregex = \"x\"\naction = \"SuspendTennant\"\nduration = \"1h\"\n",
        )
        .unwrap_err();
        assert_eq!((e[0].line, e[0].col), (3, 10), "{e:?}");
        assert!(
            e[0].message.contains("did you mean \"SuspendTenant\""),
            "{e:?}"
        );
        let e = load_one("[[\"default\".automation]]\nregex = \"(\"\naction = \"Suspend\"\n")
            .unwrap_err();
        assert!(
            e.iter()
                .any(|e| e.line == 2 && e.message.starts_with("bad regex")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|e| e.message.contains("without duration")),
            "{e:?}"
        );
        let e = load_one("[\"x.example\"]\nconnection_limit = \"many\"\n").unwrap_err();
        assert_eq!((e[0].line, e[0].col), (2, 20), "{e:?}");
    }

    #[test]
    fn layering_and_replace_base() {
        let files = vec![
            (
                "a".to_string(),
                "[\"x.example\"]\nconnection_limit = 3\nmax_ready = 7\n[[\"x.example\".automation]]\nregex = \"a\"\naction = \"Suspend\"\nduration = \"1m\"\n".to_string(),
            ),
            ("b".to_string(), "[\"x.example\"]\nconnection_limit = 4\n".to_string()),
        ];
        let l = load_texts(&files).unwrap();
        let d = &l.shaping.domains["x.example"].options;
        assert_eq!(
            (d.connection_limit.map(|l| l.count), d.max_ready),
            (Some(4), Some(7))
        );
        assert_eq!(&*l.rules.rules()[0].name, "x.example#0");
        let mut files = files;
        files[1].1 = "[\"x.example\"]\nreplace_base = true\nconnection_limit = 4\n".into();
        let l = load_texts(&files).unwrap();
        let d = &l.shaping.domains["x.example"].options;
        assert_eq!(
            (d.connection_limit.map(|l| l.count), d.max_ready),
            (Some(4), None)
        );
        assert!(l.rules.rules().is_empty());
    }
}
