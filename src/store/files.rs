//! File helpers of the store: atomic writes, JSON records, removal of trees (also of
//! subordinate ids), temporaries of `tmp/`, sizes and ages for people.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{io, now};
use crate::error::{Result, UserError};
use crate::sys;

/// Removes a file or tree of the store. Rootless, a tree may hold files of the caller's
/// subordinate ids (a layer extracted with its owners, a container's writes): the removal
/// is made as root of a user namespace with that range.
pub fn remove_tree(p: &Path) -> Result<()> {
    let run =
        || remove_all(p).map_err(|e| UserError(format!("cannot remove '{}': {e}", p.display())));
    if sys::geteuid() == 0 {
        return run();
    }
    if remove_all(p).is_ok() {
        return Ok(());
    }
    crate::userns::in_user_namespace(run)
}

/// A directory being made in `tmp/`, locked while this process lives.
pub struct Temp {
    pub path: PathBuf,
    pub(super) _lock: std::fs::File,
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = remove_tree(&self.path);
        let _ = std::fs::remove_file(self.path.with_extension("lock"));
    }
}

pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Removes a file or a tree, as the owner could (directories without write permission are
/// made writable first).
pub fn remove_all(p: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
            for e in std::fs::read_dir(p)?.flatten() {
                remove_all(&e.path())?;
            }
            std::fs::remove_dir(p)
        }
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Bytes a file or tree takes.
pub fn disk_usage(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    let mut n = m.blocks() * 512;
    if m.is_dir()
        && let Ok(rd) = std::fs::read_dir(p)
    {
        for e in rd.flatten() {
            n += disk_usage(&e.path());
        }
    }
    n
}

/// Writes a file whole or not at all: a temporary beside it, synced, renamed into place.
pub fn write_atomic(p: &Path, data: &[u8]) -> Result<()> {
    write_replacing(p, data, true)
}

/// As `write_atomic`; without `sync`, a crash may lose the new content (never leave a
/// half-written one): for records rewritten all the time, a container's state.
pub(super) fn write_replacing(p: &Path, data: &[u8], sync: bool) -> Result<()> {
    let tmp = p.with_extension(format!("tmp-{}", random_hex(6)));
    let r = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        if sync {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, p)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.map_err(io("cannot write", p))
}

pub fn write_json<T: Serialize>(p: &Path, v: &T) -> Result<()> {
    let data = serde_json::to_vec_pretty(v).map_err(|e| UserError(e.to_string()))?;
    write_atomic(p, &data)
}

pub fn read_json<T: for<'de> Deserialize<'de>>(p: &Path) -> Result<T> {
    let data = std::fs::read(p).map_err(io("cannot read", p))?;
    serde_json::from_slice(&data).map_err(|e| UserError(format!("'{}': {e}", p.display())))
}

/// Sizes for people: 1.5 MB.
pub fn human(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < units.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// How long ago, for people.
pub fn ago(t: i64) -> String {
    let d = (now() - t).max(0);
    match d {
        0..60 => format!("{d} seconds ago"),
        60..3600 => format!("{} minutes ago", d / 60),
        3600..86400 => format!("{} hours ago", d / 3600),
        _ => format!("{} days ago", d / 86400),
    }
}
