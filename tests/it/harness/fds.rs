//! File descriptors of a process: how many it has open, and its
//! open-files limit (`RLIMIT_NOFILE`), read and set from outside like
//! `prlimit --pid` does.

use std::fs;

/// How many file descriptors process `pid` has open (`/proc/PID/fd`).
pub fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .count()
}

/// Sets the soft and hard open-files limit of process `pid` (ours, or a
/// child of ours) to `n`; returns what it was (soft, hard).
pub fn set_nofile(pid: u32, n: u64) -> (u64, u64) {
    let new = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit(2) reads the valid `new` and writes the valid,
    // exclusively borrowed `old`; `pid` is a child we own and have not
    // reaped (or this process), so it names no other process.
    let rc = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, &new, &mut old) };
    assert_eq!(
        rc,
        0,
        "prlimit({pid}, NOFILE, {n}): {}",
        std::io::Error::last_os_error()
    );
    (old.rlim_cur, old.rlim_max)
}

/// The soft open-files limit of process `pid`, as `/proc/PID/limits` shows it.
pub fn nofile_soft(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Raises this process's soft open-files limit to at least `n` (up to its
/// hard limit); returns the soft limit now in force.
pub fn raise_own_nofile(n: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) and setrlimit(2) on this process with a valid,
    // exclusively borrowed `rlimit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < n {
            lim.rlim_cur = n.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}
