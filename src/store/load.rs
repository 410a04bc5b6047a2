//! `unionfuse load` and `unionfuse import`: images into the store. Reads a `docker save`
//! archive (the classic `manifest.json` form and the OCI form), an OCI image layout (a
//! directory) or an OCI archive (the same, as a tar), with gzip, zstd or plain layers. Every
//! blob is checked against its digest and every layer against its DiffID while it is
//! extracted, in one pass over the data; a layer already in the store is not extracted again.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};

use super::{Digest, Hashing, Image, LayerRef, Store, now, read_json, unpack::Unpacker};
use crate::error::{Result, UserError, about, bail};
use crate::sys;

/// Tells the user how each layer went: a progress bar on a terminal, one line otherwise.
pub struct Report {
    bars: bool,
    /// Several bars at once (parallel downloads) drawn without garbling each other.
    multi: indicatif::MultiProgress,
}

impl Report {
    pub fn new() -> Report {
        use std::io::IsTerminal;
        Report {
            bars: std::io::stderr().is_terminal(),
            multi: indicatif::MultiProgress::new(),
        }
    }

    pub(crate) fn bar(&self, what: &str, total: u64) -> Option<indicatif::ProgressBar> {
        if !self.bars {
            return None;
        }
        let b = indicatif::ProgressBar::new(total);
        if let Ok(st) = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        ) {
            b.set_style(st.progress_chars("=> "));
        }
        b.set_message(what.to_string());
        Some(self.multi.add(b))
    }

    pub fn line(&self, msg: &str) {
        if !self.bars || self.multi.println(msg).is_err() {
            eprintln!("{msg}");
        }
    }
}

impl Default for Report {
    fn default() -> Report {
        Report::new()
    }
}

/// A reader that moves a progress bar.
struct Progress<R> {
    inner: R,
    bar: Option<indicatif::ProgressBar>,
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(b) = &self.bar {
            b.inc(n as u64);
        }
        Ok(n)
    }
}

/// The decompressed stream of a layer blob, by its first bytes: gzip, zstd or a plain tar.
pub(crate) fn decompress<'a>(r: impl Read + 'a) -> Result<Box<dyn Read + 'a>> {
    let mut r = BufReader::with_capacity(1 << 16, r);
    let head = r
        .fill_buf()
        .map_err(|e| UserError(format!("cannot read a layer: {e}")))?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(r))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(
            zstd::stream::read::Decoder::with_buffer(r)
                .map_err(|e| UserError(format!("zstd: {e}")))?,
        )
    } else {
        Box::new(r)
    })
}

fn media_type_of(blob: &Path) -> String {
    let mut head = [0u8; 4];
    let n = std::fs::File::open(blob)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    let head = &head[..n];
    if head.starts_with(&[0x1f, 0x8b]) {
        "application/vnd.oci.image.layer.v1.tar+gzip".into()
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        "application/vnd.oci.image.layer.v1.tar+zstd".into()
    } else {
        "application/vnd.oci.image.layer.v1.tar".into()
    }
}

/// What a command brings into the store, made in a temporary directory and moved into place
/// only once all of it is checked (`finish`): a refused or killed load leaves the store as it
/// was. Each layer being made is locked, so that two loads extract it once.
pub struct Staged<'a> {
    store: &'a Store,
    t: super::Temp,
    moves: Vec<(PathBuf, PathBuf)>,
    locks: Vec<(std::fs::File, PathBuf)>,
    n: usize,
}

