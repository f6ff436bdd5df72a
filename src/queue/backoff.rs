//! Exponential backoff with jitter for transient failures.

/// The schedule of delays before a transient failure is retried.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Delay after the first transient failure, in seconds.
    pub base_s: u64,
    /// Largest delay, in seconds.
    pub max_s: u64,
}

impl Backoff {
    /// Delay before retry number `n` (0-based): `base · 2ⁿ`, capped, then
    /// scaled by a factor in `0.8..1.2` so retries of many jobs spread out.
    /// `unit` is a random number in `0.0..1.0`.
    pub fn delay_s(&self, n: u32, unit: f64) -> u64 {
        let exp = self
            .base_s
            .saturating_mul(1u64 << n.min(32))
            .min(self.max_s);
        let factor = 0.8 + 0.4 * unit.clamp(0.0, 1.0);
        ((exp as f64) * factor).round().max(1.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_jitters_within_twenty_percent() {
        let b = Backoff {
            base_s: 30,
            max_s: 1800,
        };
        assert_eq!(b.delay_s(0, 0.5), 30);
        assert_eq!(b.delay_s(1, 0.5), 60);
        assert_eq!(b.delay_s(3, 0.5), 240);
        assert_eq!(b.delay_s(20, 0.5), 1800);
        assert_eq!(b.delay_s(63, 0.5), 1800);
        assert_eq!(b.delay_s(0, 0.0), 24);
        assert_eq!(b.delay_s(0, 1.0), 36);
        assert!(
            Backoff {
                base_s: 0,
                max_s: 0
            }
            .delay_s(0, 0.0)
                >= 1
        );
    }
}
