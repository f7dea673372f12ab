//! Throttled logging for what a misbehaving device could repeat forever.

/// Counts occurrences of one thing and says which to log: the 1st, 10th,
/// 100th, ...
#[derive(Debug, Default)]
pub struct Throttle(u64);

impl Throttle {
    /// Counts one occurrence; `Some(count)` if this one should be logged.
    pub fn hit(&mut self) -> Option<u64> {
        self.0 += 1;
        let mut p = 1;
        while p < self.0 {
            p *= 10;
        }
        (p == self.0).then_some(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn powers_of_ten_are_logged() {
        let mut t = Throttle::default();
        let logged: Vec<u64> = (0..1000).filter_map(|_| t.hit()).collect();
        assert_eq!(logged, [1, 10, 100, 1000]);
    }
}
