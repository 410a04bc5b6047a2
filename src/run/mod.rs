//! `unionfuse run`: a command on the merged view, as root or rootless, in its own user, mount,
//! pid, uts and ipc namespaces.
//!
//! Processes of a run, and the namespaces they live in:
//! - the runner (this process) stays in the host's namespaces and waits for the session,
//!   forwarding the signals it is sent; the session child enters a new user namespace
//!   (rootless only: the caller becomes root inside) and a new mount namespace A, where the
//!   daemon mounts the union on a scratch directory, then waits for the init.
//! - the daemon, forked in A before anything else: it keeps the host's root, so the layers stay
//!   reachable by their host paths. It dies with the runner (SIGTERM: unmount, clean up).
//! - the two above are made by a session child of the runner, which itself stays in the
//!   host's namespaces (it keeps the host's paths: the store on a mount of its own stays
//!   reachable); once the init is ready, the session's namespace lets go of the host's
//!   mounts (rootless: it moves onto a small root of its own and drops the host's tree).
//! - the init, pid 1 of a new pid namespace, in a mount namespace B of its own (`pivot_root`
//!   would otherwise move the runner and the daemon too): it mounts /proc, /dev, /sys and /tmp
//!   in the union, binds what was asked, pivots into the union, detaches the old root, starts
//!   the command, reaps zombies and forwards signals. Its exit ends every process of the run.

pub mod cgroup;
pub mod exec;
mod init;
pub mod profile;
mod rootfs;

use std::ffi::{CString, OsStr, OsString};
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::daemon;
use crate::error::{Result, UserError, bail};
use crate::request::{self, Checked, MountRequest};
use crate::sys;
use crate::union::UnionConfig;

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

/// What a run is asked for, made once by the front end and handed over as it is: the
/// layers as paths, the union's options parsed, the process's environment, binds, network,
/// user, confinement and limits as typed values.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    /// The read-only layers, top first.
    pub lowers: Vec<PathBuf>,
    /// The layers as the user typed them (`--lower`), for the hint of an unescaped ':' in
    /// a refusal.
    pub lowers_typed: Option<OsString>,
    pub upper: Option<PathBuf>,
    /// How the union is mounted (`-o`).
    pub union: UnionOptions,
    pub hostname: Option<String>,
    pub setenv: Vec<(OsString, OsString)>,
    /// Who the command runs as inside: `NAME`, `UID` or either with `:GROUP` (names from
    /// the container's /etc/passwd and /etc/group); root by default.
    pub user: Option<String>,
    /// Start from an empty environment (a container's: its image's and `setenv`), not the
    /// caller's.
    pub clean_env: bool,
    pub chdir: Option<PathBuf>,
    pub binds: Vec<Bind>,
    pub net: Net,
    pub command: Vec<OsString>,
    /// A terminal of the container's own for the command, relayed to the caller's
    /// (`None`: when standard input and output are the caller's terminal).
    pub tty: Option<bool>,
    /// Confinement and limits as asked for (checked when the run starts).
    pub host: HostOptions,
    /// Where the init's pid is written once the container is ready (and removed at its
    /// end): how `exec`, `top` and `stop` find a running container.
    pub pid_file: Option<PathBuf>,
}

/// What a run's `-o` lists give its union (the options of `unionfuse mount -o`).
#[derive(Debug, Clone, Default)]
pub struct UnionOptions {
    /// No flush to the upper (a throw-away upper is always so).
    pub volatile: bool,
    /// Show the owners and modes kept in `user.containers.override_stat` (layers extracted
    /// without the privilege to give them).
    pub override_stat: bool,
    /// Write OCI whiteouts even where kernel ones are possible.
    pub oci_whiteouts: bool,
    /// uid/gid mappings and squashing.
    pub ids: crate::union::ids::IdMap,
    pub threads: Option<usize>,
}

impl UnionOptions {
    /// `-o` lists, through the one option parser; the layers of a run are `--lower` and
    /// `--upper`, never options.
    pub fn parse(lists: &[String]) -> Result<UnionOptions> {
        let mut o = request::option_lists(lists, "--lower and --upper", false)?;
        let (u, g) = (o.req.squash_uid, o.req.squash_gid);
        o.req.union.ids.squash(u, g);
        Ok(UnionOptions {
            volatile: o.req.union.volatile,
            override_stat: o.req.union.override_stat,
            oci_whiteouts: o.req.union.oci_whiteouts,
            ids: o.req.union.ids,
            threads: o.req.threads,
        })
    }
}

