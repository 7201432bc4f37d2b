//! Bounce classification: which class (InvalidRecipient, QuotaIssues, ...) a reply belongs
//! to, by KumoMTA's rule files (`[rules] Class = ["regex", ...]`).
//!
//! All patterns of all files are compiled into one `RegexSet`, so classifying a reply is one
//! pass over its text whatever the number of rules. When several rules match, the one loaded
//! first wins: operators list their own file before the shipped ones to override them.

use regex::RegexSet;

/// Class of a reply no rule matched.
pub const UNCATEGORIZED: &str = "Uncategorized";

/// Compiled classification rules.
#[derive(Debug, Clone)]
pub struct BounceClassifier {
    set: RegexSet,
    /// The class of each rule, by the rule's index in `set`.
    classes: Vec<String>,
    /// Every class it can give, [`UNCATEGORIZED`] included, each once (worked out once:
    /// every scheduled queue exports its tenant's counters of them at 0).
    distinct: Vec<String>,
}

/// `classes` and [`UNCATEGORIZED`], sorted, each once.
fn distinct(classes: &[String]) -> Vec<String> {
    let mut out: Vec<String> = classes.to_vec();
    out.push(UNCATEGORIZED.to_string());
    out.sort_unstable();
    out.dedup();
    out
}

impl BounceClassifier {
    /// Every class it can give, [`UNCATEGORIZED`] included, each once.
    pub fn classes(&self) -> &[String] {
        &self.distinct
    }

    /// Compile (class, pattern) rules in priority order. On a bad pattern, its index and why.
    pub fn new(rules: &[(String, String)]) -> Result<BounceClassifier, (usize, String)> {
        for (i, (_, p)) in rules.iter().enumerate() {
            if let Err(e) = regex::Regex::new(p) {
                return Err((i, e.to_string()));
            }
        }
        let set = RegexSet::new(rules.iter().map(|(_, p)| p)).map_err(|e| (0, e.to_string()))?;
        let classes: Vec<String> = rules.iter().map(|(c, _)| c.clone()).collect();
        Ok(BounceClassifier {
            set,
            distinct: distinct(&classes),
            classes,
        })
    }

    /// No rules: everything is [`UNCATEGORIZED`].
    pub fn empty() -> BounceClassifier {
        BounceClassifier {
            set: RegexSet::empty(),
            classes: Vec::new(),
            distinct: distinct(&[]),
        }
    }

    /// The class of a reply given as `"CODE ENHANCED TEXT"`.
    pub fn classify(&self, match_text: &str) -> &str {
        self.set
            .matches(match_text)
            .iter()
            .next()
            .map(|i| self.classes[i].as_str())
            .unwrap_or(UNCATEGORIZED)
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }
}

/// Read the `[rules]` table of a classification file as (class, pattern) pairs, in file order.
pub fn rules_from_toml(text: &str) -> Result<Vec<(String, String)>, String> {
    #[derive(serde::Deserialize)]
    struct File {
        rules: toml::Table,
    }
    let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (class, patterns) in file.rules {
        let list = patterns
            .as_array()
            .ok_or_else(|| format!("rules.{class} must be a list of regexes"))?;
        for p in list {
            let p = p
                .as_str()
                .ok_or_else(|| format!("rules.{class} must hold strings"))?;
            out.push((class.clone(), p.to_string()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_loaded_rule_wins() {
        let rules = vec![
            (
                "AuthenticationFailed".to_string(),
                "^5\\d{2} 5\\.7\\.26 ".to_string(),
            ),
            ("PolicyRelated".to_string(), "^5".to_string()),
        ];
        let c = BounceClassifier::new(&rules).unwrap();
        assert_eq!(
            c.classify("550 5.7.26 This message does not have authentication information"),
            "AuthenticationFailed"
        );
        assert_eq!(c.classify("554 5.7.1 spam"), "PolicyRelated");
        assert_eq!(c.classify("250 2.0.0 ok"), UNCATEGORIZED);
    }

    #[test]
    fn bad_pattern_is_named() {
        let rules = vec![
            ("A".to_string(), "ok".to_string()),
            ("B".to_string(), "(".to_string()),
        ];
        assert_eq!(BounceClassifier::new(&rules).unwrap_err().0, 1);
    }

    #[test]
    fn reads_kumomta_files() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/kumomta");
        let Ok(iana) = std::fs::read_to_string(dir.join("bounce_classifier/iana.toml")) else {
            eprintln!("skipped: ../shared/data/kumomta is absent");
            return;
        };
        let community = std::fs::read_to_string(dir.join("community/bounces.toml")).unwrap();
        let mut rules = rules_from_toml(&community).unwrap();
        rules.extend(rules_from_toml(&iana).unwrap());
        let c = BounceClassifier::new(&rules).unwrap();
        assert!(c.len() > 100);
        assert_eq!(
            c.classify("550 5.1.1 The email account that you tried to reach does not exist"),
            "InvalidRecipient"
        );
        assert_eq!(c.classify("552 5.2.2 mailbox full"), "QuotaIssues");
    }
}
