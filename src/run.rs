//! `unionfuse run`: a command on the merged view, as root or rootless, in its own user, mount,
//! pid, uts and ipc namespaces.
//!
//! Processes of a run, and the namespaces they live in:
//! - the runner (this process) enters a new user namespace (rootless only: the caller becomes
//!   root inside) and a new mount namespace A, where the daemon mounts the union on a scratch
//!   directory. It then waits for the init, forwarding the signals it is sent.
//! - the daemon, forked in A before anything else: it keeps the host's root, so the layers stay
//!   reachable by their host paths. It dies with the runner (SIGTERM: unmount, clean up).
//! - the init, pid 1 of a new pid namespace, in a mount namespace B of its own (`pivot_root`
//!   would otherwise move the runner and the daemon too): it mounts /proc, /dev, /sys and /tmp
//!   in the union, binds what was asked, pivots into the union, detaches the old root, starts
//!   the command, reaps zombies and forwards signals. Its exit ends every process of the run.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use crate::mount::{self, MountRequest, Result, UserError, bail};
use crate::sys;

/// Exit status when the runner itself fails and the command never ran (as docker has it).
pub const RUNNER_FAILED: u8 = 125;
/// The command was found but could not be executed.
const CANNOT_EXEC: i32 = 126;
/// The command was not found.
const NOT_FOUND: i32 = 127;

/// The signals passed on to the command when they are sent to the runner.
const FORWARDED: [i32; 7] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub src: PathBuf,
    /// Absolute, inside the container.
    pub dst: PathBuf,
    pub read_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Net {
    /// The caller's network namespace.
    #[default]
    Host,
    /// A new network namespace with only a loopback interface.
    None,
}

#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    pub lower_spec: OsString,
    pub upper: Option<PathBuf>,
    pub hostname: Option<String>,
    pub setenv: Vec<(OsString, OsString)>,
    pub chdir: Option<PathBuf>,
    pub binds: Vec<Bind>,
    pub net: Net,
    pub command: Vec<OsString>,
}

/// `SRC:DST` (or `SRC` alone for the same path inside); `\:` escapes a colon.
pub fn parse_bind(spec: &OsStr, read_only: bool) -> Result<Bind> {
    let parts = mount::split_layers(spec)
        .map_err(|_| UserError(format!("bind '{}': empty path", spec.to_string_lossy())))?;
    let (src, dst) = match parts.as_slice() {
        [s] => (s.clone(), s.clone()),
        [s, d] => (s.clone(), d.clone()),
        _ => bail!(
            "bind '{}': expected SRC:DST (write '\\:' for a ':' in a path)",
            spec.to_string_lossy()
        ),
    };
    if !dst.is_absolute() {
        bail!(
            "bind '{}': the destination must be an absolute path",
            spec.to_string_lossy()
        );
    }
    Ok(Bind {
        src,
        dst,
        read_only,
    })
}

