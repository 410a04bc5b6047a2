//! Garbage collection and checks: `prune` (what no image references) and `store-check`.

use std::os::fd::AsFd;

use super::{Digest, Hashing, Store, disk_usage, io, remove_tree};
use crate::error::Result;
use crate::sys;

impl Store {
    /// Removes what no image references: layers, then blobs. Returns the bytes freed.
    pub fn prune(&self) -> Result<u64> {
        let _l = self.lock()?;
        let images = self.images()?;
        let mut layers = std::collections::BTreeSet::new();
        let mut blobs = std::collections::BTreeSet::new();
        for i in &images {
            blobs.insert(i.id.hex().to_string());
            for l in &i.layers {
                layers.insert(l.diff_id.hex().to_string());
                blobs.insert(l.blob.hex().to_string());
            }
        }
        let mut freed = 0;
        // Unfinished downloads no pull is resuming now.
        if let Ok(rd) = std::fs::read_dir(self.root.join("partial")) {
            for e in rd.flatten() {
                if let Ok(f) = std::fs::File::open(e.path())
                    && sys::flock(f.as_fd(), libc::LOCK_EX | libc::LOCK_NB).is_ok()
                {
                    freed += disk_usage(&e.path());
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        for (dir, keep) in [
            ("layers", &layers),
            ("blobs/sha256", &blobs),
            ("sources", &blobs),
        ] {
            let d = self.root.join(dir);
            for e in std::fs::read_dir(&d)
                .map_err(io("cannot list", &d))?
                .flatten()
            {
                let n = e.file_name().to_string_lossy().into_owned();
                let hex = n.trim_end_matches(".lock");
                if keep.contains(hex) {
                    continue;
                }
                freed += disk_usage(&e.path());
                let _ = remove_tree(&e.path());
            }
        }
        Ok(freed)
    }

    /// Checks every record against the store: each image's config and layer blobs there
    /// with their digests, each layer extracted; each container's image and upper there.
    /// Returns the problems found.
    pub fn check(&self) -> Result<Vec<String>> {
        let mut bad = Vec::new();
        for i in self.images()? {
            let mut blobs = vec![i.id.clone()];
            blobs.extend(i.layers.iter().map(|l| l.blob.clone()));
            for b in blobs {
                match std::fs::File::open(self.blob_path(&b)) {
                    Ok(f) => {
                        let h = Hashing::new(f)
                            .finish()
                            .map_err(crate::error::about(format!("blob {b}")))?;
                        if h.0 != b {
                            bad.push(format!("blob {b} holds {}", h.0));
                        }
                    }
                    Err(e) => bad.push(format!("blob {b}: {e}")),
                }
            }
            for l in &i.layers {
                if !self.layer_path(&l.diff_id).is_dir() {
                    bad.push(format!("layer {} of {} is missing", l.diff_id, i.id));
                }
            }
        }
        let ids: Vec<Digest> = self.images()?.into_iter().map(|i| i.id).collect();
        for c in self.containers()? {
            if !ids.contains(&c.image) {
                bad.push(format!(
                    "container {} uses missing image {}",
                    c.name, c.image
                ));
            }
            if !self.container_dir(&c.id).join("upper").is_dir() {
                bad.push(format!("container {} has no upper", c.name));
            }
        }
        Ok(bad)
    }
}
