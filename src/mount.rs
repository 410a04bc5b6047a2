//! `unionfuse mount` and `unionfuse umount`: argument checks, the daemon's life cycle.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fuser::{Config, MountOption, Session, SessionACL};

use crate::fuse::UnionFs;
use crate::sys;
use crate::union::{Union, UnionConfig};

/// A user-facing error: one line, printed as `unionfuse: <msg>`, exit status 1.
#[derive(Debug, PartialEq, Eq)]
pub struct UserError(pub String);

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! bail {
    ($($t:tt)*) => { return Err($crate::mount::UserError(format!($($t)*))) };
}
pub(crate) use bail;

pub type Result<T> = std::result::Result<T, UserError>;

/// Splits a layer list at unescaped `:`; `\:` stands for a colon and `\\` for a backslash.
pub fn split_layers(spec: &OsStr) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = spec.as_bytes().iter().copied();
    while let Some(b) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some(n @ (b':' | b'\\')) => cur.push(n),
                Some(n) => {
                    cur.push(b'\\');
                    cur.push(n);
                }
                None => cur.push(b'\\'),
            },
            b':' => out.push(std::mem::take(&mut cur)),
            _ => cur.push(b),
        }
    }
    out.push(cur);
    if out.iter().any(|p| p.is_empty()) {
        bail!(
            "empty layer in '{}': layers are separated by ':' (write '\\:' for a ':' in a path)",
            spec.to_string_lossy()
        );
    }
    Ok(out
        .into_iter()
        .map(|b| PathBuf::from(OsString::from_vec(b)))
        .collect())
}

#[derive(Debug, Clone, Default)]
pub struct MountRequest {
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub mountpoint: PathBuf,
    pub foreground: bool,
    pub read_only: bool,
    /// `None`: allow other users when mounted by root, as a system mount is.
    pub allow_other: Option<bool>,
    pub threads: Option<usize>,
    pub volatile: bool,
    pub oci_whiteouts: bool,
    /// Part of a `unionfuse run`: no pidfile, the daemon ends with the process that started
    /// it, and removes `remove_after` (the run's scratch directory) once unmounted.
    pub private: bool,
    pub remove_after: Option<PathBuf>,
    pub ids: crate::union::ids::IdMap,
    /// A work directory given with `workdir=` (on the upper's filesystem).
    pub workdir: Option<PathBuf>,
    /// fuse-overlayfs's squash_to_uid/squash_to_gid (squash_to_root sets both to 0).
    pub squash_uid: Option<u32>,
    pub squash_gid: Option<u32>,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
}

/// What `validate` made of a request: canonical paths, checked.
#[derive(Debug, Clone)]
pub struct Checked {
    pub union: UnionConfig,
    pub mountpoint: PathBuf,
    pub req: MountRequest,
}

fn describe(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => sys::Errno(code).to_string(),
        None => e.to_string(),
    }
}

pub(crate) fn check_dir(role: &str, p: &Path, spec: Option<&OsStr>) -> Result<PathBuf> {
    let md = match std::fs::metadata(p) {
        Ok(m) => m,
        Err(e) => {
            if let Some(spec) =
                spec.filter(|s| Path::new(s).is_dir() && s.as_bytes().contains(&b':'))
            {
                bail!(
                    "{role} '{}': {} ('{}' exists: write '\\:' for a ':' in a path)",
                    p.display(),
                    describe(&e),
                    spec.to_string_lossy()
                );
            }
            bail!("{role} '{}': {}", p.display(), describe(&e))
        }
    };
    if !md.is_dir() {
        bail!("{role} '{}': not a directory", p.display());
    }
    std::fs::canonicalize(p)
        .map_err(|e| UserError(format!("{role} '{}': {}", p.display(), describe(&e))))
}

/// Mount points currently in the mount table, from `/proc/self/mountinfo`, with their types.
pub fn mount_table() -> Vec<(PathBuf, String)> {
    mount_table_with_devices()
        .into_iter()
        .map(|(p, t, _)| (p, t))
        .collect()
}

/// The mount table with each mount's device (`major:minor`).
fn mount_table_with_devices() -> Vec<(PathBuf, String, String)> {
    let Ok(s) = std::fs::read("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in s.split(|&b| b == b'\n') {
        let f: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        if f.len() < 5 {
            continue;
        }
        let fstype = f
            .iter()
            .position(|x| *x == b"-")
            .and_then(|i| f.get(i + 1))
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .unwrap_or_default();
        out.push((
            PathBuf::from(OsString::from_vec(unescape_octal(f[4]))),
            fstype,
            String::from_utf8_lossy(f[2]).into_owned(),
        ));
    }
    out
}

