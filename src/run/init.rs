//! The init's side of a run: pid 1 of the container's pid namespace. It sets up the
//! container's root, starts the command, reaps orphans and passes signals on.

use std::ffi::{CString, OsStr, OsString};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use std::collections::HashSet;

use caps::{CapSet, Capability};

use super::profile;
use super::rootfs::{self, RealHost};
use super::{
    Bind, CANNOT_EXEC, NOT_FOUND, Net, RUNNER_FAILED, RunRequest, Runtime, Scratch, cstring,
    make_private, pipe, signal_set, unshare,
};
use crate::error::{Result, UserError, bail};
use crate::sys;

/// Forks the init. Returns its pid, and a pipe end that gets one byte once the init is in
/// its own mount namespace (or closes, if it never gets there).
pub(super) fn start(
    req: &RunRequest,
    rt: &Runtime,
    typed: &[u8],
    binds: &[Bind],
    scratch: &Scratch,
    full_ids: bool,
) -> Result<(i32, OwnedFd)> {
    signal_set(true).block();
    // The init watches the read end: it closes when the runner dies, whatever killed it.
    let (life_rd, life_wr) = pipe()?;
    let (ns_rd, ns_wr) = pipe()?;
    match sys::fork() {
        Err(e) => bail!("fork: {e}"),
        Ok(sys::Forked::Child) => {
            drop(life_wr);
            drop(ns_rd);
            let code = match init(req, rt, typed, binds, scratch, full_ids, life_rd, ns_wr) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("unionfuse run: {e}");
                    RUNNER_FAILED as i32
                }
            };
            sys::exit_now(code);
        }
        Ok(sys::Forked::Parent(pid)) => {
            drop(life_rd);
            drop(ns_wr);
            // Kept open (leaked on purpose) until this process exits.
            std::mem::forget(life_wr);
            Ok((pid, ns_rd))
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn init(
    req: &RunRequest,
    rt: &Runtime,
    typed: &[u8],
    binds: &[Bind],
    scratch: &Scratch,
    full_ids: bool,
    life: OwnedFd,
    ns_ready: OwnedFd,
) -> Result<i32> {
    sys::set_parent_death_signal(libc::SIGKILL);
    sys::set_process_name(c"unionfuse-init");
    // The command's environment is read from this process's own before that is emptied:
    // the init shows a command line of its own, never the runner's arguments (`-e K=V`)
    // nor the caller's environment.
    let mut env = environment(req)?;
    if let Err(e) = sys::set_command_line(b"unionfuse-init") {
        bail!("cannot hide the runner's command line from the container: {e}");
    }
    if sys::poll_ready(life.as_fd()) {
        // The runner died before the death signal was armed.
        return Ok(RUNNER_FAILED as i32);
    }
    if let Some(h) = &req.hostname
        && let Err(e) = sys::sethostname(h)
    {
        bail!("cannot set the hostname: {e}");
    }
    if req.net == Net::None {
        sys::loopback_up()
            .map_err(|e| UserError(format!("cannot bring up the loopback interface: {e}")))?;
    }
    unshare(libc::CLONE_NEWNS, "the container's mount namespace")?;
    make_private()?;
    let root = sys::open_dir_path(&scratch.root())
        .map_err(|e| UserError(format!("the union's root: {e}")))?;
    let mut host = RealHost::new(root, scratch.root());
    rootfs::setup(&mut host, binds, full_ids, !rt.profile.privileged)?;
    host.pivot()?;
    drop(host);
    let dir = req.chdir.clone().unwrap_or_else(|| PathBuf::from("/"));
    let dir = Path::new("/").join(dir);
    if let Err(e) = std::env::set_current_dir(&dir) {
        bail!("--chdir '{}': {e}", dir.display());
    }
    let ids = match &req.user {
        Some(u) => Some(resolve_user(u)?),
        None => None,
    };
    let home_given = req.setenv.iter().any(|(k, _)| k == "HOME");
    if let Some((_, _, Some(home))) = &ids
        && !home_given
    {
        env.retain(|e| !e.as_bytes().starts_with(b"HOME="));
        env.push(cstring(OsStr::new(&format!("HOME={home}")))?);
    }
    let argv = req
        .command
        .iter()
        .map(|a| cstring(a))
        .collect::<Result<Vec<_>>>()?;
    let filters = rt.profile.programs()?;
    let set = signal_set(true);
    let pty = if req.tty == Some(true) {
        Some(terminal(ids.as_ref().map(|(uid, _, _)| *uid))?)
    } else {
        None
    };
    profile::confine(
        &mut RealConfine {
            filters: &filters,
            cgroups: &rt.cgroup_procs,
        },
        &rt.profile,
    )?;
    // The container is ready: the runner's namespace may let go of what this one still
    // needed (binds, /dev), and `exec` may enter it.
    let _ = std::fs::File::from(ns_ready).write_all(b"1");
    let child = match sys::fork() {
        Err(e) => bail!("fork: {e}"),
        Ok(sys::Forked::Child) => command_process(
            "run",
            pty.as_ref().map(|(_, t)| t.as_fd()),
            || Ok(()),
            ids.as_ref().map(|(u, g, _)| (*u, *g)),
            &argv,
            &env,
        ),
        Ok(sys::Forked::Parent(pid)) => pid,
    };
    drop(life);
    Ok(match pty {
        Some((master, term)) => {
            drop(term);
            relay_until(child, &set, master, typed)
        }
        None => reap_until(child, &set),
    })
}

/// The confinement's real calls, in the init just before it starts the command.
pub(super) struct RealConfine<'a> {
    pub(super) filters: &'a [Vec<libc::sock_filter>],
    /// `cgroup.procs` of the run's cgroups, opened by the runner on the host.
    pub(super) cgroups: &'a [std::sync::Arc<OwnedFd>],
}

