//! The one way a blob comes into the store (pull, load, import, commit): written once, hashed
//! and counted as it is written, and taken as a blob only when its digest and size check out,
//! as containerd's content store and ocidir's blob writer do. A download that may be resumed
//! is written in the store's `partial/`, locked while it is written; what it holds is hashed
//! again when the next pull takes it up.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;

use sha2::{Digest as _, Sha256};

use super::{Digest, Store};
use crate::error::{Result, UserError, about, bail};
use crate::sys;

/// A blob being written.
pub struct BlobWriter {
    file: File,
    path: PathBuf,
    hash: Sha256,
    written: u64,
    /// The digest and size it must have, when known.
    expect: Option<Digest>,
    expect_size: Option<u64>,
}

impl BlobWriter {
    /// A new blob at `path` (a file of this command's, in the store's `tmp/`).
    pub fn create(path: PathBuf, expect: Option<Digest>, size: Option<u64>) -> Result<BlobWriter> {
        let file = File::create(&path).map_err(about(path.display()))?;
        Ok(BlobWriter {
            file,
            path,
            hash: Sha256::new(),
            written: 0,
            expect,
            expect_size: size,
        })
    }

    /// Blob `d` (of `size` bytes, when known) downloaded into the store's `partial/`, taking
    /// up what an earlier download that was cut or killed left there (hashed again). `None`
    /// when another process is writing it now.
    pub fn resume(store: &Store, d: &Digest, size: Option<u64>) -> Result<Option<BlobWriter>> {
        let path = store.partial_path(d);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(about(path.display()))?;
        if sys::flock(file.as_fd(), libc::LOCK_EX | libc::LOCK_NB).is_err() {
            return Ok(None);
        }
        let mut w = BlobWriter {
            file: file.try_clone().map_err(about(path.display()))?,
            path,
            hash: Sha256::new(),
            written: 0,
            expect: Some(d.clone()),
            expect_size: size,
        };
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = file.read(&mut buf).map_err(about(w.path.display()))?;
            if n == 0 {
                break;
            }
            w.hash.update(&buf[..n]);
            w.written += n as u64;
        }
        // Complete but wrong, or longer than the blob: from the start.
        let done = w.is_complete();
        if !done && size.is_some_and(|s| w.written >= s) {
            w.start_over()?;
        }
        Ok(Some(w))
    }

    /// Bytes written so far (a resumed download: what was there).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Whether what is written is the whole blob expected.
    pub fn is_complete(&self) -> bool {
        match &self.expect {
            Some(d) => {
                self.written > 0
                    && self.expect_size.is_none_or(|s| self.written == s)
                    && Digest::from_sha(&self.hash.clone().finalize()) == *d
            }
            None => false,
        }
    }

    /// Empties it, to write the blob from its start.
    pub fn start_over(&mut self) -> Result<()> {
        use std::io::Seek;
        self.file
            .set_len(0)
            .and_then(|()| self.file.rewind())
            .map_err(about(self.path.display()))?;
        self.hash = Sha256::new();
        self.written = 0;
        Ok(())
    }

    /// Keeps what was written for a later resumption (a cut download), on disk.
    pub fn keep(self) {
        let _ = self.file.sync_data();
    }

    /// Removes what was written (a wrong download, a refused copy).
    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.path);
    }

    /// The blob, on disk, once its digest and size check out (otherwise it is removed and
    /// refused, in `what`'s words): its digest, size and path.
    pub fn finish(self, what: &str) -> Result<(Digest, u64, PathBuf)> {
        let got = Digest::from_sha(&self.hash.clone().finalize());
        if let Some(d) = self.expect.clone()
            && d != got
        {
            self.discard();
            bail!("{what} should have digest {d} but has {got}: refused");
        }
        if let Some(s) = self.expect_size
            && s != self.written
        {
            let n = self.written;
            self.discard();
            bail!("{what} should be {s} bytes but is {n}: refused");
        }
        self.file.sync_all().map_err(about(self.path.display()))?;
        Ok((got, self.written, self.path))
    }

    /// Copies all of `r` in.
    pub fn copy_from(&mut self, r: &mut impl Read, what: &str) -> Result<u64> {
        std::io::copy(r, self).map_err(|e| UserError(format!("{what}: {e}")))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hash.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_is_taken_only_whole_and_right() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(Some(d.path().join("store"))).unwrap();
        let want = Digest::of(b"hello world");
        // Right: its digest, size and path.
        let mut w = BlobWriter::create(d.path().join("a"), Some(want.clone()), Some(11)).unwrap();
        w.write_all(b"hello world").unwrap();
        let (got, n, p) = w.finish("a").unwrap();
        assert_eq!((got, n), (want.clone(), 11));
        assert_eq!(std::fs::read(p).unwrap(), b"hello world");
        // Wrong bytes, or too few: refused, and nothing left.
        let mut w = BlobWriter::create(d.path().join("b"), Some(want.clone()), None).unwrap();
        w.write_all(b"hello wurld").unwrap();
        assert!(w.finish("b").unwrap_err().0.contains("digest"));
        assert!(!d.path().join("b").exists());
        let mut w = BlobWriter::create(d.path().join("c"), None, Some(12)).unwrap();
        w.write_all(b"hello world").unwrap();
        assert!(w.finish("c").is_err());
        assert!(!d.path().join("c").exists());
        // A download cut half-way is taken up where it stopped, what was there hashed again.
        let mut w = BlobWriter::resume(&store, &want, Some(11))
            .unwrap()
            .unwrap();
        // While one writes it, another gets none.
        assert!(
            BlobWriter::resume(&store, &want, Some(11))
                .unwrap()
                .is_none()
        );
        w.write_all(b"hello ").unwrap();
        w.keep();
        let mut w = BlobWriter::resume(&store, &want, Some(11))
            .unwrap()
            .unwrap();
        assert_eq!(w.written(), 6);
        assert!(!w.is_complete());
        w.write_all(b"world").unwrap();
        let (got, n, p) = w.finish("d").unwrap();
        assert_eq!((got, n), (want.clone(), 11));
        assert_eq!(p, store.partial_path(&want));
        // Longer than the blob: started over.
        std::fs::write(store.partial_path(&want), b"hello world and more").unwrap();
        let w = BlobWriter::resume(&store, &want, Some(11))
            .unwrap()
            .unwrap();
        assert_eq!(w.written(), 0);
    }
}
