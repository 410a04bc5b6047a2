//! `unionfuse save`: an image of the store as an OCI archive (an OCI image layout in a tar)
//! or a docker-archive (`manifest.json`, uncompressed layers), which `podman load`,
//! `skopeo copy` and `unionfuse load` read.

use std::io::{Read, Write};
use std::path::Path;

use super::{Digest, Image, Store};
use crate::error::{Result, UserError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OciArchive,
    DockerArchive,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format> {
        match s {
            "oci-archive" | "oci" => Ok(Format::OciArchive),
            "docker-archive" | "docker" => Ok(Format::DockerArchive),
            _ => Err(UserError(format!(
                "--format '{s}': expected oci-archive or docker-archive"
            ))),
        }
    }
}

fn err(e: impl std::fmt::Display) -> UserError {
    UserError(e.to_string())
}

struct Out<W: Write> {
    tar: tar::Builder<W>,
}

impl<W: Write> Out<W> {
    fn file(&mut self, path: &str, size: u64, data: &mut dyn Read) -> Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(size);
        h.set_mtime(0);
        self.tar
            .append_data(&mut h, path, data)
            .map_err(|e| err(format!("{path}: {e}")))
    }

    fn bytes(&mut self, path: &str, data: &[u8]) -> Result<()> {
        self.file(path, data.len() as u64, &mut &data[..])
    }

    fn dir(&mut self, path: &str) -> Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(0);
        self.tar
            .append_data(&mut h, path, std::io::empty())
            .map_err(err)
    }

    fn blob(&mut self, store: &Store, d: &Digest) -> Result<u64> {
        let p = store.blob_path(d);
        let mut f = std::fs::File::open(&p).map_err(|e| err(format!("blob {d}: {e}")))?;
        let size = f.metadata().map_err(err)?.len();
        self.file(&format!("blobs/sha256/{}", d.hex()), size, &mut f)?;
        Ok(size)
    }
}

/// Writes `img` (named `name`, if any) to `to`, as `docker save -o` and `podman save -o`
/// do: `-` is standard output; a regular file (or a path that does not exist yet) is written
/// whole beside itself and renamed over, so a failure leaves it as it was; a symlink is
/// followed to what it names; a device, fifo or socket is written to as it is. Nothing is
/// left behind on failure.
pub fn save(
    store: &Store,
    img: &Image,
    name: Option<&str>,
    format: Format,
    to: &Path,
) -> Result<()> {
    if to.as_os_str() == "-" || to == Path::new("/dev/stdout") {
        let out = std::io::stdout().lock();
        return write(store, img, name, format, std::io::BufWriter::new(out));
    }
    let say = |e: &dyn std::fmt::Display| err(format!("'{}': {e}", to.display()));
    let target = resolve(to).map_err(|e| say(&e))?;
    match std::fs::metadata(&target) {
        Ok(md) if md.is_dir() => Err(err(format!(
            "'{}' is a directory: give the archive's file name (-o {}/image.tar)",
            to.display(),
            to.display().to_string().trim_end_matches('/')
        ))),
        Ok(md) if !md.is_file() => {
            // A device, a fifo, a socket: written to as it is, never replaced.
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&target)
                .map_err(|e| say(&e))?;
            write(store, img, name, format, std::io::BufWriter::new(f))
        }
        Ok(_) => write_replacing(store, img, name, format, &target).map_err(|e| say(&e.0)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_replacing(store, img, name, format, &target).map_err(|e| say(&e.0))
        }
        Err(e) => Err(say(&e)),
    }
}

/// What `to` names once its symlinks are followed (a dangling link: the path it points to,
/// which the save then makes). A path ending in `/` must be a directory.
fn resolve(to: &Path) -> std::io::Result<std::path::PathBuf> {
    let mut p = to.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&p) {
            Ok(md) if md.file_type().is_symlink() => {
                let t = std::fs::read_link(&p)?;
                p = match p.parent() {
                    Some(dir) => dir.join(t),
                    None => t,
                };
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && to.to_string_lossy().ends_with('/') =>
            {
                return Err(e);
            }
            _ => return Ok(p),
        }
    }
    Err(std::io::Error::from_raw_os_error(libc::ELOOP))
}

