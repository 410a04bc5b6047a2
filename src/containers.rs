//! The image and container commands: the store's records put to work through the runner
//! (which gets lower layer directories, an upper and a configuration, never the store).

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Result, UserError, bail};
use crate::run::{self, RunRequest};
use crate::store::{Container, Image, State, Store, commit, load, now, random_hex, show};
use crate::sys;

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
    let v: serde_json::Value = serde_json::from_slice(&store.read_blob(&img.id)?)
        .map_err(|e| UserError(format!("image config {}: {e}", img.id)))?;
    let list = |x: &serde_json::Value| -> Vec<String> {
        x.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    };
    let c = &v["config"];
    Ok(ImageConfig {
        entrypoint: list(&c["Entrypoint"]),
        cmd: list(&c["Cmd"]),
        env: list(&c["Env"]),
        workdir: c["WorkingDir"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(String::from),
        user: c["User"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(String::from),
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

/// Runs a container in the foreground, with its own writable layer: the same one at every
/// start. Returns the command's status, which is kept in the container's record. What the
/// command writes reaches the caller and is kept in the container's log as well.
pub fn start(store: &Store, c: &Container, req: RunRequest) -> Result<i32> {
    // Whether the command gets a terminal is decided on the caller's streams, before they
    // pass through the log.
    let req = RunRequest {
        tty: Some(
            req.tty
                .unwrap_or_else(|| sys::is_foreground_terminal(0) && sys::is_terminal(1)),
        ),
        ..req
    };
    let log = store.container_dir(&c.id).join("log");
    teed(&log, || start_keeping(store, c, req, true))?
}

/// `start` of a container whose standard output and error are already its log's (the
/// background monitor's).
pub fn start_logged(store: &Store, c: &Container, req: RunRequest) -> Result<i32> {
    start_keeping(store, c, req, true)
}

/// Runs `f` with this process's standard output and error going through a logger, which
/// writes them to the caller's and keeps them in the log at `log`; waits for the logger to
/// have written everything.
fn teed<R>(log: &Path, f: impl FnOnce() -> R) -> Result<R> {
    use std::os::fd::AsFd;
    let fail = |e: &dyn std::fmt::Display| UserError(format!("the container's log: {e}"));
    let saved_out = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| fail(&e))?;
    let saved_err = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| fail(&e))?;
    let (out_rd, out_wr) = sys::pipe().map_err(|e| fail(&e))?;
    let (err_rd, err_wr) = sys::pipe().map_err(|e| fail(&e))?;
    let logger = match sys::fork().map_err(|e| fail(&e))? {
        sys::Forked::Child => {
            drop((out_wr, err_wr));
            crate::logs::keep(log, out_rd, err_rd, Some((saved_out, saved_err)));
            sys::exit_now(0);
        }
        sys::Forked::Parent(pid) => pid,
    };
    drop((out_rd, err_rd));
    let _ = std::io::stdout().flush();
    let redirect = sys::dup_onto(out_wr.as_fd(), 1).and_then(|()| sys::dup_onto(err_wr.as_fd(), 2));
    drop((out_wr, err_wr));
    let r = redirect.map(|()| f());
    let _ = std::io::stdout().flush();
    let _ = sys::dup_onto(saved_out.as_fd(), 1);
    let _ = sys::dup_onto(saved_err.as_fd(), 2);
    drop((saved_out, saved_err));
    // The logger ends once every writer is gone: the run's processes have ended by now.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while matches!(sys::waitpid(logger, libc::WNOHANG), Ok(None)) {
        if std::time::Instant::now() > end {
            let _ = sys::kill(logger, libc::SIGKILL);
            sys::wait_status(logger);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    r.map_err(|e| fail(&e))
}

/// `start`; with `keep` false (a `run --rm`) the exit is not recorded.
fn start_keeping(store: &Store, c: &Container, req: RunRequest, keep: bool) -> Result<i32> {
    let img = store.find_image(c.image.hex())?;
    let lock = store.lock_container(c)?;
    // The runner's pid, for stop.
    let _ = (&lock).write_all(format!("{}\n", std::process::id()).as_bytes());
    if keep {
        let mut rec = store.find_container(&c.id)?;
        rec.started = Some(now());
        rec.state = State::Running;
        rec.reason = None;
        store.put_container(&rec)?;
    }
    let mut spec = OsString::new();
    for (i, l) in store.lowers(&img).iter().enumerate() {
        if i > 0 {
            spec.push(":");
        }
        spec.push(escape_layer(l));
    }
    let env = c
        .env
        .iter()
        .filter_map(|e| {
            let (k, v) = e.split_once('=')?;
            Some((OsString::from(k), OsString::from(v)))
        })
        .chain(req.setenv.iter().cloned())
        .collect();
    let req = RunRequest {
        lower_spec: spec,
        upper: Some(store.container_dir(&c.id).join("upper")),
        hostname: req.hostname.or(c.hostname.clone()),
        setenv: env,
        clean_env: true,
        // Rootless, the store kept what it could not give in the override xattr.
        override_stat: crate::sys::geteuid() != 0,
        chdir: req.chdir.or(c.workdir.as_ref().map(PathBuf::from)),
        user: req.user.or(c.user.clone()),
        host: c.host.clone(),
        pid_file: Some(store.container_dir(&c.id).join("init.pid")),
        command: if req.command.is_empty() {
            c.command.iter().map(OsString::from).collect()
        } else {
            req.command
        },
        ..req
    };
    let r = run::run_outcome(req);
    if keep {
        let mut rec = store.find_container(&c.id)?;
        rec.state = State::Exited(r.as_ref().map_or(run::RUNNER_FAILED as i32, |o| o.code));
        rec.reason = r
            .as_ref()
            .ok()
            .filter(|o| o.oom_killed)
            .map(|_| "OOMKilled".to_string());
        store.put_container(&rec)?;
    }
    drop(lock);
    r.map(|o| o.code)
}

/// A layer directory in a `:`-separated list.
fn escape_layer(p: &Path) -> OsString {
    let mut out = Vec::new();
    for &b in p.as_os_str().as_bytes() {
        if b == b':' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    std::os::unix::ffi::OsStringExt::from_vec(out)
}

/// `rm [-f]`: the container and its writable layer.
pub fn remove(store: &Store, c: &Container, force: bool) -> Result<()> {
    if store.is_running(c) {
        if !force {
            bail!("container '{}' is running: stop it first, or rm -f", c.name);
        }
        crate::background::kill(store, c, libc::SIGKILL)?;
    }
    let _l = store.lock()?;
    crate::store::remove_tree(&store.container_dir(&c.id))
}

/// `rmi [-f]`: `rmi NAME` takes that name off its image, and removes the image once it has
/// no other; `rmi ID` of an image with several names is refused unless `force` (as podman
/// and docker do), which removes every name. Refused while a container uses the image.
/// Layers stay until `prune`.
pub fn remove_image(store: &Store, what: &str, force: bool) -> Result<String> {
    let _l = store.lock()?;
    let img = store.find_image(what)?;
    let name = crate::store::normalize_name(what)
        .ok()
        .map(|n| {
            // A short name finds what podman names `localhost/NAME` too.
            if img.names.contains(&n) {
                n
            } else {
                format!("localhost/{n}")
            }
        })
        .filter(|n| img.names.contains(n));
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
    let name = crate::store::normalize_name(what)
        .ok()
        .filter(|n| img.names.contains(n))
        .or_else(|| img.names.first().cloned());
    crate::store::save::save(store, &img, name.as_deref(), format, to)
}

/// What `run IMAGE` was asked beyond the runner's options.
pub struct RunImage {
    pub name: Option<String>,
    pub image: String,
    /// The command; empty: the image's Entrypoint and Cmd.
    pub command: Vec<OsString>,
    /// Removed when it ends.
    pub rm: bool,
    /// Started in the background.
    pub detach: bool,
    /// With `detach`: its standard input is what `attach` passes.
    pub interactive: bool,
}

/// How `run IMAGE` went.
pub enum Started {
    /// In the background: the container's id.
    Detached(String),
    /// In the foreground: the command's status.
    Ended(i32),
}

/// `run IMAGE [COMMAND...]`: a container made, then started, in the foreground or the
/// background, and removed after with `rm`.
pub fn run_image(store: &Store, r: RunImage, req: RunRequest) -> Result<Started> {
    if req.upper.is_some() {
        bail!("--upper is for --lower runs: a container has its own writable layer");
    }
    let a = ContainerArgs {
        name: r.name,
        image: r.image,
        command: r.command,
        env: Vec::new(),
        workdir: None,
        hostname: None,
        user: req.user.clone(),
        host: req.host.clone(),
    };
    let c = create(store, &a)?;
    if r.detach {
        // No terminal of the caller's: a terminal inside only with -t.
        let req = RunRequest {
            tty: Some(req.tty == Some(true)),
            ..req
        };
        crate::background::start_detached(store, &c, req, r.interactive, r.rm)?;
        return Ok(Started::Detached(c.id));
    }
    if r.rm {
        return run_once(store, &c, req).map(Started::Ended);
    }
    start(store, &c, req).map(Started::Ended)
}

/// `inspect`: an image's or container's record (and an image's config) as JSON.
pub fn inspect(store: &Store, what: &str) -> Result<String> {
    let v = if let Ok(img) = store.find_image(what) {
        let cfg: serde_json::Value =
            serde_json::from_slice(&store.read_blob(&img.id)?).unwrap_or_default();
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

/// `run --rm`: the container started, then removed (its exit not recorded).
pub fn run_once(store: &Store, c: &Container, req: RunRequest) -> Result<i32> {
    let r = start_keeping(store, c, req, false);
    remove_after_run(store, c);
    r
}

/// Used by `rm` of `run --rm`.
pub fn remove_after_run(store: &Store, c: &Container) {
    if let Err(e) = remove(store, c, false) {
        eprintln!("unionfuse: {e}");
    }
}

/// The default runner options of a container command.
pub fn base_request() -> RunRequest {
    RunRequest::default()
}
