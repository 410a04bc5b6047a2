//! Safe extraction of a layer tar into a directory. The tar crate only parses (PAX and GNU
//! long names, sparse files); every write goes through the project's fd-relative calls:
//! each path is walked one name at a time from the layer's root with `O_NOFOLLOW`, so
//! nothing is written outside the layer, through a symlink (made by an earlier entry or
//! not), or by a hard link to something outside it. OCI whiteouts stay as they are: the
//! union reads them.

use std::ffi::{CStr, CString, OsStr};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{Result, UserError, bail};
use crate::sys::{self, Errno};

/// What was made that the caller could not give its owner or mode: recorded in the
/// `user.containers.override_stat` xattr (`uid:gid:mode`), which the union shows.
const OVERRIDE_STAT: &CStr = c"user.containers.override_stat";

/// What an extraction made.
#[derive(Debug, Default)]
pub struct Unpacked {
    pub entries: u64,
    /// Device nodes the caller may not make, left out.
    pub skipped_devices: u64,
}

/// The path of an entry as name components, refused when it could lead out of the layer
/// (`..`, absolute) or is not a valid name.
fn components(raw: &[u8]) -> Result<Vec<CString>> {
    let shown = String::from_utf8_lossy(raw);
    if raw.contains(&0) {
        bail!("tar entry '{shown}': a NUL byte in the name");
    }
    if raw.starts_with(b"/") {
        bail!("tar entry '{shown}': an absolute path");
    }
    if raw.len() > 4096 {
        bail!("tar entry '{}…': the path is too long", &shown[..64]);
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => bail!("tar entry '{shown}': '..' leads out of the layer"),
            _ if c.len() > 255 => bail!("tar entry '{shown}': a name longer than 255 bytes"),
            _ => out.push(CString::new(c).expect("no NUL")),
        }
    }
    Ok(out)
}

/// Opens the directory `comps` under `root` one name at a time, never through a symlink;
/// with `make`, missing directories are made (as tar makes the parents of an entry).
fn open_dir(root: BorrowedFd<'_>, comps: &[CString], make: bool) -> sys::Result<OwnedFd> {
    let mut cur = sys::openat(root, c".", libc::O_PATH | libc::O_DIRECTORY, 0)?;
    for c in comps {
        let next = match sys::openat(cur.as_fd(), c, libc::O_PATH | libc::O_DIRECTORY, 0) {
            Err(Errno(libc::ENOENT)) if make => {
                match sys::mkdirat(cur.as_fd(), c, 0o755) {
                    Ok(()) | Err(Errno(libc::EEXIST)) => {}
                    Err(e) => return Err(e),
                }
                sys::openat(cur.as_fd(), c, libc::O_PATH | libc::O_DIRECTORY, 0)?
            }
            r => r?,
        };
        cur = next;
    }
    Ok(cur)
}

/// Makes room for a new entry `name`: what is there goes, unless both are directories
/// (a later entry replaces an earlier one, as tar does).
fn clear(dir: BorrowedFd<'_>, name: &CStr, new_is_dir: bool) -> sys::Result<bool> {
    match sys::fstatat(dir, name) {
        Err(Errno(libc::ENOENT)) => Ok(false),
        Err(e) => Err(e),
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
            if new_is_dir {
                return Ok(true);
            }
            crate::union::remove_tree(dir, name)?;
            Ok(false)
        }
        Ok(_) => sys::unlinkat(dir, name, 0).map(|()| false),
    }
}

pub struct Unpacker {
    root: OwnedFd,
    /// Owners can be given (real root, or a user namespace with a range).
    can_chown: bool,
    /// Directories' metadata, set when everything is in (their times would move).
    dirs: Vec<(Vec<CString>, Meta)>,
}

#[derive(Clone)]
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: i64,
    xattrs: Vec<(CString, Vec<u8>)>,
}

impl Unpacker {
    pub fn new(dir: &Path) -> Result<Unpacker> {
        let root =
            sys::open_dir_path(dir).map_err(|e| UserError(format!("'{}': {e}", dir.display())))?;
        Ok(Unpacker {
            root,
            // Root, or root of a user namespace (where owners the namespace does not map
            // are refused, and kept in the override xattr).
            can_chown: sys::geteuid() == 0,
            dirs: Vec::new(),
        })
    }

