//! The daemon's life cycle: mount (as root with mount(2), otherwise through fusermount3),
//! serve until unmounted or signalled, then clean up; and `umount`, which waits for it.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fuser::{Config, MountOption, Session, SessionACL};

use crate::error::{Result, UserError, bail};
use crate::fuse::UnionFs;
use crate::request::{Checked, mount_table, mount_table_with_devices};
use crate::sys;
use crate::union::Union;

fn fuse_config(c: &Checked) -> Config {
    let root = sys::geteuid() == 0;
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::FSName("unionfuse".into()),
        MountOption::Subtype("unionfuse".into()),
        MountOption::DefaultPermissions,
    ];
    if read_only(c) {
        cfg.mount_options.push(MountOption::RO);
    }
    if c.req.noexec {
        cfg.mount_options.push(MountOption::NoExec);
    }
    cfg.acl = if c.req.allow_other.unwrap_or(root) {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    cfg.n_threads = Some(c.req.threads.unwrap_or((cores * 2).clamp(2, 16)));
    // A clone of the device per thread is opened by the path `/dev/fuse`; not where the
    // device is to be reached through `dev_dir` only.
    cfg.clone_fd = c.req.dev_dir.is_none();
    cfg
}

/// Without an upper there is nowhere to write.
fn read_only(c: &Checked) -> bool {
    c.req.union.read_only || c.union.upper.is_none()
}

/// As root: mount(2) with the type `fuse.unionfuse` (fuser's own mount says plain `fuse`),
/// devices and setuid allowed as on a system mount. Returns the `/dev/fuse` fd to serve.
fn mount_as_root(mountpoint: &Path, cfg: &Config, req: &Checked) -> std::io::Result<OwnedFd> {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev_dir(req).join("fuse"))?;
    let mode = std::fs::metadata(mountpoint)?.mode() & libc::S_IFMT;
    let mut data = format!(
        "fd={},rootmode={:o},user_id=0,group_id=0,default_permissions",
        dev.as_raw_fd(),
        mode
    );
    if cfg.acl != SessionACL::Owner {
        data.push_str(",allow_other");
    }
    let mut flags = 0;
    for (on, f) in [
        (read_only(req), libc::MS_RDONLY),
        (req.req.nosuid, libc::MS_NOSUID),
        (req.req.nodev, libc::MS_NODEV),
        (req.req.noexec, libc::MS_NOEXEC),
    ] {
        if on {
            flags |= f;
        }
    }
    sys::mount(
        OsStr::new("unionfuse"),
        mountpoint.as_os_str(),
        Some("fuse.unionfuse"),
        flags,
        Some(&data),
    )?;
    Ok(dev.into())
}

/// Where the daemon of a mountpoint leaves its pid, for `umount` to wait on.
pub fn pidfile(mountpoint: &Path) -> PathBuf {
    let dir = if sys::geteuid() == 0 {
        PathBuf::from("/run/unionfuse")
    } else if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR") {
        PathBuf::from(x).join("unionfuse")
    } else {
        std::env::temp_dir().join(format!("unionfuse-{}", sys::geteuid()))
    };
    // FNV-1a of the path: stable across builds, short enough for any name limit.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in mountpoint.as_os_str().as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    dir.join(format!("{h:016x}.pid"))
}

/// A daemon serving a mount in the background.
#[derive(Debug)]
pub struct Daemon {
    pub pid: i32,
}

impl Daemon {
    /// Ends the daemon (it unmounts, then cleans up) and waits for it; kills it if it has
    /// not ended within 20 s.
    pub fn stop(self) {
        let pid = self.pid;
        let _ = sys::kill(pid, libc::SIGTERM);
        let end = Instant::now() + Duration::from_secs(20);
        // It usually ends within a millisecond: short naps first, a run's exit waits on this.
        let mut nap = Duration::from_micros(100);
        loop {
            if !matches!(sys::waitpid(pid, libc::WNOHANG), Ok(None)) {
                return;
            }
            if Instant::now() > end {
                eprintln!("unionfuse: the daemon (pid {pid}) did not exit; killing it");
                let _ = sys::kill(pid, libc::SIGKILL);
                sys::wait_status(pid);
                return;
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(5));
        }
    }
}

/// Mounts and serves: in the foreground until unmounted, or (the default) in a daemon left
/// behind once the mount is live.
pub fn mount(c: Checked) -> Result<()> {
    if c.req.foreground {
        return serve(c, None);
    }
    start(c).map(drop)
}