/// What the runner makes of a request before anything starts: the profile the command is
/// confined by, and the cgroups it joins.
#[derive(Default)]
struct Runtime {
    profile: profile::Profile,
    /// `cgroup.procs` of the cgroups the command joins.
    cgroup_procs: Vec<std::sync::Arc<std::os::fd::OwnedFd>>,
}

/// The run's confinement and limits as its options give them: a container keeps them in
/// its record, so every start of it gets the same.
pub use crate::records::HostOptions;

impl HostOptions {
    pub fn profile(&self) -> Result<profile::Profile> {
        profile::Profile::from_options(
            self.privileged,
            &self.cap_add,
            &self.cap_drop,
            &self.security_opt,
        )
    }

    pub fn limits(&self) -> Result<cgroup::Limits> {
        cgroup::Limits::from_options(
            self.memory.as_deref(),
            self.memory_swap.as_deref(),
            self.cpus.as_deref(),
            self.cpu_shares,
            self.pids_limit,
        )
    }

    /// Every option checked, before anything starts.
    pub fn check(&self) -> Result<()> {
        self.profile().and(self.limits()).map(drop)
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The command's status, as [`sys::decode_status`] gives it.
    pub code: i32,
    /// The OOM killer killed a process of the run (its memory limit was reached).
    pub oom_killed: bool,
}

/// `SRC:DST` (or `SRC` alone for the same path inside); `\:` escapes a colon.
pub fn parse_bind(spec: &OsStr, read_only: bool) -> Result<Bind> {
    let parts = request::split_layers(spec)
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

/// The `K=V` lines of an env file (blank lines and `#` comments skipped), as `--env-file`.
pub fn read_env_file(path: &Path) -> Result<Vec<(OsString, OsString)>> {
    let text = std::fs::read(path)
        .map_err(|e| UserError(format!("--env-file '{}': {e}", path.display())))?;
    text.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty() && !l.starts_with(b"#"))
        .map(|l| parse_env(OsStr::from_bytes(l)))
        .collect()
}

/// Every `K=V` of a list.
pub fn parse_envs(specs: &[OsString]) -> Result<Vec<(OsString, OsString)>> {
    specs.iter().map(|e| parse_env(e)).collect()
}

/// A path or argument as the C calls take it.
fn cstring(s: &OsStr) -> Result<CString> {
    sys::cstr(s).map_err(|_| UserError("a path or argument contains a NUL byte".into()))
}

fn pipe() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    sys::pipe().map_err(|e| UserError(format!("pipe: {e}")))
}

/// Runs the request; returns the command's exit status (128+N when killed by signal N).
pub fn run(req: RunRequest) -> Result<i32> {
    run_outcome(req).map(|o| o.code)
}

/// [`run`], saying also whether the OOM killer ended it.
pub fn run_outcome(req: RunRequest) -> Result<Outcome> {
    if req.command.is_empty() {
        bail!("no command given (unionfuse run --lower L [--upper U] -- COMMAND [ARG...])");
    }
    if req.lowers.is_empty() {
        bail!("no lower layer given");
    }
    let lowers = req.lowers.clone();
    // A first run of a container makes its upper.
    if let Some(u) = &req.upper
        && !u.exists()
    {
        std::fs::create_dir_all(u)
            .map_err(|e| UserError(format!("--upper '{}': {e}", u.display())))?;
    }
    let mut binds = Vec::new();
    for b in &req.binds {
        let src = std::fs::canonicalize(&b.src)
            .map_err(|e| UserError(format!("bind source '{}': {e}", b.src.display())))?;
        binds.push(Bind { src, ..b.clone() });
    }
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
    if rootless {
        warn_unmapped_owners(&lowers);
    }

    let mut req = req;
    let mut rt = Runtime {
        profile: req.host.profile()?,
        ..Default::default()
    };
    let limits = req.host.limits()?;
    // An interactive run on a terminal: the command gets a terminal of its own.
    req.tty = Some(
        req.tty
            .unwrap_or_else(|| sys::is_foreground_terminal(0) && sys::is_terminal(1)),
    );
    // The cgroups are made on the host, before any namespace: rootless, only where the
    // tree is delegated to the caller.
    let name = req.hostname.clone().unwrap_or_else(|| "run".into());
    let mut cg = match cgroup::Cgroup::create(&name, &limits) {
        Ok(cg) => cg,
        Err(e) if rootless => {
            eprintln!("unionfuse run: {e}; running without limits");
            None
        }
        Err(e) => return Err(e),
    };
    if let Some(cg) = &cg {
        rt.cgroup_procs = cg.procs.clone();
    }
    let scratch = Scratch::create(req.upper.is_none())?;
    // The layers are checked once, here, before any namespace exists.
    let r = mount_request(&req, lowers, &scratch)
        .and_then(|m| run_in(&req, &rt, m, &binds, rootless, &scratch));
    rt.cgroup_procs.clear();
    let oom_killed = cg.as_ref().is_some_and(|c| c.oom_killed());
    if let Some(c) = cg.as_mut() {
        c.remove();
    }
    if oom_killed {
        eprintln!(
            "unionfuse run: out of memory: the kernel's OOM killer ended a process of the run (--memory {})",
            req.host.memory.as_deref().unwrap_or("?")
        );
    }
    // The daemon removes the scratch directory once it has unmounted; this is for failures
    // before the daemon started, and for a daemon that had to be killed.
    if scratch.path.exists() && std::fs::remove_dir_all(&scratch.path).is_err() {
        // Rootless, files the command made belong to subordinate ids: removed as root of a
        // user namespace with the caller's range.
        let p = scratch.path.clone();
        if let Err(e) = crate::userns::in_user_namespace(move || {
            std::fs::remove_dir_all(&p).map_err(|e| UserError(format!("{}: {e}", p.display())))
        }) {
            eprintln!(
                "unionfuse run: cannot remove {}: {e}",
                scratch.path.display()
            );
        }
    }
    r.map(|code| Outcome { code, oom_killed })
}

