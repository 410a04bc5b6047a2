//! The one-line errors the front ends (`mount`, `run`, the foreign command lines) give a user.

/// A user-facing error: one line, printed as `unionfuse: <msg>`, exit status 1.
#[derive(Debug, PartialEq, Eq)]
pub struct UserError(pub String);

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! bail {
    ($($t:tt)*) => { return Err($crate::error::UserError(format!($($t)*))) };
}
pub(crate) use bail;

pub type Result<T> = std::result::Result<T, UserError>;

/// An error about `subject` (a path, a blob, a layer), said in front of what went wrong:
/// `map_err(about(path.display()))`.
pub fn about<E: std::fmt::Display>(subject: impl std::fmt::Display) -> impl FnOnce(E) -> UserError {
    move |e| UserError(format!("{subject}: {e}"))
}