/// Starts a daemon for the mount; returns once the mount is live or has failed.
pub fn start(c: Checked) -> Result<Daemon> {
    let (rd, wr) = sys::pipe().map_err(|e| UserError(format!("pipe: {e}")))?;
    match sys::fork() {
        Err(e) => bail!("fork: {e}"),
        Ok(sys::Forked::Child) => {
            drop(rd);
            sys::setsid();
            if c.req.private {
                // Never outlive the runner, even after a kill -9: SIGTERM unmounts and cleans.
                sys::set_parent_death_signal(libc::SIGTERM);
            }
            let code = match serve(c, Some(wr)) {
                Ok(()) => 0,
                Err(_) => 1,
            };
            std::process::exit(code);
        }
        Ok(sys::Forked::Parent(pid)) => {
            drop(wr);
            // The daemon sends one message, in one write (atomic on a pipe): "OK" once the
            // mount is live, or why it failed. No wait for the pipe's end: the daemon goes
            // on starting its threads while the caller carries on.
            let mut buf = vec![0u8; 4096];
            let n = std::fs::File::from(rd).read(&mut buf).unwrap_or(0);
            let msg = String::from_utf8_lossy(&buf[..n]);
            if msg == "OK" {
                Ok(Daemon { pid })
            } else if msg.is_empty() {
                bail!("the daemon ended before the mount was ready")
            } else {
                Err(UserError(msg.into_owned()))
            }
        }
    }
}

fn dev_dir(c: &Checked) -> &Path {
    c.req.dev_dir.as_deref().unwrap_or(Path::new("/dev"))
}

/// Blocks the termination signals in this (still single-threaded) process, so that every
/// thread inherits the mask and one thread can take them with `sigwait`.
fn block_term_signals() -> sys::SigSet {
    let set = sys::SigSet::of(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP]);
    set.block();
    set
}

/// Unmounts without waiting for the daemon (the daemon itself calls this on a signal).
pub fn detach(mountpoint: &Path) -> std::io::Result<()> {
    if sys::geteuid() == 0 && sys::umount(mountpoint, libc::MNT_DETACH).is_ok() {
        return Ok(());
    }
    let st = std::process::Command::new("fusermount3")
        .args(["-u", "-z", "--"])
        .arg(mountpoint)
        .status()?;
    if st.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("fusermount3 -u failed"))
    }
}

fn serve(c: Checked, ready: Option<OwnedFd>) -> Result<()> {
    let report = |ready: &Option<OwnedFd>, msg: &str| {
        if let Some(fd) = ready {
            let _ = std::fs::File::from(fd.try_clone().expect("dup")).write_all(msg.as_bytes());
        }
    };
    let fail = |ready: Option<OwnedFd>, msg: String| -> Result<()> {
        report(&ready, &msg);
        Err(UserError(msg))
    };
    sys::raise_nofile_limit();
    sys::bound_heap();
    // Modes arrive from the kernel with the caller's umask applied; ours must not apply twice.
    sys::set_umask_zero();
    // A daemon's working directory is `/`: the caller's would keep its filesystem busy
    // (and, in a run, pin the host's tree the run's namespace lets go of). Every path of a
    // checked request is absolute.
    let _ = std::env::set_current_dir("/");
    let sigset = block_term_signals();
    let union = match Union::new(&c.union) {
        Ok(u) => u,
        Err(e) if e.code() == libc::EBUSY && c.union.upper.is_some() => {
            let u = c.union.upper.as_ref().expect("checked");
            // A rootless run passes its upper as a /proc/self/fd link: named by its path.
            let u = std::fs::read_link(u)
                .ok()
                .filter(|_| u.starts_with("/proc/self/fd"))
                .unwrap_or_else(|| u.clone());
            return fail(
                ready,
                format!("upper layer '{}' is in use by another mount", u.display()),
            );
        }
        Err(e) => return fail(ready, format!("cannot open the layers: {e}")),
    };
    // The upper's lock outlives the union: it goes with this process, once it is done with
    // the upper (a new mount of it waits for that, see `union::lock_upper`).
    let _upper_held = union.upper_lock();
    let cfg = fuse_config(&c);
    let (fs, invalidator) = UnionFs::new(union);
    if let Err(e) = crate::fuse::trim_heap_when_forgotten(&fs) {
        return fail(ready, format!("thread: {e}"));
    }
    let session = if sys::geteuid() == 0 {
        mount_as_root(&c.mountpoint, &cfg, &c)
            .and_then(|fd| Session::from_fd(fs, fd, cfg.acl, cfg.clone()))
    } else {
        Session::new(fs, &c.mountpoint, &cfg)
    };
    let session = match session {
        Ok(s) => s,
        Err(e) => {
            return fail(
                ready,
                format!("cannot mount on '{}': {e}", c.mountpoint.display()),
            );
        }
    };
    invalidator.connect(session.notifier());
    widen_readahead(&c.mountpoint);
    let pid_path = (!c.req.private).then(|| pidfile(&c.mountpoint));
    if let Some(p) = &pid_path {
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = std::fs::write(p, format!("{}\n", std::process::id()));
    }
    let mp = c.mountpoint.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let (sig, _) = sigset.wait_info();
            {
                log::info!("signal {sig}: unmounting {}", mp.display());
                if let Err(e) = detach(&mp) {
                    log::error!("unmount of {} failed: {e}", mp.display());
                }
            }
        })
        .map_err(|e| UserError(format!("thread: {e}")))?;
    if ready.is_some() {
        report(&ready, "OK");
        drop(ready);
        sys::redirect_stdio(dev_dir(&c));
    }
    log::info!("serving {}", c.mountpoint.display());
    let r = session.run();
    if let Some(p) = &pid_path {
        let _ = std::fs::remove_file(p);
    }
    // run() consumed the session: the union and its work directory are closed by now.
    if let Some(dir) = &c.req.remove_after
        && let Err(e) = std::fs::remove_dir_all(dir)
    {
        log::error!("cannot remove {}: {e}", dir.display());
    }
    // For tests: a daemon slow to finish after its mount is gone (a loaded machine).
    if let Some(ms) = std::env::var("UNIONFUSE_TEST_EXIT_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
    }
    r.map_err(|e| UserError(format!("session ended: {e}")))
}

