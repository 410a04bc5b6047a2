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

/// Writes `img` (named `name`, if any) to `to`.
pub fn save(
    store: &Store,
    img: &Image,
    name: Option<&str>,
    format: Format,
    to: &Path,
) -> Result<()> {
    let tmp = to.with_extension(format!("partial-{}", super::random_hex(4)));
    let file = std::fs::File::create(&tmp).map_err(|e| err(format!("'{}': {e}", to.display())))?;
    let r = write(store, img, name, format, std::io::BufWriter::new(file));
    match r {
        Ok(()) => std::fs::rename(&tmp, to).map_err(|e| err(format!("'{}': {e}", to.display()))),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
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