impl<'a> Staged<'a> {
    pub fn new(store: &'a Store) -> Result<Staged<'a>> {
        Ok(Staged {
            store,
            t: store.temp()?,
            moves: Vec::new(),
            locks: Vec::new(),
            n: 0,
        })
    }

    fn next(&mut self, what: &str) -> PathBuf {
        self.n += 1;
        self.t.path.join(format!("{what}-{}", self.n))
    }

    /// Where blob `d` can be read: the store, or what is staged.
    pub fn blob(&self, d: &Digest) -> PathBuf {
        let dest = self.store.blob_path(d);
        self.moves
            .iter()
            .find(|(_, to)| *to == dest)
            .map_or(dest, |(from, _)| from.clone())
    }

    /// Takes a copy of `src` as a blob, checking its digest on the way (when one is
    /// expected); returns the digest and size.
    pub fn blob_file(&mut self, src: &Path, expect: Option<&Digest>) -> Result<(Digest, u64)> {
        if let Some(d) = expect
            && self.store.blob_path(d).exists()
        {
            let size = std::fs::metadata(self.store.blob_path(d)).map_or(0, |m| m.len());
            return Ok((d.clone(), size));
        }
        let tmp = self.next("blob");
        let what = format!("'{}'", src.display());
        let mut f = std::fs::File::open(src).map_err(about(&what))?;
        let mut w = super::ingest::BlobWriter::create(tmp, expect.cloned(), None)?;
        if let Err(e) = w.copy_from(&mut f, &what) {
            w.discard();
            return Err(e);
        }
        let (d, n, tmp) = w.finish(&what)?;
        let dest = self.store.blob_path(&d);
        self.moves.push((tmp, dest));
        Ok((d, n))
    }

    /// Takes `src`, a file of this command's in the store's `tmp/` whose digest `d` was
    /// checked as it was written, as that blob: moved, not copied (the store's own blob,
    /// when it is one, stays where it is).
    pub fn blob_checked(&mut self, src: &Path, d: &Digest) -> Result<(Digest, u64)> {
        let dest = self.store.blob_path(d);
        let size = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| m.len())
                .map_err(|e| UserError(format!("blob {d}: {e}")))
        };
        if src == dest || dest.exists() {
            return Ok((d.clone(), size(&dest)?));
        }
        let tmp = self.next("blob");
        std::fs::rename(src, &tmp).map_err(|e| UserError(format!("blob {d}: {e}")))?;
        let n = size(&tmp)?;
        self.moves.push((tmp, dest));
        Ok((d.clone(), n))
    }

    /// Takes the blob file `src` (made by this process) as blob `d` as it is.
    pub fn blob_made(&mut self, src: PathBuf, d: &Digest) {
        self.moves.push((src, self.store.blob_path(d)));
    }

    /// Extracts blob `blob` as the layer of DiffID `diff_id`, unless the store has it.
    /// Returns whether it was extracted now.
    pub fn layer(&mut self, blob: &Digest, diff_id: &Digest, rep: &Report) -> Result<bool> {
        let dest = self.store.layer_path(diff_id);
        if dest.is_dir() || self.moves.iter().any(|(_, to)| *to == dest) {
            return Ok(false);
        }
        // One extraction per layer at a time, whichever processes want it.
        let lock_path = dest.with_extension("lock");
        let lock = std::fs::File::create(&lock_path).map_err(about(lock_path.display()))?;
        sys::flock(lock.as_fd(), libc::LOCK_EX).map_err(about(lock_path.display()))?;
        // Removed when this is finished or dropped, whatever happens below.
        self.locks.push((lock, lock_path));
        if dest.is_dir() {
            return Ok(false);
        }
        let fs = self.next("layer");
        std::fs::create_dir(&fs).map_err(about(fs.display()))?;
        let path = self.blob(blob);
        // Rootless, in a user namespace with the caller's range: files keep their owners.
        crate::userns::in_user_namespace(|| extract(&path, blob, diff_id, &fs, rep))?;
        self.moves.push((fs, dest));
        Ok(true)
    }

    /// Moves everything into place (what another process made meanwhile is kept).
    pub fn finish(mut self) -> Result<()> {
        for (from, to) in &self.moves {
            if to.exists() {
                continue;
            }
            let mv = || {
                std::fs::rename(from, to).map_err(|e| UserError(format!("{}: {e}", to.display())))
            };
            match std::fs::rename(from, to) {
                Ok(()) => {}
                // A layer whose root belongs to a subordinate id (its tar said so): moved as
                // root of the user namespace that made it.
                Err(e)
                    if e.kind() == std::io::ErrorKind::PermissionDenied && sys::geteuid() != 0 =>
                {
                    crate::userns::in_user_namespace(mv)?
                }
                Err(e) => bail!("{}: {e}", to.display()),
            }
        }
        self.unlock();
        Ok(())
    }

    fn unlock(&mut self) {
        for (lock, path) in std::mem::take(&mut self.locks) {
            let _ = std::fs::remove_file(path);
            drop(lock);
        }
    }
}

