//! The image store: Docker's model on unionfuse. Blobs by digest, extracted layers by DiffID
//! (a layer two images share is extracted once), image and container records in JSON. It
//! feeds the runner and the mount (lower layer directories, an upper, a configuration) and
//! is never read by them.
//!
//! Layout under the root (`/var/lib/unionfuse` as root, `$XDG_DATA_HOME/unionfuse` otherwise):
//! - `blobs/sha256/HEX`: compressed layers, configs and manifests, as loaded or made;
//! - `layers/HEX`: the extracted layer of DiffID `sha256:HEX`, exactly its tar's content
//!   (OCI whiteouts included, which the union reads as they are);
//! - `images/HEX.json`: an image, by its id (its config's digest);
//! - `containers/HEX/`: a container: `config.json`, `upper/`, and the `lock` its runner holds;
//! - `sources/HEX`: the registry repositories blob `sha256:HEX` was pulled from or pushed
//!   to, one `registry/repository` a line (what a push mounts from instead of uploading);
//! - `partial/HEX`: a download of blob `sha256:HEX` a pull did not finish (cut, killed),
//!   which the next pull resumes; locked while one downloads it; never read as a blob;
//! - `tmp/`: what is being made. Everything is made there and renamed into place, records
//!   last, so a crash leaves leftovers (removed by the next command) and never a half-made
//!   layer or record in use.

pub mod auth;
pub mod commit;
mod containers;
mod files;
mod gc;
mod images;
pub mod ingest;
pub mod load;
pub mod registry;
pub mod save;
pub mod show;
pub mod unpack;

use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::error::{Result, UserError, bail};
pub use crate::records::{Container, Digest, Image, LayerRef, State};
use crate::sys;
use files::write_replacing;
pub use files::{
    Temp, ago, disk_usage, human, random_hex, read_json, remove_all, remove_tree, write_atomic,
    write_json,
};
pub use images::{chain_ids, layer_users, name_in, normalize_name};

/// A reader that hashes what passes through it, and counts it.
pub struct Hashing<R> {
    inner: R,
    hash: Sha256,
    pub count: u64,
}

impl<R: Read> Hashing<R> {
    pub fn new(inner: R) -> Hashing<R> {
        Hashing {
            inner,
            hash: Sha256::new(),
            count: 0,
        }
    }

