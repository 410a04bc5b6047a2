//! A container's changes: `diff` lists them and `commit` makes them a layer, both read from
//! the container's upper alone (the lowers are only asked whether a path existed, one
//! lookup a path, never walked). Whiteouts and opaque directories of every format become
//! `.wh.` entries; a renamed directory (a redirect in the upper) is written out in full under
//! its new name, as an opaque directory (its old name has a whiteout already).

use std::ffi::{CStr, OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{Container, Digest, Image, LayerRef, Store, now};
use crate::error::{Result, UserError};
use crate::sys;
use crate::union::{Union, UnionConfig, whiteout};

/// One change of a container, as `docker diff` shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Change {
    pub path: String,
    /// `A`dded, `C`hanged or `D`eleted.
    pub kind: char,
}

fn err(e: impl std::fmt::Display) -> UserError {
    UserError(e.to_string())
}

/// The lowers of an image as one read-only union, for asking whether a path exists there.
struct Below {
    u: Union,
}

impl Below {
    fn new(lowers: Vec<PathBuf>) -> Result<Below> {
        let u = Union::new(&UnionConfig {
            lowers,
            read_only: true,
            ..Default::default()
        })
        .map_err(|e| err(format!("the image's layers: {e}")))?;
        Ok(Below { u })
    }

    /// Whether `path` (components) shows something in the union.
    fn exists(&self, path: &[OsString]) -> bool {
        let mut ino = 1;
        let mut taken = Vec::new();
        let mut found = true;
        for c in path {
            match self.u.lookup(ino, c) {
                Ok(st) => {
                    taken.push(st.st_ino);
                    ino = st.st_ino;
                }
                Err(_) => {
                    found = false;
                    break;
                }
            }
        }
        for t in taken {
            self.u.forget(t, 1);
        }
        found
    }
}

/// Puts the path an error happened at in front of it.
fn at<E: std::fmt::Display>(path: impl std::fmt::Display) -> impl FnOnce(E) -> UserError {
    move |e| UserError(format!("'{path}': {e}"))
}

fn show_dir(path: &[OsString]) -> String {
    if path.is_empty() {
        "/".into()
    } else {
        show(path)
    }
}

fn show_in(path: &[OsString], name: &OsStr) -> String {
    format!("{}/{}", show(path), name.to_string_lossy())
}

fn show(path: &[OsString]) -> String {
    let mut s = String::new();
    for c in path {
        s.push('/');
        s.push_str(&c.to_string_lossy());
    }
    s
}

/// What one entry of an upper directory is.
enum Kind {
    /// A whiteout for this name (of any format).
    Whiteout(OsString),
    /// A marker (an OCI opaque marker): no entry of its own.
    Marker,
    Entry(libc::stat),
}

fn classify(dir: &OwnedFd, name: &OsStr) -> Result<Kind> {
    if let Some(t) = whiteout::oci_target(name) {
        return Ok(Kind::Whiteout(t.to_owned()));
    }
    if whiteout::is_oci_name(name) {
        return Ok(Kind::Marker);
    }
    let c = sys::cstr(name).map_err(err)?;
    let st = sys::fstatat(dir.as_fd(), &c).map_err(err)?;
    if whiteout::is_whiteout(dir.as_fd(), &c, &st).map_err(err)? {
        return Ok(Kind::Whiteout(name.to_owned()));
    }
    Ok(Kind::Entry(st))
}

/// Whether `name` at the root of an upper is a mount target the runner made (`/dev`,
/// `/proc`, `/sys`, `/tmp` in an image without them): an empty directory that is no
/// change of the container's.
fn runner_target(dir: &OwnedFd, name: &OsStr, st: &libc::stat, below: &Below) -> bool {
    matches!(name.as_bytes(), b"dev" | b"proc" | b"sys" | b"tmp")
        && st.st_mode & libc::S_IFMT == libc::S_IFDIR
        && subdir(dir, name)
            .ok()
            .and_then(|d| sys::read_dir(d.as_fd()).ok())
            .is_some_and(|e| e.is_empty())
        && !below.exists(&[name.to_owned()])
}

