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
pub mod load;
pub mod registry;
pub mod save;
pub mod show;
pub mod unpack;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::{Result, UserError, bail};
pub use crate::records::{Container, Digest, Image, LayerRef, State};
use crate::sys;

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

/// `NAME[:TAG]` or `NAME@DIGEST`, checked against the reference grammar `pull` uses
/// (lowercase repository components, a tag of at most 128 word characters, a sha256 digest),
/// with the tag `latest` when neither is given.
pub fn normalize_name(name: &str) -> Result<String> {
    let bad = |why: &str| {
        UserError(format!(
            "'{name}' is not a valid image name ({why}; NAME[:TAG] or NAME@sha256:HEX, as in localhost/app:1)"
        ))
    };
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(bad("empty or with spaces"));
    }
    let r = <oci_client::Reference as std::str::FromStr>::from_str(name)
        .map_err(|e| bad(&e.to_string()))?;
    if let Some(d) = r.digest() {
        Digest::parse(d).map_err(|_| bad("the digest is not sha256:HEX"))?;
    }
    // The parser lowercases nothing and accepts a repository it then prefixes: only what
    // the user wrote, character for character, is a name.
    let last = name.rsplit('/').next().unwrap_or(name);
    if name.contains('@') || last.contains(':') {
        Ok(name.to_string())
    } else {
        Ok(format!("{name}:latest"))
    }
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
        std::fs::read_to_string(self.source_path(d))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    /// Records that blob `d` is in `repo` (`registry/repository`). Best effort: a hint for
    /// later pushes, never needed for correctness.
    pub fn add_source(&self, d: &Digest, repo: &str) {
        let mut v = self.sources(d);
        v.retain(|r| r != repo);
        v.push(repo.to_string());
        // A few are enough to find one to mount from.
        let keep = v.split_off(v.len().saturating_sub(8));
        let _ = write_replacing(
            &self.source_path(d),
            (keep.join("\n") + "\n").as_bytes(),
            false,
        );
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
        let t = self.root.join("tmp").join(random_hex(16));
        // The lock first: another command's clean-up leaves alone what is locked.
        let lock = std::fs::File::create(t.with_extension("lock"))
            .map_err(io("cannot make a lock in", &t))?;
        let _ = sys::flock(lock.as_fd(), libc::LOCK_EX | libc::LOCK_NB);
        std::fs::create_dir(&t).map_err(io("cannot make", &t))?;
        Ok(Temp {
            path: t,
            _lock: lock,
        })
    }

    /// Removes what crashed commands left in `tmp/`: every entry whose lock nobody holds.
    fn clean_tmp(&self) {
        let Ok(rd) = std::fs::read_dir(self.root.join("tmp")) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "lock") {
                continue;
            }
            let lock = p.with_extension("lock");
            let free = match std::fs::File::open(&lock) {
                Ok(f) => sys::flock(f.as_fd(), libc::LOCK_EX | libc::LOCK_NB).is_ok(),
                Err(_) => true,
            };
            if free {
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

    /// The configuration of `img` (its Entrypoint, Cmd, Env…, its DiffIDs and history).
    pub fn image_config(&self, img: &Image) -> Result<ImageConfiguration> {
        ImageConfiguration::from_reader(&self.read_blob(&img.id)?[..])
            .map_err(|e| UserError(format!("image config {}: {e}", img.id)))
    }

    /// Stores an image configuration as a blob; its digest (the image's id).
    pub fn put_config(&self, cfg: &ImageConfiguration) -> Result<Digest> {
        let json = cfg
            .to_string()
            .map_err(|e| UserError(format!("image config: {e}")))?;
        self.put_blob(json.as_bytes())
    }

    pub fn images(&self) -> Result<Vec<Image>> {
        let mut out = Vec::new();
        let dir = self.root.join("images");
        for e in std::fs::read_dir(&dir)
            .map_err(io("cannot list", &dir))?
            .flatten()
        {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                out.push(read_json(&p)?);
            }
        }
        out.sort_by(|a: &Image, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    pub fn put_image(&self, img: &Image) -> Result<()> {
        write_json(&self.image_path(&img.id), img)
    }

    /// An image by name (`NAME[:TAG]`), id or id prefix (at least 4 hex digits).
    pub fn find_image(&self, what: &str) -> Result<Image> {
        let images = self.images()?;
        let name = normalize_name(what).ok();
        // A short name also finds what podman names `localhost/NAME`.
        let local = name.as_ref().map(|n| format!("localhost/{n}"));
        for n in [&name, &local].into_iter().flatten() {
            if let Some(i) = images.iter().find(|i| i.names.contains(n)) {
                return Ok(i.clone());
            }
        }
        let hex = what.strip_prefix("sha256:").unwrap_or(what);
        if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<&Image> = images
                .iter()
                .filter(|i| i.id.hex().starts_with(hex))
                .collect();
            match hits.as_slice() {
                [one] => return Ok((*one).clone()),
                [] => {}
                _ => bail!("'{what}' names more than one image: give more digits"),
            }
        }
        bail!("no image '{what}' (see unionfuse images)")
    }

    /// Records `img` and gives it `names`. An image already in the store keeps the names it
    /// has (a second name for the same image is added, never put in the first one's place).
    /// The caller holds the store's lock.
    pub fn add_image(&self, mut img: Image, names: &[String]) -> Result<Image> {
        if let Ok(old) = read_json::<Image>(&self.image_path(&img.id)) {
            img.names = old.names;
        }
        self.put_image(&img)?;
        for n in names {
            self.set_name(&img.id, n)?;
        }
        self.find_image(img.id.hex())
    }

    /// Gives `name` to the image `id`, taking it from any other image.
    pub fn set_name(&self, id: &Digest, name: &str) -> Result<()> {
        let name = normalize_name(name)?;
        for mut i in self.images()? {
            let had = i.names.contains(&name);
            if i.id == *id && !had {
                i.names.push(name.clone());
                self.put_image(&i)?;
            } else if i.id != *id && had {
                i.names.retain(|n| *n != name);
                self.put_image(&i)?;
            }
        }
        Ok(())
    }

    pub fn containers(&self) -> Result<Vec<Container>> {
        let mut out = Vec::new();
        let dir = self.root.join("containers");
        for e in std::fs::read_dir(&dir)
            .map_err(io("cannot list", &dir))?
            .flatten()
        {
            let p = e.path().join("config.json");
            if p.exists() {
                out.push(self.settled(read_json(&p)?));
            }
        }
        out.sort_by_key(|c: &Container| std::cmp::Reverse(c.created));
        Ok(out)
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

    /// `c` as it is: a record that says running while no runner holds the container's
    /// lock belongs to a run whose runner was killed (`kill -9`) before it could record
    /// the end; it ended with SIGKILL's status, 137, which is recorded now.
    fn settled(&self, c: Container) -> Container {
        if c.state != State::Running || self.is_running(&c) {
            return c;
        }
        // Read again: a runner that just recorded its end and let go of the lock wins.
        let p = self.container_dir(&c.id).join("config.json");
        let Ok(mut now) = read_json::<Container>(&p) else {
            return c;
        };
        if now.state == State::Running {
            now.state = State::Exited(137);
            let _ = self.put_container(&now);
        }
        now
    }

    /// A container's record: not synced (its state changes at every start and exit; a
    /// crash keeps the record before or after the change).
    pub fn put_container(&self, c: &Container) -> Result<()> {
        let data = serde_json::to_vec_pretty(c).map_err(|e| UserError(e.to_string()))?;
        write_replacing(&self.container_dir(&c.id).join("config.json"), &data, false)
    }

    /// A container by name, id or id prefix.
    pub fn find_container(&self, what: &str) -> Result<Container> {
        let all = self.containers()?;
        if let Some(c) = all.iter().find(|c| c.name == what) {
            return Ok(c.clone());
        }
        let hits: Vec<&Container> = all
            .iter()
            .filter(|c| what.len() >= 4 && c.id.starts_with(what))
            .collect();
        match hits.as_slice() {
            [one] => Ok((*one).clone()),
            [] => bail!("no container '{what}' (see unionfuse ps -a)"),
            _ => bail!("'{what}' names more than one container: give more digits"),
        }
    }

    /// The lower layer directories of an image, top first (as the union takes them).
    pub fn lowers(&self, img: &Image) -> Vec<PathBuf> {
        img.layers
            .iter()
            .rev()
            .map(|l| self.layer_path(&l.diff_id))
            .collect()
    }

    /// Whether the container's runner is running (it holds the container's lock).
    pub fn is_running(&self, c: &Container) -> bool {
        match std::fs::File::open(self.container_dir(&c.id).join("lock")) {
            Ok(f) => sys::flock(f.as_fd(), libc::LOCK_SH | libc::LOCK_NB).is_err(),
            Err(_) => false,
        }
    }

    /// Takes the container's lock for a run: refused while another run holds it.
    pub fn lock_container(&self, c: &Container) -> Result<std::fs::File> {
        let p = self.container_dir(&c.id).join("lock");
        let f = std::fs::File::create(&p).map_err(io("cannot open", &p))?;
        if sys::flock(f.as_fd(), libc::LOCK_EX | libc::LOCK_NB).is_err() {
            bail!(
                "container '{}' is running (stop it with unionfuse stop {})",
                c.name,
                c.name
            );
        }
        Ok(f)
    }

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
                            .map_err(|e| UserError(e.to_string()))?;
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
    _lock: std::fs::File,
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
fn write_replacing(p: &Path, data: &[u8], sync: bool) -> Result<()> {
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

/// The ChainIDs of a stack of layers (bottom first), as the OCI image spec defines them:
/// the first layer's DiffID, then sha256 of "PARENT_CHAINID DIFFID": a layer's identity
/// with everything under it.
pub fn chain_ids(layers: &[LayerRef]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::new();
    for l in layers {
        let next = match out.last() {
            None => l.diff_id.clone(),
            Some(p) => Digest::of(format!("{} {}", p, l.diff_id).as_bytes()),
        };
        out.push(next);
    }
    out
}

/// Images by layer, for sharing: how many images use each DiffID.
pub fn layer_users(images: &[Image]) -> BTreeMap<Digest, usize> {
    let mut m = BTreeMap::new();
    for i in images {
        for l in &i.layers {
            *m.entry(l.diff_id.clone()).or_insert(0) += 1;
        }
    }
    m
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
        let s2 = Store::open(Some(s.root.clone())).unwrap();
        assert!(!dead.exists(), "a crash's leftover stayed");
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