/// Writes the archive beside `target` and renames it over `target` once complete (and on
/// disk): a failure leaves `target` as it was, and no temporary.
fn write_replacing(
    store: &Store,
    img: &Image,
    name: Option<&str>,
    format: Format,
    target: &Path,
) -> Result<()> {
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let file_name = target
        .file_name()
        .ok_or_else(|| err("not a file name"))?
        .to_string_lossy()
        .into_owned();
    let tmp = dir.join(format!(".{file_name}.partial-{}", super::random_hex(4)));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(err)?;
    let r = (|| {
        let mut w = std::io::BufWriter::new(&file);
        write(store, img, name, format, &mut w)?;
        w.flush().map_err(err)?;
        drop(w);
        file.sync_all().map_err(err)?;
        std::fs::rename(&tmp, target).map_err(err)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

fn write<W: Write>(
    store: &Store,
    img: &Image,
    name: Option<&str>,
    format: Format,
    w: W,
) -> Result<()> {
    let mut out = Out {
        tar: tar::Builder::new(w),
    };
    out.dir("blobs")?;
    out.dir("blobs/sha256")?;
    let config_size = out.blob(store, &img.id)?;
    match format {
        Format::OciArchive => {
            let mut layers = Vec::new();
            for l in &img.layers {
                let size = out.blob(store, &l.blob)?;
                layers.push(serde_json::json!({
                    "mediaType": l.media_type,
                    "digest": l.blob.0,
                    "size": size,
                }));
            }
            let manifest = oci_manifest(img, config_size, &layers)?;
            let md = Digest::of(&manifest);
            out.bytes(&format!("blobs/sha256/{}", md.hex()), &manifest)?;
            let mut desc = serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": md.0,
                "size": manifest.len(),
            });
            if let Some(n) = name {
                desc["annotations"] = serde_json::json!({
                    "org.opencontainers.image.ref.name": n,
                    "io.containerd.image.name": n,
                });
            }
            let index = serde_json::json!({ "schemaVersion": 2, "manifests": [desc] });
            out.bytes("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
            out.bytes("index.json", &serde_json::to_vec(&index).map_err(err)?)?;
        }
        Format::DockerArchive => {
            // Layers as plain tars, named by DiffID: what every docker-archive reader takes.
            let mut paths = Vec::new();
            for l in &img.layers {
                let p = format!("blobs/sha256/{}", l.diff_id.hex());
                let f = std::fs::File::open(store.blob_path(&l.blob)).map_err(err)?;
                let size = {
                    let f2 = std::fs::File::open(store.blob_path(&l.blob)).map_err(err)?;
                    let mut n = super::Hashing::new(super::load::decompress(f2)?);
                    std::io::copy(&mut n, &mut std::io::sink()).map_err(err)?;
                    n.count
                };
                if l.blob != l.diff_id {
                    out.file(&p, size, &mut super::load::decompress(f)?)?;
                } else {
                    out.file(&p, size, &mut { f })?;
                }
                paths.push(p);
            }
            let manifest = serde_json::json!([{
                "Config": format!("blobs/sha256/{}", img.id.hex()),
                "RepoTags": name.map(|n| vec![n]).unwrap_or_default(),
                "Layers": paths,
            }]);
            out.bytes(
                "manifest.json",
                &serde_json::to_vec(&manifest).map_err(err)?,
            )?;
        }
    }
    out.tar.into_inner().map_err(err)?.flush().map_err(err)
}

/// The OCI manifest of `img` (its blobs' descriptors given): the same bytes for save and push,
/// so an image keeps its manifest digest wherever it goes.
pub(crate) fn oci_manifest(
    img: &Image,
    config_size: u64,
    layers: &[serde_json::Value],
) -> Result<Vec<u8>> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": img.id.0,
            "size": config_size,
        },
        "layers": layers,
    }))
    .map_err(err)
}