fn sorted_names(dir: &OwnedFd) -> Result<Vec<OsString>> {
    let mut v: Vec<OsString> = sys::read_dir(dir.as_fd())
        .map_err(err)?
        .into_iter()
        .map(|e| e.name)
        .collect();
    v.sort();
    Ok(v)
}

fn subdir(dir: &OwnedFd, name: &OsStr) -> Result<OwnedFd> {
    let c = sys::cstr(name).map_err(err)?;
    sys::openat(dir.as_fd(), &c, libc::O_PATH | libc::O_DIRECTORY, 0).map_err(err)
}

/// `unionfuse diff`: the container's changes, sorted by path.
///
/// Rootless, the upper is read as root of the container's user namespace: files and
/// directories of the container's users (a `0700` home) are readable there, as in the
/// container.
pub fn diff(store: &Store, c: &Container, img: &Image) -> Result<Vec<Change>> {
    let lowers = store.lowers(img);
    let upper = store.container_dir(&c.id).join("upper");
    crate::userns::in_user_namespace_with(move || diff_of(&upper, lowers))
}

fn diff_of(upper: &Path, lowers: Vec<PathBuf>) -> Result<Vec<Change>> {
    let below = Below::new(lowers)?;
    let upper = sys::open_dir_path(upper).map_err(at(upper.display()))?;
    let mut out = Vec::new();
    fn walk(
        below: &Below,
        dir: &OwnedFd,
        path: &mut Vec<OsString>,
        out: &mut Vec<Change>,
    ) -> Result<()> {
        for name in sorted_names(dir).map_err(at(show_dir(path)))? {
            if path.is_empty() && crate::union::is_work_name(&name) {
                continue;
            }
            let kind = classify(dir, &name).map_err(at(show_in(path, &name)));
            match kind? {
                Kind::Marker => {}
                Kind::Whiteout(t) => {
                    path.push(t);
                    if below.exists(path) {
                        out.push(Change {
                            path: show(path),
                            kind: 'D',
                        });
                    }
                    path.pop();
                }
                Kind::Entry(st) => {
                    if path.is_empty() && runner_target(dir, &name, &st, below) {
                        continue;
                    }
                    path.push(name.clone());
                    let kind = if below.exists(path) { 'C' } else { 'A' };
                    out.push(Change {
                        path: show(path),
                        kind,
                    });
                    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                        let sub = subdir(dir, &name).map_err(at(show(path)))?;
                        walk(below, &sub, path, out)?;
                    }
                    path.pop();
                }
            }
        }
        Ok(())
    }
    walk(&below, &upper, &mut Vec::new(), &mut out)?;
    out.sort();
    Ok(out)
}

/// Writes the tar of a container's upper.
struct LayerWriter<'a, W: Write> {
    tar: tar::Builder<W>,
    /// The container's view without an upper of its own (the upper as the top lower): a
    /// renamed directory's full content is read from it.
    view: &'a Union,
    /// The image's layers alone, for telling the runner's mount targets.
    below: &'a Below,
    /// Hard links: the first path of each (dev, ino) written.
    links: std::collections::HashMap<(u64, u64), PathBuf>,
}

fn header_for(st: &libc::stat, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(st.st_uid as u64);
    h.set_gid(st.st_gid as u64);
    h.set_mtime(st.st_mtime.max(0) as u64);
    h.set_size(0);
    h
}

/// The xattrs worth keeping in a layer: `user.*` (but the overlay's) and `security.*`.
fn xattrs_at(dir: &OwnedFd, name: Option<&CStr>) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(names) = sys::listxattr(dir.as_fd(), name) else {
        return out;
    };
    for n in names {
        let keep = (n.starts_with(b"user.") || n.starts_with(b"security."))
            && !whiteout::is_private_xattr(&n)
            && n.as_slice() != b"user.containers.override_stat";
        if !keep {
            continue;
        }
        let Ok(c) = std::ffi::CString::new(n.clone()) else {
            continue;
        };
        if let Ok(Some(v)) = sys::getxattr(dir.as_fd(), name, &c) {
            out.push((format!("SCHILY.xattr.{}", String::from_utf8_lossy(&n)), v));
        }
    }
    out
}