/// The kernel caps a FUSE mount's readahead at 128 KiB whatever the daemon asks: a big file
/// read through the daemon would come in 128 KiB requests. As root, the mount's own setting
/// is raised to the 1 MiB asked at init (found through the mount table: a stat of the
/// mount point would be a request to this daemon, which does not serve yet).
fn widen_readahead(mountpoint: &Path) {
    let Some((_, _, dev)) = mount_table_with_devices()
        .into_iter()
        .rfind(|(p, t, _)| p == mountpoint && t.starts_with("fuse"))
    else {
        return;
    };
    let knob = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    if let Err(e) = std::fs::write(&knob, "1024") {
        log::debug!("{knob}: {e}");
    }
}

fn pid_alive(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/stat"))
        .map(|s| {
            // A zombie has finished its work; only its parent's wait is missing.
            let state = s
                .iter()
                .rposition(|&b| b == b')')
                .and_then(|i| s.get(i + 2))
                .copied();
            state != Some(b'Z')
        })
        .unwrap_or(false)
}

/// What to do when an unmount is refused because the union is in use.
fn busy_hint(busy: bool, mp: &Path) -> String {
    if !busy {
        return String::new();
    }
    format!(
        " (a process still uses it: `fuser -vm {}` lists them; `umount -l` detaches it lazily)",
        mp.display()
    )
}

/// Unmounts a unionfuse mount and waits (up to `wait`) for its daemon to exit.
pub fn umount(mountpoint: &Path, wait: Duration) -> Result<()> {
    let abs = if mountpoint.is_absolute() {
        mountpoint.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| UserError(e.to_string()))?
            .join(mountpoint)
    };
    // A dead daemon leaves a mount that cannot be stat'ed: canonicalize only what resolves.
    let mp = std::fs::canonicalize(&abs).unwrap_or(abs);
    match mount_table().iter().find(|(m, _)| *m == mp) {
        None => bail!("'{}': not mounted", mp.display()),
        Some((_, t)) if t != "fuse.unionfuse" => {
            bail!("'{}': not a unionfuse mount (it is {t})", mp.display())
        }
        Some(_) => {}
    }
    let pid_path = pidfile(&mp);
    let pid: Option<i32> = std::fs::read_to_string(&pid_path)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    if sys::geteuid() == 0 {
        if let Err(e) = sys::umount(&mp, 0) {
            bail!(
                "'{}': {e}{}",
                mp.display(),
                busy_hint(e.0 == libc::EBUSY, &mp)
            );
        }
    } else {
        let out = std::process::Command::new("fusermount3")
            .args(["-u", "--"])
            .arg(&mp)
            .output()
            .map_err(|e| UserError(format!("fusermount3: {e}")))?;
        if !out.status.success() {
            let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
            let busy = msg.contains("busy");
            bail!("'{}': {msg}{}", mp.display(), busy_hint(busy, &mp));
        }
    }
    if let Some(pid) = pid {
        let deadline = Instant::now() + wait;
        while pid_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if pid_alive(pid) {
            bail!(
                "unmounted '{}', but its daemon (pid {pid}) is still running",
                mp.display()
            );
        }
    }
    let _ = std::fs::remove_file(&pid_path);
    Ok(())
}