impl Drop for Staged<'_> {
    /// A refused or failed import leaves no layer lock behind.
    fn drop(&mut self) {
        self.unlock();
    }
}

/// Extracts the blob at `path` into `fs`, checking that it uncompresses to `diff_id`.
fn extract(path: &Path, blob: &Digest, diff_id: &Digest, fs: &Path, rep: &Report) -> Result<()> {
    let f = std::fs::File::open(path).map_err(|e| UserError(format!("blob {blob}: {e}")))?;
    let size = f.metadata().map_or(0, |m| m.len());
    let bar = rep.bar(&format!("layer {}", diff_id.short()), size);
    let mut data = Hashing::new(decompress(Progress {
        inner: f,
        bar: bar.clone(),
    })?);
    let done = Unpacker::new(fs)?.unpack(&mut data)?;
    let (got, bytes) = data
        .finish()
        .map_err(|e| UserError(format!("layer {}: {e}", diff_id.short())))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if got != *diff_id {
        bail!("layer {blob} should uncompress to DiffID {diff_id} but gives {got}: refusing it");
    }
    let mut msg = format!(
        "layer {}: extracted ({} entries, {})",
        diff_id.short(),
        done.entries,
        super::human(bytes)
    );
    if done.skipped_devices > 0 {
        msg.push_str(&format!(
            ", {} device nodes left out (not allowed here)",
            done.skipped_devices
        ));
    }
    rep.line(&msg);
    Ok(())
}

/// One image found in an archive or layout, its files on disk.
struct Found {
    names: Vec<String>,
    config: PathBuf,
    config_digest: Option<Digest>,
    layers: Vec<(PathBuf, Option<Digest>)>,
    /// The layers' files are this command's own, each checked against its digest as it
    /// was written (a pull's downloads): moved into place, not copied and hashed again.
    checked: bool,
}

fn blob_in(dir: &Path, d: &oci_spec::image::Digest) -> Result<(PathBuf, Digest)> {
    let d = Digest::parse(d.as_ref())?;
    let p = dir.join("blobs/sha256").join(d.hex());
    if !p.is_file() {
        bail!("the layout names blob {d}, which it does not hold");
    }
    Ok((p, d))
}

fn manifest_of(dir: &Path, path: &Path, names: Vec<String>) -> Result<Found> {
    let m = ImageManifest::from_reader(
        std::fs::File::open(path).map_err(|e| UserError(format!("manifest: {e}")))?,
    )
    .map_err(|e| UserError(format!("manifest: {e}")))?;
    let (config, config_digest) = blob_in(dir, m.config().digest())?;
    let mut layers = Vec::new();
    for l in m.layers() {
        let mt = l.media_type().to_string();
        if !(mt.contains("layer") && mt.contains("tar")) {
            bail!("unsupported layer media type '{mt}'");
        }
        let (p, d) = blob_in(dir, l.digest())?;
        layers.push((p, Some(d)));
    }
    Ok(Found {
        names,
        config,
        config_digest: Some(config_digest),
        layers,
        checked: false,
    })
}

/// The images of an OCI layout directory (a multi-platform index picks this machine's).
fn oci_layout(dir: &Path, stem: &str) -> Result<Vec<Found>> {
    let index = ImageIndex::from_reader(
        std::fs::File::open(dir.join("index.json")).map_err(about("index.json"))?,
    )
    .map_err(|e| UserError(format!("index.json: {e}")))?;
    let mut out = Vec::new();
    for m in index.manifests() {
        let ann = m.annotations().clone().unwrap_or_default();
        let name = ann
            .get("io.containerd.image.name")
            .or_else(|| ann.get("org.opencontainers.image.ref.name"))
            .map(|n| {
                if n.contains(':') || n.contains('/') {
                    n.clone()
                } else {
                    format!("{stem}:{n}")
                }
            });
        let (p, d) = blob_in(dir, m.digest())?;
        check_digest(&p, &d)?;
        let mt = m.media_type().to_string();
        if mt.contains("index") || mt.contains("manifest.list") {
            let sub = ImageIndex::from_reader(std::fs::File::open(&p).map_err(about(p.display()))?)
                .map_err(|e| UserError(format!("index {d}: {e}")))?;
            let arch = match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                a => a,
            };
            let pick = sub
                .manifests()
                .iter()
                .find(|x| {
                    x.platform().as_ref().is_some_and(|pl| {
                        pl.architecture().to_string() == arch && pl.os().to_string() == "linux"
                    })
                })
                .ok_or_else(|| UserError(format!("no linux/{arch} image in the index")))?;
            let (mp, md) = blob_in(dir, pick.digest())?;
            check_digest(&mp, &md)?;
            out.push(manifest_of(dir, &mp, name.into_iter().collect())?);
        } else {
            out.push(manifest_of(dir, &p, name.into_iter().collect())?);
        }
    }
    Ok(out)
}

