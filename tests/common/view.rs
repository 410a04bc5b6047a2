//! The view under a mountpoint, described path by path for comparison: one walker for
//! every differential suite (unionfuse against kernel overlayfs).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{kind, other_names, walk_tree, xattrs_of};

#[derive(Debug, Clone, PartialEq)]
pub struct Desc {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: Option<u64>,
    pub nlink: u64,
    /// As `Options::mtimes` says which are compared.
    pub mtime: Option<(i64, i64)>,
    pub rdev: u64,
    pub target: Option<PathBuf>,
    /// Hash of a file's content (the bytes themselves make unreadable failure messages).
    pub content: Option<u64>,
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Other names of the same inode in the view.
    pub links: Vec<PathBuf>,
}

/// What a suite compares.
pub struct Options {
    /// Which modification times are compared: all (trees whose times the test fixed), or
    /// only those a test set itself (nanoseconds 7), as other times differ between runs.
    pub mtimes: fn(&std::fs::Metadata) -> bool,
    /// Which xattrs are compared.
    pub xattrs: fn(&str) -> bool,
}

pub const ALL: Options = Options {
    mtimes: |_| true,
    xattrs: |_| true,
};

/// Operation sequences: `user.*` xattrs, and the times the test set.
pub const SET_BY_TEST: Options = Options {
    mtimes: |m| m.mtime_nsec() == 7,
    xattrs: |x| x.starts_with("user."),
};

pub struct View {
    pub entries: BTreeMap<PathBuf, Desc>,
    /// Names listed whose lookup says ENOENT. Kernel overlayfs lists a whiteout that sits
    /// in a directory it does not merge (`ls -l` shows `?????????`); unionfuse must never.
    pub listed_but_absent: Vec<PathBuf>,
}

fn hash(data: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

/// The whole view under `root`.
pub fn describe(root: &Path, opts: &Options) -> View {
    let tree = walk_tree(root);
    let mut links = other_names(&tree);
    let mut view = View {
        entries: BTreeMap::new(),
        listed_but_absent: Vec::new(),
    };
    for (r, md) in tree {
        let p = root.join(&r);
        let md = match md {
            Ok(md) => md,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                view.listed_but_absent.push(r);
                continue;
            }
            Err(e) => panic!("{p:?} is listed but lstat fails: {e}"),
        };
        let k = kind(md.file_type());
        let d = Desc {
            kind: k,
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            size: (k != "dir").then_some(md.size()),
            nlink: md.nlink(),
            mtime: (opts.mtimes)(&md).then_some((md.mtime(), md.mtime_nsec())),
            rdev: md.rdev(),
            target: (k == "symlink").then(|| std::fs::read_link(&p).unwrap()),
            content: (k == "file").then(|| hash(&std::fs::read(&p).unwrap())),
            xattrs: xattrs_of(&p, opts.xattrs),
            links: links.remove(&r).unwrap_or_default(),
        };
        view.entries.insert(r, d);
    }
    view
}
