//! The ingress's guard against a client that asks too much: concurrent sessions per client
//! IP, and AUTH failures.
//!
//! - Sessions: at most `[smtp] max_connections_per_ip` at once from one IP, and new ones at
//!   most at `max_connection_rate_per_ip` (default `"300/min"`, a GCRA with the count as
//!   burst: one timestamp per IP) — `relay_hosts` exempt: they are our own injectors; one
//!   more gets `421 4.7.0` at connect.
//! - AUTH failures are counted per client IP: `auth_failure_limit` ("5/10m") failures within
//!   the window lock that IP's AUTH out for `auth_lockout` (`454 4.7.0`, then the session
//!   ends), without a password being checked — so guessing costs no argon2 time either.
//!   Failures per user name only slow the failed replies down (up to 2 s), so somebody
//!   guessing one user's password elsewhere never locks the real user out.
//!
//! Each lockout is logged and counted (`switchyard_auth_lockouts_total`). The tables forget
//! IPs and names with nothing left to remember.

use crate::config::{Cidr, CountPer};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest delay added to a failed AUTH reply for a user name under attack.
const MAX_USER_DELAY: Duration = Duration::from_secs(2);
/// Entries kept before idle ones are swept.
const SWEEP_AT: usize = 4096;

#[derive(Default)]
struct Client {
    sessions: usize,
    /// GCRA's theoretical arrival time of the next connection.
    next_connection: Option<Instant>,
    failures: VecDeque<Instant>,
    locked_until: Option<Instant>,
}

/// Limits per client IP and per AUTH user name.
pub struct Guard {
    per_ip: usize,
    rate: crate::config::Rate,
    exempt: Vec<Cidr>,
    limit: CountPer,
    lockout: Duration,
    clients: Mutex<HashMap<IpAddr, Client>>,
    users: Mutex<HashMap<String, VecDeque<Instant>>>,
}

/// One open session of a client; dropping it frees its place.
pub struct SessionSlot {
    guard: Arc<Guard>,
    ip: Option<IpAddr>,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut clients = self.guard.lock_clients();
            if let Some(c) = clients.get_mut(&ip) {
                c.sessions = c.sessions.saturating_sub(1);
            }
        }
    }
}

