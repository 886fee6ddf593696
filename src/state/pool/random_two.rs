//! random_two: two weighted random picks, and the one with fewer
//! connections per unit of weight.

use std::sync::atomic::Ordering::Relaxed;

use tokio::time::Instant;

use super::Pool;
use super::mask::Mask;

impl Pool {
    /// Two weighted random picks; the one with fewer connections per weight.
    pub(super) fn random_two(&self, mask: &Mask, now: Instant) -> Option<usize> {
        let first = self.weighted_random(mask, None, now)?;
        let Some(second) = self.weighted_random(mask, Some(first), now) else {
            return Some(first);
        };
        let (a, b) = (&self.servers[first], &self.servers[second]);
        let (ca, cb) = (u64::from(a.state.active.load(Relaxed)), u64::from(b.state.active.load(Relaxed)));
        let (wa, wb) = (a.weight_now(now) as u64, b.weight_now(now) as u64);
        if cb * wa < ca * wb { Some(second) } else { Some(first) }
    }

    fn weighted_random(&self, mask: &Mask, except: Option<usize>, now: Instant) -> Option<usize> {
        let weight = |i: usize| self.servers[i].weight_now(now) as u64;
        let total: u64 = mask.iter().filter(|&i| Some(i) != except).map(weight).sum();
        if total == 0 {
            return None;
        }
        let mut r = fastrand::u64(0..total);
        for i in mask.iter().filter(|&i| Some(i) != except) {
            let w = weight(i);
            if r < w {
                return Some(i);
            }
            r -= w;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Balance;
    use crate::state::pool::tests::{client, pool, server};

    #[test]
    fn random_two_avoids_the_busy_server() {
        let p = pool(Balance::RandomTwo, vec![server("10.0.0.1:1", 1, false), server("10.0.0.2:1", 1, false)]);
        p.servers[0].state.active.store(10, Relaxed);
        for _ in 0..50 {
            assert_eq!(p.pick(Instant::now(), client(), &[]).unwrap().idx, 1);
        }
    }
}
