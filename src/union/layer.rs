//! A layer: the root directory of one branch of the union, held as an `O_PATH` fd.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use crate::sys::{self, Result};

#[derive(Debug)]
pub struct Layer {
    /// Position from the top: 0 is the upper when there is one.
    pub idx: usize,
    pub path: PathBuf,
    pub root: Arc<OwnedFd>,
    pub writable: bool,
    /// Lower layers: every name of each multiply-linked object, by `(st_dev, st_ino)`; read
    /// once, on the first copy-up of such an object (the layer never changes).
    links: OnceLock<HardLinks>,
    /// Lower layers: the directories carrying a redirect, read once when a copy-up needs
    /// to find where a renamed directory put a hard link's other name.
    pub(super) redirects: OnceLock<Arc<super::whiteout::RedirectMap>>,
}

/// Paths (as name components from the layer's root) of each multiply-linked object.
pub type HardLinks = HashMap<(u64, u64), Vec<Vec<OsString>>>;

impl Layer {
    pub fn open(idx: usize, path: PathBuf, writable: bool) -> Result<Layer> {
        let private = if writable {
            None
        } else {
            sys::private_readonly_tree(&path)
        };
        let root = Arc::new(match private {
            Some(fd) => fd,
            None => sys::open_dir_path(&path)?,
        });
        Ok(Layer {
            idx,
            path,
            root,
            writable,
            links: OnceLock::new(),
            redirects: OnceLock::new(),
        })
    }

    pub fn hard_links(&self) -> Result<&HardLinks> {
        if let Some(l) = self.links.get() {
            return Ok(l);
        }
        let mut map = HardLinks::new();
        let mut stack: Vec<(Arc<OwnedFd>, Vec<OsString>)> = vec![(self.root.clone(), Vec::new())];
        while let Some((dir, path)) = stack.pop() {
            for e in sys::read_dir(dir.as_fd())? {
                let c = sys::cstr(&e.name)?;
                let Ok(st) = sys::fstatat(dir.as_fd(), &c) else {
                    continue;
                };
                let mut p = path.clone();
                p.push(e.name);
                if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    let sub = sys::openat(dir.as_fd(), &c, libc::O_PATH | libc::O_DIRECTORY, 0)?;
                    stack.push((Arc::new(sub), p));
                } else if st.st_nlink > 1 {
                    map.entry((st.st_dev, st.st_ino)).or_default().push(p);
                }
            }
        }
        Ok(self.links.get_or_init(|| map))
    }
}

/// A real directory in one layer.
#[derive(Debug, Clone)]
pub struct LayerDir {
    pub layer: usize,
    pub fd: Arc<OwnedFd>,
    /// In the upper (the one writable layer).
    pub upper: bool,
}

impl LayerDir {
    pub fn of(layer: &Layer) -> LayerDir {
        LayerDir {
            layer: layer.idx,
            fd: layer.root.clone(),
            upper: layer.writable,
        }
    }

    pub fn upper(fd: Arc<OwnedFd>) -> LayerDir {
        LayerDir {
            layer: 0,
            fd,
            upper: true,
        }
    }
}

/// The real directories a merged directory is made of, top-down: the upper's first when it
/// has one, then the lowers' down to the first opaque one.
#[derive(Debug, Clone, Default)]
pub struct DirStack(Vec<LayerDir>);

impl DirStack {
    pub fn new(dirs: Vec<LayerDir>) -> DirStack {
        DirStack(dirs)
    }

    /// The upper's directory, if the upper has one.
    pub fn upper(&self) -> Option<&LayerDir> {
        self.0.first().filter(|d| d.upper)
    }

    pub fn lowers(&self) -> impl Iterator<Item = &LayerDir> {
        self.0.iter().filter(|d| !d.upper)
    }

    pub fn has_lower(&self) -> bool {
        self.lowers().next().is_some()
    }

    /// The directory of layer `layer`, if it contributes.
    pub fn in_layer(&self, layer: usize) -> Option<&LayerDir> {
        self.0.iter().find(|d| d.layer == layer)
    }

    /// The top directory (the one a merged directory's own attributes come from).
    pub fn top(&self) -> Option<&LayerDir> {
        self.0.first()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, LayerDir> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn push(&mut self, d: LayerDir) {
        self.0.push(d)
    }

    /// Puts a new upper directory on top (a directory just copied up).
    pub fn put_upper(&mut self, fd: Arc<OwnedFd>) {
        self.0.insert(0, LayerDir::upper(fd))
    }

    /// Keeps only the top directory (a directory made opaque).
    pub fn keep_top(&mut self) {
        self.0.truncate(1)
    }
}

impl Extend<LayerDir> for DirStack {
    fn extend<I: IntoIterator<Item = LayerDir>>(&mut self, iter: I) {
        self.0.extend(iter)
    }
}

impl FromIterator<LayerDir> for DirStack {
    fn from_iter<I: IntoIterator<Item = LayerDir>>(iter: I) -> DirStack {
        DirStack(iter.into_iter().collect())
    }
}
