//! Thin, safe wrappers over the `*at` system calls the core uses. Every call takes a directory
//! fd and a single name component; none of them follows a symlink in its last component.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// An errno, the currency of the union core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub fn last() -> Errno {
        Errno(
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        )
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", io::Error::from_raw_os_error(self.0))
    }
}

impl std::error::Error for Errno {}

impl From<io::Error> for Errno {
    fn from(e: io::Error) -> Errno {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

pub type Result<T> = std::result::Result<T, Errno>;

pub fn cstr(name: &OsStr) -> Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| Errno(libc::EINVAL))
}

fn check(ret: libc::c_int) -> Result<libc::c_int> {
    if ret < 0 { Err(Errno::last()) } else { Ok(ret) }
}

fn retry<T: PartialEq + Copy>(minus_one: T, mut f: impl FnMut() -> T) -> Result<T> {
    loop {
        let r = f();
        if r != minus_one {
            return Ok(r);
        }
        let e = Errno::last();
        if e.0 != libc::EINTR {
            return Err(e);
        }
    }
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC)`.
pub fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> Result<OwnedFd> {
    let fd = retry(-1, || unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode,
        )
    })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a path given by the user (layer roots, mountpoints) as an `O_PATH` directory fd.
pub fn open_dir_path(path: &std::path::Path) -> Result<OwnedFd> {
    let c = cstr(path.as_os_str())?;
    let fd = check(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a file for reading without touching its atime where the kernel allows that.
pub fn open_noatime(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> Result<OwnedFd> {
    match openat(dir, name, flags | libc::O_NOATIME, 0) {
        Err(Errno(libc::EPERM)) => openat(dir, name, flags, 0),
        r => r,
    }
}

pub fn fstatat(dir: BorrowedFd<'_>, name: &CStr) -> Result<libc::stat> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

/// `fstat` of the fd itself (works on `O_PATH` fds).
pub fn fstat(fd: BorrowedFd<'_>) -> Result<libc::stat> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe {
        libc::fstatat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            &mut st,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

pub fn readlinkat(dir: BorrowedFd<'_>, name: &CStr) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(Errno::last());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], off: u64) -> Result<usize> {
    let n = retry(-1, || unsafe {
        libc::pread(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            off as libc::off_t,
        )
    })?;
    Ok(n as usize)
}

/// One entry of a raw directory listing.
#[derive(Debug, Clone)]
pub struct RawDirent {
    pub ino: u64,
    pub dtype: u8,
    pub name: OsString,
}

/// Reads a whole directory, given an `O_PATH` fd on it, skipping `.` and `..`. The directory is
/// opened with `O_NOATIME` where allowed so that listing a lower layer never writes to it.
pub fn read_dir(dir: BorrowedFd<'_>) -> Result<Vec<RawDirent>> {
    let fd = open_noatime(dir, c".", libc::O_RDONLY | libc::O_DIRECTORY)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if n < 0 {
            let e = Errno::last();
            if e.0 == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        let mut pos = 0usize;
        while pos < n as usize {
            // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
            let rec = &buf[pos..];
            let ino = u64::from_ne_bytes(rec[0..8].try_into().unwrap());
            let reclen = u16::from_ne_bytes(rec[16..18].try_into().unwrap()) as usize;
            let dtype = rec[18];
            let name_bytes = &rec[19..reclen];
            let len = name_bytes
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(name_bytes.len());
            let name = &name_bytes[..len];
            pos += reclen;
            if name == b"." || name == b".." {
                continue;
            }
            out.push(RawDirent {
                ino,
                dtype,
                name: OsString::from_vec(name.to_vec()),
            });
        }
    }
    Ok(out)
}

/// The `/proc/self/fd/N` path of an fd, through which the xattr calls reach an `O_PATH` fd.
fn proc_path(fd: RawFd, name: Option<&CStr>) -> CString {
    let mut p = format!("/proc/self/fd/{fd}").into_bytes();
    if let Some(n) = name {
        p.push(b'/');
        p.extend_from_slice(n.to_bytes());
    }
    CString::new(p).expect("no NUL in a proc path")
}

/// This process's `/proc/self/fd`, opened once: its magic links reach the object of an
/// `O_PATH` fd for the calls that take no such fd, one lookup instead of a walk from `/`.
/// `None` in a forked child of the process that opened it (its fds are not these): a fork
/// handler marks the child, so no call asks the process id each time.
fn proc_fd_dir() -> Option<RawFd> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static FORKED: AtomicBool = AtomicBool::new(false);
    static DIR: std::sync::OnceLock<Option<OwnedFd>> = std::sync::OnceLock::new();
    extern "C" fn mark_child() {
        FORKED.store(true, Ordering::Relaxed);
    }
    let fd = DIR
        .get_or_init(|| {
            if unsafe { libc::pthread_atfork(None, None, Some(mark_child)) } != 0 {
                return None;
            }
            openat(
                unsafe { BorrowedFd::borrow_raw(libc::AT_FDCWD) },
                c"/proc/self/fd",
                libc::O_PATH | libc::O_DIRECTORY,
                0,
            )
            .ok()
        })
        .as_ref()?;
    (!FORKED.load(Ordering::Relaxed)).then(|| fd.as_raw_fd())
}

/// The `/proc/self/fd` link of `fd` as a (directory fd, path) pair for the `*at` calls.
fn fd_link(fd: RawFd) -> (RawFd, CString) {
    match proc_fd_dir() {
        Some(dir) => (dir, CString::new(fd.to_string()).expect("digits")),
        None => (libc::AT_FDCWD, proc_path(fd, None)),
    }
}

/// Where the `*xattrat` calls find an object: a directory fd, a path and at-flags.
struct XattrAt<'a> {
    dir: RawFd,
    path: std::borrow::Cow<'a, CStr>,
    flags: libc::c_int,
}

/// `name` in `dir` (never through a symlink), or `dir` itself (through its
/// `/proc/self/fd` link).
fn xattr_at<'a>(dir: BorrowedFd<'_>, name: Option<&'a CStr>) -> XattrAt<'a> {
    match name {
        Some(n) => XattrAt {
            dir: dir.as_raw_fd(),
            path: n.into(),
            flags: libc::AT_SYMLINK_NOFOLLOW,
        },
        None => {
            let (d, p) = fd_link(dir.as_raw_fd());
            XattrAt {
                dir: d,
                path: p.into(),
                flags: 0,
            }
        }
    }
}

/// The `*xattrat` calls (Linux 6.13; the same numbers on every architecture).
const SYS_SETXATTRAT: libc::c_long = 463;
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;
const SYS_REMOVEXATTRAT: libc::c_long = 466;
static HAVE_XATTRAT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// Runs one `*xattrat` call; `None` where the kernel lacks them (then never again).
fn xattrat(call: impl FnOnce() -> libc::c_long) -> Option<isize> {
    use std::sync::atomic::Ordering;
    if !HAVE_XATTRAT.load(Ordering::Relaxed) {
        return None;
    }
    let n = call();
    if n < 0 && Errno::last().0 == libc::ENOSYS {
        HAVE_XATTRAT.store(false, Ordering::Relaxed);
        return None;
    }
    Some(n as isize)
}

/// `getxattrat` of `attr` at `at` into `buf` (size query with an empty one).
fn getxattrat(at: &XattrAt<'_>, attr: &CStr, buf: &mut [u8]) -> Option<isize> {
    let mut args = XattrArgs {
        value: buf.as_mut_ptr() as u64,
        size: buf.len() as u32,
        flags: 0,
    };
    xattrat(|| unsafe {
        libc::syscall(
            SYS_GETXATTRAT,
            at.dir,
            at.path.as_ptr(),
            at.flags,
            attr.as_ptr(),
            &mut args as *mut XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    })
}

/// The xattr `attr` of `name` inside `dir` (or of `dir` itself when `name` is `None`).
/// Returns `Ok(None)` when the attribute is absent.
pub fn getxattr(dir: BorrowedFd<'_>, name: Option<&CStr>, attr: &CStr) -> Result<Option<Vec<u8>>> {
    let at = xattr_at(dir, name);
    // The path calls are the fallback where the kernel lacks getxattrat. On the fd itself the
    // magic link must be followed (it is the kernel's, not a layer's); on a name inside it,
    // the name is never followed.
    let getx = if name.is_some() {
        libc::lgetxattr
    } else {
        libc::getxattr
    };
    let get = |buf: &mut [u8]| {
        if let Some(n) = getxattrat(&at, attr, buf) {
            return n;
        }
        let path = proc_path(dir.as_raw_fd(), name);
        unsafe {
            getx(
                path.as_ptr(),
                attr.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        }
    };
    let mut buf = vec![0u8; 256];
    loop {
        let n = get(&mut buf);
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(Some(buf));
        }
        match Errno::last().0 {
            libc::ENODATA | libc::ENOTSUP => return Ok(None),
            libc::ERANGE => {
                let need = get(&mut []);
                if need < 0 {
                    return Err(Errno::last());
                }
                buf = vec![0u8; need as usize];
            }
            e => return Err(Errno(e)),
        }
    }
}

/// The xattr names of `name` inside `dir` (or of `dir` itself).
pub fn listxattr(dir: BorrowedFd<'_>, name: Option<&CStr>) -> Result<Vec<Vec<u8>>> {
    let at = xattr_at(dir, name);
    let listx = if name.is_some() {
        libc::llistxattr
    } else {
        libc::listxattr
    };
    let list = |buf: &mut [u8]| {
        if let Some(n) = xattrat(|| unsafe {
            libc::syscall(
                SYS_LISTXATTRAT,
                at.dir,
                at.path.as_ptr(),
                at.flags,
                buf.as_mut_ptr(),
                buf.len(),
            )
        }) {
            return n;
        }
        let path = proc_path(dir.as_raw_fd(), name);
        unsafe { listx(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }
    };
    let mut buf = vec![0u8; 1024];
    loop {
        let n = list(&mut buf);
        if n >= 0 {
            buf.truncate(n as usize);
            break;
        }
        match Errno::last().0 {
            libc::ENOTSUP => return Ok(Vec::new()),
            libc::ERANGE => {
                let need = list(&mut []);
                if need < 0 {
                    return Err(Errno::last());
                }
                buf = vec![0u8; need as usize];
            }
            e => return Err(Errno(e)),
        }
    }
    Ok(split_names(&buf))
}

fn split_names(buf: &[u8]) -> Vec<Vec<u8>> {
    buf.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| s.to_vec())
        .collect()
}

/// `flock(2)` on an open file: the lock goes with the last fd of the open file description.
pub fn flock(fd: BorrowedFd<'_>, op: i32) -> Result<()> {
    if unsafe { libc::flock(fd.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(Errno::last())
    }
}

pub fn fstatvfs(fd: BorrowedFd<'_>) -> Result<libc::statvfs> {
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let path = proc_path(fd.as_raw_fd(), None);
    check(unsafe { libc::statvfs(path.as_ptr(), &mut st) })?;
    Ok(st)
}

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
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const OPEN_TREE_CLONE: u32 = 1;
const AT_RECURSIVE: u32 = 0x8000;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOATIME: u64 = 0x10;
const MOUNT_ATTR_ATIME_MASK: u64 = 0x70;

/// A private, detached copy of the mount tree at `path`, made read-only and `noatime`: nothing
/// done through it can write to the layer, not even an atime (kernel overlayfs does the same
/// with its layers). Needs mount privileges; `None` when refused.
pub fn private_readonly_tree(path: &std::path::Path) -> Option<OwnedFd> {
    let c = cstr(path.as_os_str()).ok()?;
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as u32 | AT_RECURSIVE,
        )
    };
    if fd < 0 {
        return None;
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    set_tree_attrs(
        fd.as_fd(),
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOATIME,
        MOUNT_ATTR_ATIME_MASK,
    )
    .ok()
    .map(|()| fd)
}

/// Makes the mount at `fd` (an `O_PATH` fd of its root) and every mount below it read-only.
pub fn make_tree_readonly(fd: BorrowedFd<'_>) -> Result<()> {
    set_tree_attrs(fd, MOUNT_ATTR_RDONLY, 0)
}

/// mount_setattr(2) on the mount at `fd` and every mount below it.
fn set_tree_attrs(fd: BorrowedFd<'_>, set: u64, clear: u64) -> Result<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd: 0,
    };
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH as u32 | AT_RECURSIVE) as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        ) as i32
    })
    .map(drop)
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

pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> Result<()> {
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

pub fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32, dev: u64) -> Result<()> {
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, dev) }).map(drop)
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> Result<()> {
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

pub fn linkat(
    odir: BorrowedFd<'_>,
    oname: &CStr,
    ndir: BorrowedFd<'_>,
    nname: &CStr,
) -> Result<()> {
    check(unsafe {
        libc::linkat(
            odir.as_raw_fd(),
            oname.as_ptr(),
            ndir.as_raw_fd(),
            nname.as_ptr(),
            0,
        )
    })
    .map(drop)
}

/// Gives an `O_TMPFILE` file a name (through its `/proc/self/fd` link: no capability needed).
pub fn link_tmpfile(fd: BorrowedFd<'_>, ndir: BorrowedFd<'_>, nname: &CStr) -> Result<()> {
    let (d, p) = fd_link(fd.as_raw_fd());
    check(unsafe {
        libc::linkat(
            d,
            p.as_ptr(),
            ndir.as_raw_fd(),
            nname.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    })
    .map(drop)
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> Result<()> {
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;
pub const RENAME_WHITEOUT: u32 = 4;

pub fn renameat2(
    odir: BorrowedFd<'_>,
    oname: &CStr,
    ndir: BorrowedFd<'_>,
    nname: &CStr,
    flags: u32,
) -> Result<()> {
    check(unsafe {
        libc::renameat2(
            odir.as_raw_fd(),
            oname.as_ptr(),
            ndir.as_raw_fd(),
            nname.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

pub fn fchownat(dir: BorrowedFd<'_>, name: &CStr, uid: u32, gid: u32) -> Result<()> {
    check(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// chmod of `name` in `dir` (or of `dir` itself), never through a symlink.
pub fn chmod_at(dir: BorrowedFd<'_>, name: Option<&CStr>, mode: u32) -> Result<()> {
    match name {
        // fchmodat2 (Linux 6.6) takes an O_PATH fd with AT_EMPTY_PATH; fchmod does not.
        None => check(unsafe {
            libc::syscall(
                libc::SYS_fchmodat2,
                dir.as_raw_fd(),
                c"".as_ptr(),
                mode,
                libc::AT_EMPTY_PATH,
            ) as i32
        })
        .or_else(|_| check(unsafe { libc::fchmod(dir.as_raw_fd(), mode) }))
        .or_else(|_| {
            let (d, p) = fd_link(dir.as_raw_fd());
            check(unsafe { libc::fchmodat(d, p.as_ptr(), mode, 0) })
        })
        .map(drop),
        // The object itself through an O_PATH fd on it, as for `None`.
        Some(n) => {
            let fd = openat(dir, n, libc::O_PATH, 0)?;
            let st = fstat(fd.as_fd())?;
            if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
                return Err(Errno(libc::EOPNOTSUPP));
            }
            chmod_at(fd.as_fd(), None, mode)
        }
    }
}

/// Sets times of `name` in `dir` (never through a symlink), or of `dir` itself for "".
pub fn utimensat(dir: BorrowedFd<'_>, name: &CStr, ts: &[libc::timespec; 2]) -> Result<()> {
    let r = if name.is_empty() {
        let (d, p) = fd_link(dir.as_raw_fd());
        unsafe { libc::utimensat(d, p.as_ptr(), ts.as_ptr(), 0) }
    } else {
        unsafe {
            libc::utimensat(
                dir.as_raw_fd(),
                name.as_ptr(),
                ts.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        }
    };
    check(r).map(drop)
}

/// Opens the object an `O_PATH` fd stands for, through its `/proc/self/fd` link.
pub fn reopen(fd: BorrowedFd<'_>, flags: i32) -> Result<OwnedFd> {
    let (d, p) = fd_link(fd.as_raw_fd());
    let r = retry(-1, || unsafe {
        libc::openat(d, p.as_ptr(), flags | libc::O_CLOEXEC)
    })?;
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// Sets (or with `value` None removes) an xattr of `name` in `dir`, or of `dir` itself.
pub fn setxattr(
    dir: BorrowedFd<'_>,
    name: Option<&CStr>,
    attr: &CStr,
    value: Option<&[u8]>,
    flags: i32,
) -> Result<()> {
    let at = xattr_at(dir, name);
    let r = match value {
        Some(v) => {
            let args = XattrArgs {
                value: v.as_ptr() as u64,
                size: v.len() as u32,
                flags: flags as u32,
            };
            xattrat(|| unsafe {
                libc::syscall(
                    SYS_SETXATTRAT,
                    at.dir,
                    at.path.as_ptr(),
                    at.flags,
                    attr.as_ptr(),
                    &args as *const XattrArgs,
                    std::mem::size_of::<XattrArgs>(),
                )
            })
        }
        None => xattrat(|| unsafe {
            libc::syscall(
                SYS_REMOVEXATTRAT,
                at.dir,
                at.path.as_ptr(),
                at.flags,
                attr.as_ptr(),
            )
        }),
    };
    if let Some(r) = r {
        return check(r as i32).map(drop);
    }
    let path = proc_path(dir.as_raw_fd(), name);
    let r = unsafe {
        match (value, name.is_some()) {
            (Some(v), true) => libc::lsetxattr(
                path.as_ptr(),
                attr.as_ptr(),
                v.as_ptr().cast(),
                v.len(),
                flags,
            ),
            (Some(v), false) => libc::setxattr(
                path.as_ptr(),
                attr.as_ptr(),
                v.as_ptr().cast(),
                v.len(),
                flags,
            ),
            (None, true) => libc::lremovexattr(path.as_ptr(), attr.as_ptr()),
            (None, false) => libc::removexattr(path.as_ptr(), attr.as_ptr()),
        }
    };
    check(r).map(drop)
}

pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], off: u64) -> Result<usize> {
    let n = retry(-1, || unsafe {
        libc::pwrite(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            off as libc::off_t,
        )
    })?;
    Ok(n as usize)
}

pub fn ftruncate(fd: BorrowedFd<'_>, len: u64) -> Result<()> {
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) }).map(drop)
}

pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> Result<()> {
    let r = unsafe {
        if datasync {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    };
    check(r).map(drop)
}

pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, off: u64, len: u64) -> Result<()> {
    check(unsafe { libc::fallocate(fd.as_raw_fd(), mode, off as libc::off_t, len as libc::off_t) })
        .map(drop)
}

pub fn lseek(fd: BorrowedFd<'_>, off: i64, whence: i32) -> Result<i64> {
    let r = unsafe { libc::lseek(fd.as_raw_fd(), off, whence) };
    if r < 0 { Err(Errno::last()) } else { Ok(r) }
}

/// Copies `size` bytes (or to EOF) from `src` to the empty `dst` at the same offsets,
/// keeping holes: only the data extents are copied, with `copy_file_range` (reflinks where
/// the filesystem has them), across filesystems in the kernel with `sendfile`. `dense`: the
/// source's blocks cover its size, so it has no hole to look for.
pub fn copy_data(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, size: u64, dense: bool) -> Result<()> {
    let mut off: i64 = 0;
    let mut written_to: i64 = 0;
    while (off as u64) < size {
        let data = match dense {
            true => off,
            false => match lseek(src, off, libc::SEEK_DATA) {
                Ok(d) => d,
                Err(Errno(libc::ENXIO)) => break,
                Err(Errno(libc::EINVAL)) => off, // no SEEK_DATA here: copy everything
                Err(e) => return Err(e),
            },
        };
        let hole = match dense {
            true => size as i64,
            false => lseek(src, data, libc::SEEK_HOLE).unwrap_or(size as i64),
        };
        let mut pos = data;
        while pos < hole {
            let mut in_off = pos as libc::loff_t;
            let mut out_off = pos as libc::loff_t;
            let n = unsafe {
                libc::copy_file_range(
                    src.as_raw_fd(),
                    &mut in_off,
                    dst.as_raw_fd(),
                    &mut out_off,
                    (hole - pos) as usize,
                    0,
                )
            };
            if n < 0 {
                match Errno::last().0 {
                    libc::EXDEV | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS => {
                        let end = copy_by_splice(src, dst, pos as u64, (hole - pos) as u64)?;
                        written_to = end as i64;
                        if written_to < hole {
                            break; // the source ended early
                        }
                        pos = hole;
                        continue;
                    }
                    libc::EINTR => continue,
                    e => return Err(Errno(e)),
                }
            }
            if n == 0 {
                break;
            }
            pos += n as i64;
            written_to = pos;
        }
        off = hole;
    }
    // A hole at the end, or a source shorter than said: the size is set, not written.
    match written_to as u64 == size {
        true => Ok(()),
        false => ftruncate(dst, size),
    }
}

/// Between filesystems (`copy_file_range` only works within one): `sendfile`, which copies
/// in the kernel through the page cache as overlayfs's own copy-up does, with no buffer here.
/// Where the files do not support it, through a buffer. Returns the offset it copied to.
fn copy_by_splice(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, off: u64, len: u64) -> Result<u64> {
    let mut in_off = off as libc::off_t;
    let end = (off + len) as libc::off_t;
    // sendfile writes at the destination's file offset.
    lseek(dst, in_off, libc::SEEK_SET)?;
    while in_off < end {
        let want = ((end - in_off) as usize).min(1 << 30);
        let n = unsafe { libc::sendfile(dst.as_raw_fd(), src.as_raw_fd(), &mut in_off, want) };
        match n {
            0 => break,
            n if n > 0 => {}
            _ => match Errno::last().0 {
                libc::EINTR => {}
                libc::EINVAL | libc::ENOSYS => {
                    let done = in_off as u64;
                    return copy_by_read(src, dst, done, off + len - done);
                }
                e => return Err(Errno(e)),
            },
        }
    }
    Ok(in_off as u64)
}

fn copy_by_read(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    mut off: u64,
    mut len: u64,
) -> Result<u64> {
    // Zeroed memory costs its size again: no bigger than the copy.
    let mut buf = vec![0u8; len.clamp(1, 1 << 20) as usize];
    while len > 0 {
        let want = len.min(buf.len() as u64) as usize;
        let n = pread(src, &mut buf[..want], off)?;
        if n == 0 {
            break;
        }
        let mut done = 0;
        while done < n {
            done += pwrite(dst, &buf[done..n], off + done as u64)?;
        }
        off += n as u64;
        len -= n as u64;
    }
    Ok(off)
}

pub fn set_umask_zero() {
    unsafe { libc::umask(0) };
}

/// `fchownat(fd, "", AT_EMPTY_PATH)`: works on `O_PATH` fds.
pub fn fchownat_empty(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> Result<()> {
    check(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
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
        let prev_gid = unsafe { libc::setfsgid(gid) } as u32;
        if unsafe { libc::setfsgid(u32::MAX) } as u32 != gid {
            unsafe { libc::setfsgid(prev_gid) };
            return None;
        }
        let prev_uid = unsafe { libc::setfsuid(uid) } as u32;
        if unsafe { libc::setfsuid(u32::MAX) } as u32 != uid {
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
        unsafe {
            libc::setfsuid(self.uid);
            libc::setfsgid(self.gid);
        }
    }
}
