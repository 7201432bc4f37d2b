//! Egress pools: which source a scheduled queue sends its next message from.
//!
//! Smooth weighted round robin (as nginx does it): each pick adds every member's weight to
//! its running score, takes the highest, and subtracts the total from the winner. Over any
//! window the picks follow the weights closely and the same source is not chosen in long runs.
//! Each scheduled queue keeps its own [`PoolCursor`], so one busy queue does not skew another.

use crate::ports::EgressSource;
use std::collections::HashMap;
use std::sync::Arc;

/// A named, weighted set of sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// Pool name.
    pub name: Arc<str>,
    /// (source, weight), weight ≥ 1.
    pub members: Vec<(Arc<EgressSource>, u32)>,
}

/// Every pool, and which tenant uses which.
#[derive(Debug, Clone, Default)]
pub struct Pools {
    /// Pools by name; "default" is used by undeclared tenants.
    pub pools: HashMap<String, Arc<Pool>>,
    /// Tenant → pool name, for declared tenants.
    pub tenant_pools: HashMap<String, String>,
}

impl Pools {
    /// The pool of `tenant`: its declared pool, else "default" (an empty pool if even that
    /// is missing, so its mail waits rather than going out from nowhere).
    pub fn pool_for(&self, tenant: &str) -> Arc<Pool> {
        let name = self
            .tenant_pools
            .get(tenant)
            .map(String::as_str)
            .unwrap_or("default");
        self.pools
            .get(name)
            .or_else(|| self.pools.get("default"))
            .cloned()
            .unwrap_or_else(|| {
                Arc::new(Pool {
                    name: "default".into(),
                    members: Vec::new(),
                })
            })
    }

    /// The pool of a scheduled queue whose policy may name one (`egress_pool`): that pool
    /// if it exists, else the tenant's.
    pub fn pool_of(&self, tenant: &str, egress_pool: Option<&str>) -> Arc<Pool> {
        egress_pool
            .and_then(|name| self.pools.get(name).cloned())
            .unwrap_or_else(|| self.pool_for(tenant))
    }

    /// Whether any pool has a source named `source`.
    pub fn has_source(&self, source: &str) -> bool {
        self.pools
            .values()
            .any(|p| p.members.iter().any(|(s, _)| &*s.name == source))
    }
}

/// Per-queue state of the smooth weighted round robin.
#[derive(Debug, Clone, Default)]
pub struct PoolCursor {
    scores: Vec<i64>,
}

impl PoolCursor {
    /// The next source of `pool` among those `usable` allows; `None` when none is usable.
    pub fn pick<'p>(
        &mut self,
        pool: &'p Pool,
        usable: impl Fn(&EgressSource) -> bool,
    ) -> Option<&'p Arc<EgressSource>> {
        if self.scores.len() != pool.members.len() {
            self.scores = vec![0; pool.members.len()];
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, (source, weight)) in pool.members.iter().enumerate() {
            if !usable(source) {
                continue;
            }
            let w = i64::from(*weight);
            self.scores[i] += w;
            total += w;
            if best.is_none_or(|b| self.scores[i] > self.scores[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.scores[b] -= total;
        Some(&pool.members[b].0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(name: &str) -> Arc<EgressSource> {
        Arc::new(EgressSource {
            name: name.into(),
            address: None,
            ehlo: "x".into(),
        })
    }

    #[test]
    fn follows_the_weights_smoothly() {
        let pool = Pool {
            name: "p".into(),
            members: vec![(source("a"), 3), (source("b"), 1)],
        };
        let mut c = PoolCursor::default();
        let picks: String = (0..8)
            .map(|_| c.pick(&pool, |_| true).unwrap().name.to_string())
            .collect();
        assert_eq!(picks, "aabaaaba");
    }

    #[test]
    fn skips_unusable_sources() {
        let pool = Pool {
            name: "p".into(),
            members: vec![(source("a"), 3), (source("b"), 1)],
        };
        let mut c = PoolCursor::default();
        for _ in 0..5 {
            assert_eq!(&*c.pick(&pool, |s| &*s.name != "a").unwrap().name, "b");
        }
        assert!(c.pick(&pool, |_| false).is_none());
    }
}
