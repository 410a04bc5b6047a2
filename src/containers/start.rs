//! A container run in the foreground, on its own writable layer (the same one at every
//! start), its output passing through the container's log on the way to the caller.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Result, UserError};
use crate::run::{self, RunRequest};
use crate::store::{Container, State, Store, now};
use crate::sys;

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
        lowers: store.lowers(&img),
        upper: Some(store.container_dir(&c.id).join("upper")),
        union: run::UnionOptions {
            // Rootless, the store kept what it could not give in the override xattr.
            override_stat: req.union.override_stat || sys::geteuid() != 0,
            ..req.union.clone()
        },
        hostname: req.hostname.or(c.hostname.clone()),
        setenv: env,
        clean_env: true,
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

/// `run --rm`: the container started, then removed (its exit not recorded).
pub fn run_once(store: &Store, c: &Container, req: RunRequest) -> Result<i32> {
    let r = start_keeping(store, c, req, false);
    remove_after_run(store, c);
    r
}

/// Used by `rm` of `run --rm`.
pub fn remove_after_run(store: &Store, c: &Container) {
    if let Err(e) = super::make::remove(store, c, false) {
        eprintln!("unionfuse: {e}");
    }
}
