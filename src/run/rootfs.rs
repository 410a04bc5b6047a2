//! The container's root: the mounts a run makes inside the union (`/proc`, `/sys`, `/dev`,
//! `/tmp`, the binds asked for) and the pivot into it. Every system call goes through a
//! [`Host`], so the sequence can be checked without privileges by a recording one.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use super::{Bind, cstring, profile};
use crate::error::{Result, UserError, bail};
use crate::sys::{self, Errno};

/// The calls that set up a container's root. Paths are inside the container (`/dev/null`);
/// a source is a host path, or the name of a fresh filesystem (`proc`, `tmpfs`).
pub(super) trait Host {
    /// Makes `path` exist as a mount target: missing parents as directories, the last
    /// component as a directory or an empty file.
    fn make_target(&mut self, path: &Path, dir: bool) -> std::result::Result<(), Errno>;
    fn mount(&mut self, m: &Mount<'_>) -> std::result::Result<(), Errno>;
    /// Makes the mount at `path`, and every mount below it, read-only.
    fn make_readonly(&mut self, path: &Path) -> std::result::Result<(), Errno>;
    fn symlink(&mut self, to: &str, path: &Path) -> std::result::Result<(), Errno>;
    /// Whether `path` exists, and is a directory (`None`: it does not exist).
    fn probe(&mut self, path: &Path) -> Option<bool>;
    /// Binds the mount at `path` onto itself (recursively), so it can be made read-only on
    /// its own.
    fn rebind(&mut self, path: &Path) -> std::result::Result<(), Errno>;
}

/// One mount: `src` on `path` (inside the container).
pub(super) struct Mount<'a> {
    pub src: &'a OsStr,
    pub path: &'a Path,
    pub fstype: Option<&'a str>,
    pub flags: libc::c_ulong,
    pub data: Option<&'a str>,
}

/// Mounts a container needs, and the binds asked for (parents first), in the root `host`
/// stands for. `full_ids`: the whole id range is mapped (so the `tty` group exists).
/// `mask`: the kernel's sensitive files are hidden or read-only (not for --privileged).
pub(super) fn setup(
    host: &mut impl Host,
    binds: &[Bind],
    full_ids: bool,
    mask: bool,
) -> Result<()> {
    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    mount_at(
        host,
        "proc",
        "/proc",
        Some("proc"),
        nosuid_nodev | libc::MS_NOEXEC,
        None,
    )?;
    // sysfs itself only where this user namespace owns the network namespace (root, or
    // --net none); otherwise the host's, bound read-only.
    let sys_ = Path::new("/sys");
    let ro = libc::MS_RDONLY | nosuid_nodev | libc::MS_NOEXEC;
    let fail = |what: &str, e: Errno| UserError(format!("{what} in the container: {e}"));
    host.make_target(sys_, true).map_err(|e| fail("/sys", e))?;
    let sysfs = Mount {
        src: OsStr::new("sysfs"),
        path: sys_,
        fstype: Some("sysfs"),
        flags: ro,
        data: None,
    };
    if host.mount(&sysfs).is_err() {
        let bind = Mount {
            src: OsStr::new("/sys"),
            fstype: None,
            flags: libc::MS_BIND | libc::MS_REC,
            ..sysfs
        };
        host.mount(&bind)
            .map_err(|e| fail("cannot mount /sys", e))?;
        host.make_readonly(sys_)
            .map_err(|e| fail("cannot make /sys read-only", e))?;
    }

    if mask {
        mask_kernel_files(host)?;
    }

    mount_at(
        host,
        "tmpfs",
        "/dev",
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("mode=755,size=65536k"),
    )?;
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        let at = format!("/dev/{node}");
        mount_at(host, &at, &at, None, libc::MS_BIND, None)?;
    }
    let mut pts = String::from("newinstance,ptmxmode=0666,mode=620");
    if full_ids {
        pts.push_str(",gid=5");
    }
    mount_at(
        host,
        "devpts",
        "/dev/pts",
        Some("devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some(&pts),
    )?;
    mount_at(
        host,
        "tmpfs",
        "/dev/shm",
        Some("tmpfs"),
        nosuid_nodev,
        Some("mode=1777"),
    )?;
    for (name, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        host.symlink(to, &Path::new("/dev").join(name))
            .map_err(|e| fail(&format!("/dev/{name}"), e))?;
    }
    mount_at(
        host,
        "tmpfs",
        "/tmp",
        Some("tmpfs"),
        nosuid_nodev,
        Some("mode=1777"),
    )?;

    // Parents before what is mounted inside them.
    let mut binds = binds.to_vec();
    binds.sort_by_key(|b| b.dst.components().count());
    for b in &binds {
        let shown = b.dst.display().to_string();
        host.make_target(&b.dst, b.src.is_dir())
            .and_then(|()| {
                host.mount(&Mount {
                    src: b.src.as_os_str(),
                    path: &b.dst,
                    fstype: None,
                    flags: libc::MS_BIND | libc::MS_REC,
                    data: None,
                })
            })
            .map_err(|e| fail(&format!("cannot mount {shown}"), e))?;
        if b.read_only {
            host.make_readonly(&b.dst)
                .map_err(|e| fail(&format!("cannot make {shown} read-only"), e))?;
        }
    }
    Ok(())
}

