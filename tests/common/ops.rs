//! The operations every differential test applies, one enum for all of them: through system
//! calls on a mounted view (`apply`, for the kernel-oracle suites), to the reference model
//! (`model.rs`) and to the union core in-process (`tests/core.rs`).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// One operation on paths relative to the view's root. A result is the bytes an operation
/// returns (a read, a listing; empty for the rest), or the errno.
#[derive(Debug, Clone)]
pub enum Op {
    Create(String, u32, Vec<u8>),
    Write(String, u64, Vec<u8>),
    Append(String, Vec<u8>),
    Truncate(String, u64),
    OpenTrunc(String),
    Chmod(String, u32),
    Chown(String, u32, u32),
    Utime(String, i64),
    SetXattr(String, Vec<u8>),
    RemoveXattr(String),
    Link(String, String),
    Symlink(String, String),
    Mkdir(String, u32),
    Mkfifo(String),
    Unlink(String),
    Rmdir(String),
    Rename(String, String, u32),
    Read(String),
    List(String),
    /// Opens the first name for reading and writing and holds it open, writes through the
    /// second (mostly another name of the same file), then reads through the held one.
    WriteWhileHeld(String, String, u64, Vec<u8>),
}

fn c(root: &Path, p: &str) -> CString {
    CString::new(root.join(p).as_os_str().as_bytes()).unwrap()
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap()
}

fn ok(r: libc::c_int) -> Result<Vec<u8>, i32> {
    if r < 0 { Err(errno()) } else { Ok(vec![]) }
}

fn with_fd(
    path: &CString,
    flags: i32,
    mode: u32,
    f: impl FnOnce(i32) -> isize,
) -> Result<Vec<u8>, i32> {
    // O_NONBLOCK: a random path may be a fifo, which must not block the test.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NONBLOCK,
            mode,
        )
    };
    if fd < 0 {
        return Err(errno());
    }
    let r = f(fd);
    let e = errno();
    unsafe { libc::close(fd) };
    if r < 0 { Err(e) } else { Ok(vec![]) }
}