    /// Extracts the tar stream `r`.
    pub fn unpack(mut self, r: impl Read) -> Result<Unpacked> {
        let mut ar = tar::Archive::new(r);
        let mut done = Unpacked::default();
        let entries = ar
            .entries()
            .map_err(|e| UserError(format!("not a tar archive: {e}")))?;
        for entry in entries {
            let mut e = entry.map_err(|e| UserError(format!("a broken tar archive: {e}")))?;
            let raw = e.path_bytes().into_owned();
            let shown = String::from_utf8_lossy(&raw).into_owned();
            let r = self.entry(&mut e, &raw, &mut done);
            r.map_err(|err| match err {
                Fail::User(u) => u,
                Fail::Sys(s) => UserError(format!("tar entry '{shown}': {s}")),
            })?;
            done.entries += 1;
        }
        // Deepest first: a parent's times are set after its children's.
        self.dirs.sort_by_key(|(c, _)| std::cmp::Reverse(c.len()));
        for (comps, m) in std::mem::take(&mut self.dirs) {
            let fd = open_dir(self.root.as_fd(), &comps, false)
                .map_err(|e| UserError(format!("a directory of the layer: {e}")))?;
            self.apply(fd.as_fd(), None, &m, false)
                .map_err(|e| UserError(format!("a directory of the layer: {e}")))?;
        }
        Ok(done)
    }

    fn entry<R: Read>(
        &mut self,
        e: &mut tar::Entry<'_, R>,
        raw: &[u8],
        done: &mut Unpacked,
    ) -> std::result::Result<(), Fail> {
        let comps = components(raw)?;
        let h = e.header();
        let kind = h.entry_type();
        let (uid, gid) = (h.uid().unwrap_or(0) as u32, h.gid().unwrap_or(0) as u32);
        let (mode, mtime) = (h.mode().unwrap_or(0o644) & 0o7777, h.mtime().unwrap_or(0));
        let dev = libc::makedev(
            h.device_major().ok().flatten().unwrap_or(0),
            h.device_minor().ok().flatten().unwrap_or(0),
        );
        let meta = Meta {
            uid,
            gid,
            mode,
            mtime: mtime as i64,
            xattrs: xattrs(e)?,
        };
        let Some((name, parents)) = comps.split_last() else {
            // The layer's root itself ("./").
            if kind.is_dir() {
                self.dirs.push((Vec::new(), meta));
            }
            return Ok(());
        };
        let dir = open_dir(self.root.as_fd(), parents, true)?;
        let d = dir.as_fd();
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                if !clear(d, name, true)? {
                    sys::mkdirat(d, name, 0o700)?;
                }
                self.dirs.push((comps.clone(), meta));
                return Ok(());
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                clear(d, name, false)?;
                let fd = sys::openat(
                    d,
                    name,
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                    0o600,
                )?;
                let mut f = std::fs::File::from(fd);
                copy_sparse(e, &mut f).map_err(|err| Fail::Sys(err.into()))?;
            }
            T::Symlink => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| UserError("a symlink without a target".into()))?;
                let t = CString::new(target.into_owned())
                    .map_err(|_| UserError("a NUL byte in a symlink's target".into()))?;
                clear(d, name, false)?;
                sys::symlinkat(&t, d, name)?;
            }
            T::Link => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| UserError("a hard link without a target".into()))?;
                let tcomps = components(&target)?;
                let Some((tname, tparents)) = tcomps.split_last() else {
                    return Err(UserError("a hard link to the layer's root".into()).into());
                };
                // The target must be in the layer already, reached without a symlink.
                let tdir = open_dir(self.root.as_fd(), tparents, false).map_err(|err| {
                    UserError(format!(
                        "hard link to '{}', which is not in the layer: {err}",
                        String::from_utf8_lossy(&target)
                    ))
                })?;
                if tcomps == comps {
                    return Ok(());
                }
                clear(d, name, false)?;
                sys::linkat(tdir.as_fd(), tname, d, name).map_err(|err| {
                    UserError(format!(
                        "hard link to '{}': {err}",
                        String::from_utf8_lossy(&target)
                    ))
                })?;
                // A link shares its target's metadata.
                return Ok(());
            }
            T::Fifo | T::Char | T::Block => {
                let fmt = match kind {
                    T::Fifo => libc::S_IFIFO,
                    T::Char => libc::S_IFCHR,
                    _ => libc::S_IFBLK,
                };
                clear(d, name, false)?;
                match sys::mknodat(d, name, fmt | 0o600, dev) {
                    Ok(()) => {}
                    Err(Errno(libc::EPERM)) if fmt != libc::S_IFIFO => {
                        done.skipped_devices += 1;
                        return Ok(());
                    }
                    Err(err) => return Err(err.into()),
                }
            }
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => return Ok(()),
            other => {
                return Err(UserError(format!("an entry of unknown type {other:?}")).into());
            }
        }
        let is_link = kind == T::Symlink;
        self.apply(d, Some(name), &meta, is_link)?;
        Ok(())
    }

    /// Owner, xattrs, mode (after the owner: chown clears set-id bits), times.
    fn apply(
        &self,
        dir: BorrowedFd<'_>,
        name: Option<&CStr>,
        m: &Meta,
        is_link: bool,
    ) -> sys::Result<()> {
        let at = crate::sys::At { dir, name };
        let owned = self.can_chown && crate::sys::chown_at(at, m.uid, m.gid).is_ok();
        for (k, v) in &m.xattrs {
            match sys::setxattr(dir, name, k, Some(v), 0) {
                Ok(()) | Err(Errno(libc::EPERM | libc::EOPNOTSUPP | libc::EACCES)) => {}
                Err(e) => return Err(e),
            }
        }
        if !is_link {
            sys::chmod_at(dir, name, m.mode)?;
            let me = (sys::geteuid(), crate::sys::real_ids().1);
            if !owned && (m.uid, m.gid) != me {
                // Owners this process cannot give: kept where the union reads them.
                let v = format!("{}:{}:0{:o}", m.uid, m.gid, m.mode);
                let _ = sys::setxattr(dir, name, OVERRIDE_STAT, Some(v.as_bytes()), 0);
            }
        }
        let t = libc::timespec {
            tv_sec: m.mtime,
            tv_nsec: 0,
        };
        sys::utimensat(dir, name.unwrap_or(c""), &[t, t])
    }
}

