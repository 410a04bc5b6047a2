//! Containers in the background: `run -d` / `start -d` (a monitor process of its own session
//! runs the container, its output kept in the container's log), `logs`, `attach`.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::error::{Result, UserError, bail};
use crate::logs;
use crate::run::{self, RunRequest};
use crate::store::{Container, Store};
use crate::sys;

use super::life::{init_pid, running};

fn log_path(store: &Store, c: &Container) -> PathBuf {
    store.container_dir(&c.id).join("log")
}

fn stdin_fifo(store: &Store, c: &Container) -> PathBuf {
    store.container_dir(&c.id).join("stdin")
}

/// Starts `c` in the background and returns once it runs: the monitor (a new session, no
/// terminal) runs it as `start` would, its output going to the container's log; with
/// `interactive`, its standard input is a fifo `attach` writes into; with `remove_after`
/// (`run -d --rm`), the container is removed when it ends.
pub fn start_detached(
    store: &Store,
    c: &Container,
    req: RunRequest,
    interactive: bool,
    remove_after: bool,
) -> Result<()> {
    if store.is_running(c) {
        bail!("container '{}' is already running", c.name);
    }
    let fifo = stdin_fifo(store, c);
    let _ = std::fs::remove_file(&fifo);
    if interactive {
        let dir = sys::open_dir_path(&store.container_dir(&c.id))
            .map_err(|e| UserError(format!("{}: {e}", c.id)))?;
        sys::mknodat(dir.as_fd(), c"stdin", libc::S_IFIFO | 0o600, 0)
            .map_err(|e| UserError(format!("the container's stdin fifo: {e}")))?;
    }
    let stdin = if interactive {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
    } else {
        std::fs::File::open("/dev/null")
    }
    .map_err(|e| UserError(format!("the container's stdin: {e}")))?;
    let (out_rd, out_wr) = sys::pipe().map_err(|e| UserError(format!("pipe: {e}")))?;
    let (err_rd, err_wr) = sys::pipe().map_err(|e| UserError(format!("pipe: {e}")))?;
    // Closes when the monitor ends, whatever ends it.
    let (alive_rd, alive_wr) = sys::pipe().map_err(|e| UserError(format!("pipe: {e}")))?;
    let log = log_path(store, c);
    let launched = crate::store::now();
    match sys::fork().map_err(|e| UserError(format!("fork: {e}")))? {
        sys::Forked::Child => {
            drop(alive_rd);
            sys::setsid();
            // Twice forked: the monitor's parent is the system's init (or subreaper), which
            // reaps it, not this short-lived command.
            match sys::fork() {
                Ok(sys::Forked::Child) => {}
                _ => sys::exit_now(0),
            }
            // The logger: what the container writes, into the bounded log.
            match sys::fork() {
                Ok(sys::Forked::Child) => {
                    drop((out_wr, err_wr, alive_wr));
                    // Not the caller's streams: who waits for their end must not wait for
                    // the container's.
                    sys::redirect_stdio(std::path::Path::new("/dev"));
                    logs::keep(&log, out_rd, err_rd, None);
                    sys::exit_now(0);
                }
                Ok(sys::Forked::Parent(_)) => {}
                Err(_) => sys::exit_now(run::RUNNER_FAILED as i32),
            }
            drop((out_rd, err_rd));
            let redirect = sys::dup_onto(stdin.as_fd(), 0)
                .and_then(|()| sys::dup_onto(out_wr.as_fd(), 1))
                .and_then(|()| sys::dup_onto(err_wr.as_fd(), 2));
            if redirect.is_err() {
                sys::exit_now(run::RUNNER_FAILED as i32);
            }
            drop((stdin, out_wr, err_wr));
            // A terminal inside is recorded, for attach (raw mode only then).
            let tty = store.container_dir(&c.id).join("tty");
            let _ = if req.tty == Some(true) {
                std::fs::write(&tty, "")
            } else {
                std::fs::remove_file(&tty)
            };
            let r = if remove_after {
                super::start::run_once(store, c, req)
            } else {
                super::start::start_logged(store, c, req)
            };
            let code = match r {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("unionfuse: {e}");
                    run::RUNNER_FAILED as i32
                }
            };
            drop(alive_wr);
            sys::exit_now(code);
        }
        sys::Forked::Parent(first) => {
            drop((stdin, out_wr, out_rd, err_wr, err_rd, alive_wr));
            sys::wait_status(first);
            // Until the container runs, or the monitor gave up.
            let end = Instant::now() + Duration::from_secs(30);
            while Instant::now() < end {
                if init_pid(store, c).is_some() {
                    return Ok(());
                }
                if sys::poll_ready(alive_rd.as_fd()) {
                    // A command that ended before its pid was seen here did start: its
                    // run is recorded (or, with --rm, its container is gone already).
                    match store.find_container(&c.id) {
                        Ok(rec)
                            if rec.started.is_some_and(|t| t >= launched)
                                && rec.state
                                    != crate::store::State::Exited(run::RUNNER_FAILED as i32) =>
                        {
                            return Ok(());
                        }
                        Err(_) if remove_after => return Ok(()),
                        _ => {}
                    }
                    let records = logs::Follower::from_start(&log).next_records();
                    let last = records
                        .last()
                        .map(|r| String::from_utf8_lossy(&r.data).into_owned())
                        .unwrap_or_else(|| "it ended at once".into());
                    bail!("container '{}' did not start: {last}", c.name);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            bail!("container '{}' did not start within 30 s", c.name)
        }
    }
}

/// `logs [-f]`: what the container wrote, each stream to its own (the rotated part first);
/// with `follow`, what it writes next, until it ends.
pub fn logs(
    store: &Store,
    c: &Container,
    follow: bool,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<()> {
    let log = log_path(store, c);
    logs::write_records(&logs::Follower::rotated(&log), out, err);
    let mut f = logs::Follower::from_start(&log);
    loop {
        let running = store.is_running(c);
        logs::write_records(&f.next_records(), out, err);
        if !follow || !running {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `attach`: the container's output from now on, and (when it was started with `-i`) what is
/// typed, until it ends; on a terminal, Ctrl-P Ctrl-Q detaches.
pub fn attach(store: &Store, c: &Container) -> Result<i32> {
    running(store, c)?;
    let log = log_path(store, c);
    let mut follow = logs::Follower::from_end(&log);
    let fifo = std::fs::OpenOptions::new()
        .write(true)
        .open(stdin_fifo(store, c))
        .ok();
    // Raw mode only when the container has a terminal of its own, which echoes and
    // edits lines itself; otherwise the caller's terminal does, and `read` gets lines.
    let has_tty = store.container_dir(&c.id).join("tty").exists();
    let raw = (fifo.is_some() && has_tty && sys::is_foreground_terminal(0))
        .then(|| sys::RawMode::enter(0).ok())
        .flatten();
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    let mut stdin_open = fifo.is_some();
    let mut last = 0u8;
    let mut buf = [0u8; 4096];
    while store.is_running(c) {
        logs::write_records(&follow.next_records(), &mut stdout, &mut stderr);
        let fds = if stdin_open {
            vec![(0, libc::POLLIN)]
        } else {
            vec![]
        };
        let ready = if fds.is_empty() {
            std::thread::sleep(Duration::from_millis(50));
            false
        } else {
            sys::poll(&fds, 50).is_ok_and(|r| r[0] != 0)
        };
        if ready {
            match sys::read(0, &mut buf) {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => {
                    let data = &buf[..n];
                    // Ctrl-P Ctrl-Q: detach (raw mode only, as docker's default keys).
                    if raw.is_some()
                        && (data.windows(2).any(|w| w == [16, 17]) || (last == 16 && data[0] == 17))
                    {
                        drop(raw);
                        eprintln!("\r\nunionfuse: detached from '{}'", c.name);
                        return Ok(0);
                    }
                    last = data[n - 1];
                    if let Some(f) = &fifo
                        && (&*f).write_all(data).is_err()
                    {
                        stdin_open = false;
                    }
                }
            }
        }
    }
    logs::write_records(&follow.next_records(), &mut stdout, &mut stderr);
    drop(raw);
    let rec = store.find_container(&c.id)?;
    Ok(match rec.state {
        crate::store::State::Exited(n) => n,
        crate::store::State::Created | crate::store::State::Running => 0,
    })
}
