//! Every whiteout and opaque-directory format found in the wild, read in one place.
//!
//! - kernel overlayfs: a character device 0/0; a zero-size regular file (or fifo) carrying a
//!   `*.overlay.whiteout` xattr; a directory with `*.overlay.opaque` = `y`;
//! - OCI image layers: `.wh.NAME` beside the hidden name, `.wh..wh..opq` inside an opaque dir;
//! - fuse-overlayfs: `user.fuseoverlayfs.opaque` = `y`.

use std::ffi::{CStr, OsStr};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;

use crate::sys::{self, Result};

pub const OCI_PREFIX: &[u8] = b".wh.";
pub const OCI_OPAQUE: &CStr = c".wh..wh..opq";

const OPAQUE_XATTRS: [&CStr; 3] = [
    c"trusted.overlay.opaque",
    c"user.overlay.opaque",
    c"user.fuseoverlayfs.opaque",
];
const REDIRECT_XATTRS: [&CStr; 2] = [c"trusted.overlay.redirect", c"user.overlay.redirect"];
const NLINK_XATTRS: [&CStr; 2] = [c"trusted.overlay.nlink", c"user.overlay.nlink"];
const WHITEOUT_XATTRS: [&CStr; 2] = [c"trusted.overlay.whiteout", c"user.overlay.whiteout"];

/// Extended attributes that belong to the overlay machinery and are never shown in the view.
pub fn is_private_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.")
        || name.starts_with(b"user.overlay.")
        || name.starts_with(b"user.fuseoverlayfs.")
}

/// `.wh.NAME` -> `Some(NAME)`; the opaque marker and ordinary names -> `None`.
pub fn oci_target(name: &OsStr) -> Option<&OsStr> {
    let b = name.as_bytes();
    if b == OCI_OPAQUE.to_bytes() {
        return None;
    }
    b.strip_prefix(OCI_PREFIX).map(OsStr::from_bytes)
}

/// Names reserved by the OCI format: never shown, never looked up.
pub fn is_oci_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(OCI_PREFIX)
}

/// Is the entry `name` in `dir`, with status `st`, a whiteout in a kernel format?
pub fn is_whiteout(dir: BorrowedFd<'_>, name: &CStr, st: &libc::stat) -> Result<bool> {
    let fmt = st.st_mode & libc::S_IFMT;
    if fmt == libc::S_IFCHR {
        return Ok(st.st_rdev == 0);
    }
    if (fmt == libc::S_IFREG && st.st_size == 0) || fmt == libc::S_IFIFO {
        // One listing, not a probe per format: most such files have no xattrs at all.
        let names = sys::listxattr(dir, Some(name))?;
        return Ok(WHITEOUT_XATTRS
            .iter()
            .any(|x| names.iter().any(|n| n.as_slice() == x.to_bytes())));
    }
    Ok(false)
}

