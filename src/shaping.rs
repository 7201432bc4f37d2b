//! Loading traffic shaping and bounce classification files (KumoMTA's formats) into the
//! actors' types, with `file:line:col` on every error.
//!
//! Shaping: `["default"]` and `["domain"]` blocks of options, layered in file order (a later
//! file's option wins; `replace_base = true` in a block drops what earlier files said for
//! that domain). Keys that are not option values (automation rules, per-source blocks,
//! providers) are left for the automation loader.

use crate::config::{ConfigError, LoadedConfig, SourceText};
use std::path::Path;
use switchyard_actors::bounce::{rules_from_toml, BounceClassifier};
use switchyard_actors::shaping::{Shaping, ShapingOptions};

/// The rules switchyard ships, used when `[bounce_classifier] files` is empty.
pub const DEFAULT_BOUNCE_RULES: &str = include_str!("../config/bounce_rules.toml");

/// Keys of a block that are structure, not options.
const STRUCTURAL: &[&str] = &[
    "automation",
    "sources",
    "mx_rollup",
    "replace_base",
    "match",
    "provider_connection_limit",
    "provider_max_message_rate",
];

/// One parsed shaping file: (block name, options, replace_base).
pub type ShapingFile = Vec<(String, ShapingOptions, bool)>;

/// Parse one shaping file.
pub fn parse(src: &SourceText) -> Result<ShapingFile, ConfigError> {
    let doc: toml::Spanned<toml::Table> = src.parse()?;
    let mut out = Vec::new();
    for (name, block) in doc.get_ref() {
        if name == "provider" {
            continue;
        }
        let Some(table) = block.as_table() else {
            return Err(src.error(
                find(src.text, name),
                format!("shaping block {name:?} must be a table"),
            ));
        };
        let options: toml::Table = table
            .iter()
            .filter(|(k, _)| !STRUCTURAL.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let (opts, _unknown) = ShapingOptions::from_table(&options)
            .map_err(|e| src.error(find(src.text, name), format!("in [{name:?}]: {e}")))?;
        let replace = table
            .get("replace_base")
            .and_then(toml::Value::as_bool)
            .unwrap_or(false);
        out.push((name.to_lowercase(), opts, replace));
    }
    Ok(out)
}

/// The byte span of a block's header, for error positions.
fn find(text: &str, name: &str) -> Option<std::ops::Range<usize>> {
    let needle = format!("[\"{name}\"");
    text.find(&needle).map(|i| i..i + needle.len())
}

/// Load every shaping file of the config, layered.
pub fn load(loaded: &LoadedConfig) -> Result<Shaping, ConfigError> {
    let mut shaping = Shaping::default();
    for path in loaded.shaping_files() {
        let text = std::fs::read_to_string(&path).map_err(|e| io_error(&path, e))?;
        let name = path.display().to_string();
        for (block, opts, replace) in parse(&SourceText {
            name: &name,
            text: &text,
        })? {
            let slot = if block == "default" {
                &mut shaping.default
            } else {
                shaping.domains.entry(block).or_default()
            };
            *slot = if replace { opts } else { slot.overlay(&opts) };
        }
    }
    Ok(shaping)
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