/// `K=V`.
pub fn parse_env(spec: &OsStr) -> Result<(OsString, OsString)> {
    let b = spec.as_bytes();
    match b.iter().position(|&c| c == b'=') {
        Some(i) if i > 0 => Ok((
            OsStr::from_bytes(&b[..i]).to_owned(),
            OsStr::from_bytes(&b[i + 1..]).to_owned(),
        )),
        _ => bail!("--setenv '{}': expected K=V", spec.to_string_lossy()),
    }
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn cstring(b: &[u8]) -> Result<CString> {
    CString::new(b).map_err(|_| UserError("a path or argument contains a NUL byte".into()))
}

fn path_c(p: &Path) -> Result<CString> {
    cstring(p.as_os_str().as_bytes())
}

/// Runs the request; returns the command's exit status (128+N when killed by signal N).
pub fn run(req: RunRequest) -> Result<i32> {
    if req.command.is_empty() {
        bail!("no command given (unionfuse run --lower L [--upper U] -- COMMAND [ARG...])");
    }
    let lowers = mount::split_layers(&req.lower_spec)?;
    for l in &lowers {
        mount::check_dir("lower layer", l, Some(&req.lower_spec))?;
    }
    let mut binds = Vec::new();
    for b in &req.binds {
        let src = std::fs::canonicalize(&b.src)
            .map_err(|e| UserError(format!("bind source '{}': {e}", b.src.display())))?;
        binds.push(Bind { src, ..b.clone() });
    }
    // Parents before what is mounted inside them.
    binds.sort_by_key(|b| b.dst.components().count());
    if let Some(h) = &req.hostname
        && (h.is_empty() || h.len() > 64)
    {
        bail!("--hostname '{h}': must be 1 to 64 bytes");
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        bail!(
            "cannot open /dev/fuse: {e} (FUSE is needed: load the fuse module, and make /dev/fuse 0666 for users)"
        );
    }
    let rootless = sys::geteuid() != 0;

    let scratch = Scratch::create(req.upper.is_none())?;
    let r = run_in(&req, &lowers, &binds, rootless, &scratch);
    // The daemon removes the scratch directory once it has unmounted; this is for failures
    // before the daemon started, and for a daemon that had to be killed.
    if scratch.path.exists() {
        let _ = std::fs::remove_dir_all(&scratch.path);
    }
    r
}

/// The run's own directory: the union's mountpoint, and the temporary upper if none is given.
struct Scratch {
    path: PathBuf,
    temp_upper: bool,
}

impl Scratch {
    fn create(temp_upper: bool) -> Result<Scratch> {
        let tmpl = std::env::temp_dir().join("unionfuse-run.XXXXXX");
        let mut t = path_c(&tmpl)?.into_bytes_with_nul();
        if unsafe { libc::mkdtemp(t.as_mut_ptr().cast()) }.is_null() {
            bail!(
                "cannot create a directory in {}: {}",
                tmpl.parent().unwrap().display(),
                errno()
            );
        }
        t.pop();
        let path = PathBuf::from(OsString::from_vec(t));
        let s = Scratch { path, temp_upper };
        let mk = |n: &str| {
            std::fs::create_dir(s.path.join(n))
                .map_err(|e| UserError(format!("{}: {e}", s.path.join(n).display())))
        };
        mk("root")?;
        if temp_upper {
            mk("upper")?;
        }
        Ok(s)
    }
    fn root(&self) -> PathBuf {
        self.path.join("root")
    }
}

fn run_in(
    req: &RunRequest,
    lowers: &[PathBuf],
    binds: &[Bind],
    rootless: bool,
    scratch: &Scratch,
) -> Result<i32> {
    let full_ids = if rootless {
        enter_user_namespace()?
    } else {
        true
    };
    unshare(libc::CLONE_NEWNS, "a mount namespace")?;
    make_private("/")?;

    let upper = match &req.upper {
        Some(u) => Some(u.clone()),
        None => Some(scratch.path.join("upper")),
    };
    let mreq = MountRequest {
        lowers: lowers.to_vec(),
        upper,
        mountpoint: scratch.root(),
        allow_other: Some(true),
        // A throw-away upper needs no flush to disk.
        volatile: scratch.temp_upper,
        private: true,
        remove_after: Some(scratch.path.clone()),
        ..Default::default()
    };
    let checked = mount::validate(&mreq, Some(&req.lower_spec))?;
    let daemon = mount::mount(checked)?.expect("a background mount has a daemon");

    let mut flags = libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
    if req.net == Net::None {
        flags |= libc::CLONE_NEWNET;
    }
    let r = unshare(flags, "pid, uts, ipc and network namespaces")
        .and_then(|()| start_init(req, binds, scratch, full_ids));
    let code = match r {
        Ok((init, ns_ready)) => {
            // Once the init has a mount namespace of its own, this one (the daemon's) lets
            // go of the host's other mounts.
            let mut b = [0u8; 1];
            if matches!(std::fs::File::from(ns_ready).read(&mut b), Ok(1)) {
                drop_host_mounts(&scratch.root());
            }
            Ok(wait_forwarding(init))
        }
        Err(e) => Err(e),
    };
    stop_daemon(daemon);
    code
}

fn unshare(flags: i32, what: &str) -> Result<()> {
    if unsafe { libc::unshare(flags) } != 0 {
        let e = errno();
        if flags & libc::CLONE_NEWUSER != 0 {
            let why = match e.raw_os_error() {
                Some(libc::ENOSPC) => {
                    " (user namespaces are disabled or used up: see /proc/sys/user/max_user_namespaces)"
                }
                Some(libc::EPERM) => {
                    " (unprivileged user namespaces are disabled: see the sysctl kernel.unprivileged_userns_clone, or a security module's policy)"
                }
                _ => "",
            };
            bail!("cannot create a user namespace: {e}{why}");
        }
        bail!("cannot create {what}: {e}");
    }
    Ok(())
}

fn make_private(path: &str) -> Result<()> {
    let p = cstring(path.as_bytes())?;
    let r = unsafe {
        libc::mount(
            std::ptr::null(),
            p.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if r != 0 {
        bail!("cannot make the mounts of {path} private: {}", errno());
    }
    Ok(())
}

// ---- rootless: the user namespace and its id maps ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IdRange {
    start: u32,
    count: u32,
}

/// The first range `/etc/subuid` (or subgid) grants a user, by name or by number.
fn subid_range(text: &str, name: Option<&str>, id: u32) -> Option<IdRange> {
    let id = id.to_string();
    text.lines().find_map(|l| {
        let mut f = l.trim().split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        if who != id && Some(who) != name {
            return None;
        }
        let r = IdRange {
            start: start.parse().ok()?,
            count: count.parse().ok()?,
        };
        (r.count > 0).then_some(r)
    })
}

fn user_name(uid: u32) -> Option<String> {
    let pw = unsafe { libc::getpwuid(uid) };
    if pw.is_null() {
        return None;
    }
    let name = unsafe { CStr::from_ptr((*pw).pw_name) };
    Some(name.to_string_lossy().into_owned())
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/sbin".into(), "/bin".into()])
        .map(|d| d.join(name))
        .find(|p| {
            let c = path_c(p).unwrap_or_default();
            unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
        })
}

/// Enters a new user namespace where the caller is root. With a subordinate id range and the
/// setuid helpers, the whole range is mapped (ids 1.. inside); otherwise only the caller's own
/// id, which is said once on stderr. Returns whether the full range is mapped.
fn enter_user_namespace() -> Result<bool> {
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let name = user_name(uid);
    let read = |f: &str| std::fs::read_to_string(f).unwrap_or_default();
    let ranges = (
        subid_range(&read("/etc/subuid"), name.as_deref(), uid),
        subid_range(&read("/etc/subgid"), name.as_deref(), gid),
    );
    let tools = (find_program("newuidmap"), find_program("newgidmap"));
    let helper = match (ranges, &tools) {
        ((Some(ur), Some(gr)), (Some(nu), Some(ng))) => {
            let me = std::process::id();
            let (rd, wr) = mount::pipe().map_err(|e| UserError(format!("pipe: {e}")))?;
            match unsafe { libc::fork() } {
                -1 => bail!("fork: {}", errno()),
                0 => {
                    drop(wr);
                    let mut go = [0u8; 1];
                    let ok = std::fs::File::from(rd).read(&mut go).ok() == Some(1)
                        && map_ids(nu, me, uid, ur)
                        && map_ids(ng, me, gid, gr);
                    unsafe { libc::_exit(if ok { 0 } else { 1 }) };
                }
                pid => {
                    drop(rd);
                    Some((pid, wr))
                }
            }
        }
        _ => None,
    };
    let entered = unshare(libc::CLONE_NEWUSER, "a user namespace");
    let mut full = false;
    if let Some((pid, wr)) = helper {
        if entered.is_ok() {
            let _ = std::fs::File::from(wr.try_clone().expect("dup")).write_all(b"1");
        }
        drop(wr);
        full = wait_status(pid) == 0 && entered.is_ok();
    }
    entered?;
    let map_empty = |f: &str| read(f).trim().is_empty();
    if map_empty("/proc/self/uid_map") {
        std::fs::write("/proc/self/uid_map", format!("0 {uid} 1\n"))
            .map_err(|e| UserError(format!("cannot write the uid map: {e}")))?;
    }
    if map_empty("/proc/self/gid_map") {
        let _ = std::fs::write("/proc/self/setgroups", "deny");
        std::fs::write("/proc/self/gid_map", format!("0 {gid} 1\n"))
            .map_err(|e| UserError(format!("cannot write the gid map: {e}")))?;
    }
    if full {
        // Supplementary groups from outside are unmapped inside: drop them.
        unsafe { libc::setgroups(0, std::ptr::null()) };
    } else {
        let who = name.unwrap_or_else(|| uid.to_string());
        let why = match (ranges, &tools) {
            ((None, _), _) | ((_, None), _) => {
                format!("'{who}' has no range in /etc/subuid and /etc/subgid")
            }
            (_, (None, _)) | (_, (_, None)) => {
                "newuidmap/newgidmap are missing (Debian: apt-get install uidmap)".to_string()
            }
            _ => "newuidmap/newgidmap failed".to_string(),
        };
        eprintln!(
            "unionfuse run: {why}; only your own ids are mapped (to root inside), so files cannot be given to other users"
        );
    }
    Ok(full)
}

fn map_ids(tool: &Path, pid: u32, own: u32, r: IdRange) -> bool {
    std::process::Command::new(tool)
        .args([pid, 0, own, 1, 1, r.start, r.count].map(|n| n.to_string()))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Waits for a child; its exit status, or 128+N when killed by signal N.
fn wait_status(pid: i32) -> i32 {
    let mut st = 0;
    loop {
        let r = unsafe { libc::waitpid(pid, &mut st, 0) };
        if r == pid {
            return decode_status(st);
        }
        if r < 0 && errno().raw_os_error() != Some(libc::EINTR) {
            return 255;
        }
    }
}

fn decode_status(st: i32) -> i32 {
    if libc::WIFEXITED(st) {
        libc::WEXITSTATUS(st)
    } else if libc::WIFSIGNALED(st) {
        128 + libc::WTERMSIG(st)
    } else {
        255
    }
}

// ---- the runner's side ----

fn signal_set(with_chld: bool) -> libc::sigset_t {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in FORWARDED {
            libc::sigaddset(&mut set, s);
        }
        if with_chld {
            libc::sigaddset(&mut set, libc::SIGCHLD);
        }
        set
    }
}

/// Waits for the signals of `set`; a signal the kernel raised (a terminal's ^C or a window
/// change, which the command's process group gets anyway) is not passed on, one a process
/// sent is. Returns the signal's number and whether to forward it.
fn next_signal(set: &libc::sigset_t) -> (i32, bool) {
    loop {
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let s = unsafe { libc::sigwaitinfo(set, &mut info) };
        if s > 0 {
            return (s, info.si_code != libc::SI_KERNEL);
        }
    }
}

/// Forks the init. Returns its pid, and a pipe end that gets one byte once the init is in
/// its own mount namespace (or closes, if it never gets there).
fn start_init(
    req: &RunRequest,
    binds: &[Bind],
    scratch: &Scratch,
    full_ids: bool,
) -> Result<(i32, OwnedFd)> {
    let set = signal_set(true);
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    // The init watches the read end: it closes when the runner dies, whatever killed it.
    let (life_rd, life_wr) = mount::pipe().map_err(|e| UserError(format!("pipe: {e}")))?;
    let (ns_rd, ns_wr) = mount::pipe().map_err(|e| UserError(format!("pipe: {e}")))?;
    match unsafe { libc::fork() } {
        -1 => bail!("fork: {}", errno()),
        0 => {
            drop(life_wr);
            drop(ns_rd);
            let code = match init(req, binds, scratch, full_ids, life_rd, ns_wr) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("unionfuse run: {e}");
                    RUNNER_FAILED as i32
                }
            };
            unsafe { libc::_exit(code) };
        }
        pid => {
            drop(life_rd);
            drop(ns_wr);
            // Kept open (leaked on purpose) until this process exits.
            std::mem::forget(life_wr);
            Ok((pid, ns_rd))
        }
    }
}

