//! least_conn: the fewest active connections per unit of weight.

use std::sync::atomic::Ordering::Relaxed;

use tokio::time::Instant;

use super::Pool;
use super::mask::Mask;

impl Pool {
    /// Fewest active connections per unit of weight; ties go round robin.
    pub(super) fn least_conn(&self, mask: &Mask, now: Instant) -> Option<usize> {
        let ratio = |i: usize| {
            let s = &self.servers[i];
            (u64::from(s.state.active.load(Relaxed)), s.weight_now(now) as u64)
        };
        let mut best: Option<(usize, (u64, u64))> = None;
        for i in mask.iter() {
            let (c, w) = ratio(i);
            if best.is_none_or(|(_, (bc, bw))| c * bw < bc * w) {
                best = Some((i, (c, w)));
            }
        }
        let (first, (bc, bw)) = best?;
        let mut ties = Mask::new(self.servers.len());
        let mut many = false;
        for i in mask.iter() {
            let (c, w) = ratio(i);
            if c * bw == bc * w {
                ties.set(i);
                many |= i != first;
            }
        }
        // As nginx: one best is taken as it is; only a tie goes through the
        // round robin (and moves its weights).
        if many { self.round_robin(&ties, now) } else { Some(first) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Balance;
    use crate::state::pool::tests::{client, pool, server};

    #[test]
    fn least_conn_prefers_fewest_per_weight() {
        let p = pool(Balance::LeastConn, vec![server("10.0.0.1:1", 1, false), server("10.0.0.2:1", 2, false)]);
        p.servers[0].state.active.store(2, Relaxed);
        p.servers[1].state.active.store(3, Relaxed);
        // 2/1 > 3/2: the weighted server has fewer per weight.
        assert_eq!(p.pick(Instant::now(), client(), &[]).unwrap().idx, 1);
        p.servers[1].state.active.store(5, Relaxed);
        assert_eq!(p.pick(Instant::now(), client(), &[]).unwrap().idx, 0);
    }
}
