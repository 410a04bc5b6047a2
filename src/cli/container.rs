//! The container commands: `run` (of layers or of an image), `create`, `start`, `stop`,
//! `kill`, `logs`, `attach`, `exec`, `top`, `ps`, `rm`, `diff`, `commit`. The options a
//! process inside gets, and a container's confinement and limits, are argument groups that
//! the commands taking them share.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::Outcome;
use crate::containers::{self, RunImage, Started};
use crate::error::UserError;
use crate::run::{self, RunRequest};
use crate::store::{Store, show};

/// What the command inside gets: shared by `run`, `create` and `exec`.
#[derive(Args, Clone, Default)]
pub struct ProcessArgs {
    /// Set an environment variable (the caller's environment is passed on otherwise;
    /// an image's own for a container).
    #[arg(
        long = "env",
        short = 'e',
        visible_alias = "setenv",
        value_name = "K=V"
    )]
    env: Vec<OsString>,
    /// Environment variables from a file of K=V lines (before -e).
    #[arg(long = "env-file", value_name = "FILE")]
    env_file: Vec<PathBuf>,
    /// The working directory inside (default /, or the image's).
    #[arg(long, short = 'w', visible_alias = "chdir", value_name = "DIR")]
    workdir: Option<PathBuf>,
    /// Who the command runs as: NAME, UID, or either with :GROUP (default: root, or the
    /// image's User).
    #[arg(long, short = 'u', value_name = "USER[:GROUP]")]
    user: Option<String>,
}

impl ProcessArgs {
    /// The variables: the files' first, `-e` over them.
    fn env(&self) -> Result<Vec<(OsString, OsString)>, UserError> {
        let mut all = Vec::new();
        for f in &self.env_file {
            all.extend(run::read_env_file(f)?);
        }
        all.extend(run::parse_envs(&self.env)?);
        Ok(all)
    }
}

/// Confinement and limits: shared by `run` and `create`, kept in a container's record.
#[derive(Args, Clone, Default)]
pub struct ConfineArgs {
    /// Every capability, no seccomp filter, nothing of /proc and /sys masked.
    #[arg(long)]
    privileged: bool,
    /// Keep a capability beyond the default fourteen (NET_ADMIN, SYS_PTRACE…; ALL).
    #[arg(long = "cap-add", value_name = "CAP")]
    cap_add: Vec<String>,
    /// Drop a capability of the default fourteen (ALL: every one).
    #[arg(long = "cap-drop", value_name = "CAP")]
    cap_drop: Vec<String>,
    /// no-new-privileges (set-id programs gain nothing), seccomp=unconfined (no filter).
    #[arg(long = "security-opt", value_name = "OPT")]
    security_opt: Vec<String>,
    /// Memory limit (64m, 1g…): past it the kernel's OOM killer ends the command.
    #[arg(long, short = 'm', value_name = "SIZE", allow_hyphen_values = true)]
    memory: Option<String>,
    /// Memory plus swap (-1: unlimited swap; default: twice --memory).
    #[arg(long = "memory-swap", value_name = "SIZE", allow_hyphen_values = true)]
    memory_swap: Option<String>,
    /// CPU time, in CPUs (0.5: half of one).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    cpus: Option<String>,
    /// Relative CPU weight (1024 is the default of everything else).
    #[arg(long = "cpu-shares", short = 'c', value_name = "N")]
    cpu_shares: Option<u64>,
    /// Most processes and threads at once (-1: unlimited).
    #[arg(long = "pids-limit", value_name = "N", allow_hyphen_values = true)]
    pids_limit: Option<i64>,
}

impl ConfineArgs {
    /// As the runner takes them, checked before anything starts.
    fn host(self) -> Result<run::HostOptions, UserError> {
        let h = run::HostOptions {
            privileged: self.privileged,
            cap_add: self.cap_add,
            cap_drop: self.cap_drop,
            security_opt: self.security_opt,
            memory: self.memory,
            memory_swap: self.memory_swap,
            cpus: self.cpus,
            cpu_shares: self.cpu_shares,
            pids_limit: self.pids_limit,
        };
        h.check()?;
        Ok(h)
    }
}

