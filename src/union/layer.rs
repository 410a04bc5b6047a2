//! A layer: the root directory of one branch of the union, held as an `O_PATH` fd.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use crate::sys::{self, Result};

#[derive(Debug)]
pub struct Layer {
    /// Position from the top: 0 is the upper when there is one.
    pub idx: usize,
    pub path: PathBuf,
    pub root: Arc<OwnedFd>,
    pub writable: bool,
}

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
        })
    }
}