/// Does the directory `dir` say it may hold xattr whiteouts (opaque xattr "x", as kernel
/// overlayfs marks it)? Only there does a listing look at regular files and fifos to find
/// them; elsewhere they are honoured by lookup alone, as the kernel does.
pub fn may_hold_xattr_whiteouts(dir: BorrowedFd<'_>) -> Result<bool> {
    for x in &OPAQUE_XATTRS[..2] {
        if sys::getxattr(dir, None, x)?.as_deref() == Some(b"x") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What a real directory says about the layers below it: opaque (they are cut off), and a
/// redirect (they are asked for another path). One xattr listing covers both formats.
#[derive(Debug, Default, Clone)]
pub struct Markers {
    pub opaque: bool,
    pub redirect: Option<Redirect>,
}

/// Where the layers below a renamed directory keep its content (overlayfs' `redirect_dir`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// A path from the layers' roots.
    Absolute(Vec<std::ffi::OsString>),
    /// Another name in the same parent.
    Relative(std::ffi::OsString),
}

impl Redirect {
    /// Parses an xattr value as the kernel accepts it: `/a/b` or a single name; no empty,
    /// `.` or `..` component (a redirect never leaves the layer). `None`: not a valid one.
    pub fn parse(v: &[u8]) -> Option<Redirect> {
        let ok = |c: &[u8]| !c.is_empty() && c != b"." && c != b".." && c.len() <= 255;
        match v.strip_prefix(b"/") {
            Some(abs) => {
                let comps: Vec<&[u8]> = abs
                    .split(|&b| b == b'/')
                    .filter(|c| !c.is_empty())
                    .collect();
                if comps.is_empty() || !comps.iter().all(|c| ok(c)) || v.contains(&0) {
                    return None;
                }
                Some(Redirect::Absolute(
                    comps
                        .iter()
                        .map(|c| OsStr::from_bytes(c).to_owned())
                        .collect(),
                ))
            }
            None if ok(v) && !v.contains(&b'/') && !v.contains(&0) => {
                Some(Redirect::Relative(OsStr::from_bytes(v).to_owned()))
            }
            None => None,
        }
    }
}

/// Reads the opaque and redirect markers of the directory `dir`. As in the kernel, an opaque
/// directory's redirect is not followed.
pub fn dir_markers(dir: BorrowedFd<'_>) -> Result<Markers> {
    let names = sys::listxattr(dir, None)?;
    let has = |x: &CStr| names.iter().any(|n| n.as_slice() == x.to_bytes());
    for x in OPAQUE_XATTRS {
        if has(x) && sys::getxattr(dir, None, x)?.as_deref() == Some(b"y") {
            return Ok(Markers {
                opaque: true,
                redirect: None,
            });
        }
    }
    match sys::fstatat(dir, OCI_OPAQUE) {
        Ok(_) => {
            return Ok(Markers {
                opaque: true,
                redirect: None,
            });
        }
        Err(sys::Errno(libc::ENOENT)) => {}
        Err(e) => return Err(e),
    }
    Ok(Markers {
        opaque: false,
        redirect: read_redirect(dir, &names)?,
    })
}

/// The first valid redirect among the xattrs `names` of `dir`.
fn read_redirect(dir: BorrowedFd<'_>, names: &[Vec<u8>]) -> Result<Option<Redirect>> {
    for x in REDIRECT_XATTRS {
        if names.iter().any(|n| n.as_slice() == x.to_bytes())
            && let Some(v) = sys::getxattr(dir, None, x)?
            && let Some(r) = Redirect::parse(&v)
        {
            return Ok(Some(r));
        }
    }
    Ok(None)
}

/// Does `dir` hold an OCI whiteout `.wh.NAME` for `name`?
pub fn has_oci_whiteout(dir: BorrowedFd<'_>, name: &OsStr) -> Result<bool> {
    let Ok(c) = oci_whiteout_name(name) else {
        return Ok(false);
    };
    match sys::fstatat(dir, &c) {
        Ok(_) => Ok(true),
        Err(sys::Errno(libc::ENOENT)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `.wh.NAME` for `name`, as a C string.
pub fn oci_whiteout_name(name: &OsStr) -> Result<std::ffi::CString> {
    let mut w = OCI_PREFIX.to_vec();
    w.extend_from_slice(name.as_bytes());
    if w.len() > 255 {
        return Err(sys::Errno(libc::ENAMETOOLONG));
    }
    sys::cstr(OsStr::from_bytes(&w))
}

/// What the upper directory holds under a name that is about to be (re)made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Empty,
    /// A kernel-format whiteout object sits at the name.
    Whiteout,
    /// An OCI `.wh.NAME` sits beside it.
    OciWhiteout,
    Taken,
}

pub fn upper_slot(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Slot> {
    let c = sys::cstr(name)?;
    match sys::fstatat(dir, &c) {
        Ok(st) if is_whiteout(dir, &c, &st)? => Ok(Slot::Whiteout),
        Ok(_) => Ok(Slot::Taken),
        Err(sys::Errno(libc::ENOENT)) if has_oci_whiteout(dir, name)? => Ok(Slot::OciWhiteout),
        Err(sys::Errno(libc::ENOENT)) => Ok(Slot::Empty),
        Err(e) => Err(e),
    }
}

/// The redirect of an upper directory that was renamed (overlayfs' `redirect_dir`): where
/// its lower content is, as an absolute path from the layers' roots (`/a/b`) or a name in
/// the same parent's lower directories.
pub fn redirect_of(dir: BorrowedFd<'_>) -> Result<Option<Redirect>> {
    read_redirect(dir, &sys::listxattr(dir, None)?)
}

/// The link count adjustment of an upper file (overlayfs' `overlay.nlink` = "U+N" / "U-N":
/// the view's count is the upper's plus N); 0 without one.
pub fn nlink_adjustment(obj: BorrowedFd<'_>) -> Result<i64> {
    // One listing, not a probe per namespace: most files have no such xattr.
    let names = sys::listxattr(obj, None)?;
    for x in NLINK_XATTRS {
        if !names.iter().any(|n| n.as_slice() == x.to_bytes()) {
            continue;
        }
        let parsed = sys::getxattr(obj, None, x)?.and_then(|v| {
            std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.strip_prefix('U'))
                .and_then(|n| n.parse::<i64>().ok())
        });
        if let Some(n) = parsed {
            return Ok(n);
        }
    }
    Ok(0)
}

/// The xattr value of a link count adjustment.
pub fn nlink_value(n: i64) -> Vec<u8> {
    format!("U{n:+}").into_bytes()
}