/// Rootless, a lower whose files belong to ids the run's user namespace cannot map shows
/// them as 65534 and cannot change them (a tree made by root): said once, with the fix.
/// Only the top of each layer is looked at.
fn warn_unmapped_owners(lowers: &[PathBuf]) {
    use std::os::unix::fs::MetadataExt;
    for l in lowers {
        let mut uids: Vec<u32> = std::fs::symlink_metadata(l)
            .map(|m| m.uid())
            .into_iter()
            .collect();
        if let Ok(rd) = std::fs::read_dir(l) {
            uids.extend(
                rd.flatten()
                    .take(64)
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.uid()),
            );
        }
        if let Some(u) = uids.into_iter().find(|&u| !crate::userns::maps_uid(u)) {
            eprintln!(
                "unionfuse run: lower layer '{}' holds files of uid {u}, which a rootless run cannot map: \
                 they show as 65534 and cannot be changed (have it owned by you, or import it into the \
                 image store, which keeps owners: tar -C '{}' -c . | unionfuse import /dev/stdin NAME)",
                l.display(),
                l.display()
            );
            return;
        }
    }
}

/// The run's own directory: the union's mountpoint, and the temporary upper if none is given.
struct Scratch {
    path: PathBuf,
    temp_upper: bool,
}

impl Scratch {
    fn create(temp_upper: bool) -> Result<Scratch> {
        let tmpl = std::env::temp_dir().join("unionfuse-run.XXXXXX");
        let path = sys::make_temp_dir(&tmpl).map_err(|e| {
            UserError(format!(
                "cannot create a directory in {}: {e}",
                std::env::temp_dir().display()
            ))
        })?;
        let s = Scratch { path, temp_upper };
        let mk = |n: &str| {
            std::fs::create_dir(s.path.join(n))
                .map_err(|e| UserError(format!("{}: {e}", s.path.join(n).display())))
        };
        mk("root")?;
        // Rootless, the root the run's own namespace moves onto (`leave_host_tree`).
        mk("ns")?;
        if temp_upper {
            mk("upper")?;
        }
        Ok(s)
    }
    fn root(&self) -> PathBuf {
        self.path.join("root")
    }
}

/// The union of a run, on its scratch directory, checked.
fn mount_request(req: &RunRequest, lowers: Vec<PathBuf>, scratch: &Scratch) -> Result<Checked> {
    let upper = match &req.upper {
        Some(u) => Some(u.clone()),
        None => Some(scratch.path.join("upper")),
    };
    let o = &req.union;
    let mreq = MountRequest {
        union: UnionConfig {
            lowers,
            upper,
            // A throw-away upper needs no flush to disk.
            volatile: scratch.temp_upper || o.volatile,
            override_stat: o.override_stat,
            oci_whiteouts: o.oci_whiteouts,
            ids: o.ids.clone(),
            ..Default::default()
        },
        threads: o.threads,
        mountpoint: scratch.root(),
        allow_other: Some(true),
        private: true,
        remove_after: Some(scratch.path.clone()),
        ..Default::default()
    };
    request::validate(&mreq, req.lowers_typed.as_deref())
}

