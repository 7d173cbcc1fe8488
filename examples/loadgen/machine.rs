//! What the machine did during a run, to tell a server stall from a machine stall. A thread of
//! the load generator sleeps 1 ms at a time and notes how late it wakes: when the VM is paused or
//! every core is taken, it is late too, while a stall inside the server leaves it on time. Every
//! 100 ms it also reads the kernel's CPU counters (`/proc/stat`) for busy and stolen time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Wake-ups later than this are recorded.
const LATE: Duration = Duration::from_millis(5);
const TICK: Duration = Duration::from_millis(1);
const WINDOW: Duration = Duration::from_millis(100);

/// A wake-up that came late: when (from the start of the run) and by how much.
pub struct LateWake {
    pub at: Duration,
    pub late: Duration,
}

/// CPU time of all cores, in the kernel's clock ticks.
#[derive(Clone, Copy, Default)]
struct CpuTicks {
    busy: u64,
    steal: u64,
    total: u64,
}

impl CpuTicks {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1) // "cpu"
            .filter_map(|f| f.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is inside user)
        let [user, nice, system, idle, iowait, irq, softirq, steal, ..] = fields[..] else {
            return None;
        };
        Some(Self {
            busy: user + nice + system + irq + softirq,
            steal,
            total: user + nice + system + idle + iowait + irq + softirq + steal,
        })
    }

    fn since(self, earlier: CpuTicks) -> CpuTicks {
        CpuTicks {
            busy: self.busy.saturating_sub(earlier.busy),
            steal: self.steal.saturating_sub(earlier.steal),
            total: self.total.saturating_sub(earlier.total),
        }
    }

    fn share(part: u64, total: u64) -> f64 {
        if total == 0 {
            0.0
        } else {
            100.0 * part as f64 / total as f64
        }
    }
}

pub struct MachineReport {
    pub late_wakes: Vec<LateWake>,
    /// Busy and stolen share of all cores over the run, in percent.
    pub busy_percent: f64,
    pub steal_percent: f64,
    /// The 100 ms window with the most stolen time: its start and its stolen share.
    pub worst_steal: Option<(Duration, f64)>,
}

/// Watches the machine from `started` until the returned handle is finished.
pub struct MachineWatch {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<MachineReport>,
}

impl MachineWatch {
    pub fn start(started: Instant) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("machine-watch".into())
            .spawn(move || watch(started, &flag))
            .expect("machine watch thread");
        Self { stop, thread }
    }

    pub fn finish(self) -> MachineReport {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("machine watch thread")
    }
}

fn watch(started: Instant, stop: &AtomicBool) -> MachineReport {
    let first = CpuTicks::read().unwrap_or_default();
    let mut window_start = (started.elapsed(), first);
    let mut worst_steal: Option<(Duration, f64)> = None;
    let mut late_wakes = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let before = Instant::now();
        std::thread::sleep(TICK);
        let late = before.elapsed().saturating_sub(TICK);
        if late > LATE {
            late_wakes.push(LateWake {
                at: before - started,
                late,
            });
        }
        let now = started.elapsed();
        if now - window_start.0 >= WINDOW {
            if let Some(ticks) = CpuTicks::read() {
                let window = ticks.since(window_start.1);
                let steal = CpuTicks::share(window.steal, window.total);
                if worst_steal.is_none_or(|(_, worst)| steal > worst) {
                    worst_steal = Some((window_start.0, steal));
                }
                window_start = (now, ticks);
            }
        }
    }
    let run = CpuTicks::read().unwrap_or_default().since(first);
    MachineReport {
        late_wakes,
        busy_percent: CpuTicks::share(run.busy, run.total),
        steal_percent: CpuTicks::share(run.steal, run.total),
        worst_steal,
    }
}