/// The images of a `docker save` directory (its `manifest.json`).
fn docker_archive(dir: &Path) -> Result<Vec<Found>> {
    let m: serde_json::Value = read_json(&dir.join("manifest.json"))?;
    let Some(list) = m.as_array() else {
        bail!("manifest.json is not a list of images");
    };
    let mut out = Vec::new();
    for img in list {
        let file = |v: &serde_json::Value| -> Result<PathBuf> {
            let s = v
                .as_str()
                .ok_or_else(|| UserError("manifest.json: a path is not a string".into()))?;
            if s.split('/').any(|c| c == "..") || s.starts_with('/') {
                bail!("manifest.json: '{s}' leads out of the archive");
            }
            let p = dir.join(s);
            if !p.is_file() {
                bail!("manifest.json names '{s}', which the archive does not hold");
            }
            Ok(p)
        };
        // A blob under blobs/sha256/ is named by its digest: checked as such.
        let named = |p: &Path| -> Option<Digest> {
            let rel = p.strip_prefix(dir).ok()?.to_str()?;
            Digest::parse(&format!("sha256:{}", rel.strip_prefix("blobs/sha256/")?)).ok()
        };
        let config = file(&img["Config"])?;
        let mut layers = Vec::new();
        for l in img["Layers"].as_array().into_iter().flatten() {
            let p = file(l)?;
            let d = named(&p);
            layers.push((p, d));
        }
        let names = img["RepoTags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(String::from))
            .collect();
        out.push(Found {
            names,
            config_digest: named(&config),
            config,
            layers,
            checked: false,
        });
    }
    Ok(out)
}

fn check_digest(p: &Path, d: &Digest) -> Result<()> {
    let f = std::fs::File::open(p).map_err(about(format!("blob {d}")))?;
    let (got, _) = Hashing::new(f)
        .finish()
        .map_err(about(format!("blob {d}")))?;
    if got != *d {
        bail!("blob {d} holds data of digest {got}: refusing it");
    }
    Ok(())
}

/// Seconds since the epoch of an RFC 3339 time (`2024-01-02T03:04:05.6Z`), as configs
/// write `created`; None when it is not one.
fn parse_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[10] != b'T' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (h, mi, se) = (n(11..13)?, n(14..16)?, n(17..19)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + h * 3600 + mi * 60 + se)
}

/// Brings in an image whose blobs are files already here (a pull's downloads, each checked
/// against its digest as it came, in the store's `tmp/`, or the store's own blobs): the
/// config checked as a load checks it, the layers' files moved into place as they are, so
/// a pulled layer is written to disk once.
pub(crate) fn bring_in_blobs(
    store: &Store,
    names: Vec<String>,
    config: (PathBuf, Digest),
    layers: Vec<(PathBuf, Digest)>,
    rep: &Report,
) -> Result<Image> {
    let f = Found {
        names,
        config: config.0,
        config_digest: Some(config.1),
        layers: layers.into_iter().map(|(p, d)| (p, Some(d))).collect(),
        checked: true,
    };
    bring_in(store, f, rep)
}

