//! The mount API: detached read-only trees, `mount_setattr`, mount, umount, pivot_root.

use super::*;

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

/// A private, detached copy of the mount tree at `path`, made read-only and `noatime` where
/// allowed: nothing done through it can write to the layer, not even an atime (kernel
/// overlayfs does the same with its layers). Needs mount privileges; `None` when refused.
pub fn private_readonly_tree(path: &std::path::Path) -> Option<OwnedFd> {
    let c = cstr(path.as_os_str()).ok()?;
    // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
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
    // SAFETY: the fd was just made by the kernel and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    // In a user namespace, copies of the host's mounts have their atime setting locked: then
    // read-only alone. Either way the clone is kept: being detached, it holds none of the
    // mounts around it (a rootless run's namespace lets go of them).
    if set_tree_attrs(
        fd.as_fd(),
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOATIME,
        MOUNT_ATTR_ATIME_MASK,
    )
    .is_err()
    {
        let _ = set_tree_attrs(fd.as_fd(), MOUNT_ATTR_RDONLY, 0);
    }
    Some(fd)
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
    // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
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

/// `mount(2)`.
pub fn mount(
    src: &OsStr,
    target: &OsStr,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<()> {
    let (src, target) = (cstr(src)?, cstr(target)?);
    let fstype = fstype.map(|f| cstr(OsStr::new(f))).transpose()?;
    let data = data.map(|d| cstr(OsStr::new(d))).transpose()?;
    // SAFETY: every string is NUL-terminated and lives through the call; the optional ones
    // are null when absent, as mount(2) allows.
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    })
    .map(drop)
}

/// Changes the propagation of every mount at and below `path` to private.
pub fn make_private(path: &std::path::Path) -> Result<()> {
    let p = cstr(path.as_os_str())?;
    // SAFETY: p is NUL-terminated; a propagation change takes no source, type or data.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            p.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    })
    .map(drop)
}

/// `umount2(2)`.
pub fn umount(path: &std::path::Path, flags: i32) -> Result<()> {
    let p = cstr(path.as_os_str())?;
    // SAFETY: p is NUL-terminated.
    check(unsafe { libc::umount2(p.as_ptr(), flags) }).map(drop)
}

/// Makes the directory `root` the process's `/` and detaches the old root entirely; the
/// working directory ends up at the new `/`.
pub fn pivot_into(root: BorrowedFd<'_>) -> std::result::Result<(), (&'static str, Errno)> {
    // SAFETY: root is borrowed for the call.
    check(unsafe { libc::fchdir(root.as_raw_fd()) })
        .map_err(|e| ("cannot enter the new root", e))?;
    // new_root and put_old both ".": the old root ends up stacked under the new one, where it
    // is detached at once. No directory needs to exist for it.
    // SAFETY: both paths are NUL-terminated literals.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) } as i32)
        .map_err(|e| ("pivot_root", e))?;
    umount(std::path::Path::new("."), libc::MNT_DETACH)
        .map_err(|e| ("cannot detach the old root", e))?;
    // SAFETY: a NUL-terminated literal.
    check(unsafe { libc::chdir(c"/".as_ptr()) }).map_err(|e| ("chdir /", e))?;
    Ok(())
}