fn run_in(
    req: &RunRequest,
    rt: &Runtime,
    checked: Checked,
    binds: &[Bind],
    rootless: bool,
    scratch: &Scratch,
) -> Result<i32> {
    // The daemon's namespace lets go of the host's mounts once the init has its own (as
    // root one by one, `drop_host_mounts`; rootless, where they are locked together, by
    // moving onto a root of its own, `leave_host_tree`). This process keeps the host's
    // paths (the pid file, the scratch directory, the store and its records, wherever they
    // are mounted): the namespaces are made by a session child, which says how the run
    // ended through a pipe.
    signal_set(true).block();
    let (rd, wr) = pipe()?;
    let runner = std::process::id();
    match sys::fork() {
        Err(e) => bail!("fork: {e}"),
        Ok(sys::Forked::Child) => {
            drop(rd);
            sys::set_parent_death_signal(libc::SIGKILL);
            if std::os::unix::process::parent_id() != runner {
                sys::exit_now(RUNNER_FAILED as i32);
            }
            let msg = match run_in_namespaces(req, rt, checked, binds, rootless, scratch) {
                Ok(code) => format!("ok {code}"),
                Err(e) => format!("err {}", e.0),
            };
            let _ = std::io::Write::write_all(&mut std::fs::File::from(wr), msg.as_bytes());
            sys::exit_now(0);
        }
        Ok(sys::Forked::Parent(session)) => {
            drop(wr);
            let status = wait_forwarding(session);
            let mut msg = String::new();
            let _ = std::fs::File::from(rd).read_to_string(&mut msg);
            if let Some(p) = &req.pid_file {
                let _ = std::fs::remove_file(p);
            }
            match msg.split_once(' ') {
                Some(("ok", code)) => code
                    .parse()
                    .map_err(|_| UserError(format!("the run's session said '{msg}'"))),
                Some(("err", e)) => Err(UserError(e.to_string())),
                _ => bail!("the run's session ended before the command (status {status})"),
            }
        }
    }
}

/// The namespaces of a run and its processes (the daemon, the init). Rootless, this is the
/// session child, whose namespace leaves the host's tree once the init is ready.
fn run_in_namespaces(
    req: &RunRequest,
    rt: &Runtime,
    checked: Checked,
    binds: &[Bind],
    rootless: bool,
    scratch: &Scratch,
) -> Result<i32> {
    let full_ids = if rootless {
        crate::userns::enter_user_namespace(false)?
    } else {
        true
    };
    let mut checked = checked;
    // Rootless, the namespace's copies of the host's mounts are locked together: an fd the
    // daemon opened through any of them would keep them all once the namespace lets go of
    // the host's tree. The upper, /dev and the scratch directory's parent are reached
    // through fds opened here, before the namespace exists (the lowers are detached clones
    // of their own, see `sys::private_readonly_tree`).
    let _host_fds = if rootless {
        let o = |p: &Path| {
            sys::open_dir_path(p).map_err(|e| UserError(format!("{}: {e}", p.display())))
        };
        let dev = o(Path::new("/dev"))?;
        checked.req.dev_dir = Some(sys::fd_path(dev.as_fd()));
        let upper = match &checked.union.upper {
            Some(u) => {
                let fd = o(u)?;
                checked.union.upper = Some(sys::fd_path(fd.as_fd()));
                Some(fd)
            }
            None => None,
        };
        // The daemon removes the scratch directory at its end, through its parent's fd.
        let parent = match checked.req.remove_after.clone() {
            Some(r) => match (r.parent(), r.file_name()) {
                (Some(p), Some(n)) => {
                    let fd = o(p)?;
                    checked.req.remove_after = Some(sys::fd_path(fd.as_fd()).join(n));
                    Some(fd)
                }
                _ => None,
            },
            None => None,
        };
        Some((dev, upper, parent))
    } else {
        None
    };
    unshare(libc::CLONE_NEWNS, "a mount namespace")?;
    make_private()?;
    let daemon = daemon::start(checked)?;

    let mut flags = libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
    if req.net == Net::None {
        flags |= libc::CLONE_NEWNET;
    }
    // The init relays the caller's keys as they are typed (^C and ^Z included) to the
    // command's terminal, where they take effect; the caller's mode comes back when the run
    // ends. What was typed before the terminal went raw (a pending ^D included, which would
    // read as a NUL byte once raw) is taken first and passed on by the init as typed.
    let (_raw, typed) = if req.tty == Some(true) && sys::is_foreground_terminal(0) {
        let typed = sys::take_pending_input(0);
        (sys::RawMode::enter(0).ok(), typed)
    } else {
        (None, Vec::new())
    };
    let r = unshare(flags, "pid, uts, ipc and network namespaces")
        .and_then(|()| init::start(req, rt, &typed, binds, scratch, full_ids));
    let code = match r {
        Ok((init, ns_ready)) => {
            // Once the init has a mount namespace of its own, this one (the daemon's) lets
            // go of the host's other mounts.
            let mut b = [0u8; 1];
            let ready = matches!(std::fs::File::from(ns_ready).read(&mut b), Ok(1));
            if ready && let Some(p) = &req.pid_file {
                let _ = std::fs::write(p, format!("{init}\n"));
            }
            if ready && rootless {
                if let Err(e) = leave_host_tree(scratch) {
                    log::warn!("the run keeps the host's mounts: {e}");
                }
            } else if ready {
                drop_host_mounts(&scratch.root());
            }
            let code = wait_forwarding(init);
            if let Some(p) = &req.pid_file {
                let _ = std::fs::remove_file(p);
            }
            Ok(code)
        }
        Err(e) => Err(e),
    };
    daemon.stop();
    code
}