/// Brings one found image in: its blobs checked and stored, its layers extracted (once).
fn bring_in(store: &Store, f: Found, rep: &Report) -> Result<Image> {
    let mut st = Staged::new(store)?;
    let (config, _) = st.blob_file(&f.config, f.config_digest.as_ref())?;
    let data = std::fs::read(st.blob(&config)).map_err(about(format!("image config {config}")))?;
    let cfg = ImageConfiguration::from_reader(&data[..])
        .map_err(|e| UserError(format!("image config {config}: {e}")))?;
    let diff_ids = cfg.rootfs().diff_ids();
    if diff_ids.len() != f.layers.len() {
        bail!(
            "image config {config} lists {} layers, the manifest {}",
            diff_ids.len(),
            f.layers.len()
        );
    }
    let mut layers = Vec::new();
    for ((path, expect), diff_id) in f.layers.iter().zip(diff_ids) {
        let diff_id = Digest::parse(diff_id)?;
        let (blob, size) = match expect {
            Some(d) if f.checked => st.blob_checked(path, d)?,
            _ => st.blob_file(path, expect.as_ref())?,
        };
        if !st.layer(&blob, &diff_id, rep)? {
            rep.line(&format!("layer {}: already present", diff_id.short()));
        }
        layers.push(LayerRef {
            diff_id,
            media_type: media_type_of(&st.blob(&blob)),
            blob,
            size,
        });
    }
    let created = cfg
        .created()
        .as_deref()
        .and_then(parse_time)
        .unwrap_or_else(now);
    let img = Image {
        format: crate::records::FORMAT,
        id: config,
        names: Vec::new(),
        layers,
        created,
    };
    st.finish()?;
    // A name the archive gives that is not one (podman refuses to save such) is left out.
    let names: Vec<String> = f
        .names
        .iter()
        .filter(|n| match super::normalize_name(n) {
            Ok(_) => true,
            Err(e) => {
                rep.line(&format!("{e}: the image is loaded without it"));
                false
            }
        })
        .cloned()
        .collect();
    let _l = store.lock()?;
    store.add_image(img, &names)
}

/// Loads every image of `src` (`-`: standard input); returns them.
pub fn load(store: &Store, src: &Path, rep: &Report) -> Result<Vec<Image>> {
    if src.as_os_str() == "-" {
        return load_stream(
            store,
            std::io::stdin().lock(),
            "standard input",
            "image",
            rep,
        );
    }
    let what = format!("'{}'", src.display());
    // A tag alone in an OCI layout's index is given the archive's name.
    let stem = src
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let md = std::fs::metadata(src).map_err(|e| UserError(format!("{what}: {e}")))?;
    if md.is_dir() {
        return load_dir(store, src, &what, &stem, rep);
    }
    let f = std::fs::File::open(src).map_err(|e| UserError(format!("{what}: {e}")))?;
    load_stream(store, f, &what, &stem, rep)
}

/// Loads every image of an archive read from `r` (`what` names it in errors): unpacked
/// (safely) into the store's tmp first, then read as a layout is.
pub fn load_stream(
    store: &Store,
    r: impl Read,
    what: &str,
    stem: &str,
    rep: &Report,
) -> Result<Vec<Image>> {
    let t = store.temp()?;
    Unpacker::new(&t.path)?
        .unpack(decompress(r)?)
        .map_err(|e| UserError(format!("{what}: {}", e.0)))?;
    load_dir(store, &t.path, what, stem, rep)
}

/// Loads every image of the docker-archive or OCI layout in `dir`.
fn load_dir(store: &Store, dir: &Path, what: &str, stem: &str, rep: &Report) -> Result<Vec<Image>> {
    let found = if dir.join("manifest.json").is_file() {
        docker_archive(dir)?
    } else if dir.join("index.json").is_file() {
        oci_layout(dir, stem)?
    } else {
        bail!(
            "{what} is neither a docker-archive nor an OCI image (no manifest.json, no index.json)"
        );
    };
    if found.is_empty() {
        bail!("{what} holds no image");
    }
    found.into_iter().map(|f| bring_in(store, f, rep)).collect()
}

