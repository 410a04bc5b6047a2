//! The image commands that act on the store's records: `rmi`, `save`, `load`, `inspect`.

use std::path::Path;

use crate::error::{Result, UserError, bail};
use crate::store::{Store, load, show};

/// `rmi [-f]`: `rmi NAME` takes that name off its image, and removes the image once it has
/// no other; `rmi ID` of an image with several names is refused unless `force` (as podman
/// and docker do), which removes every name. Refused while a container uses the image.
/// Layers stay until `prune`.
pub fn remove_image(store: &Store, what: &str, force: bool) -> Result<String> {
    let _l = store.lock()?;
    let img = store.find_image(what)?;
    let name = crate::store::name_in(&img, what);
    if let Some(n) = &name
        && img.names.len() > 1
    {
        let mut img2 = img.clone();
        img2.names.retain(|x| x != n);
        store.put_image(&img2)?;
        return Ok(format!("untagged {n}"));
    }
    if name.is_none() && img.names.len() > 1 && !force {
        bail!(
            "image {} is referenced by several names ({}): remove them one by one, or rmi -f {what} to remove the image with every name",
            img.id.short(),
            img.names.join(", ")
        );
    }
    if let Some(c) = store.containers()?.into_iter().find(|c| c.image == img.id) {
        bail!(
            "image {} is used by container '{}' (unionfuse rm {} first)",
            img.id.short(),
            c.name,
            c.name
        );
    }
    let p = store
        .root
        .join("images")
        .join(format!("{}.json", img.id.hex()));
    std::fs::remove_file(&p).map_err(|e| UserError(format!("{}: {e}", p.display())))?;
    let mut out: String = img
        .names
        .iter()
        .map(|n| format!("untagged {n}\n"))
        .collect();
    out.push_str(&format!("deleted {}", img.id));
    Ok(out)
}

/// `save`: the image `what` written to `to` in `format` (oci-archive, docker-archive),
/// named by the name it was given by, if it is one of its own, else by its first.
pub fn save_image(store: &Store, what: &str, format: &str, to: &Path) -> Result<()> {
    let img = store.find_image(what)?;
    let format = crate::store::save::Format::parse(format)?;
    let name = crate::store::name_in(&img, what).or_else(|| img.names.first().cloned());
    crate::store::save::save(store, &img, name.as_deref(), format, to)
}

/// `inspect`: an image's or container's record (and an image's config) as JSON.
pub fn inspect(store: &Store, what: &str) -> Result<String> {
    let v = if let Ok(img) = store.find_image(what) {
        let cfg = store.image_config(&img)?;
        let chains = crate::store::chain_ids(&img.layers);
        serde_json::json!({ "Image": img, "ChainIDs": chains, "Config": cfg })
    } else {
        let c = store
            .find_container(what)
            .map_err(|_| UserError(format!("no image or container '{what}'")))?;
        let running = store.is_running(&c);
        serde_json::json!({ "Container": c, "Status": show::status(&c, running) })
    };
    serde_json::to_string_pretty(&v).map_err(|e| UserError(e.to_string()))
}

/// `load`, with a line per image loaded.
pub fn load_images(store: &Store, src: &Path) -> Result<String> {
    let rep = load::Report::new();
    let images = load::load(store, src, &rep)?;
    let mut out = String::new();
    for i in images {
        let names = if i.names.is_empty() {
            "<none>".to_string()
        } else {
            i.names.join(", ")
        };
        out.push_str(&format!("Loaded image: {names} ({})\n", i.id.short()));
    }
    Ok(out)
}