impl profile::Confine for RealConfine<'_> {
    fn join_cgroups(&mut self) -> Result<()> {
        for fd in self.cgroups {
            sys::write(fd.as_raw_fd(), b"0")
                .map_err(|e| UserError(format!("cannot join the container's cgroup: {e}")))?;
        }
        Ok(())
    }

    fn bound(&mut self, keep: &HashSet<Capability>) -> Result<()> {
        let known = caps::runtime::thread_all_supported();
        for c in known.difference(keep) {
            caps::drop(None, CapSet::Bounding, *c)
                .map_err(|e| UserError(format!("cannot drop {c} from the bounding set: {e}")))?;
        }
        // Without the ambient set (an old kernel) there is nothing to clear.
        let _ = caps::clear(None, CapSet::Ambient);
        Ok(())
    }

    fn no_new_privs(&mut self) -> Result<()> {
        sys::no_new_privs().map_err(|e| UserError(format!("no-new-privileges: {e}")))
    }

    fn seccomp(&mut self) -> Result<()> {
        for f in self.filters {
            sys::seccomp_filter(f)
                .map_err(|e| UserError(format!("cannot install the seccomp filter: {e}")))?;
        }
        Ok(())
    }

    fn set_caps(&mut self, keep: &HashSet<Capability>) -> Result<()> {
        let known = caps::runtime::thread_all_supported();
        let keep: HashSet<Capability> = keep.intersection(&known).copied().collect();
        for set in [CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
            caps::set(None, set, &keep)
                .map_err(|e| UserError(format!("cannot set the capabilities: {e}")))?;
        }
        Ok(())
    }
}

/// The command's process, just forked (by the init for `run`, by `exec`): its terminal,
/// then `confine`, then its user, then the exec. Never returns; a step that fails ends it
/// with [`RUNNER_FAILED`], said as `unionfuse WHAT: ...`.
pub(super) fn command_process(
    what: &str,
    term: Option<std::os::fd::BorrowedFd<'_>>,
    confine: impl FnOnce() -> Result<()>,
    user: Option<(u32, u32)>,
    argv: &[CString],
    env: &[CString],
) -> ! {
    let fail = |msg: String| -> ! {
        eprintln!("unionfuse {what}: {msg}");
        sys::exit_now(RUNNER_FAILED as i32)
    };
    if let Some(t) = term
        && let Err(e) = take_terminal(t)
    {
        fail(format!("cannot give the command its terminal: {e}"));
    }
    if let Err(e) = confine() {
        fail(e.to_string());
    }
    if let Some((uid, gid)) = user
        && let Err(e) = sys::become_user(uid, gid)
    {
        fail(format!("cannot become {uid}:{gid}: {e}"));
    }
    exec_command(argv, env)
}

