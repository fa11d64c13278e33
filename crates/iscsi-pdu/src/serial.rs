//! RFC 1982 serial number arithmetic with SERIAL_BITS = 32, as RFC 7143 §4.2.2.1
//! requires for CmdSN, StatSN, DataSN, R2TSN and their `Exp`/`Max` companions.

use std::cmp::Ordering;
use std::fmt;

/// A 32-bit iSCSI sequence number (CmdSN, ExpCmdSN, MaxCmdSN, StatSN, DataSN, R2TSN ...).
///
/// Ordering follows RFC 1982: `a < b` when `b` is ahead of `a` by less than 2^31. Two numbers
/// exactly 2^31 apart are incomparable, so `partial_cmp` returns `None` for them and every
/// comparison operator is false.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SerialNumber(pub u32);

/// Half the sequence space: the largest distance over which RFC 1982 defines an order.
const HALF: u32 = 1 << 31;

impl SerialNumber {
    /// The number `n` steps after this one (RFC 1982 addition, n < 2^31).
    pub fn plus(self, n: u32) -> SerialNumber {
        SerialNumber(self.0.wrapping_add(n))
    }

    /// The next number in sequence.
    pub fn next(self) -> SerialNumber {
        self.plus(1)
    }

    /// How far `later` is ahead of `self`, modulo 2^32.
    pub fn distance_to(self, later: SerialNumber) -> u32 {
        later.0.wrapping_sub(self.0)
    }

    /// Whether `self` lies in the closed window `[low, high]` (serial order, `low <= high`).
    pub fn in_window(self, low: SerialNumber, high: SerialNumber) -> bool {
        low.distance_to(self) <= low.distance_to(high) && low.distance_to(high) < HALF
    }
}

impl PartialOrd for SerialNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        let (a, b) = (self.0, other.0);
        if a == b {
            Some(Ordering::Equal)
        } else if (a < b && b - a < HALF) || (a > b && a - b > HALF) {
            Some(Ordering::Less)
        } else if (a < b && b - a > HALF) || (a > b && a - b < HALF) {
            Some(Ordering::Greater)
        } else {
            None
        }
    }
}

impl fmt::Debug for SerialNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for SerialNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<u32> for SerialNumber {
    fn from(v: u32) -> Self {
        SerialNumber(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wraps_around() {
        let a = SerialNumber(u32::MAX);
        let b = a.next();
        assert_eq!(b, SerialNumber(0));
        assert!(a < b);
        assert!(b > a);
        assert_eq!(a.distance_to(b), 1);
    }

    #[test]
    fn half_apart_is_incomparable() {
        let a = SerialNumber(0);
        let b = SerialNumber(HALF);
        assert_eq!(a.partial_cmp(&b), None);
        assert!(a.partial_cmp(&b).is_none());
    }

    #[test]
    fn window_across_wrap() {
        let low = SerialNumber(u32::MAX - 2);
        let high = SerialNumber(5);
        assert!(SerialNumber(u32::MAX).in_window(low, high));
        assert!(SerialNumber(0).in_window(low, high));
        assert!(SerialNumber(5).in_window(low, high));
        assert!(!SerialNumber(6).in_window(low, high));
        assert!(!SerialNumber(u32::MAX - 3).in_window(low, high));
        // An empty window (MaxCmdSN = ExpCmdSN - 1) admits nothing.
        let exp = SerialNumber(10);
        assert!(!SerialNumber(10).in_window(exp, SerialNumber(9)));
    }

    proptest! {
        #[test]
        fn add_is_ahead(a in any::<u32>(), n in 1u32..HALF) {
            let s = SerialNumber(a);
            prop_assert!(s < s.plus(n));
            prop_assert!(s.plus(n) > s);
            prop_assert_eq!(s.distance_to(s.plus(n)), n);
        }

        #[test]
        fn antisymmetric(a in any::<u32>(), b in any::<u32>()) {
            let (x, y) = (SerialNumber(a), SerialNumber(b));
            prop_assert_eq!(x < y, y > x);
        }
    }
}
