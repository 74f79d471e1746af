//! Rate limits (governor): failed authentications per client IP, new connections per key,
//! and the per-connection client-message limiter (4008). Keyed state is pruned periodically
//! so a flood from many addresses cannot grow memory without bound.
//!
//! Owns: quotas and lock-outs.  May use: governor, config, ids, metrics.
//! Never: look up a key (refusals here happen before any store access).

use std::{
    net::IpAddr,
    num::NonZeroU32,
    time::{Duration, Instant},
};

use dashmap::DashMap;
use governor::{
    clock::{Clock, DefaultClock},
    DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter,
};

use crate::{config::Config, ids::KeyId, metrics::Metrics};

/// A refusal by one of the quotas, with how long until it lets the caller through again.
/// The HTTP edge answers it with a 429 and `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Limited {
    /// The client's address used up its budget of failed authentications.
    #[error("too many failed authentications from this address; retry in {retry_after} s")]
    AuthFailures { retry_after: u64 },
    /// The key opens connections faster than `new_connections_per_key_per_second`.
    #[error("this key opens connections too fast; retry in {retry_after} s")]
    NewConnections { retry_after: u64 },
}

impl Limited {
    /// Whole seconds until a retry can succeed (at least 1).
    pub fn retry_after(self) -> u64 {
        match self {
            Limited::AuthFailures { retry_after } | Limited::NewConnections { retry_after } => {
                retry_after.max(1)
            }
        }
    }
}

pub struct Limits {
    auth_failures: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// IPs that used up their failure budget, until when.
    locked_out: DashMap<IpAddr, Instant>,
    new_connections: Option<DefaultKeyedRateLimiter<KeyId>>,
    messages: Option<Quota>,
    /// One clock for every limiter: creating a quanta clock runs CPUID calibration (measured
    /// at 8 % of the server's CPU in a connection storm when made per connection).
    clock: DefaultClock,
}