/// A terminal of the container's devpts for the command (given to its user, as a login
/// does), sized as the caller's: (master, terminal).
pub(super) fn terminal(uid: Option<u32>) -> Result<(OwnedFd, OwnedFd)> {
    let (master, term, _) =
        sys::open_pty().map_err(|e| UserError(format!("cannot open a terminal inside: {e}")))?;
    if let Some(uid) = uid {
        let _ = sys::fchown(term.as_fd(), uid, u32::MAX);
    }
    let size = sys::window_size(0).unwrap_or([24, 80, 0, 0]);
    let _ = sys::set_window_size(master.as_fd(), size);
    Ok((master, term))
}

/// In the command's process: a session of its own whose controlling terminal is `term`,
/// which becomes its standard input, output and error.
fn take_terminal(term: std::os::fd::BorrowedFd<'_>) -> Result<()> {
    sys::setsid();
    sys::set_controlling_terminal(term)
        .and_then(|()| (0..3).try_for_each(|fd| sys::dup_onto(term, fd)))
        .map_err(|e| UserError(e.to_string()))
}

/// [`reap_until`] for a command on a terminal of its own: also copies what the caller types
/// to the terminal and what the command writes there to the caller's standard output, and
/// passes window size changes on (the kernel then tells the command with SIGWINCH).
/// `typed`: what the caller typed before the relay began, passed on first.
pub(super) fn relay_until(child: i32, set: &sys::SigSet, master: OwnedFd, typed: &[u8]) -> i32 {
    let Ok(sfd) = set.signal_fd() else {
        return reap_until(child, set);
    };
    let m = master.as_raw_fd();
    let _ = sys::set_nonblocking(master.as_fd());
    let (mut stdin_open, mut master_open) = (true, true);
    let mut to_master: Vec<u8> = typed.to_vec();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut fds = vec![(sfd.as_raw_fd(), libc::POLLIN)];
        if master_open {
            let out = if to_master.is_empty() {
                0
            } else {
                libc::POLLOUT
            };
            fds.push((m, libc::POLLIN | out));
        }
        // Typed input waits while the command does not read what came before.
        let reading = stdin_open && to_master.len() < buf.len();
        if reading {
            fds.push((0, libc::POLLIN));
        }
        let Ok(rev) = sys::poll(&fds, -1) else {
            return reap_until(child, set);
        };
        if rev[0] != 0 {
            while let Some((sig, sent)) = sys::read_signal(sfd.as_fd()) {
                match sig {
                    libc::SIGCHLD => {
                        while let Ok(Some((pid, st))) = sys::waitpid(-1, libc::WNOHANG) {
                            if pid == child {
                                if master_open {
                                    drain(m, &mut buf);
                                }
                                return sys::decode_status(st);
                            }
                        }
                    }
                    libc::SIGWINCH => {
                        if let Some(size) = sys::window_size(0) {
                            let _ = sys::set_window_size(master.as_fd(), size);
                        }
                    }
                    _ if sent => {
                        let _ = sys::kill(child, sig);
                    }
                    _ => {}
                }
            }
        }
        if master_open {
            let r = rev[1];
            if r & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                match sys::read(m, &mut buf) {
                    Ok(0) => master_open = false,
                    Ok(n) => write_all(1, &buf[..n]),
                    Err(e) if e.0 == libc::EAGAIN => {}
                    // EIO: no process holds the terminal open any more.
                    Err(_) => master_open = false,
                }
            }
            if master_open && r & libc::POLLOUT != 0 {
                match sys::write(m, &to_master) {
                    Ok(n) => {
                        to_master.drain(..n);
                    }
                    Err(e) if e.0 == libc::EAGAIN => {}
                    Err(_) => to_master.clear(),
                }
            }
        }
        if reading && rev.last().is_some_and(|r| *r != 0) {
            let room = buf.len() - to_master.len();
            let mut chunk = vec![0u8; room];
            match sys::read(0, &mut chunk) {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => to_master.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// What the command wrote before it ended, to the caller.
fn drain(master: i32, buf: &mut [u8]) {
    while let Ok(n) = sys::read(master, buf) {
        if n == 0 {
            break;
        }
        write_all(1, &buf[..n]);
    }
}

/// All of `data` to `fd`; output nobody reads any more is dropped.
fn write_all(fd: i32, mut data: &[u8]) {
    while !data.is_empty() {
        match sys::write(fd, data) {
            Ok(0) | Err(_) => return,
            Ok(n) => data = &data[n..],
        }
    }
}

/// The init's loop: reaps every child (orphans land here), passes signals on to the command,
/// and ends with the command's status. Its exit kills whatever else still runs inside.
pub(super) fn reap_until(child: i32, set: &sys::SigSet) -> i32 {
    loop {
        while let Ok(Some((pid, st))) = sys::waitpid(-1, libc::WNOHANG) {
            if pid == child {
                return sys::decode_status(st);
            }
        }
        let (sig, forward) = set.wait_info();
        if forward && sig != libc::SIGCHLD {
            let _ = sys::kill(child, sig);
        }
    }
}

/// The command's environment: the caller's (a container of an image: only `TERM`), but
/// with the standard `PATH` and root's `HOME` (a rootless caller's `PATH` lacks the sbin
/// directories root needs inside), `HOSTNAME` when one is given; `--setenv` over all.
pub(super) fn environment(req: &RunRequest) -> Result<Vec<CString>> {
    let own = ["PATH", "HOME", "HOSTNAME"];
    let mut vars: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| {
            if req.clean_env {
                k == "TERM"
            } else {
                !own.iter().any(|o| k == o)
            }
        })
        .collect();
    vars.push((
        "PATH".into(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
    ));
    vars.push(("HOME".into(), "/root".into()));
    if let Some(h) = &req.hostname {
        vars.push(("HOSTNAME".into(), h.into()));
    }
    for (k, v) in &req.setenv {
        vars.retain(|(x, _)| x != k);
        vars.push((k.clone(), v.clone()));
    }
    vars.iter()
        .map(|(k, v)| {
            let mut b = k.clone();
            b.push("=");
            b.push(v);
            cstring(&b)
        })
        .collect()
}

/// `NAME`, `UID`, `NAME:GROUP` or `UID:GID`, by the container's /etc/passwd and
/// /etc/group (read after the pivot): the ids, and the user's home when it has an entry.
pub(super) fn resolve_user(spec: &str) -> Result<(u32, u32, Option<String>)> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let table = |f: &str| std::fs::read_to_string(f).unwrap_or_default();
    let passwd = table("/etc/passwd");
    let entry = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 6 && (f[0] == user || f[2] == user)).then(|| f.clone())
    });
    let uid = match (&entry, user.parse::<u32>()) {
        (Some(f), _) => f[2].parse().ok(),
        (None, Ok(n)) => Some(n),
        _ => None,
    }
    .ok_or_else(|| {
        UserError(format!(
            "--user '{spec}': no user '{user}' in the container"
        ))
    })?;
    let gid = match group {
        None => entry
            .as_ref()
            .and_then(|f| f[3].parse().ok())
            .unwrap_or(uid),
        Some(g) => {
            let groups = table("/etc/group");
            groups
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() >= 3 && f[0] == g)
                        .then(|| f[2].parse().ok())
                        .flatten()
                })
                .or_else(|| g.parse().ok())
                .ok_or_else(|| {
                    UserError(format!("--user '{spec}': no group '{g}' in the container"))
                })?
        }
    };
    Ok((uid, gid, entry.map(|f| f[5].to_string())))
}

/// In the command's process: default signal handling, then exec, searching the container's
/// PATH. Never returns.
fn exec_command(argv: &[CString], env: &[CString]) -> ! {
    sys::SigSet::of(&[]).set_mask();
    // Dispositions a runner started with (SIGINT ignored by a script's background job)
    // would stay across exec: the command gets the defaults.
    sys::default_signals(&super::FORWARDED);
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
        let e = sys::execve(c, argv, env).0;
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
    sys::exit_now(code)
}