/// The OCI runtime default: `/dev/null` over sensitive files of `/proc` and `/sys`, an empty
/// read-only tmpfs over such directories, and the kernel's tunables read-only.
fn mask_kernel_files(host: &mut impl Host) -> Result<()> {
    let fail = |p: &str, e: Errno| UserError(format!("cannot mask {p} in the container: {e}"));
    for p in profile::MASKED {
        let path = Path::new(p);
        let m = match host.probe(path) {
            None => continue,
            Some(true) => Mount {
                src: OsStr::new("tmpfs"),
                path,
                fstype: Some("tmpfs"),
                flags: libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                data: Some("size=4k,mode=555"),
            },
            Some(false) => Mount {
                src: OsStr::new("/dev/null"),
                path,
                fstype: None,
                flags: libc::MS_BIND,
                data: None,
            },
        };
        host.mount(&m).map_err(|e| fail(p, e))?;
    }
    for p in profile::READ_ONLY {
        let path = Path::new(p);
        if host.probe(path).is_none() {
            continue;
        }
        host.rebind(path)
            .and_then(|()| host.make_readonly(path))
            .map_err(|e| fail(p, e))?;
    }
    Ok(())
}

/// Mounts `src` on `at`, made first if missing (a directory for a fresh filesystem, an
/// empty file for a bound device node).
fn mount_at(
    host: &mut impl Host,
    src: &str,
    at: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<()> {
    let path = Path::new(at);
    host.make_target(path, fstype.is_some())
        .and_then(|()| {
            host.mount(&Mount {
                src: OsStr::new(src),
                path,
                fstype,
                flags,
                data,
            })
        })
        .map_err(|e| UserError(format!("cannot mount {at} in the container: {e}")))
}

/// The real calls, in the union's root (an fd on it): every path is resolved inside it as if
/// it were `/`, so nothing in the union can point a mount outside of it.
pub(super) struct RealHost {
    root: OwnedFd,
    /// The root's path in the init's namespace, for the one call that needs a path as its
    /// source (a bind of a directory of the fresh /proc).
    root_path: PathBuf,
}

impl RealHost {
    pub(super) fn new(root: OwnedFd, root_path: PathBuf) -> RealHost {
        RealHost { root, root_path }
    }

    fn open(&self, path: &Path) -> std::result::Result<OwnedFd, Errno> {
        sys::open_in_root(self.root.as_fd(), path)
    }

    /// The directory `path` lies in, opened for creating in it.
    fn parent_of(&self, path: &Path) -> std::result::Result<OwnedFd, Errno> {
        let parent = self.open(path.parent().unwrap_or(Path::new("/")))?;
        // An O_PATH fd cannot be a base for creation: reopen the directory through /proc.
        sys::reopen(parent.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)
    }

    /// Makes the union `/`, and lets go of the old root entirely.
    pub(super) fn pivot(&self) -> Result<()> {
        if let Err((what, e)) = sys::pivot_into(self.root.as_fd()) {
            bail!("{what}: {e}");
        }
        Ok(())
    }
}

fn name_of(path: &Path) -> std::result::Result<std::ffi::CString, Errno> {
    cstring(path.file_name().unwrap_or(OsStr::new("."))).map_err(|_| Errno(libc::EINVAL))
}

impl Host for RealHost {
    fn make_target(&mut self, path: &Path, dir: bool) -> std::result::Result<(), Errno> {
        let comps: Vec<&OsStr> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n),
                _ => None,
            })
            .collect();
        for i in 1..=comps.len() {
            let prefix: PathBuf = comps[..i].iter().collect();
            match self.open(&prefix) {
                Ok(_) => continue,
                Err(Errno(libc::ENOENT)) => {}
                Err(e) => return Err(e),
            }
            let parent = self.parent_of(&prefix)?;
            let name = name_of(&prefix)?;
            let r = if i < comps.len() || dir {
                sys::mkdirat(parent.as_fd(), &name, 0o755)
            } else {
                sys::openat(
                    parent.as_fd(),
                    &name,
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                    0o644,
                )
                .map(drop)
            };
            match r {
                Ok(()) | Err(Errno(libc::EEXIST)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn mount(&mut self, m: &Mount<'_>) -> std::result::Result<(), Errno> {
        let target = self.open(m.path)?;
        let at = sys::fd_path(target.as_fd());
        sys::mount(m.src, at.as_os_str(), m.fstype, m.flags, m.data)
    }

    fn make_readonly(&mut self, path: &Path) -> std::result::Result<(), Errno> {
        sys::make_tree_readonly(self.open(path)?.as_fd())
    }

    fn probe(&mut self, path: &Path) -> Option<bool> {
        let fd = self.open(path).ok()?;
        sys::fstat(fd.as_fd())
            .ok()
            .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
    }

    fn rebind(&mut self, path: &Path) -> std::result::Result<(), Errno> {
        // A bind whose source is a /proc/self/fd link into the fresh /proc is refused
        // (ENOENT): the source goes by path, checked to be what the fd resolved inside the
        // root (no process runs in the container yet to change it in between).
        let fd = self.open(path)?;
        let by_path = self.root_path.join(path.strip_prefix("/").unwrap_or(path));
        let (a, b) = (sys::fstat(fd.as_fd())?, sys::lstat_path(&by_path)?);
        if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino) {
            return Err(Errno(libc::EXDEV));
        }
        let at = sys::fd_path(fd.as_fd());
        sys::mount(
            by_path.as_os_str(),
            at.as_os_str(),
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
        )
    }

    fn symlink(&mut self, to: &str, path: &Path) -> std::result::Result<(), Errno> {
        let parent = self.parent_of(path)?;
        let to = cstring(OsStr::new(to)).map_err(|_| Errno(libc::EINVAL))?;
        sys::symlinkat(&to, parent.as_fd(), &name_of(path)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every call as one line; the mount of a chosen filesystem type fails.
    #[derive(Default)]
    struct Recording {
        calls: Vec<String>,
        refuse_fstype: Option<&'static str>,
    }

    impl Host for Recording {
        fn make_target(&mut self, path: &Path, dir: bool) -> std::result::Result<(), Errno> {
            let kind = if dir { "dir" } else { "file" };
            self.calls.push(format!("target {kind} {}", path.display()));
            Ok(())
        }
        fn mount(&mut self, m: &Mount<'_>) -> std::result::Result<(), Errno> {
            let (src, path, fstype, flags) = (m.src, m.path, m.fstype, m.flags);
            if fstype.is_some() && fstype == self.refuse_fstype {
                return Err(Errno(libc::EPERM));
            }
            let how = match fstype {
                Some(t) => t.to_string(),
                None if flags & libc::MS_REC != 0 => "rbind".into(),
                None => "bind".into(),
            };
            let ro = if flags & libc::MS_RDONLY != 0 {
                " ro"
            } else {
                ""
            };
            self.calls.push(format!(
                "mount {how} {} on {}{ro}",
                src.to_string_lossy(),
                path.display()
            ));
            Ok(())
        }
        fn make_readonly(&mut self, path: &Path) -> std::result::Result<(), Errno> {
            self.calls.push(format!("readonly {}", path.display()));
            Ok(())
        }
        fn symlink(&mut self, to: &str, path: &Path) -> std::result::Result<(), Errno> {
            self.calls
                .push(format!("symlink {} -> {to}", path.display()));
            Ok(())
        }
        fn probe(&mut self, path: &Path) -> Option<bool> {
            let p = path.to_str().unwrap();
            // A kernel without these.
            if p.ends_with("timer_stats") || p.ends_with("asound") {
                return None;
            }
            Some(
                !["kcore", "keys", "_list", "_stats", "_debug", "trigger"]
                    .iter()
                    .any(|f| p.ends_with(f)),
            )
        }
        fn rebind(&mut self, path: &Path) -> std::result::Result<(), Errno> {
            self.calls.push(format!("rebind {}", path.display()));
            Ok(())
        }
    }

    fn bind(src: &str, dst: &str, read_only: bool) -> Bind {
        Bind {
            src: src.into(),
            dst: dst.into(),
            read_only,
        }
    }

    fn index(calls: &[String], line: &str) -> usize {
        calls
            .iter()
            .position(|c| c == line)
            .unwrap_or_else(|| panic!("no '{line}' in {calls:#?}"))
    }

    #[test]
    fn the_standard_mounts_and_dev_nodes() {
        let mut h = Recording::default();
        setup(&mut h, &[], true, false).unwrap();
        let c = &h.calls;
        assert!(index(c, "mount proc proc on /proc") < index(c, "mount sysfs sysfs on /sys ro"));
        assert!(!c.iter().any(|l| l.starts_with("readonly")), "{c:#?}");
        let dev = index(c, "mount tmpfs tmpfs on /dev");
        for node in ["null", "zero", "full", "random", "urandom", "tty"] {
            let t = index(c, &format!("target file /dev/{node}"));
            let m = index(c, &format!("mount bind /dev/{node} on /dev/{node}"));
            assert!(dev < t && t < m, "/dev/{node} after /dev's tmpfs: {c:#?}");
        }
        assert!(index(c, "mount devpts devpts on /dev/pts") > dev);
        assert!(index(c, "symlink /dev/ptmx -> pts/ptmx") > dev);
        index(c, "symlink /dev/fd -> /proc/self/fd");
        index(c, "mount tmpfs tmpfs on /tmp");
    }

    #[test]
    fn kernel_files_are_masked_after_proc_and_sys_are_there() {
        let mut h = Recording::default();
        setup(&mut h, &[], true, true).unwrap();
        let c = &h.calls;
        let sys_ = index(c, "mount sysfs sysfs on /sys ro");
        for f in [
            "/proc/kcore",
            "/proc/keys",
            "/proc/timer_list",
            "/proc/sched_debug",
        ] {
            assert!(index(c, &format!("mount bind /dev/null on {f}")) > sys_);
        }
        for d in ["/proc/acpi", "/proc/scsi", "/sys/firmware"] {
            assert!(index(c, &format!("mount tmpfs tmpfs on {d} ro")) > sys_);
        }
        for r in ["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"] {
            let b = index(c, &format!("rebind {r}"));
            assert_eq!(c[b + 1], format!("readonly {r}"), "{c:#?}");
        }
        assert!(!c.iter().any(|l| l.contains("timer_stats")), "{c:#?}");
        // --privileged: nothing masked.
        let mut h = Recording::default();
        setup(&mut h, &[], true, false).unwrap();
        assert!(
            !h.calls
                .iter()
                .any(|l| l.contains("kcore") || l.starts_with("rebind"))
        );
    }

    #[test]
    fn sys_falls_back_to_a_read_only_bind() {
        let mut h = Recording {
            refuse_fstype: Some("sysfs"),
            ..Default::default()
        };
        setup(&mut h, &[], false, false).unwrap();
        let c = &h.calls;
        let b = index(c, "mount rbind /sys on /sys");
        assert_eq!(c[b + 1], "readonly /sys", "{c:#?}");
    }

    #[test]
    fn binds_go_parents_first_and_ro_binds_become_read_only() {
        let mut h = Recording::default();
        let binds = [
            bind("/h/c", "/a/b/c", true),
            bind("/h/a", "/a", false),
            bind("/h/b", "/a/b", true),
        ];
        setup(&mut h, &binds, false, false).unwrap();
        let c = &h.calls;
        let (a, b, cc) = (
            index(c, "mount rbind /h/a on /a"),
            index(c, "mount rbind /h/b on /a/b"),
            index(c, "mount rbind /h/c on /a/b/c"),
        );
        assert!(a < b && b < cc, "{c:#?}");
        assert_eq!(c[b + 1], "readonly /a/b");
        assert_eq!(c[cc + 1], "readonly /a/b/c");
        assert_ne!(c[a + 1], "readonly /a");
        // A source that is not a directory gets a file to be mounted on.
        assert_eq!(c[a - 1], "target file /a", "{c:#?}");
    }
}
