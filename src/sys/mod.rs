//! The one syscall floor: every `unsafe` of the crate lives under this module, one file per
//! family of calls (`fs`, `xattr`, `copy`, `mount`, `process`, `term`), each re-exported here so the
//! rest of the crate says `sys::openat` whatever the family.
//!
//! Safety contract, which every `unsafe` block below relies on and states in its `SAFETY:`
//! comment:
//! - a pointer handed to the kernel points at memory that lives, is initialized as far as the
//!   call reads it, and is large enough for what the call writes (a `CStr` is NUL-terminated, a
//!   buffer's length is passed with it, a struct is `#[repr(C)]` as the kernel defines it);
//! - an fd passed to a call is borrowed from an `OwnedFd` or a `BorrowedFd` that outlives the
//!   call, so it cannot be closed and reused in between; an fd a call returns is owned at once
//!   (`OwnedFd::from_raw_fd`) by exactly one owner;
//! - calls that change process-wide state (`fork`, `unshare`, signal masks, `setfsuid`) are made
//!   only where the caller's documentation says the process is in the state they need
//!   (single-threaded before `fork`/`unshare(CLONE_NEWUSER)`, per thread for `setfsuid`).
//!
//! The `*at` wrappers take a directory fd and a single name component; none of them follows a
//! symlink in its last component.
#![deny(clippy::undocumented_unsafe_blocks)]

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

impl From<Errno> for io::Error {
    fn from(e: Errno) -> io::Error {
        io::Error::from_raw_os_error(e.0)
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

/// The `/proc/self/fd/N` path of an fd, through which the xattr calls reach an `O_PATH` fd.
fn proc_path(fd: RawFd, name: Option<&CStr>) -> CString {
    let mut p = format!("/proc/self/fd/{fd}").into_bytes();
    if let Some(n) = name {
        p.push(b'/');
        p.extend_from_slice(n.to_bytes());
    }
    CString::new(p).expect("no NUL in a proc path")
}

/// The `/proc/self/fd/N` path of an fd: a path that reaches exactly its object (a mount
/// target that cannot be swapped for a symlink in between).
pub fn fd_path(fd: BorrowedFd<'_>) -> std::path::PathBuf {
    OsString::from_vec(proc_path(fd.as_raw_fd(), None).into_bytes()).into()
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
            // SAFETY: mark_child only stores to an atomic, which is async-signal-safe.
            if unsafe { libc::pthread_atfork(None, None, Some(mark_child)) } != 0 {
                return None;
            }
            openat(
                // SAFETY: AT_FDCWD is a valid directory fd for as long as the process lives.
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

mod copy;
mod fs;
mod mount;
mod process;
mod term;
mod xattr;

pub use copy::*;
pub use fs::*;
pub use mount::*;
pub use process::*;
pub use term::*;
pub use xattr::*;
