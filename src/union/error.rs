//! The core's error: the errno the kernel gets, what failed (where the core knows more than
//! the errno says), and how loud a log line it deserves.

use crate::sys::Errno;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error {
    pub errno: Errno,
    /// The step that failed ("copy-up", "whiteout", …); empty when the errno says it all.
    pub what: &'static str,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn code(&self) -> i32 {
        self.errno.0
    }

    /// Answers a program expects in normal work (a name not there, a directory not empty,
    /// a read-only union) are logged at debug; anything else at warn, and a failure of the
    /// union's own machinery (a named step) at error.
    pub fn level(&self) -> log::Level {
        match self.errno.0 {
            libc::ENOENT
            | libc::EEXIST
            | libc::ENOTEMPTY
            | libc::ENOTDIR
            | libc::EISDIR
            | libc::ENODATA
            | libc::EROFS
            | libc::ENAMETOOLONG
            | libc::EPERM
            | libc::EACCES
            | libc::EINVAL
            | libc::ERANGE
            | libc::EXDEV
            | libc::ENOTTY
            | libc::ELOOP
            | libc::EOPNOTSUPP => log::Level::Debug,
            _ if !self.what.is_empty() => log::Level::Error,
            _ => log::Level::Warn,
        }
    }
}

impl From<Errno> for Error {
    fn from(errno: Errno) -> Error {
        Error { errno, what: "" }
    }
}

impl From<Error> for Errno {
    fn from(e: Error) -> Errno {
        e.errno
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.what.is_empty() {
            write!(f, "{}", self.errno)
        } else {
            write!(f, "{}: {}", self.what, self.errno)
        }
    }
}

impl std::error::Error for Error {}

/// Names the step a failure happened in; the innermost name is kept.
pub trait Context<T> {
    fn context(self, what: &'static str) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: &'static str) -> Result<T> {
        self.map_err(|e| {
            let mut e = e.into();
            if e.what.is_empty() {
                e.what = what;
            }
            e
        })
    }
}
