//! The `*at` calls on files and directories: open, stat, list, create, link, rename, chmod,
//! chown, times, read and write.

use super::*;

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC)`.
pub fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> Result<OwnedFd> {
    // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
    let fd = retry(-1, || unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode,
        )
    })?;
    // SAFETY: the fd was just made by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a path given by the user (layer roots, mountpoints) as an `O_PATH` directory fd.
pub fn open_dir_path(path: &std::path::Path) -> Result<OwnedFd> {
    let c = cstr(path.as_os_str())?;
    // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
    let fd = check(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: the fd was just made by the kernel and is owned by nobody else.
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
    // SAFETY: plain C data, for which all zeroes is a valid value; the call below fills it in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
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
    // SAFETY: plain C data, for which all zeroes is a valid value; the call below fills it in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
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
    // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
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
    // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
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
        // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
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

/// `flock(2)` on an open file: the lock goes with the last fd of the open file description.
pub fn flock(fd: BorrowedFd<'_>, op: i32) -> Result<()> {
    // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
    if unsafe { libc::flock(fd.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(Errno::last())
    }
}

/// An open-file-description lock (`F_OFD_SETLK`) of kind `kind` (`F_RDLCK`, `F_UNLCK`) on
/// byte 0 of `fd`: independent of `flock`, released with the last fd of the description.
pub fn ofd_lock(fd: BorrowedFd<'_>, kind: i32) -> Result<()> {
    // SAFETY: plain C data, for which all zeroes is a valid value.
    let mut l: libc::flock = unsafe { std::mem::zeroed() };
    l.l_type = kind as i16;
    l.l_whence = libc::SEEK_SET as i16;
    l.l_len = 1;
    // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &mut l) }).map(drop)
}

/// Whether another open file description holds an [`ofd_lock`] on byte 0 of `fd`'s file.
pub fn ofd_locked_elsewhere(fd: BorrowedFd<'_>) -> Result<bool> {
    // SAFETY: plain C data, for which all zeroes is a valid value.
    let mut l: libc::flock = unsafe { std::mem::zeroed() };
    l.l_type = libc::F_WRLCK as i16;
    l.l_whence = libc::SEEK_SET as i16;
    l.l_len = 1;
    // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_GETLK, &mut l) })?;
    Ok(l.l_type != libc::F_UNLCK as i16)
}

pub fn fstatvfs(fd: BorrowedFd<'_>) -> Result<libc::statvfs> {
    // SAFETY: plain C data, for which all zeroes is a valid value; the call below fills it in.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let path = proc_path(fd.as_raw_fd(), None);
    // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
    check(unsafe { libc::statvfs(path.as_ptr(), &mut st) })?;
    Ok(st)
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> Result<()> {
    // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

pub fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32, dev: u64) -> Result<()> {
    // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, dev) }).map(drop)
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> Result<()> {
    // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

pub fn linkat(
    odir: BorrowedFd<'_>,
    oname: &CStr,
    ndir: BorrowedFd<'_>,
    nname: &CStr,
) -> Result<()> {
    // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
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
    // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
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
    // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
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
    // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
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
    // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
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
        // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
        None => check(unsafe {
            libc::syscall(
                libc::SYS_fchmodat2,
                dir.as_raw_fd(),
                c"".as_ptr(),
                mode,
                libc::AT_EMPTY_PATH,
            ) as i32
        })
        // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
        .or_else(|_| check(unsafe { libc::fchmod(dir.as_raw_fd(), mode) }))
        .or_else(|_| {
            let (d, p) = fd_link(dir.as_raw_fd());
            // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
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
        // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
        unsafe { libc::utimensat(d, p.as_ptr(), ts.as_ptr(), 0) }
    } else {
        // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
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
    // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
    let r = retry(-1, || unsafe {
        libc::openat(d, p.as_ptr(), flags | libc::O_CLOEXEC)
    })?;
    // SAFETY: the fd was just made by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// A zeroed buffer whose memory is aligned for direct I/O: a file opened with `O_DIRECT`
/// takes only buffers aligned to its device's logical block, and a page covers every block
/// size a filesystem here may have.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    const ALIGN: usize = 4096;

    pub fn new(len: usize) -> AlignedBuf {
        let layout = std::alloc::Layout::from_size_align(len.max(1), Self::ALIGN)
            .expect("a buffer smaller than isize::MAX");
        // SAFETY: the layout's size is not zero.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr =
            std::ptr::NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len, layout }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len` zeroed (so initialised) bytes from `ptr` are ours.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], off: u64) -> Result<usize> {
    // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
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
    // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) }).map(drop)
}

pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> Result<()> {
    // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
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
    // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
    check(unsafe { libc::fallocate(fd.as_raw_fd(), mode, off as libc::off_t, len as libc::off_t) })
        .map(drop)
}

pub fn lseek(fd: BorrowedFd<'_>, off: i64, whence: i32) -> Result<i64> {
    // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
    let r = unsafe { libc::lseek(fd.as_raw_fd(), off, whence) };
    if r < 0 { Err(Errno::last()) } else { Ok(r) }
}