#[derive(Subcommand)]
// Parsed once per process: the size of its largest variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum ContainerCmd {
    /// Make a container of an image, without running it.
    #[command(trailing_var_arg = true)]
    Create {
        #[arg(long)]
        name: Option<String>,
        /// The hostname inside (default: the container id's start).
        #[arg(long)]
        hostname: Option<String>,
        #[command(flatten)]
        process: ProcessArgs,
        #[command(flatten)]
        confine: ConfineArgs,
        image: String,
        #[arg(allow_hyphen_values = true)]
        command: Vec<OsString>,
    },
    /// Start a container, attached: its writable layer is the one of its earlier runs.
    Start {
        /// Attached: the command runs in this terminal, and start ends with it. Without
        /// -a or -i the container starts in the background.
        #[arg(short, long)]
        attach: bool,
        /// Interactive and attached (stdin passed on).
        #[arg(short, long)]
        interactive: bool,
        container: String,
    },
    /// Stop a running container.
    Stop {
        /// Seconds between SIGTERM and SIGKILL.
        #[arg(short = 't', long = "time", default_value_t = 10)]
        time: u64,
        container: String,
    },
    /// Send a signal to a running container (KILL ends it at once; others go to its command).
    Kill {
        #[arg(short, long, default_value = "KILL")]
        signal: String,
        container: String,
    },
    /// What a container wrote, in every run of it (foreground or background): its standard
    /// output to standard output and its standard error to standard error (-f: and what
    /// it writes next, until it ends).
    Logs {
        #[arg(short, long)]
        follow: bool,
        container: String,
    },
    /// Follow a background container's output, and pass it what you type when it was
    /// started with -i (Ctrl-P Ctrl-Q detaches on a terminal).
    Attach { container: String },
    /// Run another command in a running container (its namespaces, root, user and profile).
    #[command(trailing_var_arg = true)]
    Exec {
        /// Accepted for docker's -it: standard input always reaches the command.
        #[arg(short, long)]
        interactive: bool,
        /// A terminal of the container's own (the default when stdin and stdout are a terminal).
        #[arg(short, long)]
        tty: bool,
        #[command(flatten)]
        process: ProcessArgs,
        container: String,
        #[arg(required = true, allow_hyphen_values = true, value_name = "COMMAND")]
        command: Vec<OsString>,
    },
    /// The processes of a running container.
    Top { container: String },
    /// List containers (-a: also those not running).
    Ps {
        #[arg(short, long)]
        all: bool,
    },
    /// Remove containers and their writable layers (-f: running ones too).
    Rm {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// A container's changes: A(dded), C(hanged), D(eleted) paths.
    Diff { container: String },
    /// Make a container's changes a new layer of a new image.
    Commit { container: String, name: String },
}

/// `run`'s own options, beyond the shared groups.
#[derive(Args)]
pub struct RunArgs {
    /// The read-only layers, ':'-separated, leftmost on top. Without it, the first
    /// argument is an image of the store, run as a container.
    #[arg(long = "lower", value_name = "LOWERS")]
    lowers: Option<OsString>,
    /// An image run: the container's name (it stays, with its writable layer, until rm).
    #[arg(long)]
    name: Option<String>,
    /// An image run: remove the container when it exits.
    #[arg(long)]
    rm: bool,
    /// The writable layer; kept after the run. Without it, a temporary one is removed at exit.
    #[arg(long, value_name = "DIR")]
    upper: Option<PathBuf>,
    /// The hostname inside.
    #[arg(long)]
    hostname: Option<String>,
    #[command(flatten)]
    process: ProcessArgs,
    /// Bind a host path into the container (SRC alone binds it at the same path).
    #[arg(long, value_name = "SRC[:DST]")]
    bind: Vec<OsString>,
    /// Bind a host path read-only.
    #[arg(long = "ro-bind", value_name = "SRC[:DST]")]
    ro_bind: Vec<OsString>,
    /// host: the caller's network; none: only a loopback interface.
    #[arg(long, value_name = "host|none", default_value = "host")]
    net: String,
    /// The command and its arguments (after `--`); for a container, IMAGE [COMMAND...].
    #[arg(required = true, value_name = "COMMAND")]
    command: Vec<OsString>,
    /// Mount options, as for unionfuse mount -o (volatile, whiteout=oci, threads=N,
    /// override_stat, uidmapping=..., gidmapping=...).
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Give the command a terminal of the container's own (relayed to this one), even
    /// when standard input is not a terminal. The default when standard input and
    /// output are the caller's terminal.
    #[arg(short = 't', long)]
    tty: bool,
    /// Never give the command a terminal: it gets the caller's standard streams as
    /// they are.
    #[arg(long = "no-tty", conflicts_with = "tty")]
    no_tty: bool,
    #[command(flatten)]
    confine: ConfineArgs,
    /// Standard input reaches the command (always, attached; with -d, through attach).
    #[arg(short = 'i', long)]
    interactive: bool,
    /// An image run: start the container in the background and print its id.
    #[arg(short = 'd', long)]
    detach: bool,
}