    /// Reads what is left, so the digest covers the whole stream.
    pub fn finish(mut self) -> std::io::Result<(Digest, u64)> {
        std::io::copy(&mut self, &mut std::io::sink())?;
        Ok((Digest::from_sha(&self.hash.finalize()), self.count))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// The process's view of the store: its root directory.
pub struct Store {
    pub root: PathBuf,
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn io(what: &str, p: &Path) -> impl FnOnce(std::io::Error) -> UserError {
    let m = format!("{what} '{}'", p.display());
    move |e| UserError(format!("{m}: {e}"))
}

/// The lines of a hint file (`sources/`, `diffids/`), oldest first; none when it is missing.
fn hint_lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// Adds `line` to a hint file as its newest (once), keeping the newest `keep`. Best effort.
fn add_hint_line(p: &Path, line: &str, keep: usize) {
    let mut v = hint_lines(p);
    v.retain(|l| l != line);
    v.push(line.to_string());
    let kept = v.split_off(v.len().saturating_sub(keep));
    let _ = write_replacing(p, (kept.join("\n") + "\n").as_bytes(), false);
}

impl Store {
    /// The store at `root`, or where it lives by default: `UNIONFUSE_ROOT`, else
    /// `/var/lib/unionfuse` as root and `$XDG_DATA_HOME/unionfuse` otherwise.
    pub fn open(root: Option<PathBuf>) -> Result<Store> {
        let root = match root.or_else(|| std::env::var_os("UNIONFUSE_ROOT").map(PathBuf::from)) {
            Some(r) => r,
            None if sys::geteuid() == 0 => PathBuf::from("/var/lib/unionfuse"),
            None => match std::env::var_os("XDG_DATA_HOME") {
                Some(x) => PathBuf::from(x).join("unionfuse"),
                None => match std::env::var_os("HOME") {
                    Some(h) => PathBuf::from(h).join(".local/share/unionfuse"),
                    None => bail!("no store: set HOME, XDG_DATA_HOME or UNIONFUSE_ROOT"),
                },
            },
        };
        for sub in [
            "blobs/sha256",
            "layers",
            "images",
            "containers",
            "sources",
            "diffids",
            "partial",
            "tmp",
        ] {
            let p = root.join(sub);
            std::fs::create_dir_all(&p).map_err(io("cannot make the store directory", &p))?;
        }
        let s = Store { root };
        s.clean_tmp();
        Ok(s)
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// The repositories blob `d` is known to be in (`registry/repository`, newest last).
    pub fn sources(&self, d: &Digest) -> Vec<String> {
        hint_lines(&self.source_path(d))
    }

    /// Records that blob `d` is in `repo` (`registry/repository`). Best effort: a hint for
    /// later pushes, never needed for correctness. A few are enough to find one to mount
    /// from.
    pub fn add_source(&self, d: &Digest, repo: &str) {
        add_hint_line(&self.source_path(d), repo, 8);
    }

    /// The blobs a registry is known to hold for the layer of DiffID `diff_id` (from pulls
    /// and pushes, as Docker's distribution metadata keeps them): (blob, media type, size),
    /// newest last. A layer that came another way (a docker-archive's plain tar) can be
    /// pushed as the blob the registry has.
    pub fn registry_blobs(&self, diff_id: &Digest, registry: &str) -> Vec<(Digest, String, u64)> {
        hint_lines(&self.diffid_path(diff_id))
            .iter()
            .filter_map(|l| {
                let mut w = l.split(' ');
                let (reg, blob, mt, size) = (w.next()?, w.next()?, w.next()?, w.next()?);
                (reg == registry).then_some(())?;
                Some((
                    Digest::parse(blob).ok()?,
                    mt.to_string(),
                    size.parse().ok()?,
                ))
            })
            .collect()
    }

    /// Records that `registry` holds the layer of DiffID `diff_id` as `blob`. Best effort,
    /// as [`Store::add_source`].
    pub fn add_registry_blob(&self, diff_id: &Digest, registry: &str, blob: &LayerRef) {
        let line = format!("{registry} {} {} {}", blob.blob, blob.media_type, blob.size);
        add_hint_line(&self.diffid_path(diff_id), &line, 16);
    }

    fn diffid_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("diffids").join(diff_id.hex())
    }

    fn source_path(&self, d: &Digest) -> PathBuf {
        self.root.join("sources").join(d.hex())
    }

    /// Where an unfinished download of blob `d` is kept for the next pull to resume.
    pub fn partial_path(&self, d: &Digest) -> PathBuf {
        self.root.join("partial").join(d.hex())
    }

    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    fn image_path(&self, id: &Digest) -> PathBuf {
        self.root.join("images").join(format!("{}.json", id.hex()))
    }

    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.root.join("containers").join(id)
    }

    /// A fresh directory in `tmp/` for something being made; gone after a crash at the next
    /// command (nobody holds its lock any more).
    pub fn temp(&self) -> Result<Temp> {
        loop {
            let t = self.root.join("tmp").join(random_hex(16));
            // The lock first: another command's clean-up leaves alone what is locked.
            let lock_path = t.with_extension("lock");
            let lock =
                std::fs::File::create(&lock_path).map_err(io("cannot make a lock in", &t))?;
            let _ = sys::flock(lock.as_fd(), libc::LOCK_EX | libc::LOCK_NB);
            // A clean-up that took the lock file in the moment before it was held (a lock
            // file alone is what a command killed right here leaves): another name.
            let same = match (sys::fstat(lock.as_fd()), sys::lstat_path(&lock_path)) {
                (Ok(a), Ok(b)) => (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino),
                _ => false,
            };
            if !same {
                continue;
            }
            std::fs::create_dir(&t).map_err(io("cannot make", &t))?;
            return Ok(Temp {
                path: t,
                _lock: lock,
            });
        }
    }

    /// Removes what crashed commands left in `tmp/`: every entry whose lock nobody holds,
    /// and a lock file alone (a command killed between making it and its directory).
    fn clean_tmp(&self) {
        let Ok(rd) = std::fs::read_dir(self.root.join("tmp")) else {
            return;
        };
        let free = |lock: &Path| match std::fs::File::open(lock) {
            Ok(f) => sys::flock(f.as_fd(), libc::LOCK_EX | libc::LOCK_NB).is_ok(),
            Err(_) => true,
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "lock") {
                if !p.with_extension("").exists() && free(&p) {
                    let _ = std::fs::remove_file(&p);
                }
                continue;
            }
            let lock = p.with_extension("lock");
            if free(&lock) {
                let _ = remove_tree(&p);
                let _ = std::fs::remove_file(&lock);
            }
        }
    }

    /// The store-wide lock, held while records change (short critical sections).
    pub fn lock(&self) -> Result<std::fs::File> {
        let p = self.root.join("lock");
        let f = std::fs::File::create(&p).map_err(io("cannot open", &p))?;
        sys::flock(f.as_fd(), libc::LOCK_EX).map_err(|e| UserError(format!("lock: {e}")))?;
        Ok(f)
    }

    /// Stores `data` as a blob; its digest.
    pub fn put_blob(&self, data: &[u8]) -> Result<Digest> {
        let d = Digest::of(data);
        let p = self.blob_path(&d);
        if !p.exists() {
            write_atomic(&p, data)?;
        }
        Ok(d)
    }

    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let p = self.blob_path(d);
        std::fs::read(&p).map_err(io("blob", &p))
    }