/// What a failed AUTH leads to.
pub struct Failure {
    /// The client IP is now locked out.
    pub locked: bool,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl Guard {
    /// A guard with the `[smtp]` limits.
    pub fn new(
        per_ip: usize,
        rate: crate::config::Rate,
        exempt: Vec<Cidr>,
        limit: CountPer,
        lockout: Duration,
    ) -> Arc<Guard> {
        Arc::new(Guard {
            per_ip,
            rate,
            exempt,
            limit,
            lockout,
            clients: Mutex::new(HashMap::new()),
            users: Mutex::new(HashMap::new()),
        })
    }

    fn lock_clients(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Client>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for one more session from `ip`, or `None` when it has all it may.
    pub fn open(self: &Arc<Self>, ip: IpAddr) -> Option<SessionSlot> {
        if self.exempt.iter().any(|n| n.contains(ip)) {
            return Some(SessionSlot {
                guard: self.clone(),
                ip: None,
            });
        }
        let now = Instant::now();
        let mut clients = self.lock_clients();
        sweep(&mut clients, |c| {
            c.sessions == 0
                && c.failures.is_empty()
                && c.locked_until.is_none()
                && c.next_connection.is_none_or(|t| t <= now)
        });
        let c = clients.entry(ip).or_default();
        if c.sessions >= self.per_ip {
            return None;
        }
        // GCRA: one connection every `per / count`, up to `burst` ahead of that pace.
        let interval = self.rate.per / self.rate.count.clamp(1, u32::MAX as u64) as u32;
        let slack = interval * (self.rate.burst().min(u32::MAX as u64) as u32).saturating_sub(1);
        let tat = c.next_connection.map_or(now, |t| t.max(now));
        if tat > now + slack {
            return None;
        }
        c.next_connection = Some(tat + interval);
        c.sessions += 1;
        Some(SessionSlot {
            guard: self.clone(),
            ip: Some(ip),
        })
    }

    /// Whether `ip`'s AUTH is locked out now.
    pub fn locked_out(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut clients = self.lock_clients();
        let Some(c) = clients.get_mut(&ip) else {
            return false;
        };
        match c.locked_until {
            Some(until) if until > now => true,
            Some(_) => {
                c.locked_until = None;
                false
            }
            None => false,
        }
    }

    /// Count a failed AUTH from `ip` for `user`.
    pub fn failed(&self, ip: IpAddr, user: &str) -> Failure {
        let now = Instant::now();
        let window = self.limit.window;
        let forget = |q: &mut VecDeque<Instant>| {
            while q.front().is_some_and(|t| now.duration_since(*t) > window) {
                q.pop_front();
            }
        };
        let locked = {
            let mut clients = self.lock_clients();
            let c = clients.entry(ip).or_default();
            forget(&mut c.failures);
            c.failures.push_back(now);
            if c.failures.len() >= self.limit.count as usize && c.locked_until.is_none() {
                c.locked_until = Some(now + self.lockout);
                c.failures.clear();
                true
            } else {
                false
            }
        };
        if locked {
            metrics::counter!("switchyard_auth_lockouts_total").increment(1);
            tracing::warn!(%ip, lockout = ?self.lockout, "AUTH locked out for this client IP after repeated failures");
        }
        let recent = {
            let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
            sweep(&mut users, |q| {
                q.back().is_none_or(|t| now.duration_since(*t) > window)
            });
            let q = users.entry(user.to_string()).or_default();
            forget(q);
            q.push_back(now);
            q.len()
        };
        // 100 ms per recent failure of this name beyond the first few, at most 2 s.
        let delay =
            Duration::from_millis(100 * recent.saturating_sub(3) as u64).min(MAX_USER_DELAY);
        Failure { locked, delay }
    }
}

/// Drop idle entries once the table is large; a table still far too large after that (a
/// flood of fresh names or addresses) starts afresh, so memory stays bounded.
fn sweep<K, V>(map: &mut HashMap<K, V>, idle: impl Fn(&V) -> bool) {
    if map.len() >= SWEEP_AT {
        map.retain(|_, v| !idle(v));
        if map.len() >= SWEEP_AT * 16 {
            map.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Arc<Guard> {
        Guard::new(
            2,
            "4/min".parse().unwrap(),
            vec!["10.0.0.0/8".parse().unwrap()],
            CountPer {
                count: 3,
                window: Duration::from_secs(60),
            },
            Duration::from_secs(60),
        )
    }

    #[test]
    fn sessions_per_ip_are_limited_and_freed() {
        let g = guard();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = g.open(ip).unwrap();
        let _b = g.open(ip).unwrap();
        assert!(g.open(ip).is_none());
        drop(a);
        assert!(g.open(ip).is_some());
        let exempt: IpAddr = "10.1.2.3".parse().unwrap();
        let _all: Vec<_> = (0..10).map(|_| g.open(exempt).unwrap()).collect();
    }

    #[test]
    fn new_connections_per_ip_are_paced_and_relay_hosts_are_not() {
        let g = guard();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        // A burst of 4 ("4/min"), then one every 15 s.
        for _ in 0..4 {
            assert!(g.open(ip).is_some());
        }
        assert!(g.open(ip).is_none(), "the fifth within the minute");
        let other: IpAddr = "192.0.2.10".parse().unwrap();
        assert!(g.open(other).is_some(), "another address has its own pace");
        let exempt: IpAddr = "10.9.9.9".parse().unwrap();
        assert!((0..50).all(|_| g.open(exempt).is_some()));
    }

    #[test]
    fn failures_lock_out_the_ip_not_the_user() {
        let g = guard();
        let (attacker, user): (IpAddr, IpAddr) = (
            "192.0.2.1".parse().unwrap(),
            "198.51.100.7".parse().unwrap(),
        );
        assert!(!g.failed(attacker, "alice").locked);
        assert!(!g.failed(attacker, "alice").locked);
        assert!(g.failed(attacker, "alice").locked);
        assert!(g.locked_out(attacker));
        assert!(!g.locked_out(user), "alice's own IP is not locked");
    }
}