impl RunArgs {
    pub fn dispatch(self, root: Option<PathBuf>) -> Result<Outcome, UserError> {
        let host = self.confine.host()?;
        if self.detach && self.lowers.is_some() {
            return Err(UserError(
                "-d starts a container of an image (run -d IMAGE): a --lower run lives as long as its runner".into(),
            ));
        }
        let net = match self.net.as_str() {
            "host" => run::Net::Host,
            "none" => run::Net::None,
            n => return Err(UserError(format!("--net '{n}': expected host or none"))),
        };
        let mut binds = Vec::new();
        for b in &self.bind {
            binds.push(run::parse_bind(b, false)?);
        }
        for b in &self.ro_bind {
            binds.push(run::parse_bind(b, true)?);
        }
        let req = RunRequest {
            upper: self.upper,
            hostname: self.hostname,
            user: self.process.user.clone(),
            setenv: self.process.env()?,
            chdir: self.process.workdir.clone(),
            binds,
            net,
            union: run::UnionOptions::parse(&self.options)?,
            tty: match (self.tty, self.no_tty) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
            host,
            ..Default::default()
        };
        let Some(lowers) = self.lowers else {
            let store = Store::open(root)?;
            let mut words = self.command.into_iter();
            let image = words.next().unwrap_or_default();
            let r = RunImage {
                name: self.name,
                image: image.to_string_lossy().into_owned(),
                command: words.collect(),
                rm: self.rm,
                detach: self.detach,
                interactive: self.interactive,
            };
            return Ok(match containers::run_image(&store, r, req)? {
                Started::Detached(id) => Outcome::Printed(format!("{id}\n")),
                Started::Ended(code) => Outcome::Status(code),
            });
        };
        run::run(RunRequest {
            lowers: crate::request::split_layers(&lowers)?,
            lowers_typed: Some(lowers),
            command: self.command,
            ..req
        })
        .map(Outcome::Status)
    }
}

impl ContainerCmd {
    pub fn runs_container(&self) -> Option<&'static str> {
        match self {
            ContainerCmd::Start { .. } => Some("start"),
            ContainerCmd::Attach { .. } => Some("attach"),
            ContainerCmd::Exec { .. } => Some("exec"),
            _ => None,
        }
    }

    pub fn dispatch(self, root: Option<PathBuf>) -> Result<Outcome, UserError> {
        let store = Store::open(root)?;
        let s = &store;
        let printed = |s: String| Ok(Outcome::Printed(s));
        match self {
            ContainerCmd::Create {
                name,
                hostname,
                process,
                confine,
                image,
                command,
            } => {
                let a = containers::ContainerArgs {
                    name,
                    image,
                    command,
                    env: process.env()?,
                    workdir: process.workdir,
                    hostname,
                    user: process.user,
                    host: confine.host()?,
                };
                printed(format!("{}\n", containers::create(s, &a)?.id))
            }
            ContainerCmd::Start {
                attach,
                interactive,
                container,
            } => {
                let c = s.find_container(&container)?;
                if attach || interactive {
                    return containers::start(s, &c, RunRequest::default()).map(Outcome::Status);
                }
                let req = RunRequest {
                    tty: Some(false),
                    ..Default::default()
                };
                containers::start_detached(s, &c, req, false, false)?;
                printed(format!("{}\n", c.name))
            }
            ContainerCmd::Stop { time, container } => {
                let c = s.find_container(&container)?;
                containers::stop(s, &c, Duration::from_secs(time))?;
                printed(format!("{}\n", c.name))
            }
            ContainerCmd::Kill { signal, container } => {
                let c = s.find_container(&container)?;
                containers::kill(s, &c, containers::parse_signal(&signal)?)?;
                printed(format!("{}\n", c.name))
            }
            ContainerCmd::Logs { follow, container } => {
                let c = s.find_container(&container)?;
                containers::logs(
                    s,
                    &c,
                    follow,
                    &mut std::io::stdout().lock(),
                    &mut std::io::stderr().lock(),
                )?;
                Ok(Outcome::done())
            }
            ContainerCmd::Attach { container } => {
                containers::attach(s, &s.find_container(&container)?).map(Outcome::Status)
            }
            ContainerCmd::Exec {
                interactive: _,
                tty,
                process,
                container,
                command,
            } => {
                let c = s.find_container(&container)?;
                let a = containers::ExecArgs {
                    command,
                    env: process.env()?,
                    user: process.user,
                    workdir: process.workdir,
                    tty: tty.then_some(true),
                };
                containers::exec(s, &c, a).map(Outcome::Status)
            }
            ContainerCmd::Top { container } => {
                printed(containers::top(s, &s.find_container(&container)?)?)
            }
            ContainerCmd::Ps { all } => printed(show::ps(s, all)?),
            ContainerCmd::Rm { force, containers } => {
                for c in containers {
                    containers::remove(s, &s.find_container(&c)?, force)?;
                }
                Ok(Outcome::done())
            }
            ContainerCmd::Diff { container } => {
                printed(containers::diff(s, &s.find_container(&container)?)?)
            }
            ContainerCmd::Commit { container, name } => {
                let c = s.find_container(&container)?;
                containers::commit_container(s, &c, &name)
                    .map(Outcome::Printed)
                    .map_err(|e| s.when_full(e))
            }
        }
    }
}