impl<W: Write> LayerWriter<'_, W> {
    fn append(
        &mut self,
        path: &Path,
        mut h: tar::Header,
        xattrs: Vec<(String, Vec<u8>)>,
        data: &mut dyn Read,
    ) -> Result<()> {
        if !xattrs.is_empty() {
            self.tar
                .append_pax_extensions(xattrs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(err)?;
        }
        self.tar
            .append_data(&mut h, path, data)
            .map_err(|e| err(format!("{}: {e}", path.display())))
    }

    fn whiteout(&mut self, parent: &Path, name: &OsStr) -> Result<()> {
        let mut wh = OsString::from(".wh.");
        wh.push(name);
        let st: libc::stat = sys::zeroed_stat();
        let mut h = header_for(&st, tar::EntryType::Regular);
        h.set_mode(0o600);
        self.append(&parent.join(wh), h, vec![], &mut std::io::empty())
    }

    /// One upper entry (not a whiteout) at `path`, and what is under it.
    fn entry(&mut self, dir: &OwnedFd, name: &OsStr, st: &libc::stat, path: &Path) -> Result<()> {
        let c = sys::cstr(name).map_err(err)?;
        let x = xattrs_at(dir, Some(&c));
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                let sub = subdir(dir, name).map_err(at(Path::new("/").join(path).display()))?;
                let m = whiteout::dir_markers(sub.as_fd()).map_err(err)?;
                let x = xattrs_at(&sub, None);
                self.append(
                    path,
                    header_for(st, tar::EntryType::Directory),
                    x,
                    &mut std::io::empty(),
                )?;
                if m.redirect.is_some() {
                    // Renamed: everything the view shows in it, as an opaque directory.
                    self.opaque(path)?;
                    return self.view_dir(path);
                }
                if m.opaque {
                    self.opaque(path)?;
                }
                self.upper_dir(&sub, path)
            }
            libc::S_IFREG => {
                let key = (st.st_dev, st.st_ino);
                if st.st_nlink > 1 {
                    if let Some(first) = self.links.get(&key).cloned() {
                        let mut h = header_for(st, tar::EntryType::Link);
                        h.set_link_name(&first).map_err(err)?;
                        return self.append(path, h, vec![], &mut std::io::empty());
                    }
                    self.links.insert(key, path.to_path_buf());
                }
                let mut h = header_for(st, tar::EntryType::Regular);
                h.set_size(st.st_size as u64);
                if crate::union::metacopy::is_marked(dir.as_fd(), &c) {
                    // A metadata-only copy (kernel overlayfs' metacopy): its data is below,
                    // where the view reads it.
                    let f = self.view_file(path)?;
                    return self.append(path, h, x, &mut (&f).take(st.st_size as u64));
                }
                let fd = sys::openat(dir.as_fd(), &c, libc::O_RDONLY, 0)
                    .map_err(|e| err(format!("'/{}': {e}", path.display())))?;
                self.append(path, h, x, &mut std::fs::File::from(fd))
            }
            libc::S_IFLNK => {
                let t = sys::readlinkat(dir.as_fd(), &c).map_err(err)?;
                let mut h = header_for(st, tar::EntryType::Symlink);
                h.set_link_name(OsStr::from_bytes(&t)).map_err(err)?;
                self.append(path, h, vec![], &mut std::io::empty())
            }
            fmt => {
                let kind = match fmt {
                    libc::S_IFIFO => tar::EntryType::Fifo,
                    libc::S_IFCHR => tar::EntryType::Char,
                    libc::S_IFBLK => tar::EntryType::Block,
                    _ => return Ok(()),
                };
                let mut h = header_for(st, kind);
                h.set_device_major(libc::major(st.st_rdev)).map_err(err)?;
                h.set_device_minor(libc::minor(st.st_rdev)).map_err(err)?;
                self.append(path, h, x, &mut std::io::empty())
            }
        }
    }

    fn opaque(&mut self, path: &Path) -> Result<()> {
        let st: libc::stat = sys::zeroed_stat();
        let mut h = header_for(&st, tar::EntryType::Regular);
        h.set_mode(0o600);
        self.append(&path.join(".wh..wh..opq"), h, vec![], &mut std::io::empty())
    }

    /// The entries of an upper directory.
    fn upper_dir(&mut self, dir: &OwnedFd, path: &Path) -> Result<()> {
        for name in sorted_names(dir).map_err(at(Path::new("/").join(path).display()))? {
            if path.as_os_str().is_empty() && crate::union::is_work_name(&name) {
                continue;
            }
            let kind =
                classify(dir, &name).map_err(at(Path::new("/").join(path).join(&name).display()));
            match kind? {
                Kind::Marker => {}
                Kind::Whiteout(t) => self.whiteout(path, &t)?,
                Kind::Entry(st) => {
                    if path.as_os_str().is_empty() && runner_target(dir, &name, &st, self.below) {
                        continue;
                    }
                    self.entry(dir, &name, &st, &path.join(&name))?
                }
            }
        }
        Ok(())
    }

    /// The file the view shows at `path`, open for reading.
    fn view_file(&mut self, path: &Path) -> Result<std::fs::File> {
        let mut ino = 1;
        let mut taken = Vec::new();
        let r = (|| {
            for c in path.iter() {
                let st = self.view.lookup(ino, c).map_err(err)?;
                taken.push(st.st_ino);
                ino = st.st_ino;
            }
            let fh = self.view.open(ino, libc::O_RDONLY).map_err(err)?;
            let fd = self.view.handle_fd(fh);
            self.view.release(fh);
            let fd = fd.ok_or_else(|| err("a file of the view went"))?;
            Ok::<_, UserError>(std::fs::File::from(fd.try_clone().map_err(err)?))
        })();
        for t in taken {
            self.view.forget(t, 1);
        }
        r.map_err(at(Path::new("/").join(path).display()))
    }

    /// Everything the view shows under `path`, from the view (a renamed directory's).
    fn view_dir(&mut self, path: &Path) -> Result<()> {
        let comps: Vec<&OsStr> = path.iter().collect();
        let mut ino = 1;
        let mut taken = Vec::new();
        let r = (|| {
            for c in &comps {
                let st = self.view.lookup(ino, c).map_err(err)?;
                taken.push(st.st_ino);
                ino = st.st_ino;
            }
            self.view_tree(ino, path, &mut taken)
        })();
        for t in taken {
            self.view.forget(t, 1);
        }
        r
    }

    fn view_tree(&mut self, dir: u64, path: &Path, taken: &mut Vec<u64>) -> Result<()> {
        let fh = self.view.opendir(dir).map_err(err)?;
        let listing = self.view.dir_listing(fh, 0).map_err(err);
        self.view.releasedir(fh);
        let mut names: Vec<OsString> = listing?
            .iter()
            .filter(|e| e.name != "." && e.name != "..")
            .map(|e| e.name.clone())
            .collect();
        names.sort();
        for n in names {
            let st = self.view.lookup(dir, &n).map_err(err)?;
            taken.push(st.st_ino);
            let p = path.join(&n);
            match st.st_mode & libc::S_IFMT {
                libc::S_IFDIR => {
                    let h = header_for(&st, tar::EntryType::Directory);
                    self.append(&p, h, vec![], &mut std::io::empty())?;
                    self.view_tree(st.st_ino, &p, taken)?;
                }
                libc::S_IFREG => {
                    let key = (0, st.st_ino);
                    if st.st_nlink > 1 {
                        if let Some(first) = self.links.get(&key).cloned() {
                            let mut h = header_for(&st, tar::EntryType::Link);
                            h.set_link_name(&first).map_err(err)?;
                            self.append(&p, h, vec![], &mut std::io::empty())?;
                            continue;
                        }
                        self.links.insert(key, p.clone());
                    }
                    let fh = self.view.open(st.st_ino, libc::O_RDONLY).map_err(err)?;
                    let fd = self.view.handle_fd(fh);
                    self.view.release(fh);
                    let fd = fd.ok_or_else(|| err("a file of the view went"))?;
                    let f = std::fs::File::from(fd.try_clone().map_err(err)?);
                    let mut h = header_for(&st, tar::EntryType::Regular);
                    h.set_size(st.st_size as u64);
                    self.append(&p, h, vec![], &mut (&f).take(st.st_size as u64))?;
                }
                libc::S_IFLNK => {
                    let t = self.view.readlink(st.st_ino).map_err(err)?;
                    let mut h = header_for(&st, tar::EntryType::Symlink);
                    h.set_link_name(OsStr::from_bytes(&t)).map_err(err)?;
                    self.append(&p, h, vec![], &mut std::io::empty())?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// `unionfuse commit`: the container's changes as a new layer on its image, named `name`.
pub fn commit(
    store: &Store,
    c: &Container,
    img: &Image,
    name: &str,
    rep: &super::load::Report,
) -> Result<Image> {
    let name = super::normalize_name(name)?;
    let upper_path = store.container_dir(&c.id).join("upper");
    let lowers = store.lowers(img);
    let t = store.temp()?;
    let dir = t.path.clone();
    // Rootless, as root of the container's user namespace: every file of the container's
    // users is readable there, and owners are written as the container sees them.
    let (diff_id, blob, gz_path) =
        crate::userns::in_user_namespace_with(move || write_layer(&upper_path, lowers, &dir))?;
    let size = std::fs::metadata(&gz_path).map_err(err)?.len();
    let mut st = super::load::Staged::new(store)?;
    st.blob_made(gz_path, &blob);
    if !st.layer(&blob, &diff_id, rep)? {
        rep.line(&format!("layer {}: already present", diff_id.short()));
    }
    st.finish()?;

    let mut cfg = store.image_config(img)?;
    let when = super::load::rfc3339(now());
    cfg.set_created(Some(when.clone()));
    cfg.rootfs_mut().diff_ids_mut().push(diff_id.0.clone());
    let entry = oci_spec::image::HistoryBuilder::default()
        .created(when)
        .created_by(format!("unionfuse commit {}", c.name))
        .build()
        .map_err(err)?;
    cfg.history_mut().get_or_insert_with(Vec::new).push(entry);
    let id = store.put_config(&cfg)?;
    let mut layers = img.layers.clone();
    layers.push(LayerRef {
        diff_id,
        blob,
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        size,
    });
    let new = Image {
        format: crate::records::FORMAT,
        id: id.clone(),
        names: Vec::new(),
        layers,
        created: now(),
    };
    let _l = store.lock()?;
    store.add_image(new, &[name.to_string()])
}

/// Writes the layer of the upper at `upper_path` over `lowers` into `dir`: `layer.tar`, and
/// the blob `layer.tar.gz`. Returns the DiffID, the blob's digest and path.
fn write_layer(
    upper_path: &Path,
    lowers: Vec<PathBuf>,
    dir: &Path,
) -> Result<(Digest, Digest, PathBuf)> {
    let upper = sys::open_dir_path(upper_path).map_err(at(upper_path.display()))?;
    let below = Below::new(lowers.clone())?;
    let mut all = vec![upper_path.to_path_buf()];
    all.extend(lowers);
    let view = Union::new(&UnionConfig {
        lowers: all,
        read_only: true,
        ..Default::default()
    })
    .map_err(|e| err(format!("the container's view: {e}")))?;

    // The tar, hashed as it is written (its digest is the DiffID), through the same
    // writer as the blob.
    let tar_w = super::ingest::BlobWriter::create(dir.join("layer.tar"), None, None)?;
    let mut w = LayerWriter {
        tar: tar::Builder::new(std::io::BufWriter::new(tar_w)),
        view: &view,
        below: &below,
        links: Default::default(),
    };
    w.tar.mode(tar::HeaderMode::Complete);
    w.upper_dir(&upper, Path::new(""))?;
    let buf = w.tar.into_inner().map_err(err)?;
    let (diff_id, _, tar_path) = buf
        .into_inner()
        .map_err(|e| err(e.error()))?
        .finish("the layer's tar")?;

    // The blob: the tar, gzip-compressed, written once through the store's blob writer.
    let w = super::ingest::BlobWriter::create(dir.join("layer.tar.gz"), None, None)?;
    let mut gz = flate2::write::GzEncoder::new(w, flate2::Compression::fast());
    std::io::copy(&mut std::fs::File::open(&tar_path).map_err(err)?, &mut gz).map_err(err)?;
    let (blob, _, gz_path) = gz.finish().map_err(err)?.finish("the layer's blob")?;
    Ok((diff_id, blob, gz_path))
}
