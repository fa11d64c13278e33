//! How late this process's timers fire: the measure of its own CPU starvation that the
//! stall rule consults before it blames a peer for silence.
//!
//! One task per process ticks every [`TICK`] and records how much later than asked it woke;
//! on a machine whose CPUs are all busy (a loaded VM, a target on the same host working
//! flat out) the lag grows to hundreds of milliseconds — long enough for a healthy path's
//! answers to sit unread and a ping to look unanswered. A session whose stall ping expires
//! asks [`max_since`] the ping was sent and, when the process was starved, gives the ping
//! one more timeout (`InitiatorConnection::starved`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the monitor wakes: 20 times a second, nothing on an idle machine.
const TICK: Duration = Duration::from_millis(50);
/// Lags below this are a timer's ordinary jitter and are not kept.
const KEEP_ABOVE: Duration = Duration::from_millis(10);
/// How long samples are kept: longer than any ping is out.
const KEEP_FOR: Duration = Duration::from_secs(10);

static RUNNING: AtomicBool = AtomicBool::new(false);
/// (when the late wake-up came, how late it was).
static SAMPLES: Mutex<VecDeque<(Instant, Duration)>> = Mutex::new(VecDeque::new());

/// Start the monitor on the current tokio runtime unless it runs already. When that runtime
/// ends, the next call starts it on its own.
pub(crate) fn ensure_running() {
    if RUNNING.swap(true, Ordering::AcqRel) {
        return;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        RUNNING.store(false, Ordering::Release);
        return;
    };
    rt.spawn(async {
        // Dropped with its runtime: the next session starts a new monitor.
        struct Running;
        impl Drop for Running {
            fn drop(&mut self) {
                RUNNING.store(false, Ordering::Release);
            }
        }
        let _running = Running;
        loop {
            let asked = Instant::now();
            tokio::time::sleep(TICK).await;
            let woke = Instant::now();
            record(
                woke,
                woke.saturating_duration_since(asked).saturating_sub(TICK),
            );
        }
    });
}

fn samples() -> std::sync::MutexGuard<'static, VecDeque<(Instant, Duration)>> {
    SAMPLES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Note that a wake-up due at `woke - lag` came at `woke`.
pub(crate) fn record(woke: Instant, lag: Duration) {
    if lag < KEEP_ABOVE {
        return;
    }
    let mut s = samples();
    while s
        .front()
        .is_some_and(|(at, _)| woke.saturating_duration_since(*at) > KEEP_FOR)
    {
        s.pop_front();
    }
    s.push_back((woke, lag));
}

/// The longest this process went without running a due timer, over the starvations that
/// ended after `since`.
pub(crate) fn max_since(since: Instant) -> Duration {
    samples()
        .iter()
        .filter(|(at, _)| *at >= since)
        .map(|(_, lag)| *lag)
        .max()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starvations_after_a_moment_count() {
        // An hour ahead: clear of the samples other tests record meanwhile.
        let t0 = Instant::now() + Duration::from_secs(3600);
        record(t0 + Duration::from_millis(5), Duration::from_millis(3)); // jitter: not kept
        record(t0 + Duration::from_millis(100), Duration::from_millis(80));
        record(t0 + Duration::from_millis(300), Duration::from_millis(200));
        assert_eq!(max_since(t0), Duration::from_millis(200));
        assert_eq!(
            max_since(t0 + Duration::from_millis(200)),
            Duration::from_millis(200)
        );
        assert!(max_since(t0 + Duration::from_millis(400)) < Duration::from_millis(10));
    }

    #[test]
    fn a_blocked_runtime_is_measured() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let t0 = Instant::now();
        rt.block_on(async {
            ensure_running();
            tokio::time::sleep(Duration::from_millis(120)).await;
            // The only thread of the runtime does not yield for 300 ms: the monitor's
            // next wake-up comes that much late.
            std::thread::sleep(Duration::from_millis(300));
            tokio::time::sleep(Duration::from_millis(120)).await;
        });
        let t1 = Instant::now();
        // Only this test's window: other tests record into the same process-wide samples.
        let lag = samples()
            .iter()
            .filter(|(at, _)| *at >= t0 && *at <= t1)
            .map(|(_, lag)| *lag)
            .max()
            .unwrap_or_default();
        assert!(lag >= Duration::from_millis(200), "measured {lag:?}");
    }
}
