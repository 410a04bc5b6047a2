//! Extended attributes of a name in a directory or of an fd itself, never through a symlink:
//! the `*xattrat` calls where the kernel has them, else the `/proc/self/fd` link.

use super::*;

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
    // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
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
        // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
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
        // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
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
        // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
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
            // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
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
        // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
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
    // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
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