/// The runner's mount namespace, which the daemon shares, began as a copy of the host's,
/// and a copy holds every mount in it: another FUSE daemon could not end when its mount was
/// unmounted on the host, an overlay's upper could not be mounted again. Once the init has
/// its own namespace, every mount here is detached but `/`, those the union's mountpoint
/// lies on, the union itself, `/proc` and `/dev` (the daemon works through the fds it
/// holds). Rootless, the copies are locked to the user namespace and stay.
fn drop_host_mounts(union_mp: &Path) {
    for _ in 0..8 {
        let mut victims: Vec<PathBuf> = mount::mount_table()
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| {
                !union_mp.starts_with(p) && p != Path::new("/proc") && p != Path::new("/dev")
            })
            .collect();
        victims.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        victims.dedup();
        let mut detached = false;
        for p in victims {
            let Ok(c) = path_c(&p) else { continue };
            detached |= unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0;
        }
        if !detached {
            return;
        }
    }
}

fn wait_forwarding(init: i32) -> i32 {
    let set = signal_set(true);
    loop {
        let mut st = 0;
        let r = unsafe { libc::waitpid(init, &mut st, libc::WNOHANG) };
        if r == init {
            return decode_status(st);
        }
        if r < 0 {
            return 255;
        }
        let (sig, forward) = next_signal(&set);
        if forward && sig != libc::SIGCHLD {
            unsafe { libc::kill(init, sig) };
        }
    }
}

