//! The process's own CPU and memory, read from procfs (Linux); zero elsewhere. Used for the
//! heartbeat the seed's orb manager expects and by the benchmark.

use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Kernel clock ticks per second, the unit of /proc times (`sysconf(_SC_CLK_TCK)`).
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the running system and has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// The page size, the unit of /proc/*/statm (`sysconf(_SC_PAGESIZE)`): 4 KiB on x86-64, but 16
/// or 64 KiB on some arm64 kernels.
fn page_size() -> u64 {
    // SAFETY: as above.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as u64 } else { 4096 }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// CPU used since the previous sample, in percent of one core.
    pub cpu_percent: f64,
    pub rss_bytes: u64,
}

static LAST: Mutex<Option<(Instant, u64)>> = Mutex::new(None);

/// CPU ticks (user + system) and RSS of process `pid` (`self` for this one).
pub fn read(pid: &str) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may itself contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let rss_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some((utime + stime, rss_pages * page_size()))
}

/// Samples this process; CPU is averaged since the previous call (or since start).
pub fn sample() -> Usage {
    let Some((ticks, rss_bytes)) = read("self") else {
        return Usage::default();
    };
    let now = Instant::now();
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    let cpu_percent = match *last {
        Some((at, prev)) if now > at => {
            (ticks.saturating_sub(prev) as f64 / ticks_per_second()) / (now - at).as_secs_f64() * 100.0
        }
        _ => 0.0,
    };
    *last = Some((now, ticks));
    Usage {
        cpu_percent: (cpu_percent * 10.0).round() / 10.0,
        rss_bytes,
    }
}

pub fn unix_millis() -> u64 {
    unix_millis_of(SystemTime::now())
}

/// Unix milliseconds of a wall-clock instant.
pub fn unix_millis_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_its_own_usage_on_linux() {
        if cfg!(target_os = "linux") {
            let (_, rss) = super::read("self").unwrap();
            assert!(rss > 1024 * 1024);
            assert!(super::sample().rss_bytes > 0);
        }
    }
}
