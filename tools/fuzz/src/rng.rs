//! The fuzzer's generator: SplitMix64, small and seedable, so one worker
//! seed always draws the same sequence (`--replay`). Its stream is also
//! the check disk's content ([`pattern`]), which the lab writes and the
//! fuzzer checks every read of: SplitMix64's `n`th output depends on the
//! seed and `n` only, so any byte range can be made without the rest.

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(STEP);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// An index into a collection of `len` items (0 when it is empty).
    pub fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// True once in `n` draws on average.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        items.get(self.index(items.len())).copied()
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// The golden-ratio step SplitMix64 adds before each output.
const STEP: u64 = 0x9e37_79b9_7f4a_7c15;

/// Fills `buf` with bytes `offset..` of the stream of seed `seed`: its
/// outputs in order, each as 8 little-endian bytes.
pub fn pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut at = offset;
    let mut i = 0;
    while i < buf.len() {
        let word = Rng::new(seed.wrapping_add((at / 8).wrapping_mul(STEP))).next_u64();
        let bytes = word.to_le_bytes();
        let from = (at % 8) as usize;
        let n = (8 - from).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&bytes[from..from + n]);
        i += n;
        at += n as u64;
    }
}

/// The first index at which `data` differs from the stream of `seed` at
/// `offset`, if any.
pub fn pattern_mismatch(seed: u64, offset: u64, data: &[u8]) -> Option<usize> {
    let mut expect = [0u8; 4096];
    data.chunks(expect.len())
        .enumerate()
        .find_map(|(k, chunk)| {
            let start = k * expect.len();
            pattern(seed, offset + start as u64, &mut expect[..chunk.len()]);
            chunk
                .iter()
                .zip(&expect)
                .position(|(a, b)| a != b)
                .map(|p| start + p)
        })
}

/// Worker `index`'s seed in a campaign seeded `campaign`. Its lowest bit
/// says who the worker is (odd: the ordinary user, even: root), so a seed
/// alone replays a worker: as the same user, the same sequence.
pub fn worker_seed(campaign: u64, index: usize) -> u64 {
    let mut r = Rng::new(campaign ^ (index as u64).wrapping_mul(0xa24b_aed4_963e_e407));
    (r.next_u64() & !1) | (index as u64 & 1)
}

/// Whether a worker with `seed` runs as the ordinary user.
pub fn is_user_seed(seed: u64) -> bool {
    seed & 1 == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_seed_draws_one_sequence() {
        let a: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..5).map(|_| r.next_u64()).collect()
        };
        let mut r = Rng::new(7);
        assert!(a.iter().all(|&x| x == r.next_u64()));
        assert_ne!(Rng::new(8).next_u64(), a[0]);
    }

    #[test]
    fn worker_seeds_differ_and_alternate_between_root_and_the_user() {
        let seeds: Vec<u64> = (0..8).map(|i| worker_seed(42, i)).collect();
        for (i, s) in seeds.iter().enumerate() {
            assert_eq!(is_user_seed(*s), i % 2 == 1);
            assert!(seeds[..i].iter().all(|t| t != s));
        }
    }

    #[test]
    fn the_pattern_is_the_stream_from_any_offset() {
        let mut r = Rng::new(99);
        let stream: Vec<u8> = (0..8).flat_map(|_| r.next_u64().to_le_bytes()).collect();
        let mut whole = vec![0u8; 64];
        pattern(99, 0, &mut whole);
        assert_eq!(whole, stream);
        let mut part = vec![0u8; 29];
        pattern(99, 13, &mut part);
        assert_eq!(part, stream[13..42]);
        assert_eq!(pattern_mismatch(99, 13, &part), None);
        part[20] ^= 1;
        assert_eq!(pattern_mismatch(99, 13, &part), Some(20));
        assert_eq!(pattern_mismatch(98, 0, &stream), Some(0));
    }

    #[test]
    fn below_stays_below() {
        let mut r = Rng::new(1);
        assert!((0..1000).all(|_| r.below(7) < 7));
        assert_eq!(r.below(0), 0);
        assert_eq!(r.pick::<u8>(&[]), None);
    }
}