/// Copies a file's data, leaving blocks of zeros as holes (a sparse file of the layer, which
/// the tar reader gives as zeros, stays sparse).
fn copy_sparse(r: &mut impl Read, f: &mut std::fs::File) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    const BLOCK: usize = 4096;
    let mut buf = vec![0u8; 1 << 16];
    let mut len: u64 = 0;
    loop {
        let mut n = 0;
        // Whole buffers, so blocks stay aligned to the file's.
        while n < buf.len() {
            match r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if n == 0 {
            break;
        }
        for chunk in buf[..n].chunks(BLOCK) {
            if chunk.iter().all(|&b| b == 0) {
                f.seek(SeekFrom::Current(chunk.len() as i64))?;
            } else {
                f.write_all(chunk)?;
            }
        }
        len += n as u64;
        if n < buf.len() {
            break;
        }
    }
    f.set_len(len)
}

/// The PAX xattrs of an entry (`SCHILY.xattr.NAME`): `user.*` and `security.*` kept; the
/// overlay's own (`trusted.*`) never taken from a layer.
fn xattrs<R: Read>(
    e: &mut tar::Entry<'_, R>,
) -> std::result::Result<Vec<(CString, Vec<u8>)>, Fail> {
    let mut out = Vec::new();
    let Some(exts) = e
        .pax_extensions()
        .map_err(|err| UserError(format!("bad PAX header: {err}")))?
    else {
        return Ok(out);
    };
    for x in exts {
        let x = x.map_err(|err| UserError(format!("bad PAX header: {err}")))?;
        let Some(name) = x.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
            continue;
        };
        if !(name.starts_with(b"user.") || name.starts_with(b"security.")) {
            continue;
        }
        let Ok(n) = CString::new(name) else { continue };
        out.push((n, x.value_bytes().to_vec()));
    }
    Ok(out)
}

/// An entry's failure: a refusal said in full, or a system call's errno (the entry's name
/// is added).
enum Fail {
    User(UserError),
    Sys(Errno),
}

impl From<UserError> for Fail {
    fn from(e: UserError) -> Fail {
        Fail::User(e)
    }
}

impl From<Errno> for Fail {
    fn from(e: Errno) -> Fail {
        Fail::Sys(e)
    }
}

/// Whether `dir` (a layer directory) holds `rel` without any symlink on the way: for tests
/// and checks that a hostile archive was contained.
pub fn contains(dir: &Path, rel: &OsStr) -> bool {
    let Ok(comps) = components(rel.as_bytes()) else {
        return false;
    };
    let Ok(root) = sys::open_dir_path(dir) else {
        return false;
    };
    match comps.split_last() {
        None => true,
        Some((n, p)) => open_dir(root.as_fd(), p, false)
            .and_then(|d| sys::fstatat(d.as_fd(), n))
            .is_ok(),
    }
}