fn unescape_octal(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\'
            && i + 3 < s.len()
            && s[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (s[i + 1] - b'0') * 64 + (s[i + 2] - b'0') * 8 + (s[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// Checks a request before anything is mounted; every refusal is one line for the user.
/// Refuses two (canonical) paths of which one lies inside the other.
fn refuse_nesting((a_role, a): (&str, &Path), (b_role, b): (&str, &Path)) -> Result<()> {
    if a.starts_with(b) {
        bail!(
            "{a_role} '{}' is inside {b_role} '{}'",
            a.display(),
            b.display()
        );
    }
    if b.starts_with(a) {
        bail!(
            "{b_role} '{}' is inside {a_role} '{}'",
            b.display(),
            a.display()
        );
    }
    Ok(())
}

pub fn validate(req: &MountRequest, lower_spec: Option<&OsStr>) -> Result<Checked> {
    if req.lowers.is_empty() {
        bail!("no lower layer given");
    }
    let mut lowers = Vec::new();
    for l in &req.lowers {
        lowers.push(check_dir("lower layer", l, lower_spec)?);
    }
    let upper = match &req.upper {
        Some(u) => {
            let c = check_dir("upper layer", u, None)?;
            if !sys::is_writable_dir(&c) {
                bail!("upper layer '{}': not writable", u.display());
            }
            Some(c)
        }
        None => None,
    };
    let mountpoint = check_dir("mountpoint", &req.mountpoint, None)?;
    if let (Some(w), Some(u)) = (&req.workdir, &upper) {
        let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
        if dev(w) != dev(u) {
            bail!(
                "workdir '{}' is not on the filesystem of upperdir '{}'",
                w.display(),
                u.display()
            );
        }
    }

    let mut seen: Vec<((u64, u64), &Path)> = Vec::new();
    for p in upper.iter().chain(lowers.iter()) {
        let md = std::fs::metadata(p)
            .map_err(|e| UserError(format!("'{}': {}", p.display(), describe(&e))))?;
        let id = (md.dev(), md.ino());
        if let Some((_, first)) = seen.iter().find(|(i, _)| *i == id) {
            bail!(
                "layer '{}' is given twice (also as '{}')",
                p.display(),
                first.display()
            );
        }
        seen.push((id, p));
        if mountpoint == *p {
            bail!("mountpoint '{}' is also a layer", mountpoint.display());
        }
        refuse_nesting(("mountpoint", &mountpoint), ("layer", p))?;
    }
    // The lowers never change: no upper or work dir may lie inside one, nor one inside them.
    let writable = upper.iter().map(|u| ("upper layer", u.clone()));
    let work = req
        .workdir
        .iter()
        .filter_map(|w| std::fs::canonicalize(w).ok())
        .map(|w| ("workdir", w));
    for (role, w) in writable.chain(work) {
        for l in &lowers {
            refuse_nesting((role, &w), ("lower layer", l))?;
        }
    }
    if mount_table().iter().any(|(m, _)| *m == mountpoint) {
        bail!("mountpoint '{}': already mounted", mountpoint.display());
    }
    Ok(Checked {
        union: UnionConfig {
            lowers,
            upper,
            volatile: req.volatile,
            oci_whiteouts: req.oci_whiteouts,
            ids: req.ids.clone(),
            workdir: req.workdir.clone(),
            read_only: req.read_only,
        },
        mountpoint,
        req: req.clone(),
    })
}

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
    cfg.clone_fd = true;
    cfg
}

/// Without an upper there is nowhere to write.
fn read_only(c: &Checked) -> bool {
    c.req.read_only || c.union.upper.is_none()
}

/// As root: mount(2) with the type `fuse.unionfuse` (fuser's own mount says plain `fuse`),
/// devices and setuid allowed as on a system mount. Returns the `/dev/fuse` fd to serve.
fn mount_as_root(mountpoint: &Path, cfg: &Config, req: &Checked) -> std::io::Result<OwnedFd> {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
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

/// Mounts and serves. In the background (the default) it returns only once the mount is live
/// or has failed; the daemon stays behind until the filesystem is unmounted.
pub fn mount(c: Checked) -> Result<Option<i32>> {
    if c.req.foreground {
        return serve(c, None).map(|()| None);
    }
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
                Ok(Some(pid))
            } else if msg.is_empty() {
                bail!("the daemon ended before the mount was ready")
            } else {
                Err(UserError(msg.into_owned()))
            }
        }
    }
}

fn redirect_stdio_to_null() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            let _ = sys::dup_onto(null.as_fd(), fd);
        }
    }
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
    let sigset = block_term_signals();
    let union = match Union::new(&c.union) {
        Ok(u) => u,
        Err(sys::Errno(libc::EBUSY)) if c.union.upper.is_some() => {
            let u = c.union.upper.as_ref().expect("checked");
            return fail(
                ready,
                format!("upper layer '{}' is in use by another mount", u.display()),
            );
        }
        Err(e) => return fail(ready, format!("cannot open the layers: {e}")),
    };
    let cfg = fuse_config(&c);
    let notifier: std::sync::Arc<std::sync::OnceLock<fuser::Notifier>> = Default::default();
    let n = notifier.clone();
    union.on_change(Box::new(move |ino| {
        if let Some(n) = n.get() {
            // Attributes only (negative offset): no page-cache work inside a request.
            let _ = n.inval_inode(fuser::INodeNo(ino), -1, 0);
        }
    }));
    let fs = UnionFs::new(union);
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
    let _ = notifier.set(session.notifier());
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
        redirect_stdio_to_null();
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
            bail!("'{}': {e}", mp.display());
        }
    } else {
        let out = std::process::Command::new("fusermount3")
            .args(["-u", "--"])
            .arg(&mp)
            .output()
            .map_err(|e| UserError(format!("fusermount3: {e}")))?;
        if !out.status.success() {
            bail!(
                "'{}': {}",
                mp.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_split_on_unescaped_colons() {
        let v = split_layers(OsStr::new("/a:/b\\:c:/d\\\\")).unwrap();
        assert_eq!(
            v,
            vec![
                PathBuf::from("/a"),
                PathBuf::from("/b:c"),
                PathBuf::from("/d\\")
            ]
        );
        assert!(split_layers(OsStr::new("/a::/b")).is_err());
        assert!(split_layers(OsStr::new(":/b")).is_err());
    }

    #[test]
    fn mountinfo_octal_escapes_decode() {
        assert_eq!(unescape_octal(b"/mnt/a\\040b"), b"/mnt/a b");
        assert_eq!(unescape_octal(b"/x\\134y"), b"/x\\y");
    }
}