/// What one client controls: its IPv4 address, or its IPv6 /64 (one host typically holds a
/// whole /64, so per-address limits would be trivial to sidestep).
pub fn client_block(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

fn quota(per: fn(NonZeroU32) -> Quota, n: u32) -> Option<Quota> {
    NonZeroU32::new(n).map(per)
}

fn retry_after(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Limits {
    pub fn new(config: &Config) -> Self {
        let messages = quota(Quota::per_second, config.client_messages_per_second).map(|q| {
            q.allow_burst(
                NonZeroU32::new(config.client_message_burst.max(config.client_messages_per_second))
                    .unwrap_or(NonZeroU32::MIN),
            )
        });
        let clock = DefaultClock::default();
        Self {
            auth_failures: quota(Quota::per_minute, config.auth_failures_per_minute)
                .map(|q| RateLimiter::dashmap_with_clock(q, clock.clone())),
            locked_out: DashMap::new(),
            new_connections: quota(Quota::per_second, config.new_connections_per_key_per_second)
                .map(|q| RateLimiter::dashmap_with_clock(q, clock.clone())),
            messages,
            clock,
        }
    }

    /// 429 while `ip` is locked out after too many failed authentications.
    pub fn check_ip(&self, ip: IpAddr, metrics: &Metrics) -> Result<(), Limited> {
        let ip = client_block(ip);
        let Some(until) = self.locked_out.get(&ip).map(|t| *t) else { return Ok(()) };
        let now = Instant::now();
        if until <= now {
            self.locked_out.remove(&ip);
            return Ok(());
        }
        metrics.rate_limited("auth_failures");
        Err(Limited::AuthFailures { retry_after: retry_after(until - now) })
    }

    /// Counts a failed authentication from `ip`; past the budget the IP is locked out.
    pub fn auth_failed(&self, ip: IpAddr) {
        let Some(limiter) = &self.auth_failures else { return };
        let ip = client_block(ip);
        if let Err(not_until) = limiter.check_key(&ip) {
            let wait = not_until.wait_time_from(self.clock.now());
            self.locked_out.insert(ip, Instant::now() + wait.max(Duration::from_secs(1)));
        }
    }

    /// 429 when `key` opens connections faster than its per-second quota.
    pub fn check_new_connection(&self, key: &KeyId, metrics: &Metrics) -> Result<(), Limited> {
        let Some(limiter) = &self.new_connections else { return Ok(()) };
        limiter.check_key(key).map_err(|not_until| {
            metrics.rate_limited("new_connections_per_key");
            let wait = not_until.wait_time_from(self.clock.now());
            Limited::NewConnections { retry_after: retry_after(wait) }
        })
    }

    /// A fresh limiter for one connection's client messages (`None` = unlimited).
    pub fn message_limiter(&self) -> Option<DefaultDirectRateLimiter> {
        self.messages.map(|q| RateLimiter::direct_with_clock(q, self.clock.clone()))
    }

    /// Forgets limiter state that no longer limits anything and expired lock-outs.
    pub fn prune(&self) {
        for limiter in [self.auth_failures.as_ref()].into_iter().flatten() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if let Some(l) = &self.new_connections {
            l.retain_recent();
            l.shrink_to_fit();
        }
        let now = Instant::now();
        self.locked_out.retain(|_, until| *until > now);
        self.locked_out.shrink_to_fit();
    }

    /// Keys held in the keyed limiters and lock-outs (to show memory stays bounded).
    pub fn tracked(&self) -> usize {
        self.auth_failures.as_ref().map_or(0, |l| l.len())
            + self.new_connections.as_ref().map_or(0, |l| l.len())
            + self.locked_out.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(f: impl FnOnce(&mut Config)) -> Limits {
        let mut c = Config::default();
        f(&mut c);
        Limits::new(&c)
    }

    #[test]
    fn an_ip_is_locked_out_after_its_failure_budget_and_others_are_not() {
        let l = limits(|c| c.auth_failures_per_minute = 5);
        let m = Metrics::new();
        let bad: IpAddr = "10.0.0.1".parse().unwrap();
        let good: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..5 {
            assert!(l.check_ip(bad, &m).is_ok());
            l.auth_failed(bad);
        }
        l.auth_failed(bad); // the sixth failure exceeds the budget
        let e = l.check_ip(bad, &m).unwrap_err();
        assert!(matches!(e, Limited::AuthFailures { retry_after } if retry_after >= 1), "{e:?}");
        assert!(l.check_ip(good, &m).is_ok());
        assert!(m.render().contains("miteos_rate_limited_total{limit=\"auth_failures\"} 1"));
    }

    #[test]
    fn ipv6_clients_are_limited_per_64() {
        let l = limits(|c| c.auth_failures_per_minute = 2);
        let m = Metrics::new();
        for i in 0..3u16 {
            l.auth_failed(IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, i]));
        }
        assert!(
            l.check_ip(IpAddr::from([0x2001, 0xdb8, 0, 1, 9, 9, 9, 9]), &m).is_err(),
            "same /64"
        );
        assert!(
            l.check_ip(IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]), &m).is_ok(),
            "another /64"
        );
    }

    #[test]
    fn zero_means_no_limit() {
        let l = limits(|c| {
            c.auth_failures_per_minute = 0;
            c.new_connections_per_key_per_second = 0;
            c.client_messages_per_second = 0;
        });
        let m = Metrics::new();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let key = KeyId::generate();
        for _ in 0..1000 {
            l.auth_failed(ip);
            assert!(l.check_new_connection(&key, &m).is_ok());
        }
        assert!(l.check_ip(ip, &m).is_ok());
        assert!(l.message_limiter().is_none());
    }

    #[test]
    fn new_connections_per_key_are_limited_per_key() {
        let l = limits(|c| c.new_connections_per_key_per_second = 3);
        let m = Metrics::new();
        let (a, b) = (KeyId::generate(), KeyId::generate());
        for _ in 0..3 {
            assert!(l.check_new_connection(&a, &m).is_ok());
        }
        assert!(matches!(
            l.check_new_connection(&a, &m).unwrap_err(),
            Limited::NewConnections { .. }
        ));
        assert!(l.check_new_connection(&b, &m).is_ok());
    }

    #[test]
    fn message_limiter_allows_the_burst_then_refuses() {
        let l = limits(|c| {
            c.client_messages_per_second = 1;
            c.client_message_burst = 5;
        });
        let m = l.message_limiter().unwrap();
        assert_eq!((0..10).filter(|_| m.check().is_ok()).count(), 5);
    }

    #[test]
    fn limiter_memory_stays_bounded_after_100k_distinct_clients() {
        let l = limits(|c| c.auth_failures_per_minute = 60_000);
        for i in 0..100_000u32 {
            l.auth_failed(IpAddr::from(i.to_be_bytes()));
        }
        assert_eq!(l.tracked(), 100_000, "each failure is tracked while it still limits");
        // One failure out of a budget of 60,000/min no longer limits anything 2 ms later (its
        // cell has refilled); this waits on the quota's own clock, not for another task.
        std::thread::sleep(Duration::from_millis(20));
        l.prune();
        assert_eq!(l.tracked(), 0, "pruned state is released");
    }
}
