//! Every whiteout and opaque-directory format found in the wild, read in one place; and
//! the writing of whiteouts, opaque markers and the xattrs of redirects and link counts.
//!
//! - kernel overlayfs: a character device 0/0; a zero-size regular file (or fifo) carrying a
//!   `*.overlay.whiteout` xattr; a directory with `*.overlay.opaque` = `y`;
//! - OCI image layers: `.wh.NAME` beside the hidden name, `.wh..wh..opq` inside an opaque dir;
//! - fuse-overlayfs: `user.fuseoverlayfs.opaque` = `y`.

use std::ffi::{CStr, OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use super::Union;
use super::error::Context;
use super::work::SHARED_WHITEOUT;
use crate::sys::{self, Errno, Result};

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
    read_redirect_at(dir, None, names)
}

/// The first valid redirect among the xattrs `names` of `dir` (or of `name` in it).
pub fn read_redirect_at(
    dir: BorrowedFd<'_>,
    name: Option<&std::ffi::CStr>,
    names: &[Vec<u8>],
) -> Result<Option<Redirect>> {
    for x in REDIRECT_XATTRS {
        if names.iter().any(|n| n.as_slice() == x.to_bytes())
            && let Some(v) = sys::getxattr(dir, name, x)?
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

// ---- writing ----

/// The formats a mount writes its whiteouts, opaque markers, redirects and link counts in:
/// the kernel's where this process may (a 0/0 device, `trusted.overlay.*`, or
/// `user.overlay.*` where trusted xattrs are refused), else OCI files (`.wh.NAME`,
/// `.wh..wh..opq`), as asked with `whiteout=oci` or forced by the filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Formats {
    pub oci: bool,
    /// `trusted.overlay.*` rather than `user.overlay.*`.
    pub trusted: bool,
}

impl Formats {
    /// What a mount that writes nothing reads as its own (nothing is probed).
    pub fn unprobed(oci: bool) -> Formats {
        Formats { oci, trusted: true }
    }

    /// Tries each format in the (empty) work dir `work`.
    pub fn probe(work: BorrowedFd<'_>, oci: bool) -> Result<Formats> {
        let mut f = Formats::unprobed(oci);
        let probe = c"probe";
        if sys::mknodat(work, probe, libc::S_IFCHR, 0).is_ok() {
            sys::unlinkat(work, probe, 0)?;
        } else {
            f.oci = true;
        }
        sys::mkdirat(work, probe, 0o700)?;
        let pfd = sys::openat(work, probe, libc::O_PATH | libc::O_DIRECTORY, 0)?;
        let set = |x: &CStr| sys::setxattr(pfd.as_fd(), None, x, Some(b"y"), 0).is_ok();
        if !set(OPAQUE_XATTRS[0]) {
            f.trusted = false;
            if !set(OPAQUE_XATTRS[1]) {
                f.oci = true;
            }
        }
        drop(pfd);
        sys::unlinkat(work, probe, libc::AT_REMOVEDIR)?;
        Ok(f)
    }

    fn family(&self, xattrs: [&'static CStr; 2]) -> &'static CStr {
        if self.trusted { xattrs[0] } else { xattrs[1] }
    }

    pub fn opaque_xattr(&self) -> &'static CStr {
        self.family([OPAQUE_XATTRS[0], OPAQUE_XATTRS[1]])
    }

    /// The xattr a redirect is written in: the same family as the opaque marker.
    pub fn redirect_xattr(&self) -> &'static CStr {
        self.family(REDIRECT_XATTRS)
    }

    /// The xattr that marks a metadata-only copy: the same family as the opaque marker.
    pub fn metacopy_xattr(&self) -> &'static CStr {
        self.family([c"trusted.overlay.metacopy", c"user.overlay.metacopy"])
    }

    /// The xattr a link count adjustment is written in.
    pub fn nlink_xattr(&self) -> &'static CStr {
        self.family(NLINK_XATTRS)
    }
}

impl Union {
    /// Makes a whiteout `name` in `dir`, where nothing is. Like overlayfs, a new link to one
    /// whiteout inode kept in the work dir: deleting a name allocates no inode. A new one
    /// takes the shared one's place when it is missing or has all the links it can have.
    fn new_whiteout(&self, dir: BorrowedFd<'_>, name: &CStr) -> super::error::Result<()> {
        let w = self.work()?;
        let work = w.fd();
        for _ in 0..2 {
            match sys::linkat(work, SHARED_WHITEOUT, dir, name) {
                Err(Errno(libc::ENOENT | libc::EMLINK)) => {
                    let t = w.tmp_name();
                    sys::mknodat(work, &t, libc::S_IFCHR, 0)?;
                    sys::renameat2(work, &t, work, SHARED_WHITEOUT, 0).inspect_err(|_| {
                        let _ = sys::unlinkat(work, &t, 0);
                    })?;
                }
                r => return r.map_err(Into::into),
            }
        }
        Ok(sys::mknodat(dir, name, libc::S_IFCHR, 0)?)
    }

