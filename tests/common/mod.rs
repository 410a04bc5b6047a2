//! Shared test harness: real FUSE mounts behind guards that always unmount, the kernel's
//! overlayfs as an oracle, and tree builders.
#![allow(dead_code)]

pub mod model;
pub mod ops;
pub mod pty;
pub mod runenv;
pub mod store_cli;
pub mod view;

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_unionfuse"))
}

/// True when the test can run. Without root it skips locally, saying so where it is seen
/// (straight to stderr: the harness captures what `eprintln!` prints of a passing test),
/// and fails under `CI=true`.
pub fn require_root() -> bool {
    use std::io::Write;
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("this test needs root and /dev/fuse, and CI must provide them");
        }
        let name = std::thread::current().name().unwrap_or("?").to_string();
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {name}: needs root and /dev/fuse (run the suite as root, as CI does)"
        );
    }
    root
}

pub fn is_mounted(mp: &Path) -> Option<String> {
    let mp = std::fs::canonicalize(mp).unwrap_or_else(|_| mp.to_path_buf());
    for (m, t) in unionfuse::request::mount_table() {
        if m == mp {
            return Some(t);
        }
    }
    None
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// A union mounted by `unionfuse mount -f`, served by a child process this guard owns.
/// Dropping it unmounts (lazily, if busy) and reaps the daemon; a daemon that does not exit
/// in time is killed, so no test leaves a mount or a process behind.
pub struct UnionMount {
    pub mp: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

pub fn layer_spec(lowers: &[&Path]) -> std::ffi::OsString {
    let mut s = Vec::new();
    for (i, l) in lowers.iter().enumerate() {
        if i > 0 {
            s.push(b':');
        }
        for &b in l.as_os_str().as_bytes() {
            if b == b':' || b == b'\\' {
                s.push(b'\\');
            }
            s.push(b);
        }
    }
    std::ffi::OsString::from(OsStr::from_bytes(&s))
}

impl UnionMount {
    pub fn new(lowers: &[&Path], upper: Option<&Path>, mp: &Path) -> UnionMount {
        Self::with_args(lowers, upper, mp, &[])
    }

    pub fn with_args(
        lowers: &[&Path],
        upper: Option<&Path>,
        mp: &Path,
        extra: &[&str],
    ) -> UnionMount {
        Self::spawn(lowers, upper, mp, extra, &[])
    }

    /// Reads and writes of open files through the daemon even as root (no kernel passthrough),
    /// the path a rootless mount takes.
    pub fn without_passthrough(lowers: &[&Path], upper: Option<&Path>, mp: &Path) -> UnionMount {
        Self::spawn(lowers, upper, mp, &[], &[("UNIONFUSE_NO_PASSTHROUGH", "1")])
    }

    /// With extra environment for the daemon.
    pub fn with_env(
        lowers: &[&Path],
        upper: Option<&Path>,
        mp: &Path,
        envs: &[(&str, &str)],
    ) -> UnionMount {
        Self::spawn(lowers, upper, mp, &[], envs)
    }

    fn spawn(
        lowers: &[&Path],
        upper: Option<&Path>,
        mp: &Path,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> UnionMount {
        let log = mp.with_extension("log");
        let logf = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("mount")
            .arg("-f")
            .args(extra)
            .arg(layer_spec(lowers));
        if let Some(u) = upper {
            cmd.arg(u);
        }
        cmd.arg(mp)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("warn".into()),
            )
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf);
        let child = cmd.spawn().expect("spawn unionfuse");
        let mut g = UnionMount {
            mp: mp.to_path_buf(),
            child: Some(child),
            log,
        };
        let ok = wait_until(Duration::from_secs(20), || {
            if is_mounted(mp).as_deref() == Some("fuse.unionfuse") {
                return true;
            }
            matches!(g.child.as_mut().unwrap().try_wait(), Ok(Some(_)))
        });
        if !ok || is_mounted(mp).is_none() {
            let log = std::fs::read_to_string(&g.log).unwrap_or_default();
            drop(g);
            panic!("unionfuse did not mount {}: {log}", mp.display());
        }
        g
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Waits for the daemon to exit by itself; its exit status, or `None` on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let c = self.child.as_mut().unwrap();
        let mut status = None;
        wait_until(timeout, || {
            status = c.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }
}

impl Drop for UnionMount {
    fn drop(&mut self) {
        if is_mounted(&self.mp).is_some() {
            let _ = Command::new("umount").arg(&self.mp).status();
            if is_mounted(&self.mp).is_some() {
                let _ = Command::new("umount").arg("-l").arg(&self.mp).status();
            }
        }
        if let Some(mut c) = self.child.take() {
            let done = wait_until(Duration::from_secs(10), || {
                matches!(c.try_wait(), Ok(Some(_)))
            });
            if !done {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Unmounts whatever is mounted at a path when dropped (lazily if busy): for mounts a test
/// makes by hand (a background union, a bind mount, a tmpfs).
pub struct UnmountOnDrop(pub PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        if is_mounted(&self.0).is_some() {
            let _ = Command::new("umount").arg(&self.0).status();
        }
        if is_mounted(&self.0).is_some() {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// The kind of a file type, as the differential tests compare it.
pub fn kind(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_char_device() {
        "chr"
    } else {
        "other"
    }
}

/// Kernel overlayfs over the same kind of layers: the oracle.
pub struct KernelOverlay {
    pub mp: PathBuf,
}

impl KernelOverlay {
    pub fn new(lowers: &[&Path], upper_work: Option<(&Path, &Path)>, mp: &Path) -> KernelOverlay {
        Self::with_opts(lowers, upper_work, mp, "")
    }

    /// With extra mount options (e.g. `redirect_dir=on`).
    pub fn with_opts(
        lowers: &[&Path],
        upper_work: Option<(&Path, &Path)>,
        mp: &Path,
        extra: &str,
    ) -> KernelOverlay {
        let lower: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
        let mut opts = format!("lowerdir={}", lower.join(":"));
        if !extra.is_empty() {
            opts.push(',');
            opts.push_str(extra);
        }
        if let Some((u, w)) = upper_work {
            opts.push_str(&format!(
                ",upperdir={},workdir={}",
                u.display(),
                w.display()
            ));
        }
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(mp)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kernel overlay mount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        KernelOverlay {
            mp: mp.to_path_buf(),
        }
    }
}

impl Drop for KernelOverlay {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.mp)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.mp).status();
        }
    }
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run command")
}

pub fn unionfuse(args: &[&OsStr]) -> Output {
    run(Command::new(bin()).args(args))
}

// ---- tree builders ----

pub fn write(p: &Path, data: &[u8]) {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(p, data).unwrap();
}

pub fn mkdir(p: &Path) {
    std::fs::create_dir_all(p).unwrap();
}

pub fn symlink(target: &str, p: &Path) {
    std::os::unix::fs::symlink(target, p).unwrap();
}

pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

pub fn mknod(p: &Path, mode: u32, dev: u64) {
    let c = cpath(p);
    assert_eq!(
        unsafe { libc::mknod(c.as_ptr(), mode, dev) },
        0,
        "mknod {p:?}"
    );
}

/// A kernel-format whiteout (character device 0/0).
pub fn whiteout_chr(p: &Path) {
    mknod(p, libc::S_IFCHR | 0o600, 0);
}

pub fn setxattr(p: &Path, name: &str, value: &[u8]) {
    let c = cpath(p);
    let n = CString::new(name).unwrap();
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "setxattr {name} on {p:?}: {}",
        std::io::Error::last_os_error()
    );
}

pub fn getxattr(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let c = cpath(p);
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 65536];
    let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

pub fn listxattr(p: &Path) -> Vec<String> {
    let c = cpath(p);
    let mut buf = vec![0u8; 65536];
    let r = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(r >= 0, "listxattr {p:?}");
    buf.truncate(r as usize);
    let mut v: Vec<String> = buf
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    v.sort();
    v
}

pub fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

pub fn lchown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

/// Sets atime and mtime without following a symlink.
pub fn set_times(p: &Path, atime: (i64, i64), mtime: (i64, i64)) {
    let c = cpath(p);
    let ts = [
        libc::timespec {
            tv_sec: atime.0,
            tv_nsec: atime.1,
        },
        libc::timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1,
        },
    ];
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0, "utimensat {p:?}");
}

/// errno of `lstat`, or 0.
pub fn lstat_errno(p: &Path) -> i32 {
    match std::fs::symlink_metadata(p) {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {dir:?}: {e}"))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Every name under `root`, depth first, relative to it, with its status (`Err` for a listed
/// name that cannot be looked up: the kernel's whiteouts in directories it does not merge).
pub fn walk_tree(root: &Path) -> Vec<(PathBuf, std::io::Result<std::fs::Metadata>)> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for n in names(&root.join(&rel)) {
            let r = rel.join(&n);
            let md = std::fs::symlink_metadata(root.join(&r));
            if md.as_ref().is_ok_and(|m| m.is_dir()) {
                stack.push(r.clone());
            }
            out.push((r, md));
        }
    }
    out
}

/// For every non-directory of a walked tree, its other names (same inode).
pub fn other_names(
    tree: &[(PathBuf, std::io::Result<std::fs::Metadata>)],
) -> std::collections::BTreeMap<PathBuf, Vec<PathBuf>> {
    let mut by_ino: std::collections::BTreeMap<u64, Vec<&PathBuf>> = Default::default();
    for (r, md) in tree {
        if let Ok(md) = md
            && !md.is_dir()
        {
            by_ino.entry(md.ino()).or_default().push(r);
        }
    }
    let mut out = std::collections::BTreeMap::new();
    for group in by_ino.values() {
        for p in group {
            let others = group.iter().filter(|q| *q != p).map(|q| (*q).clone());
            out.insert((*p).clone(), others.collect());
        }
    }
    out
}

/// The extended attributes of `p` whose names pass `keep`, sorted, with their values.
pub fn xattrs_of(p: &Path, keep: impl Fn(&str) -> bool) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = listxattr(p)
        .into_iter()
        .filter(|x| keep(x))
        .map(|x| {
            let value = getxattr(p, &x).unwrap_or_else(|e| panic!("{p:?} {x}: errno {e}"));
            (x, value)
        })
        .collect();
    v.sort();
    v
}

pub fn ino(p: &Path) -> u64 {
    std::fs::symlink_metadata(p).unwrap().ino()
}

/// A fresh scratch directory with short paths (the kernel's mount options have a size limit).
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("uf")
        .tempdir_in("/tmp")
        .unwrap()
}