/// `fchownat(fd, "", AT_EMPTY_PATH)`: works on `O_PATH` fds.
pub fn fchownat_empty(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> Result<()> {
    // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
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

/// Makes a new directory from a `mkdtemp(3)` template ending in `XXXXXX`; returns its path.
pub fn make_temp_dir(template: &std::path::Path) -> Result<std::path::PathBuf> {
    let mut t = cstr(template.as_os_str())?.into_bytes_with_nul();
    // SAFETY: t is a live, NUL-terminated buffer that mkdtemp rewrites in place.
    if unsafe { libc::mkdtemp(t.as_mut_ptr().cast()) }.is_null() {
        return Err(Errno::last());
    }
    t.pop();
    Ok(OsString::from_vec(t).into())
}

/// Whether `path` is a directory this process may write to, on a filesystem mounted
/// read-write.
pub fn is_writable_dir(path: &std::path::Path) -> bool {
    let Ok(c) = cstr(path.as_os_str()) else {
        return false;
    };
    // SAFETY: c is NUL-terminated; st is plain data statvfs fills in.
    unsafe {
        if libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) != 0 {
            return false;
        }
        let mut st: libc::statvfs = std::mem::zeroed();
        libc::statvfs(c.as_ptr(), &mut st) == 0 && st.f_flag & libc::ST_RDONLY == 0
    }
}

/// A `stat` of all zeroes (a negative entry's attributes).
pub fn zeroed_stat() -> libc::stat {
    // SAFETY: stat is plain data, for which all zeroes is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Opens `path` as an `O_PATH` fd, resolving every component (symlinks included) as if
/// `root` were `/`: nothing inside can lead outside of it (`openat2` with
/// `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`).
pub fn open_in_root(root: BorrowedFd<'_>, path: &std::path::Path) -> Result<OwnedFd> {
    let rel: std::path::PathBuf = path
        .components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .collect();
    let rel = if rel.as_os_str().is_empty() {
        ".".into()
    } else {
        rel
    };
    let c = cstr(rel.as_os_str())?;
    // SAFETY: open_how is plain data, for which all zeroes is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: root is borrowed, c is NUL-terminated, how is a live open_how of the size given.
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
        return Err(Errno::last());
    }
    // SAFETY: the fd was just made and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `lstat(2)` of a path.
pub fn lstat_path(path: &std::path::Path) -> Result<libc::stat> {
    let p = cstr(path.as_os_str())?;
    // SAFETY: stat is plain data that lstat fills in whole before it is read.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: p is NUL-terminated and st is a live stat.
    check(unsafe { libc::lstat(p.as_ptr(), &mut st) })?;
    Ok(st)
}

/// Where and how a real object is reached: a directory fd and a name in it, or the object's
/// own fd (`name` None).
#[derive(Clone, Copy)]
pub struct At<'a> {
    pub dir: BorrowedFd<'a>,
    pub name: Option<&'a CStr>,
}

/// Changes the owner of what `at` reaches, without following a symlink.
pub fn chown_at(at: At<'_>, uid: u32, gid: u32) -> Result<()> {
    match at.name {
        Some(n) => fchownat(at.dir, n, uid, gid),
        None => fchownat_empty(at.dir, uid, gid),
    }
}

/// The inode attribute ioctls kernel overlayfs passes to the real file (`lsattr`, `chattr`,
/// `xfs_io -c lsattr`): `FS_IOC_GETFLAGS`, `FS_IOC_SETFLAGS`, `FS_IOC_FSGETXATTR`,
/// `FS_IOC_FSSETXATTR`, with whether each sets.
pub const INODE_ATTR_IOCTLS: [(u32, bool); 4] = [
    (libc::FS_IOC_GETFLAGS as u32, false),
    (libc::FS_IOC_SETFLAGS as u32, true),
    // _IOR('X', 31, struct fsxattr) and _IOW('X', 32, struct fsxattr): 28 bytes.
    (0x801c_581f, false),
    (0x401c_5820, true),
];

/// One of [`INODE_ATTR_IOCTLS`] on `fd`, its argument (and result) in `data`, which must
/// hold the argument's size (an int of flags, or a `struct fsxattr`).
pub fn inode_attr_ioctl(fd: BorrowedFd<'_>, cmd: u32, data: &mut [u8]) -> Result<()> {
    let need = if cmd == libc::FS_IOC_GETFLAGS as u32 || cmd == libc::FS_IOC_SETFLAGS as u32 {
        std::mem::size_of::<libc::c_int>()
    } else if INODE_ATTR_IOCTLS.iter().any(|(c, _)| *c == cmd) {
        28
    } else {
        return Err(Errno(libc::ENOTTY));
    };
    if data.len() < need {
        return Err(Errno(libc::EINVAL));
    }
    // SAFETY: cmd is one of the four inode attribute ioctls, whose argument is a pointer to
    // a buffer of `need` bytes, which `data` holds (checked above); the kernel reads or
    // writes only those.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), cmd as _, data.as_mut_ptr()) }).map(drop)
}
