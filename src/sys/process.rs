//! Process settings: ids, credentials, limits, the allocator; fork, wait, signals.

use super::*;

/// The supplementary groups of process `pid` (from `/proc/PID/status`); empty when they
/// cannot be read (the process is gone).
pub fn process_groups(pid: u32) -> Vec<u32> {
    if pid == 0 {
        return Vec::new();
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub fn geteuid() -> u32 {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

/// Fixed allocator thresholds for a long-lived daemon whose memory follows the kernel's
/// caches: blocks of 4 MiB and more (the index of a big directory) are mapped and unmapped
/// on their own, and a heap whose free top passes 4 MiB shrinks. glibc would otherwise raise
/// both thresholds after the first big block is freed, and keep the peak for good.
pub fn bound_heap() {
    // SAFETY: mallopt only sets allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 4 << 20);
    }
}

/// Gives free heap pages back to the system.
pub fn trim_heap() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe { libc::malloc_trim(0) };
}

/// Raises the soft open-file limit to the hard one: the daemon keeps one `O_PATH` fd per
/// directory and layer that the kernel still references.
pub fn raise_nofile_limit() {
    // SAFETY: rl is a live rlimit the calls read and write.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

/// Root of the initial user namespace. Root inside a user namespace (`unionfuse run`
/// without privileges) cannot give files unmapped owners nor write `trusted.*` xattrs.
pub fn fully_privileged() -> bool {
    static P: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *P.get_or_init(|| {
        geteuid() == 0
            && std::fs::read_to_string("/proc/self/uid_map")
                .map(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
                .unwrap_or(true)
    })
}

// ---- calls of the write path ----

pub fn set_umask_zero() {
    // SAFETY: umask takes a mode only.
    unsafe { libc::umask(0) };
}

/// The calling thread's filesystem ids switched to a caller's for the life of the guard, so
/// that what the thread makes is the caller's from its first moment (as the kernel's overlay
/// does with its override credentials). Per thread: `setfsuid` is not broadcast.
pub struct FsIds {
    uid: u32,
    gid: u32,
}

impl FsIds {
    /// `None` when the thread cannot take these ids (not privileged, or an id unmapped in
    /// the user namespace): the caller then makes the object as itself and chowns it.
    pub fn switch(uid: u32, gid: u32) -> Option<FsIds> {
        // setfs[ug]id return the previous id and report no error; (u32)-1 changes nothing.
        // SAFETY: setfs[ug]id take ids only and act on the calling thread.
        let prev_gid = unsafe { libc::setfsgid(gid) } as u32;
        // SAFETY: setfs[ug]id take ids only and act on the calling thread.
        if unsafe { libc::setfsgid(u32::MAX) } as u32 != gid {
            // SAFETY: setfs[ug]id take ids only and act on the calling thread.
            unsafe { libc::setfsgid(prev_gid) };
            return None;
        }
        // SAFETY: setfs[ug]id take ids only and act on the calling thread.
        let prev_uid = unsafe { libc::setfsuid(uid) } as u32;
        // SAFETY: setfs[ug]id take ids only and act on the calling thread.
        if unsafe { libc::setfsuid(u32::MAX) } as u32 != uid {
            // SAFETY: setfs[ug]id take ids only and act on the calling thread.
            unsafe {
                libc::setfsuid(prev_uid);
                libc::setfsgid(prev_gid);
            }
            return None;
        }
        Some(FsIds {
            uid: prev_uid,
            gid: prev_gid,
        })
    }
}

impl Drop for FsIds {
    fn drop(&mut self) {
        // Back to the daemon's ids: the capabilities dropped with a non-zero fsuid return.
        // SAFETY: setfs[ug]id take ids only and act on the calling thread.
        unsafe {
            libc::setfsuid(self.uid);
            libc::setfsgid(self.gid);
        }
    }
}

/// What `fork` returned, in the process that sees it.
pub enum Forked {
    Child,
    Parent(i32),
}

/// `fork(2)`. The child of a multi-threaded process may only make async-signal-safe calls
/// until it execs or exits: callers fork while single-threaded, or exec at once.
pub fn fork() -> Result<Forked> {
    // SAFETY: fork takes no pointers; what the child may do afterwards is the caller's
    // documented duty (see above), not memory safety of this call.
    match unsafe { libc::fork() } {
        -1 => Err(Errno::last()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// Ends this process at once, without running destructors or atexit handlers (the child of
/// a fork must not flush or free the parent's state).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes no pointers and never returns.
    unsafe { libc::_exit(code) }
}

/// `waitpid(pid, flags)`, retried on EINTR: `Some((pid, status))` once a child changed state,
/// `None` under `WNOHANG` when none did.
pub fn waitpid(pid: i32, flags: i32) -> Result<Option<(i32, i32)>> {
    let mut st = 0;
    // SAFETY: st is a live i32 the call writes the status into.
    let r = retry(-1, || unsafe { libc::waitpid(pid, &mut st, flags) })?;
    Ok((r > 0).then_some((r, st)))
}

/// A wait status as a shell shows it: the exit code, or 128+N when signal N ended it.
pub fn decode_status(st: i32) -> i32 {
    if libc::WIFEXITED(st) {
        libc::WEXITSTATUS(st)
    } else if libc::WIFSIGNALED(st) {
        128 + libc::WTERMSIG(st)
    } else {
        255
    }
}

/// Waits for a child to end; its status as [`decode_status`] gives it (255 if it cannot be
/// waited for).
pub fn wait_status(pid: i32) -> i32 {
    match waitpid(pid, 0) {
        Ok(Some((_, st))) => decode_status(st),
        _ => 255,
    }
}

pub fn kill(pid: i32, sig: i32) -> Result<()> {
    // SAFETY: kill takes no pointers.
    check(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// `setsid()`: a new session, detached from the caller's terminal.
pub fn setsid() {
    // SAFETY: setsid takes no arguments.
    unsafe { libc::setsid() };
}

/// The signal this process gets when its parent ends.
pub fn set_parent_death_signal(sig: i32) {
    // SAFETY: PR_SET_PDEATHSIG takes an integer argument, no pointer.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong) };
}

/// The process's name as `ps` shows it (at most 15 bytes are kept).
pub fn set_process_name(name: &CStr) {
    // SAFETY: name is NUL-terminated; the kernel copies at most 16 bytes of it.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}

/// Replaces what `/proc/self/cmdline` shows with `title`, and empties what
/// `/proc/self/environ` shows: a process forked from a command must not show that command's
/// arguments and environment to whoever can read its `/proc` entry (a container's init, the
/// runner's `-e SECRET=…`). The strings' memory is rewritten in place through
/// `/proc/self/mem` (no privilege needed), as `setproctitle` does; the last byte of the
/// argument area is made non-zero, which tells the kernel to show the title up to its NUL.
/// Whatever read the arguments or the environment must have done so before.
pub fn set_command_line(title: &[u8]) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let stat = std::fs::read("/proc/self/stat")?;
    let after = stat
        .iter()
        .rposition(|&b| b == b')')
        .map(|i| &stat[i + 2..])
        .ok_or(Errno(libc::EINVAL))?;
    let fields: Vec<u64> = String::from_utf8_lossy(after)
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // Fields 48 to 51 of stat(5) (counted from 1; `after` starts at field 3).
    let at = |n: usize| fields.get(n - 3).copied().ok_or(Errno(libc::EINVAL));
    let (arg_start, arg_end, env_start, env_end) = (at(48)?, at(49)?, at(50)?, at(51)?);
    if arg_end <= arg_start || env_end < env_start {
        return Err(Errno(libc::EINVAL));
    }
    let mem = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/mem")?;
    let len = (arg_end - arg_start) as usize;
    let mut area = vec![0u8; len];
    let n = title.len().min(len.saturating_sub(2));
    area[..n].copy_from_slice(&title[..n]);
    if len > n + 1 {
        area[len - 1] = b' ';
    }
    mem.write_all_at(&area, arg_start)?;
    let env = vec![0u8; (env_end - env_start) as usize];
    Ok(mem.write_all_at(&env, env_start)?)
}

/// A set of signals.
#[derive(Clone, Copy)]
pub struct SigSet(libc::sigset_t);

impl SigSet {
    pub fn of(signals: &[i32]) -> SigSet {
        // SAFETY: sigset_t is plain data; sigemptyset initializes it before sigaddset reads it.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for &s in signals {
                libc::sigaddset(&mut set, s);
            }
            SigSet(set)
        }
    }

    /// Blocks these signals in the calling thread (threads created later inherit the mask).
    pub fn block(&self) {
        // SAFETY: self.0 is an initialized set; the old mask is not asked for.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &self.0, std::ptr::null_mut()) };
    }

    /// Makes this set the calling thread's whole mask.
    pub fn set_mask(&self) {
        // SAFETY: as in block.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }

    /// A non-blocking signalfd for these signals (which the caller keeps blocked).
    pub fn signal_fd(&self) -> Result<OwnedFd> {
        // SAFETY: self.0 is an initialized set; -1 asks for a new fd.
        let fd =
            check(unsafe { libc::signalfd(-1, &self.0, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })?;
        // SAFETY: fd was just made and is owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Waits for one of these (blocked) signals; returns it and whether a process sent it
    /// (rather than the kernel, as for a terminal's ^C or a window change).
    pub fn wait_info(&self) -> (i32, bool) {
        loop {
            // SAFETY: siginfo_t is plain data the call fills in; self.0 is initialized.
            let (s, info) = unsafe {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                (libc::sigwaitinfo(&self.0, &mut info), info)
            };
            if s > 0 {
                return (s, info.si_code != libc::SI_KERNEL);
            }
        }
    }
}

/// Restores the default action of SIGPIPE (which Rust's runtime ignores) and of `signals`:
/// an ignored signal stays ignored across exec.
pub fn default_signals(signals: &[i32]) {
    for &s in signals.iter().chain([libc::SIGPIPE].iter()) {
        // SAFETY: SIG_DFL is a valid disposition; no handler code is installed.
        unsafe { libc::signal(s, libc::SIG_DFL) };
    }
}

/// `unshare(2)`. `CLONE_NEWUSER` fails in a multi-threaded process.
pub fn unshare(flags: i32) -> Result<()> {
    // SAFETY: unshare takes no pointers.
    check(unsafe { libc::unshare(flags) }).map(drop)
}

/// Joins the namespace `fd` stands for.
pub fn setns(fd: BorrowedFd<'_>, nstype: i32) -> Result<()> {
    // SAFETY: fd is borrowed for the call.
    check(unsafe { libc::setns(fd.as_raw_fd(), nstype) }).map(drop)
}

pub fn sethostname(name: &str) -> Result<()> {
    // SAFETY: the pointer and length describe name's bytes.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

/// The real user and group ids.
pub fn real_ids() -> (u32, u32) {
    // SAFETY: getuid and getgid take no arguments and cannot fail.
    unsafe { (libc::getuid(), libc::getgid()) }
}

/// Drops every supplementary group.
pub fn clear_groups() -> Result<()> {
    // SAFETY: a count of 0 with a null list is setgroups' documented way to clear them.
    check(unsafe { libc::setgroups(0, std::ptr::null()) }).map(drop)
}

/// Becomes `uid`:`gid` with no supplementary groups (all three ids: real, effective, saved).
pub fn become_user(uid: u32, gid: u32) -> Result<()> {
    // SAFETY: a count of 0 with a null list clears the supplementary groups.
    check(unsafe { libc::setgroups(0, std::ptr::null()) })?;
    // SAFETY: setresgid and setresuid take ids only.
    check(unsafe { libc::setresgid(gid, gid, gid) })?;
    // SAFETY: as above.
    check(unsafe { libc::setresuid(uid, uid, uid) }).map(drop)
}

/// The login name of `uid` in the password database.
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: passwd is plain data getpwuid_r fills in; its strings point into buf, which
    // lives until the name is copied out below.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        let r = libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut out);
        if r != 0 || out.is_null() {
            return None;
        }
        Some(CStr::from_ptr(pw.pw_name).to_string_lossy().into_owned())
    }
}

/// Whether `path` is a file this process may execute.
pub fn is_executable(path: &std::path::Path) -> bool {
    let Ok(c) = cstr(path.as_os_str()) else {
        return false;
    };
    // SAFETY: c is NUL-terminated.
    unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
}

/// `execve(2)`: returns only on failure, with its errno.
pub fn execve(path: &CStr, argv: &[CString], env: &[CString]) -> Errno {
    let mut av: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    av.push(std::ptr::null());
    let mut ev: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    ev.push(std::ptr::null());
    // SAFETY: path and every string are NUL-terminated and live; both arrays end in null.
    unsafe { libc::execve(path.as_ptr(), av.as_ptr(), ev.as_ptr()) };
    Errno::last()
}

/// A pipe, both ends close-on-exec: (read end, write end).
pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two fds the call writes.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both fds were just made and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Makes fd number `target` a copy of `fd` (as for stdin/stdout/stderr).
pub fn dup_onto(fd: BorrowedFd<'_>, target: RawFd) -> Result<()> {
    // SAFETY: fd is borrowed for the call; target is a number the caller gives up.
    check(unsafe { libc::dup2(fd.as_raw_fd(), target) }).map(drop)
}

/// Whether `fd` has something to read or has hung up, without waiting.
pub fn poll_ready(fd: BorrowedFd<'_>) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: pfd is one live pollfd, and 1 is the count passed.
    unsafe { libc::poll(&mut pfd, 1, 0) != 0 }
}

/// In a new network namespace: `lo` up, as every program expects.
pub fn loopback_up() -> Result<()> {
    // SAFETY: socket takes no pointers.
    let s =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: s was just made and is owned by nobody else.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: ifreq is plain data; the name written fits its 16 bytes with the NUL.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        ifr.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: ifr is a live ifreq, as SIOCGIFFLAGS reads and writes.
    check(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) })?;
    // SAFETY: the flags member is the one SIOCGIFFLAGS just filled in.
    unsafe { ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: as above, for SIOCSIFFLAGS.
    check(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) }).map(drop)
}

/// `PR_SET_NO_NEW_PRIVS`: exec can never give this process or its children more privileges
/// (set-id bits and file capabilities are ignored).
pub fn no_new_privs() -> Result<()> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments, no pointer.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }).map(drop)
}

/// Installs a seccomp filter program on this thread (and what it forks and execs). Without
/// no-new-privileges the kernel asks for CAP_SYS_ADMIN in this user namespace.
pub fn seccomp_filter(prog: &[libc::sock_filter]) -> Result<()> {
    let fprog = libc::sock_fprog {
        len: prog.len() as libc::c_ushort,
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: fprog points at prog's live instructions with their count; the kernel copies
    // them before the call returns.
    check(unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        ) as libc::c_int
    })
    .map(drop)
}

/// Makes the directory at `fd` this process's root and working directory (`chroot`).
pub fn enter_root(fd: BorrowedFd<'_>) -> Result<()> {
    // SAFETY: fchdir takes no pointers; "." is NUL-terminated.
    unsafe {
        check(libc::fchdir(fd.as_raw_fd()))?;
        check(libc::chroot(c".".as_ptr())).map(drop)
    }
}

/// Points stdin, stdout and stderr at `null` in the directory `dev` (`/dev`, or an fd path
/// to it): a process that outlives its caller must not keep the caller's streams open.
pub fn redirect_stdio(dev: &std::path::Path) {
    use std::os::fd::AsFd;
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev.join("null"))
    {
        for fd in 0..3 {
            let _ = dup_onto(null.as_fd(), fd);
        }
    }
}
