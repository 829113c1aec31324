//! CPU time of processes, from /proc: the server's own (one pid) and the database's (every
//! process with a given command name, e.g. all PostgreSQL backends and helpers), user + system,
//! so a run can report CPU microseconds per call.

use std::time::Duration;

/// Linux's USER_HZ: /proc reports CPU time in these ticks.
const TICKS_PER_SECOND: u64 = 100;

/// utime + stime of process `pid` (all its threads), if it exists.
pub fn of_pid(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    ticks_in_stat(&stat).map(ticks_to_duration)
}

/// utime + stime of every process whose command name is `name`, plus the CPU time of their
/// children that have exited (cutime + cstime: PostgreSQL's backends are the postmaster's
/// children, and one that ends during a run still counts).
pub fn of_processes_named(name: &str) -> Duration {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    let mut ticks = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(pid) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        let comm = stat
            .split_once('(')
            .and_then(|(_, rest)| rest.rsplit_once(')'))
            .map(|(comm, _)| comm);
        if comm == Some(name) {
            ticks += ticks_in_stat(&stat).unwrap_or(0) + children_ticks_in_stat(&stat).unwrap_or(0);
        }
    }
    ticks_to_duration(ticks)
}

/// utime + stime (fields 14 and 15 of a /proc stat line).
fn ticks_in_stat(stat: &str) -> Option<u64> {
    sum_of_fields(stat, 14)
}

/// cutime + cstime (fields 16 and 17): children that have exited.
fn children_ticks_in_stat(stat: &str) -> Option<u64> {
    sum_of_fields(stat, 16)
}

/// Fields `first` and `first + 1` (1-based, as in proc(5)) of a stat line, added. Fields after
/// the command name (which may hold spaces and parentheses) start after its last ')', with
/// field 3.
fn sum_of_fields(stat: &str, first: usize) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(first - 3);
    let a: u64 = fields.next()?.parse().ok()?;
    let b: u64 = fields.next()?.parse().ok()?;
    Some(a + b)
}

fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND)
}

/// CPU time used by the server and the database between two samples.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    server: Option<Duration>,
    database: Option<Duration>,
}

impl Sample {
    pub fn take(server_pid: Option<u32>, database_process: Option<&str>) -> Self {
        Self {
            server: server_pid.and_then(of_pid),
            database: database_process.map(of_processes_named),
        }
    }

    /// (server, database) CPU microseconds per call since `earlier`.
    pub fn per_call_since(&self, earlier: &Sample, calls: u64) -> (Option<f64>, Option<f64>) {
        let per_call = |now: Option<Duration>, then: Option<Duration>| {
            let used = now?.checked_sub(then?)?;
            (calls > 0).then(|| used.as_secs_f64() * 1e6 / calls as f64)
        };
        (
            per_call(self.server, earlier.server),
            per_call(self.database, earlier.database),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        let stat = "42 (todo (server) x) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9";
        assert_eq!(ticks_in_stat(stat), Some(325));
        assert_eq!(children_ticks_in_stat(stat), Some(0));
    }

    #[test]
    fn this_process_is_read_and_an_absent_one_is_none() {
        assert!(of_pid(std::process::id()).is_some());
        assert!(of_pid(u32::MAX).is_none());
    }
}