    /// A failure of a command that writes into the store, said as what it is when the
    /// store's filesystem is full (rather than blaming the archive or layer being read).
    pub fn when_full(&self, e: UserError) -> UserError {
        let full = ["No space left on device", "Disk quota exceeded"]
            .into_iter()
            .find(|m| e.0.contains(m));
        match full {
            Some(m) => UserError(format!(
                "the store at '{}' is full ({m}): free space there (unionfuse rmi, prune) or use another store (--root); nothing was kept ({})",
                self.root.display(),
                e.0
            )),
            None => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let l = |h: &str| LayerRef {
            diff_id: Digest(format!("sha256:{}", h.repeat(64))),
            blob: Digest(String::new()),
            media_type: String::new(),
            size: 0,
        };
        let c = chain_ids(&[l("a"), l("b")]);
        assert_eq!(c[0], l("a").diff_id);
        let want = Digest::of(format!("{} {}", l("a").diff_id, l("b").diff_id).as_bytes());
        assert_eq!(c[1], want);
        assert_eq!(normalize_name("a/b").unwrap(), "a/b:latest");
        assert_eq!(
            normalize_name("localhost:5000/a").unwrap(),
            "localhost:5000/a:latest"
        );
        assert_eq!(normalize_name("a:1").unwrap(), "a:1");
        assert!(normalize_name("a b").is_err());
    }

    fn temp_store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(Some(d.path().join("store"))).unwrap();
        (d, s)
    }

    fn image(s: &Store, config: &[u8]) -> Image {
        Image {
            format: crate::records::FORMAT,
            id: s.put_blob(config).unwrap(),
            names: Vec::new(),
            layers: Vec::new(),
            created: 1,
        }
    }

    #[test]
    fn blobs_are_stored_once_by_digest() {
        let (_d, s) = temp_store();
        let a = s.put_blob(b"one").unwrap();
        assert_eq!(a, Digest::of(b"one"));
        assert_eq!(s.put_blob(b"one").unwrap(), a);
        assert_eq!(s.read_blob(&a).unwrap(), b"one");
        assert!(s.read_blob(&Digest::of(b"two")).is_err());
    }

