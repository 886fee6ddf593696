//! A small set of server indices, for the candidates of one pick.

/// A small set of server indices; no allocation for pools of up to 256.
pub(super) enum Mask {
    Small([u64; 4]),
    Big(Vec<u64>),
}

impl Mask {
    pub(super) fn new(n: usize) -> Mask {
        if n <= 256 { Mask::Small([0; 4]) } else { Mask::Big(vec![0; n.div_ceil(64)]) }
    }
    pub(super) fn words(&self) -> &[u64] {
        match self {
            Mask::Small(w) => w,
            Mask::Big(v) => v,
        }
    }
    pub(super) fn set(&mut self, i: usize) {
        let w = match self {
            Mask::Small(w) => &mut w[..],
            Mask::Big(v) => &mut v[..],
        };
        w[i / 64] |= 1 << (i % 64);
    }
    pub(super) fn get(&self, i: usize) -> bool {
        self.words().get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    pub(super) fn is_empty(&self) -> bool {
        self.words().iter().all(|&w| w == 0)
    }
    /// The indices in the set, in order. Only the set bits are visited (each
    /// found with one trailing-zeros count): a pick in a pool of three walks
    /// three bits, not 256 (callgrind had the old walk at about 2,200
    /// instructions per new connection, most of a round-robin pick).
    pub(super) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words().iter().enumerate().flat_map(|(wi, &w)| {
            let mut rest = w;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let b = rest.trailing_zeros() as usize;
                rest &= rest - 1;
                Some(wi * 64 + b)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_iterates_what_was_set() {
        let mut m = Mask::new(300);
        for i in [0, 63, 64, 299] {
            m.set(i);
        }
        assert_eq!(m.iter().collect::<Vec<_>>(), [0, 63, 64, 299]);
        assert!(m.get(64) && !m.get(65));
        let mut small = Mask::new(256);
        for i in [1, 2, 130, 255] {
            small.set(i);
        }
        assert_eq!(small.iter().collect::<Vec<_>>(), [1, 2, 130, 255]);
        assert_eq!(Mask::new(3).iter().count(), 0);
    }
}
