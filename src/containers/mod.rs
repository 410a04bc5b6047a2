//! The life of a container: made from an image (`make`), run in the foreground with its
//! output kept (`start`), run in the background by a monitor (`monitor`), signalled,
//! stopped and entered while it runs (`life`); and the image commands that act on the
//! store's records (`images`). The store's records are put to work through the runner,
//! which gets lower layer directories, an upper and a configuration, never the store.
//!
//! Who calls whom: `run_image` here → `make`, `start`, `monitor`; `monitor` → `start`,
//! `life`; `make` → `life` (rm -f). Nothing calls back up.

mod images;
mod life;
mod make;
mod monitor;
mod start;

pub use images::{inspect, load_images, remove_image, save_image};
pub use life::{ExecArgs, exec, init_pid, kill, parse_signal, stop, top};
pub use make::{ContainerArgs, commit_container, create, diff, remove};
pub use monitor::{attach, logs, start_detached};
pub use start::{run_once, start, start_logged};

use std::ffi::OsString;

use crate::error::{Result, bail};
use crate::run::RunRequest;
use crate::store::Store;

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
        start_detached(store, &c, req, r.interactive, r.rm)?;
        return Ok(Started::Detached(c.id));
    }
    if r.rm {
        return run_once(store, &c, req).map(Started::Ended);
    }
    start(store, &c, req).map(Started::Ended)
}