/// `import`: a root filesystem tarball as a one-layer image named `name`.
pub fn import(store: &Store, tarball: &Path, name: &str, rep: &Report) -> Result<Image> {
    let name = super::normalize_name(name)?;
    let mut st = Staged::new(store)?;
    let (blob, size) = st.blob_file(tarball, None)?;
    // The DiffID: the uncompressed stream's digest; its entries are looked at on the way.
    let f = std::fs::File::open(st.blob(&blob)).map_err(about(format!("blob {blob}")))?;
    let mut h = Hashing::new(decompress(f)?);
    if let Some(kind) = image_archive_kind(&mut h) {
        bail!(
            "'{}' is an image archive ({kind}), not a root filesystem: load it with unionfuse load -i {}",
            tarball.display(),
            tarball.display()
        );
    }
    let (diff_id, _) = h
        .finish()
        .map_err(|e| UserError(format!("'{}': {e}", tarball.display())))?;
    if !st.layer(&blob, &diff_id, rep)? {
        rep.line(&format!("layer {}: already present", diff_id.short()));
    }
    let media_type = media_type_of(&st.blob(&blob));
    let err = |e: oci_spec::OciSpecError| UserError(format!("image config: {e}"));
    let config = oci_spec::image::ImageConfigurationBuilder::default()
        .created(rfc3339(now()))
        .config(
            oci_spec::image::ConfigBuilder::default()
                .env(vec![
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
                ])
                .cmd(vec!["/bin/sh".to_string()])
                .build()
                .map_err(err)?,
        )
        .rootfs(
            oci_spec::image::RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![diff_id.0.clone()])
                .build()
                .map_err(err)?,
        )
        .history(vec![
            oci_spec::image::HistoryBuilder::default()
                .created(rfc3339(now()))
                .created_by(format!("unionfuse import {}", tarball.display()))
                .build()
                .map_err(err)?,
        ])
        .build()
        .map_err(err)?;
    st.finish()?;
    let id = store.put_config(&config)?;
    let img = Image {
        format: crate::records::FORMAT,
        id: id.clone(),
        names: Vec::new(),
        layers: vec![LayerRef {
            diff_id,
            media_type,
            blob,
            size,
        }],
        created: now(),
    };
    let _l = store.lock()?;
    store.add_image(img, &[name])
}

/// What kind of image archive the tar `r` is (`docker save`'s `manifest.json`, an OCI
/// layout's `oci-layout` at its root), if it is one. Reads the entries' headers only.
fn image_archive_kind(r: &mut impl Read) -> Option<&'static str> {
    let mut a = tar::Archive::new(r);
    let entries = a.entries().ok()?;
    for e in entries {
        let Ok(e) = e else { return None };
        let Ok(p) = e.path() else { continue };
        let p = p.strip_prefix("./").unwrap_or(&p).to_path_buf();
        if p == Path::new("manifest.json") {
            return Some("docker save");
        }
        if p == Path::new("oci-layout") {
            return Some("an OCI image layout");
        }
    }
    None
}

/// An RFC 3339 time, UTC.
pub fn rfc3339(t: i64) -> String {
    let days = t.div_euclid(86400);
    let secs = t.rem_euclid(86400);
    // Civil date from days (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_blobs_come_in_whole_or_not_at_all() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(Some(d.path().join("store"))).unwrap();
        let src = d.path().join("blob");
        std::fs::write(&src, b"content").unwrap();
        let want = Digest::of(b"content");
        // A wrong digest is refused, and nothing of it stays.
        let mut st = Staged::new(&store).unwrap();
        assert!(st.blob_file(&src, Some(&Digest::of(b"other"))).is_err());
        drop(st);
        assert!(!store.blob_path(&want).exists());
        // Staged but not finished (a refused or killed load): nothing in the store.
        let mut st = Staged::new(&store).unwrap();
        assert_eq!(st.blob_file(&src, None).unwrap(), (want.clone(), 7));
        assert!(!store.blob_path(&want).exists());
        drop(st);
        assert!(!store.blob_path(&want).exists());
        // Finished: in place, and the staging directory gone with the next command.
        let mut st = Staged::new(&store).unwrap();
        st.blob_file(&src, Some(&want)).unwrap();
        st.finish().unwrap();
        assert_eq!(store.read_blob(&want).unwrap(), b"content");
        let again = Store::open(Some(store.root.clone())).unwrap();
        assert_eq!(
            std::fs::read_dir(again.root.join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn times_convert_both_ways() {
        for t in [0, 86399, 951782400, 1733312345, 4102444800] {
            assert_eq!(parse_time(&rfc3339(t)), Some(t), "{t}");
        }
        assert_eq!(
            parse_time("2024-01-02T03:04:05.123456789Z"),
            Some(1704164645)
        );
        assert_eq!(parse_time("yesterday"), None);
    }
}
