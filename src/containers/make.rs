//! Containers made and unmade: `create` (a record and an empty writable layer), `rm`,
//! and what reads a container's upper (`diff`, `commit`).

use std::ffi::OsString;
use std::path::PathBuf;

use crate::error::{Result, UserError, bail};
use crate::run;
use crate::store::{Container, Image, State, Store, commit, load, now, random_hex};

/// What `run IMAGE` and `create` take beyond the runner's own options.
pub struct ContainerArgs {
    pub name: Option<String>,
    pub image: String,
    /// The command; empty: the image's Entrypoint and Cmd.
    pub command: Vec<OsString>,
    /// `K=V` set over the image's environment.
    pub env: Vec<(OsString, OsString)>,
    pub workdir: Option<PathBuf>,
    pub hostname: Option<String>,
    pub user: Option<String>,
    pub host: run::HostOptions,
}

/// The image's config fields a container uses.
struct ImageConfig {
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<String>,
    workdir: Option<String>,
    user: Option<String>,
}

fn image_config(store: &Store, img: &Image) -> Result<ImageConfig> {
    let cfg = store.image_config(img)?;
    let c = cfg.config().clone().unwrap_or_default();
    let set = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    Ok(ImageConfig {
        entrypoint: c.entrypoint().clone().unwrap_or_default(),
        cmd: c.cmd().clone().unwrap_or_default(),
        env: c.env().clone().unwrap_or_default(),
        workdir: set(c.working_dir()),
        user: set(c.user()),
    })
}

fn valid_name(n: &str) -> Result<()> {
    let ok = !n.is_empty()
        && n.len() <= 128
        && n.bytes()
            .enumerate()
            .all(|(i, b)| b.is_ascii_alphanumeric() || (i > 0 && matches!(b, b'_' | b'.' | b'-')));
    if !ok {
        bail!("'{n}' is not a container name (letters, digits, '_', '.', '-')");
    }
    Ok(())
}

/// `create`: a container record and its (empty) writable layer.
pub fn create(store: &Store, a: &ContainerArgs) -> Result<Container> {
    let img = store.find_image(&a.image)?;
    let cfg = image_config(store, &img)?;
    let id = random_hex(32);
    let name = match &a.name {
        Some(n) => n.clone(),
        None => format!("c-{}", &id[..8]),
    };
    valid_name(&name)?;
    let mut command: Vec<String> = a
        .command
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    if command.is_empty() {
        command = cfg.cmd.clone();
    }
    command = cfg.entrypoint.iter().cloned().chain(command).collect();
    if command.is_empty() {
        bail!("image '{}' has no command: give one", a.image);
    }
    let mut env = cfg.env.clone();
    for (k, v) in &a.env {
        let k = k.to_string_lossy();
        env.retain(|e| e.split('=').next() != Some(&*k));
        env.push(format!("{k}={}", v.to_string_lossy()));
    }
    let c = Container {
        format: crate::records::FORMAT,
        id: id.clone(),
        name: name.clone(),
        image: img.id.clone(),
        image_name: img
            .names
            .first()
            .cloned()
            .unwrap_or_else(|| a.image.clone()),
        command,
        env,
        workdir: a
            .workdir
            .as_ref()
            .map(|w| w.to_string_lossy().into_owned())
            .or(cfg.workdir),
        hostname: a.hostname.clone().or_else(|| Some(id[..12].to_string())),
        user: a.user.clone().or(cfg.user),
        host: a.host.clone(),
        started: None,
        reason: None,
        created: now(),
        state: State::Created,
    };
    let _l = store.lock()?;
    if store.containers()?.iter().any(|x| x.name == name) {
        bail!("the name '{name}' is in use by a container (unionfuse rm {name} frees it)");
    }
    let dir = store.container_dir(&id);
    std::fs::create_dir_all(dir.join("upper"))
        .map_err(|e| UserError(format!("{}: {e}", dir.display())))?;
    store.put_container(&c)?;
    Ok(c)
}

/// `rm [-f]`: the container and its writable layer.
pub fn remove(store: &Store, c: &Container, force: bool) -> Result<()> {
    if store.is_running(c) {
        if !force {
            bail!("container '{}' is running: stop it first, or rm -f", c.name);
        }
        super::life::kill(store, c, libc::SIGKILL)?;
    }
    let _l = store.lock()?;
    crate::store::remove_tree(&store.container_dir(&c.id))
}

pub fn commit_container(store: &Store, c: &Container, name: &str) -> Result<String> {
    let img = store.find_image(c.image.hex())?;
    let rep = load::Report::new();
    let new = commit::commit(store, c, &img, name, &rep)?;
    Ok(format!("{}\n", new.id))
}

pub fn diff(store: &Store, c: &Container) -> Result<String> {
    let img = store.find_image(c.image.hex())?;
    Ok(commit::diff(store, c, &img)?
        .iter()
        .map(|ch| format!("{} {}\n", ch.kind, ch.path))
        .collect())
}
