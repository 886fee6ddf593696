//! nginx's smooth weighted round robin, the default balancer, and the
//! fallback of the others (least_conn's ties, the hashes' misses).

use tokio::time::Instant;

use super::mask::Mask;
use super::{Pool, SCALE};

/// One server's smooth weighted round robin state, as nginx keeps it.
#[derive(Debug, Clone, Copy)]
pub(super) struct RrWeight {
    pub(super) current: i64,
    /// The weight used now: lowered after failures, back up one per pick.
    pub(super) effective: i64,
}

impl Pool {
    /// nginx's smooth weighted round robin over the servers in `mask`
    /// (with each server's weight now: part of it while it warms up).
    pub(super) fn round_robin(&self, mask: &Mask, now: Instant) -> Option<usize> {
        let mut rr = self.rr.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for i in mask.iter() {
            let full = self.servers[i].weight_now(now);
            let w = &mut rr[i];
            w.effective = w.effective.min(full);
            w.current += w.effective;
            total += w.effective;
            if w.effective < full {
                w.effective = (w.effective + SCALE).min(full);
            }
            if best.is_none_or(|b| rr[i].current > rr[b].current) {
                best = Some(i);
            }
        }
        let b = best?;
        rr[b].current -= total;
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    use crate::config::{AllDown, Balance, Settings};
    use crate::fail::FailReason;
    use crate::state::pool::Server;
    use crate::state::pool::tests::{client, pool, server};

    #[test]
    fn smooth_round_robin_matches_nginx_sequence() {
        // nginx's documented example: weights 5, 1, 1 give a a b a c a a.
        let p = pool(
            Balance::RoundRobin,
            vec![server("10.0.0.1:1", 5, false), server("10.0.0.2:1", 1, false), server("10.0.0.3:1", 1, false)],
        );
        let now = Instant::now();
        let seq: Vec<usize> = (0..7).map(|_| p.pick(now, client(), &[]).unwrap().idx).collect();
        assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn the_rotation_goes_on_in_a_pool_rebuilt_with_the_same_servers() {
        let servers = || (1..=3).map(|i| server(&format!("10.0.0.{i}:1"), 1, false)).collect::<Vec<_>>();
        let now = Instant::now();
        let mut p = pool(Balance::RoundRobin, servers());
        let mut seen = Vec::new();
        for _ in 0..30 {
            let mut next = pool(Balance::RoundRobin, servers());
            next.keep_position(&p);
            p = next;
            seen.push(p.pick(now, client(), &[]).unwrap().idx);
        }
        let counts: Vec<usize> = (0..3).map(|i| seen.iter().filter(|&&s| s == i).count()).collect();
        assert_eq!(counts, [10, 10, 10], "{seen:?}");
        let mut other = pool(Balance::RoundRobin, servers().into_iter().take(2).collect());
        other.keep_position(&p);
        assert_eq!(other.pick(now, client(), &[]).unwrap().idx, 0, "other servers: a fresh rotation");
    }

    /// nginx's round robin with passive ejection, written from
    /// `ngx_stream_upstream_round_robin.c` (get_peer and free_peer), as the
    /// reference for the property below. Its time is continuous (ms): where
    /// nginx compares whole seconds with `<=` / `>`, this compares with `<`
    /// / `>=`, which is what ucp-lb means by "for fail_timeout".
    #[derive(Debug, Clone)]
    struct NginxPeer {
        weight: i64,
        effective: i64,
        current: i64,
        fails: u32,
        accessed: Option<u64>,
        checked: Option<u64>,
    }

    struct NginxModel {
        peers: Vec<NginxPeer>,
        max_fails: u32,
        fail_timeout: u64,
    }

    impl NginxModel {
        fn get_peer(&mut self, now: u64) -> Option<usize> {
            let (mut best, mut total) = (None::<usize>, 0i64);
            for i in 0..self.peers.len() {
                let p = &self.peers[i];
                if self.max_fails > 0
                    && p.fails >= self.max_fails
                    && p.checked.is_some_and(|c| now - c < self.fail_timeout)
                {
                    continue;
                }
                let p = &mut self.peers[i];
                p.current += p.effective;
                total += p.effective;
                if p.effective < p.weight {
                    p.effective += 1;
                }
                if best.is_none_or(|b| self.peers[i].current > self.peers[b].current) {
                    best = Some(i);
                }
            }
            let b = best?;
            let p = &mut self.peers[b];
            p.current -= total;
            if p.checked.is_none_or(|c| now - c >= self.fail_timeout) {
                p.checked = Some(now);
            }
            Some(b)
        }

        fn free_peer(&mut self, i: usize, now: u64, failed: bool) {
            let p = &mut self.peers[i];
            if failed {
                p.fails += 1;
                p.accessed = Some(now);
                p.checked = Some(now);
                if self.max_fails > 0 {
                    p.effective = (p.effective - p.weight / i64::from(self.max_fails)).max(0);
                }
            } else if p.accessed.is_none_or(|a| p.checked.is_some_and(|c| a < c)) {
                p.fails = 0;
            }
        }
    }

    proptest::proptest! {
        /// For any weights, max_fails, fail_timeout and any run of picks
        /// with failed or successful connects at any times, ucp-lb picks
        /// the same server as nginx's round robin, skips the same ejected
        /// servers, and has none to give exactly when nginx has none
        /// (all_down = "reject", nginx's behaviour).
        #[test]
        fn round_robin_and_passive_ejection_follow_nginx(
            weights in proptest::collection::vec(1u32..6, 2..6),
            max_fails in 0u32..4,
            fail_timeout_ms in 1u64..3000,
            steps in proptest::collection::vec((0u64..1500, proptest::bool::weighted(0.3)), 1..200),
        ) {
            let servers: Vec<Server> =
                weights.iter().enumerate().map(|(i, &w)| server(&format!("10.0.0.{}:1", i + 1), w, false)).collect();
            let settings = Settings {
                balance: Balance::RoundRobin,
                max_fails,
                fail_timeout: Duration::from_millis(fail_timeout_ms),
                all_down: AllDown::Reject,
                ..Settings::default()
            };
            let p = Pool::new("p".into(), settings, servers, Arc::default(), Default::default());
            let mut model = NginxModel {
                peers: weights
                    .iter()
                    .map(|&w| NginxPeer { weight: i64::from(w), effective: i64::from(w), current: 0, fails: 0, accessed: None, checked: None })
                    .collect(),
                max_fails,
                fail_timeout: fail_timeout_ms,
            };
            let start = Instant::now();
            let mut now_ms = 0u64;
            for (advance, fails) in steps {
                now_ms += advance;
                let now = start + Duration::from_millis(now_ms);
                let want = model.get_peer(now_ms);
                let got = p.pick(now, client(), &[]).map(|pick| pick.idx);
                proptest::prop_assert_eq!(got, want, "at {} ms", now_ms);
                if let Some(i) = want {
                    model.free_peer(i, now_ms, fails);
                    if fails {
                        p.connect_failed(i, now, FailReason::Refused);
                    } else {
                        p.connected(i, now);
                    }
                }
            }
        }
    }
}