    /// Hides `name` in the upper directory `dir`, where nothing is yet.
    pub(super) fn write_whiteout(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
    ) -> super::error::Result<()> {
        if self.formats.oci {
            let w = oci_whiteout_name(name)?;
            drop(sys::openat(dir, &w, libc::O_CREAT | libc::O_WRONLY, 0o600)?);
            return Ok(());
        }
        self.new_whiteout(dir, &sys::cstr(name)?)
            .context("whiteout")
    }

    /// Removes `name` (a directory with `is_dir`, emptied already) from the upper directory
    /// `dir`, leaving a whiteout in its place when `need_whiteout`: in the kernel's format in
    /// one step (the whiteout is renamed over the name, or exchanged with the directory), so
    /// no moment shows the lower object.
    pub(super) fn remove_upper(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        is_dir: bool,
        need_whiteout: bool,
    ) -> super::error::Result<()> {
        let c = sys::cstr(name)?;
        let rm_flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
        if need_whiteout && !self.formats.oci {
            let w = self.work()?;
            let t = w.tmp_name();
            self.new_whiteout(w.fd(), &t)?;
            if is_dir {
                sys::renameat2(w.fd(), &t, dir, &c, sys::RENAME_EXCHANGE)?;
                return Ok(sys::unlinkat(w.fd(), &t, libc::AT_REMOVEDIR)?);
            }
            return Ok(sys::renameat2(w.fd(), &t, dir, &c, 0)?);
        }
        if need_whiteout {
            self.write_whiteout(dir, name)?;
        }
        Ok(sys::unlinkat(dir, &c, rm_flags)?)
    }

    /// Renames `name` in `dir` to `newname` in `newdir`, leaving a whiteout where it was
    /// when `need_whiteout` (in one step where the filesystem has `RENAME_WHITEOUT`).
    pub(super) fn move_leaving_whiteout(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        newdir: BorrowedFd<'_>,
        newname: &OsStr,
        need_whiteout: bool,
    ) -> super::error::Result<()> {
        let (c, nc) = (sys::cstr(name)?, sys::cstr(newname)?);
        if need_whiteout && !self.formats.oci {
            match sys::renameat2(dir, &c, newdir, &nc, sys::RENAME_WHITEOUT) {
                Ok(()) => return Ok(()),
                Err(Errno(libc::EINVAL | libc::EPERM)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        sys::renameat2(dir, &c, newdir, &nc, 0)?;
        if need_whiteout {
            self.write_whiteout(dir, name)?;
        }
        Ok(())
    }

    /// Marks a new upper directory opaque, in the format this mount writes.
    pub(super) fn set_opaque(&self, dir: BorrowedFd<'_>) -> super::error::Result<()> {
        if self.formats.oci {
            drop(sys::openat(
                dir,
                OCI_OPAQUE,
                libc::O_CREAT | libc::O_WRONLY,
                0o600,
            )?);
            return Ok(());
        }
        Ok(sys::setxattr(
            dir,
            None,
            self.formats.opaque_xattr(),
            Some(b"y"),
            0,
        )?)
    }
}

/// Directories of one layer that carry a redirect: (where their content is in the layers
/// below, where they are in this layer), as name components from the root.
pub type RedirectMap = Vec<(Vec<OsString>, Vec<OsString>)>;

/// Walks a layer's directories and lists their redirects, each resolved to a path from the
/// root of the layers below (a relative one is its parent's origin and the name it gives).
pub(super) fn read_redirect_map(root: BorrowedFd<'_>, skip_work: bool) -> Result<RedirectMap> {
    let mut out = RedirectMap::new();
    // (dir, its path here, its origin below: None under an opaque dir without redirect)
    let root = sys::openat(root, c".", libc::O_PATH | libc::O_DIRECTORY, 0)?;
    let mut stack: Vec<(OwnedFd, Vec<OsString>, Option<Vec<OsString>>)> =
        vec![(root, Vec::new(), Some(Vec::new()))];
    while let Some((dir, path, origin)) = stack.pop() {
        for e in sys::read_dir(dir.as_fd())? {
            if e.dtype != libc::DT_DIR && e.dtype != libc::DT_UNKNOWN {
                continue;
            }
            if skip_work && path.is_empty() && super::work::is_work_name(&e.name) {
                continue;
            }
            let c = sys::cstr(&e.name)?;
            let sub = match sys::openat(dir.as_fd(), &c, libc::O_PATH | libc::O_DIRECTORY, 0) {
                Ok(fd) => fd,
                Err(Errno(libc::ENOTDIR | libc::ENOENT)) => continue,
                Err(e) => return Err(e),
            };
            let m = dir_markers(sub.as_fd())?;
            let mut here = path.clone();
            here.push(e.name.clone());
            let below = match &m.redirect {
                Some(Redirect::Absolute(p)) => Some(p.clone()),
                Some(Redirect::Relative(n)) => origin.clone().map(|mut o| {
                    o.push(n.clone());
                    o
                }),
                None if m.opaque => None,
                None => origin.clone().map(|mut o| {
                    o.push(e.name.clone());
                    o
                }),
            };
            if m.redirect.is_some()
                && let Some(b) = &below
            {
                out.push((b.clone(), here.clone()));
            }
            stack.push((sub, here, below));
        }
    }
    Ok(out)
}
