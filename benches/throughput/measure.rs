//! Running a child process and measuring it: wall time, its own user and system CPU and its
//! peak resident memory, all from `wait4`'s resource usage of that one child (not the
//! bench's, not the mock's). A watchdog kills a child that outlives its time limit.

use std::io::{self, Read};
use std::process::{Child, ChildStdout};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// What one finished child cost.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// From spawn to exit.
    pub wall: Duration,
    /// User plus system CPU of the child and its threads.
    pub cpu: Duration,
    /// Peak resident set size.
    pub max_rss_bytes: u64,
    /// The exit code; `None` when a signal ended it.
    pub exit_code: Option<i32>,
}

impl Usage {
    pub fn per_second(&self, count: u64) -> f64 {
        count as f64 / self.wall.as_secs_f64()
    }

    pub fn cpu_per_item(&self, count: u64) -> Duration {
        self.cpu.div_f64(count.max(1) as f64)
    }
}

/// Waits for `child` (spawned at `started`) and returns what it cost. Kills it after `limit`.
/// The child is reaped here: do not wait for it again.
pub fn wait_measured(child: Child, started: Instant, limit: Duration) -> io::Result<Usage> {
    let pid = libc::pid_t::try_from(child.id()).map_err(io::Error::other)?;
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(limit) {
            // SAFETY: kill(2) with a pid we spawned and have not reaped yet (the main thread
            // is still blocked in wait4 on it, so the pid cannot have been reused).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return true;
        }
        false
    });
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = loop {
        // SAFETY: valid pointers to locals; blocking wait for our own child.
        let result = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if result == pid {
            break Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            break Err(error);
        }
    };
    let wall = started.elapsed();
    let _ = done_tx.send(());
    let killed = watchdog.join().unwrap_or(false);
    reaped?;
    drop(child);
    if killed {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("pid {pid} ran past its limit of {limit:?} and was killed"),
        ));
    }
    let exit_code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    Ok(Usage {
        wall,
        cpu: timeval(usage.ru_utime) + timeval(usage.ru_stime),
        // Linux reports ru_maxrss in kilobytes.
        max_rss_bytes: u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024,
        exit_code,
    })
}

fn timeval(value: libc::timeval) -> Duration {
    Duration::from_secs(u64::try_from(value.tv_sec).unwrap_or(0))
        + Duration::from_micros(u64::try_from(value.tv_usec).unwrap_or(0))
}

/// Reads a child's stdout to its end on a thread, counting lines (results are checked by
/// count; their bytes are dropped).
pub fn count_lines(mut stdout: ChildStdout) -> JoinHandle<io::Result<u64>> {
    thread::spawn(move || {
        let mut buffer = vec![0u8; 256 * 1024];
        let mut lines = 0u64;
        loop {
            let read = stdout.read(&mut buffer)?;
            if read == 0 {
                return Ok(lines);
            }
            lines += memchr::memchr_iter(b'\n', &buffer[..read]).count() as u64;
        }
    })
}

/// CPU used so far by a live process (user plus system), from `/proc/<pid>/stat`.
pub fn process_cpu(pid: u32) -> io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name, in parentheses, may hold spaces: fields are counted after it.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other("unexpected /proc/<pid>/stat format"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of stat(5); field 3 is the first after the name.
    let ticks = |index: usize| -> io::Result<u64> {
        fields
            .get(index - 3)
            .and_then(|field| field.parse().ok())
            .ok_or_else(|| io::Error::other("unexpected /proc/<pid>/stat format"))
    };
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(Duration::from_secs_f64(
        (ticks(14)? + ticks(15)?) as f64 / per_second,
    ))
}