fn unshare(flags: i32, what: &str) -> Result<()> {
    sys::unshare(flags).map_err(|e| UserError(format!("cannot create {what}: {e}")))
}

/// Makes every mount of this (new) namespace private: nothing done here reaches the host.
fn make_private() -> Result<()> {
    sys::make_private(Path::new("/"))
        .map_err(|e| UserError(format!("cannot make the mounts of / private: {e}")))
}

// ---- the runner's side ----

/// The forwarded signals, and SIGCHLD when the waiter also wants to hear of its children.
fn signal_set(with_chld: bool) -> sys::SigSet {
    let mut v = FORWARDED.to_vec();
    if with_chld {
        v.push(libc::SIGCHLD);
    }
    sys::SigSet::of(&v)
}

/// The runner's mount namespace, which the daemon shares, began as a copy of the host's,
/// and a copy holds every mount in it: another FUSE daemon could not end when its mount was
/// unmounted on the host, an overlay's upper could not be mounted again. Once the init has
/// its own namespace, every mount here is detached but `/`, those the union's mountpoint
/// lies on, the union itself, `/proc` and `/dev` (the daemon works through the fds it
/// holds). Rootless, the copies are locked to the user namespace and stay.
fn drop_host_mounts(union_mp: &Path) {
    for _ in 0..8 {
        let mut victims: Vec<PathBuf> = request::mount_table()
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
            detached |= sys::umount(&p, libc::MNT_DETACH).is_ok();
        }
        if !detached {
            return;
        }
    }
}

/// Rootless, the copies of the host's mounts in this namespace (the session's and the
/// daemon's) are locked to it: none can be detached alone. So the namespace moves onto a
/// small tmpfs of its own holding only `/proc` (the daemon reaches its layers, its upper and
/// `/dev/fuse` through the fds it holds, and files through `/proc/self/fd`), and the old
/// root goes as a whole: a root's lock passes to the new root at `pivot_root`. The union
/// lives on in the init's namespace, and ends with it.
fn leave_host_tree(scratch: &Scratch) -> Result<()> {
    let ns = scratch.path.join("ns");
    let fail = |what: &str| {
        let what = what.to_string();
        move |e: sys::Errno| UserError(format!("{what}: {e}"))
    };
    sys::mount(
        OsStr::new("tmpfs"),
        ns.as_os_str(),
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some("mode=0755,size=64k"),
    )
    .map_err(fail("tmpfs"))?;
    std::fs::create_dir(ns.join("proc")).map_err(|e| UserError(format!("proc: {e}")))?;
    sys::mount(
        OsStr::new("/proc"),
        ns.join("proc").as_os_str(),
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )
    .map_err(fail("bind /proc"))?;
    let root = std::fs::File::open(&ns).map_err(|e| UserError(format!("{e}")))?;
    sys::pivot_into(std::os::fd::AsFd::as_fd(&root))
        .map_err(|(what, e)| UserError(format!("{what}: {e}")))
}

fn wait_forwarding(init: i32) -> i32 {
    let set = signal_set(true);
    loop {
        match sys::waitpid(init, libc::WNOHANG) {
            Ok(Some((_, st))) => return sys::decode_status(st),
            Ok(None) => {}
            Err(_) => return 255,
        }
        let (sig, forward) = set.wait_info();
        if forward && sig != libc::SIGCHLD {
            let _ = sys::kill(init, sig);
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

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