    #[test]
    fn an_image_arriving_again_keeps_its_names_and_gains_the_new_one() {
        let (_d, s) = temp_store();
        let img = s.add_image(image(&s, b"c"), &["a:1".into()]).unwrap();
        let again = s.add_image(image(&s, b"c"), &["b:1".into()]).unwrap();
        assert_eq!(again.id, img.id);
        assert_eq!(again.names, vec!["a:1", "b:1"]);
        // A name given to another image moves there.
        let other = s.add_image(image(&s, b"d"), &["a:1".into()]).unwrap();
        assert_eq!(other.names, vec!["a:1"]);
        assert_eq!(s.find_image(img.id.hex()).unwrap().names, vec!["b:1"]);
        // Found by name, short name, id and id prefix; an ambiguous prefix is refused.
        assert_eq!(s.find_image("b:1").unwrap().id, img.id);
        assert_eq!(s.find_image(&img.id.hex()[..6]).unwrap().id, img.id);
        assert!(s.find_image("nosuch").is_err());
        assert_eq!(s.images().unwrap().len(), 2);
        // Names are checked where they are given.
        assert!(s.add_image(image(&s, b"e"), &["Bad:1".into()]).is_err());
    }

    #[test]
    fn names_follow_the_reference_grammar() {
        for good in ["a", "a/b:1", "localhost:5000/a/b:v1.2-3_x"] {
            assert!(normalize_name(good).is_ok(), "{good}");
        }
        let d = format!("repo@{}", Digest::of(b"x"));
        assert_eq!(normalize_name(&d).unwrap(), d);
        for bad in [
            "",
            "MyImg:1",
            ":1",
            "a:1:2",
            "UPPER",
            "a b",
            "a@sha256:12",
            "a/:1",
        ] {
            assert!(normalize_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn leftovers_of_a_crash_go_and_what_is_being_made_stays() {
        let (_d, s) = temp_store();
        let held = s.temp().unwrap();
        std::fs::write(held.path.join("x"), b"in the making").unwrap();
        // What a killed command left: a directory whose lock nobody holds.
        let dead = s.root.join("tmp").join("dead");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.with_extension("lock"), b"").unwrap();
        // And a lock alone: killed between making it and its directory.
        let lone = s.root.join("tmp").join("lone.lock");
        std::fs::write(&lone, b"").unwrap();
        let s2 = Store::open(Some(s.root.clone())).unwrap();
        assert!(!dead.exists(), "a crash's leftover stayed");
        assert!(!dead.with_extension("lock").exists());
        assert!(!lone.exists(), "a lone lock stayed");
        assert!(held.path.with_extension("lock").exists());
        assert!(held.path.join("x").exists(), "what is being made went");
        drop(held);
        drop(s2);
    }

    #[test]
    fn a_container_whose_runner_died_reads_as_killed() {
        let (_d, s) = temp_store();
        let c = Container {
            format: crate::records::FORMAT,
            id: "ab".repeat(32),
            name: "c1".into(),
            image: Digest::of(b"c"),
            image_name: "base".into(),
            command: vec!["true".into()],
            env: Vec::new(),
            workdir: None,
            hostname: None,
            user: None,
            created: 1,
            state: State::Running,
            host: Default::default(),
            started: Some(1),
            reason: None,
        };
        std::fs::create_dir_all(s.container_dir(&c.id)).unwrap();
        s.put_container(&c).unwrap();
        // Its lock is held: still running.
        let lock = s.lock_container(&c).unwrap();
        assert_eq!(s.find_container("c1").unwrap().state, State::Running);
        drop(lock);
        // Gone without a word: exited, with SIGKILL's status, recorded.
        assert_eq!(s.find_container("c1").unwrap().state, State::Exited(137));
        let on_disk: Container = read_json(&s.container_dir(&c.id).join("config.json")).unwrap();
        assert_eq!(on_disk.state, State::Exited(137));
    }

    #[test]
    fn a_full_filesystem_is_said_to_be_the_stores() {
        let (_d, s) = temp_store();
        let e = s.when_full(UserError(
            "'x.tar': tar entry 'a': No space left on device".into(),
        ));
        assert!(e.0.starts_with(&format!("the store at '{}' is full", s.root.display())));
        assert_eq!(s.when_full(UserError("other".into())).0, "other");
    }
}