/// Ends the daemon (it unmounts, then removes the scratch directory) and waits for it.
fn stop_daemon(pid: i32) {
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let mut st = 0;
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if r != 0 {
            return;
        }
        if Instant::now() > end {
            eprintln!("unionfuse run: the daemon (pid {pid}) did not exit; killing it");
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut st, 0);
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---- the init's side: pid 1 inside ----

fn init(
    req: &RunRequest,
    binds: &[Bind],
    scratch: &Scratch,
    full_ids: bool,
    life: OwnedFd,
    ns_ready: OwnedFd,
) -> Result<i32> {
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::prctl(libc::PR_SET_NAME, c"unionfuse-init".as_ptr());
    }
    let mut pfd = libc::pollfd {
        fd: life.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    if unsafe { libc::poll(&mut pfd, 1, 0) } != 0 {
        // The runner died before the death signal was armed.
        return Ok(RUNNER_FAILED as i32);
    }
    if let Some(h) = &req.hostname
        && unsafe { libc::sethostname(h.as_ptr().cast(), h.len()) } != 0
    {
        bail!("cannot set the hostname: {}", errno());
    }
    if req.net == Net::None {
        loopback_up()?;
    }
    unshare(libc::CLONE_NEWNS, "the container's mount namespace")?;
    make_private("/")?;
    // The runner's namespace may now let go of what this one still needs (binds, /dev).
    let _ = std::fs::File::from(ns_ready).write_all(b"1");
    let root = sys::open_dir_path(&scratch.root())
        .map_err(|e| UserError(format!("the union's root: {e}")))?;
    setup_mounts(root.as_fd(), &scratch.root(), binds, full_ids)?;
    pivot_into(root.as_fd())?;
    drop(root);
    let dir = req.chdir.clone().unwrap_or_else(|| PathBuf::from("/"));
    let dir = Path::new("/").join(dir);
    if let Err(e) = std::env::set_current_dir(&dir) {
        bail!("--chdir '{}': {e}", dir.display());
    }
    let env = environment(req)?;
    let argv = req
        .command
        .iter()
        .map(|a| cstring(a.as_bytes()))
        .collect::<Result<Vec<_>>>()?;
    let set = signal_set(true);
    let child = match unsafe { libc::fork() } {
        -1 => bail!("fork: {}", errno()),
        0 => exec_command(&argv, &env),
        pid => pid,
    };
    drop(life);
    Ok(reap_until(child, &set))
}

/// The init's loop: reaps every child (orphans land here), passes signals on to the command,
/// and ends with the command's status. Its exit kills whatever else still runs inside.
fn reap_until(child: i32, set: &libc::sigset_t) -> i32 {
    loop {
        loop {
            let mut st = 0;
            let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
            if r == child {
                return decode_status(st);
            }
            if r <= 0 {
                break;
            }
        }
        let (sig, forward) = next_signal(set);
        if forward && sig != libc::SIGCHLD {
            unsafe { libc::kill(child, sig) };
        }
    }
}

fn environment(req: &RunRequest) -> Result<Vec<CString>> {
    let mut vars: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    for (k, v) in &req.setenv {
        vars.retain(|(x, _)| x != k);
        vars.push((k.clone(), v.clone()));
    }
    if !vars.iter().any(|(k, _)| k == "PATH") {
        vars.push((
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ));
    }
    vars.iter()
        .map(|(k, v)| {
            let mut b = k.as_bytes().to_vec();
            b.push(b'=');
            b.extend_from_slice(v.as_bytes());
            cstring(&b)
        })
        .collect()
}

/// In the command's process: default signal handling, then exec, searching the container's
/// PATH. Never returns.
fn exec_command(argv: &[CString], env: &[CString]) -> ! {
    unsafe {
        let empty: libc::sigset_t = std::mem::zeroed();
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        // Rust ignores SIGPIPE; an ignored signal would stay ignored across exec.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let mut av: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    av.push(std::ptr::null());
    let mut ev: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    ev.push(std::ptr::null());
    let name = argv[0].as_bytes();
    let candidates: Vec<CString> = if name.contains(&b'/') {
        vec![argv[0].clone()]
    } else {
        let path = env
            .iter()
            .find_map(|e| e.as_bytes().strip_prefix(b"PATH="))
            .unwrap_or(b"/usr/bin:/bin");
        path.split(|&c| c == b':')
            .map(|d| {
                let d = if d.is_empty() { b".".as_slice() } else { d };
                let mut p = d.to_vec();
                p.push(b'/');
                p.extend_from_slice(name);
                CString::new(p).unwrap_or_default()
            })
            .collect()
    };
    let mut err = libc::ENOENT;
    for c in &candidates {
        unsafe { libc::execve(c.as_ptr(), av.as_ptr(), ev.as_ptr()) };
        let e = errno().raw_os_error().unwrap_or(libc::ENOENT);
        // As execvp: a later directory may still hold a runnable file.
        if e != libc::ENOENT && e != libc::ENOTDIR {
            err = e;
        }
    }
    let shown = String::from_utf8_lossy(name);
    let (code, msg) = if err == libc::ENOENT {
        (NOT_FOUND, format!("'{shown}': command not found"))
    } else {
        (
            CANNOT_EXEC,
            format!("'{shown}': {}", std::io::Error::from_raw_os_error(err)),
        )
    };
    eprintln!("unionfuse run: {msg}");
    unsafe { libc::_exit(code) }
}

// ---- the container's mounts ----

fn open_how(flags: i32, resolve: u64) -> libc::open_how {
    let mut h: libc::open_how = unsafe { std::mem::zeroed() };
    h.flags = (flags | libc::O_CLOEXEC) as u64;
    h.resolve = resolve;
    h
}

/// Opens `path` (relative to the union's root) as an `O_PATH` fd, resolving every symlink as
/// if the union were `/`: nothing inside can point a mount outside of it.
fn open_in_root(root: BorrowedFd<'_>, path: &Path) -> std::io::Result<OwnedFd> {
    let rel: PathBuf = path
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    let rel = if rel.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        rel
    };
    let c = CString::new(rel.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let how = open_how(
        libc::O_PATH,
        libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    );
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(errno());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Opens a mount target inside the union, creating what is missing (directories, and the
/// last component as a directory or an empty file) in the union, that is in its upper.
fn target(root: BorrowedFd<'_>, path: &Path, dir: bool) -> Result<OwnedFd> {
    let fail = |e: std::io::Error| UserError(format!("'{}' in the union: {e}", path.display()));
    let comps: Vec<&OsStr> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    for i in 1..=comps.len() {
        let prefix: PathBuf = comps[..i].iter().collect();
        match open_in_root(root, &prefix) {
            Ok(_) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(fail(e)),
        }
        let parent =
            open_in_root(root, &comps[..i - 1].iter().collect::<PathBuf>()).map_err(fail)?;
        // An O_PATH fd cannot be a base for creation: reopen the directory through /proc.
        let parent = sys::reopen(parent.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)
            .map_err(|e| fail(std::io::Error::from_raw_os_error(e.0)))?;
        let name = cstring(comps[i - 1].as_bytes())?;
        let r = if i < comps.len() || dir {
            sys::mkdirat(parent.as_fd(), &name, 0o755).map(drop)
        } else {
            sys::openat(
                parent.as_fd(),
                &name,
                libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_WRONLY,
                0o644,
            )
            .map(drop)
        };
        match r {
            Ok(()) | Err(sys::Errno(libc::EEXIST)) => {}
            Err(e) => return Err(fail(std::io::Error::from_raw_os_error(e.0))),
        }
    }
    open_in_root(root, path).map_err(fail)
}

fn fd_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

fn do_mount(
    src: &str,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> std::io::Result<()> {
    let c = |s: &str| CString::new(s).map_err(std::io::Error::other);
    let src = c(src)?;
    let target = c(target)?;
    let fstype = fstype.map(c).transpose()?;
    let data = data.map(c).transpose()?;
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    };
    if r != 0 { Err(errno()) } else { Ok(()) }
}

fn setup_mounts(
    root: BorrowedFd<'_>,
    root_path: &Path,
    binds: &[Bind],
    full_ids: bool,
) -> Result<()> {
    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    let mnt = |what: &str, r: std::io::Result<()>| {
        r.map_err(|e| UserError(format!("cannot mount {what} in the container: {e}")))
    };

    let proc_ = target(root, Path::new("proc"), true)?;
    mnt(
        "/proc",
        do_mount(
            "proc",
            &fd_path(proc_.as_fd()),
            Some("proc"),
            nosuid_nodev | libc::MS_NOEXEC,
            None,
        ),
    )?;

    // sysfs itself only where this user namespace owns the network namespace (root, or
    // --net none); otherwise the host's, bound read-only.
    let sys_ = target(root, Path::new("sys"), true)?;
    let ro = libc::MS_RDONLY | nosuid_nodev | libc::MS_NOEXEC;
    if do_mount("sysfs", &fd_path(sys_.as_fd()), Some("sysfs"), ro, None).is_err() {
        mnt(
            "/sys",
            do_mount(
                "/sys",
                &fd_path(sys_.as_fd()),
                None,
                libc::MS_BIND | libc::MS_REC,
                None,
            ),
        )?;
        let top =
            open_in_root(root, Path::new("sys")).map_err(|e| UserError(format!("/sys: {e}")))?;
        sys::make_tree_readonly(top.as_fd())
            .map_err(|e| UserError(format!("cannot make /sys read-only: {e}")))?;
    }

    let dev = target(root, Path::new("dev"), true)?;
    mnt(
        "/dev",
        do_mount(
            "tmpfs",
            &fd_path(dev.as_fd()),
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("mode=755,size=65536k"),
        ),
    )?;
    // A fresh tmpfs: no symlinks in it yet, plain paths are safe.
    let d = root_path.join("dev");
    let io = |what: &str, r: std::io::Result<()>| {
        r.map_err(|e| UserError(format!("/dev/{what} in the container: {e}")))
    };
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        let p = d.join(node);
        io(node, std::fs::File::create(&p).map(drop))?;
        let host = format!("/dev/{node}");
        io(
            node,
            do_mount(&host, &p.to_string_lossy(), None, libc::MS_BIND, None),
        )?;
    }
    io("pts", std::fs::create_dir(d.join("pts")))?;
    let mut pts = String::from("newinstance,ptmxmode=0666,mode=620");
    if full_ids {
        pts.push_str(",gid=5");
    }
    io(
        "pts",
        do_mount(
            "devpts",
            &d.join("pts").to_string_lossy(),
            Some("devpts"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some(&pts),
        ),
    )?;
    io("shm", std::fs::create_dir(d.join("shm")))?;
    io(
        "shm",
        do_mount(
            "tmpfs",
            &d.join("shm").to_string_lossy(),
            Some("tmpfs"),
            nosuid_nodev,
            Some("mode=1777"),
        ),
    )?;
    for (name, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        io(name, std::os::unix::fs::symlink(to, d.join(name)))?;
    }

    let tmp = target(root, Path::new("tmp"), true)?;
    mnt(
        "/tmp",
        do_mount(
            "tmpfs",
            &fd_path(tmp.as_fd()),
            Some("tmpfs"),
            nosuid_nodev,
            Some("mode=1777"),
        ),
    )?;

    for b in binds {
        let is_dir = b.src.is_dir();
        let t = target(root, &b.dst, is_dir)?;
        let src = b.src.to_string_lossy();
        mnt(
            &b.dst.display().to_string(),
            do_mount(
                &src,
                &fd_path(t.as_fd()),
                None,
                libc::MS_BIND | libc::MS_REC,
                None,
            ),
        )?;
        if b.read_only {
            let top = open_in_root(root, &b.dst)
                .map_err(|e| UserError(format!("{}: {e}", b.dst.display())))?;
            sys::make_tree_readonly(top.as_fd()).map_err(|e| {
                UserError(format!("cannot make {} read-only: {e}", b.dst.display()))
            })?;
        }
    }
    Ok(())
}

/// Makes the union `/`, and lets go of the old root entirely.
fn pivot_into(root: BorrowedFd<'_>) -> Result<()> {
    unsafe {
        if libc::fchdir(root.as_raw_fd()) != 0 {
            bail!("cannot enter the union: {}", errno());
        }
        // new_root and put_old both ".": the old root ends up stacked under the new one,
        // where it is detached at once. No directory needs to exist for it.
        if libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0 {
            bail!("pivot_root: {}", errno());
        }
        if libc::umount2(c".".as_ptr(), libc::MNT_DETACH) != 0 {
            bail!("cannot detach the old root: {}", errno());
        }
        if libc::chdir(c"/".as_ptr()) != 0 {
            bail!("chdir /: {}", errno());
        }
    }
    Ok(())
}

/// In a new network namespace: `lo` up, as every program expects.
fn loopback_up() -> Result<()> {
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            bail!("socket: {}", errno());
        }
        let s = OwnedFd::from_raw_fd(s);
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) != 0 {
            bail!("loopback: {}", errno());
        }
        ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) != 0 {
            bail!("cannot bring up the loopback interface: {}", errno());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subid_ranges_match_by_name_or_id() {
        let t = "alice:100000:65536\n1001:200000:1000\nbob:300000:0\n";
        assert_eq!(
            subid_range(t, Some("alice"), 1000),
            Some(IdRange {
                start: 100000,
                count: 65536
            })
        );
        assert_eq!(
            subid_range(t, Some("carol"), 1001),
            Some(IdRange {
                start: 200000,
                count: 1000
            })
        );
        assert_eq!(subid_range(t, Some("bob"), 1002), None);
    }

    #[test]
    fn binds_and_env_parse() {
        assert_eq!(
            parse_bind(OsStr::new("/a:/b"), true).unwrap(),
            Bind {
                src: "/a".into(),
                dst: "/b".into(),
                read_only: true
            }
        );
        assert_eq!(
            parse_bind(OsStr::new("/a"), false).unwrap().dst,
            PathBuf::from("/a")
        );
        assert!(parse_bind(OsStr::new("/a:b"), false).is_err());
        assert!(parse_bind(OsStr::new("/a:/b:/c"), false).is_err());
        assert_eq!(
            parse_env(OsStr::new("K=a=b")).unwrap(),
            ("K".into(), "a=b".into())
        );
        assert!(parse_env(OsStr::new("=v")).is_err());
    }
}
