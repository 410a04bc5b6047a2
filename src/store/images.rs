//! Image records and their names: configurations, listing, lookup by name or id, names
//! given and taken, ChainIDs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use oci_spec::image::ImageConfiguration;

use super::{Digest, Image, LayerRef, Store, io, read_json, write_json};
use crate::error::{Result, UserError, bail};

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

/// The names `what` may stand for, as users type them: `NAME[:TAG]` (or `@DIGEST`), then
/// what podman names a short one, `localhost/NAME`.
fn name_candidates(what: &str) -> Vec<String> {
    match normalize_name(what) {
        Ok(n) => vec![format!("localhost/{n}"), n]
            .into_iter()
            .rev()
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Which of `img`'s names `what` gives, if it gives one (not an id).
pub fn name_in(img: &Image, what: &str) -> Option<String> {
    name_candidates(what)
        .into_iter()
        .find(|n| img.names.contains(n))
}

impl Store {
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
        for n in name_candidates(what) {
            if let Some(i) = images.iter().find(|i| i.names.contains(&n)) {
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

    /// The lower layer directories of an image, top first (as the union takes them).
    pub fn lowers(&self, img: &Image) -> Vec<PathBuf> {
        img.layers
            .iter()
            .rev()
            .map(|l| self.layer_path(&l.diff_id))
            .collect()
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
