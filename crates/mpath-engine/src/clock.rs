//! The fast path's clock: nanoseconds since the process's first map started, read twice per timed I/O
//! (latency histograms, historical-service-time).
//!
//! `Instant::now()` is a vDSO `clock_gettime` (~23 ns in a KVM guest, two of them per
//! I/O). Where the kernel itself keeps `CLOCK_MONOTONIC` on the CPU's time-stamp counter
//! (x86_64 with clocksource `tsc`: the kernel found it invariant and synchronised across
//! CPUs) or on ARM's generic timer, the clock reads that counter through `quanta` (~10 ns
//! there), scaled by a rate `quanta` calibrates once per process against the monotonic
//! clock. Anywhere else — a kernel that distrusts its TSC, for one — it is `Instant`.
//! Readings on different CPUs agree as well as `CLOCK_MONOTONIC`'s do; a reading earlier
//! than another one taken before it (never expected) gives a 0 ns interval, not a huge
//! one.

use std::sync::OnceLock;
use std::time::Instant;

/// The process's clock: made once, by the first map that starts. Making it reads CPUID
/// (tens of µs in a VM) and, the first time, lets `quanta` calibrate the counter's rate
/// (about 0.6 ms of busy waiting here, 200 ms at most): once per process, not per map.
pub(crate) fn shared() -> &'static Clock {
    static CLOCK: OnceLock<Clock> = OnceLock::new();
    CLOCK.get_or_init(Clock::new)
}

#[derive(Clone, Debug)]
pub(crate) enum Clock {
    Counter { clock: quanta::Clock, origin: u64 },
    Monotonic(Instant),
}

impl Clock {
    /// The fastest trustworthy clock here (see the module docs).
    pub fn new() -> Clock {
        if kernel_uses_the_counter() {
            let clock = quanta::Clock::new();
            let origin = clock.raw();
            Clock::Counter { clock, origin }
        } else {
            Clock::monotonic()
        }
    }

    pub fn monotonic() -> Clock {
        Clock::Monotonic(Instant::now())
    }

    /// Nanoseconds since the clock was made.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        match self {
            Clock::Counter { clock, origin } => clock.delta_as_nanos(*origin, clock.raw()),
            Clock::Monotonic(origin) => {
                u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
            }
        }
    }
}

/// Whether the kernel's own monotonic clock runs on the counter `quanta` would read.
fn kernel_uses_the_counter() -> bool {
    if cfg!(target_arch = "aarch64") {
        return true;
    }
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        return false;
    }
    std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
        .is_ok_and(|s| s.trim() == "tsc")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Both clocks measure a real interval as `Instant` does (the scale, not the speed).
    #[test]
    fn intervals_agree_with_the_monotonic_clock() {
        for clock in [Clock::new(), Clock::monotonic()] {
            let (a, t) = (clock.now_ns(), Instant::now());
            std::thread::sleep(Duration::from_millis(30));
            let (b, elapsed) = (clock.now_ns(), t.elapsed());
            let measured = Duration::from_nanos(b - a);
            let diff = measured.abs_diff(elapsed);
            assert!(
                diff < Duration::from_millis(3),
                "{clock:?}: {measured:?} against {elapsed:?}"
            );
            let mut last = clock.now_ns();
            for _ in 0..10_000 {
                let now = clock.now_ns();
                assert!(now >= last, "{clock:?} went back: {now} < {last}");
                last = now;
            }
        }
    }
}