/// Applies one operation under `root`; the result, or the errno.
pub fn apply(root: &Path, op: &Op) -> Result<Vec<u8>, i32> {
    unsafe {
        match op {
            Op::Create(p, mode, data) => with_fd(
                &c(root, p),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                *mode,
                |fd| libc::write(fd, data.as_ptr().cast(), data.len()),
            ),
            Op::Write(p, off, data) => with_fd(&c(root, p), libc::O_WRONLY, 0, |fd| {
                libc::pwrite(fd, data.as_ptr().cast(), data.len(), *off as i64)
            }),
            Op::Append(p, data) => with_fd(&c(root, p), libc::O_WRONLY | libc::O_APPEND, 0, |fd| {
                libc::write(fd, data.as_ptr().cast(), data.len())
            }),
            Op::Truncate(p, len) => ok(libc::truncate(c(root, p).as_ptr(), *len as i64)),
            Op::OpenTrunc(p) => with_fd(&c(root, p), libc::O_WRONLY | libc::O_TRUNC, 0, |_| 0),
            Op::Chmod(p, mode) => ok(libc::chmod(c(root, p).as_ptr(), *mode)),
            Op::Chown(p, u, g) => ok(libc::lchown(c(root, p).as_ptr(), *u, *g)),
            Op::Utime(p, t) => {
                let ts = [
                    libc::timespec {
                        tv_sec: *t,
                        tv_nsec: 5,
                    },
                    libc::timespec {
                        tv_sec: *t,
                        tv_nsec: 7,
                    },
                ];
                ok(libc::utimensat(
                    libc::AT_FDCWD,
                    c(root, p).as_ptr(),
                    ts.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                ))
            }
            Op::SetXattr(p, v) => ok(libc::lsetxattr(
                c(root, p).as_ptr(),
                c"user.x".as_ptr(),
                v.as_ptr().cast(),
                v.len(),
                0,
            )),
            Op::RemoveXattr(p) => ok(libc::lremovexattr(c(root, p).as_ptr(), c"user.x".as_ptr())),
            Op::Link(s, d) => ok(libc::link(c(root, s).as_ptr(), c(root, d).as_ptr())),
            Op::Symlink(t, d) => {
                let t = CString::new(t.as_str()).unwrap();
                ok(libc::symlink(t.as_ptr(), c(root, d).as_ptr()))
            }
            Op::Mkdir(p, mode) => ok(libc::mkdir(c(root, p).as_ptr(), *mode)),
            Op::Mkfifo(p) => ok(libc::mkfifo(c(root, p).as_ptr(), 0o644)),
            Op::Unlink(p) => ok(libc::unlink(c(root, p).as_ptr())),
            Op::Rmdir(p) => ok(libc::rmdir(c(root, p).as_ptr())),
            Op::Rename(s, d, flags) => ok(libc::renameat2(
                libc::AT_FDCWD,
                c(root, s).as_ptr(),
                libc::AT_FDCWD,
                c(root, d).as_ptr(),
                *flags,
            )),
            Op::Read(p) => {
                use std::io::Read;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(root.join(p))
                    .map_err(|e| e.raw_os_error().unwrap())?;
                let mut v = Vec::new();
                f.read_to_end(&mut v)
                    .map_err(|e| e.raw_os_error().unwrap())?;
                Ok(v)
            }
            Op::WriteWhileHeld(held, other, off, data) => {
                use std::os::unix::fs::{FileExt, OpenOptionsExt};
                let open = |p: &str| {
                    std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .custom_flags(libc::O_NONBLOCK)
                        .open(root.join(p))
                        .map_err(|e| e.raw_os_error().unwrap())
                };
                let h = open(held)?;
                open(other)?
                    .write_all_at(data, *off)
                    .map_err(|e| e.raw_os_error().unwrap())?;
                let mut v = vec![0u8; data.len() + 64];
                let n = h
                    .read_at(&mut v, *off)
                    .map_err(|e| e.raw_os_error().unwrap())?;
                v.truncate(n);
                Ok(v)
            }
            // Names that cannot be looked up are left out: kernel overlayfs lists whiteouts in
            // directories it does not merge (unionfuse must never: `view` checks that).
            Op::List(p) => std::fs::read_dir(root.join(p))
                .map_err(|e| e.raw_os_error().unwrap())
                .map(|rd| {
                    let mut v: Vec<String> = rd
                        .map(|e| e.unwrap().path())
                        .filter(|p| std::fs::symlink_metadata(p).is_ok())
                        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                        .collect();
                    v.sort();
                    v.join("/").into_bytes()
                }),
        }
    }
}

impl Op {
    /// The same operation with every path (not a symlink's target) passed through `f`.
    pub fn map_paths(&self, f: impl Fn(&str) -> String) -> Op {
        match self {
            Op::Create(p, m, d) => Op::Create(f(p), *m, d.clone()),
            Op::Write(p, o, d) => Op::Write(f(p), *o, d.clone()),
            Op::Append(p, d) => Op::Append(f(p), d.clone()),
            Op::Truncate(p, l) => Op::Truncate(f(p), *l),
            Op::OpenTrunc(p) => Op::OpenTrunc(f(p)),
            Op::Chmod(p, m) => Op::Chmod(f(p), *m),
            Op::Chown(p, u, g) => Op::Chown(f(p), *u, *g),
            Op::Utime(p, t) => Op::Utime(f(p), *t),
            Op::SetXattr(p, v) => Op::SetXattr(f(p), v.clone()),
            Op::RemoveXattr(p) => Op::RemoveXattr(f(p)),
            Op::Link(a, b) => Op::Link(f(a), f(b)),
            Op::Symlink(t, p) => Op::Symlink(t.clone(), f(p)),
            Op::Mkdir(p, m) => Op::Mkdir(f(p), *m),
            Op::Mkfifo(p) => Op::Mkfifo(f(p)),
            Op::Unlink(p) => Op::Unlink(f(p)),
            Op::Rmdir(p) => Op::Rmdir(f(p)),
            Op::Rename(a, b, fl) => Op::Rename(f(a), f(b), *fl),
            Op::Read(p) => Op::Read(f(p)),
            Op::List(p) => Op::List(f(p)),
            Op::WriteWhileHeld(h, o, off, d) => Op::WriteWhileHeld(f(h), f(o), *off, d.clone()),
        }
    }
}
