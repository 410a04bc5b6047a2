//! The `unionfuse` command line: parses, then calls the library.

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use unionfuse::daemon;
use unionfuse::error::UserError;
use unionfuse::request::{self, MountRequest};
use unionfuse::run;

#[derive(Parser)]
#[command(
    name = "unionfuse",
    version,
    about = "A userspace union filesystem: ordered read-only layers under one writable upper",
    after_help = "Examples:\n  unionfuse mount /layers/app:/layers/base /upper /mnt\n  unionfuse mount /layers/app:/layers/base /mnt        (read-only union)\n  unionfuse umount /mnt\n  unionfuse run --lower /layers/app:/layers/base -- /bin/sh\n\nThe command line of fuse-overlayfs is understood too (for containers/storage's\nmount_program):\n  unionfuse [-f] [-d] -o lowerdir=A:B,upperdir=U,workdir=W[,OPTION...] MOUNTPOINT\nwith volatile, noacl, uidmapping=ID:MAPPED:LEN[:...], gidmapping=..., squash_to_root,\nsquash_to_uid=N, squash_to_gid=N, ro, nosuid, nodev, noexec, allow_other.\n\nAs mount(8)'s helper (mount-helper/install links mount.unionfuse and\nmount.fuse.unionfuse to this binary):\n  mount -t fuse.unionfuse -o lowerdir=/l1:/l2,upperdir=/u,workdir=/w none /mnt\n  none /mnt fuse.unionfuse lowerdir=/l1:/l2,upperdir=/u,workdir=/w,nofail 0 0   (fstab)\nmount(8)'s own options (nofail, _netdev, noauto, x-*, comment=...) are ignored.\numount /mnt ends the daemon."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount a union: LOWERS is a ':'-separated list, leftmost on top ('\:' escapes a ':').
    #[command(
        after_help = "Examples:\n  unionfuse mount top:middle:bottom upper /mnt\n  unionfuse mount -f top:bottom /mnt      (read-only, in the foreground)\n  RUST_LOG=debug unionfuse mount -f l1:l2 upper /mnt"
    )]
    Mount {
        /// Stay in the foreground, logging to stderr (RUST_LOG sets the level).
        #[arg(short, long)]
        foreground: bool,
        /// Comma-separated options: ro, allow_other, noallow_other, threads=N, volatile
        /// (no fsync to the upper), whiteout=oci|kernel (format of whiteouts written).
        #[arg(short = 'o', value_name = "OPTIONS")]
        options: Vec<String>,
        /// LOWERS [UPPER] MOUNTPOINT
        #[arg(num_args = 2..=3, required = true, value_name = "LOWERS [UPPER] MOUNTPOINT")]
        paths: Vec<OsString>,
    },
    /// Unmount a union and wait for its daemon to exit.
    #[command(after_help = "Example:\n  unionfuse umount /mnt")]
    Umount { mountpoint: PathBuf },
    /// Write the manual pages (unionfuse.1 and one per command) into DIR.
    #[command(hide = true)]
    Man { dir: PathBuf },
    /// Run a command in a container whose root filesystem is the union.
    ///
    /// As root or rootless, in new user (rootless), mount, pid, uts and ipc
    /// namespaces. Exits with the command's status
    /// (128+N if a signal N ended it; 125 if the run itself failed, 126/127 if the command
    /// could not be executed / was not found).
    #[command(
        after_help = "Inside: the union as /, a fresh /proc, a minimal /dev (null, zero, full, random,\nurandom, tty, pts, shm), /sys read-only, a tmpfs on /tmp. Rootless, the caller is root\ninside; with a range in /etc/subuid and /etc/subgid (and newuidmap/newgidmap) that range\nis mapped too, so files can belong to other users.\n\nExamples:\n  unionfuse run --lower app:base -- /bin/sh\n  unionfuse run --lower app:base --upper state --hostname box -- sh -c 'echo hi > /f'\n  unionfuse run --lower rootfs --ro-bind /etc/resolv.conf --bind $PWD:/src --chdir /src -- make",
        trailing_var_arg = true
    )]
    Run {
        /// The read-only layers, ':'-separated, leftmost on top.
        #[arg(long = "lower", value_name = "LOWERS", required = true)]
        lowers: OsString,
        /// The writable layer; kept after the run. Without it, a temporary one is removed at exit.
        #[arg(long, value_name = "DIR")]
        upper: Option<PathBuf>,
        /// The hostname inside.
        #[arg(long)]
        hostname: Option<String>,
        /// Set an environment variable (the caller's environment is passed on otherwise).
        #[arg(long, value_name = "K=V")]
        setenv: Vec<OsString>,
        /// The working directory inside (default /).
        #[arg(long, value_name = "DIR")]
        chdir: Option<PathBuf>,
        /// Bind a host path into the container (SRC alone binds it at the same path).
        #[arg(long, value_name = "SRC[:DST]")]
        bind: Vec<OsString>,
        /// Bind a host path read-only.
        #[arg(long = "ro-bind", value_name = "SRC[:DST]")]
        ro_bind: Vec<OsString>,
        /// host: the caller's network; none: only a loopback interface.
        #[arg(long, value_name = "host|none", default_value = "host")]
        net: String,
        /// The command and its arguments (after `--`).
        #[arg(required = true, value_name = "COMMAND", allow_hyphen_values = true)]
        command: Vec<OsString>,
    },
}

#[allow(clippy::too_many_arguments)]
fn run_request(
    lowers: OsString,
    upper: Option<PathBuf>,
    hostname: Option<String>,
    setenv: Vec<OsString>,
    chdir: Option<PathBuf>,
    bind: Vec<OsString>,
    ro_bind: Vec<OsString>,
    net: String,
    command: Vec<OsString>,
) -> Result<run::RunRequest, UserError> {
    let net = match net.as_str() {
        "host" => run::Net::Host,
        "none" => run::Net::None,
        n => return Err(UserError(format!("--net '{n}': expected host or none"))),
    };
    let mut binds = Vec::new();
    for b in &bind {
        binds.push(run::parse_bind(b, false)?);
    }
    for b in &ro_bind {
        binds.push(run::parse_bind(b, true)?);
    }
    Ok(run::RunRequest {
        lower_spec: lowers,
        upper,
        hostname,
        setenv: setenv
            .iter()
            .map(|e| run::parse_env(e))
            .collect::<Result<_, _>>()?,
        chdir,
        binds,
        net,
        command,
    })
}

/// `-o` options, through the parser every front end shares. The layers are the command's
/// arguments here, not options.
fn apply_options(options: &[String]) -> Result<MountRequest, UserError> {
    let mut o = request::Options::default();
    for list in options {
        request::apply_options(&mut o, std::ffi::OsStr::new(list), false)?;
    }
    if o.lower_spec.is_some() || o.req.union.upper.is_some() {
        return Err(UserError(
            "lowerdir= and upperdir= are the LOWERS and UPPER arguments of unionfuse mount".into(),
        ));
    }
    let mut req = o.req;
    if let Some(w) = o.workdir {
        req.union.workdir = Some(request::check_dir("workdir", &w, None)?);
    }
    Ok(req)
}

fn run(cli: Cli) -> Result<(), UserError> {
    match cli.cmd {
        Cmd::Mount {
            foreground,
            options,
            paths,
        } => {
            let mut req = apply_options(&options)?;
            req.foreground = foreground;
            let lower_spec = paths[0].clone();
            req.union.lowers = request::split_layers(&lower_spec)?;
            if paths.len() == 3 {
                req.union.upper = Some(PathBuf::from(&paths[1]));
            }
            req.mountpoint = PathBuf::from(paths.last().unwrap());
            let checked = request::validate(&req, Some(&lower_spec))?;
            daemon::mount(checked)
        }
        Cmd::Umount { mountpoint } => daemon::umount(&mountpoint, Duration::from_secs(30)),
        Cmd::Run { .. } => unreachable!("handled in main"),
        Cmd::Man { dir } => {
            write_man_pages(&dir).map_err(|e| UserError(format!("{}: {e}", dir.display())))
        }
    }
}

/// unionfuse.1 for the whole program, unionfuse-COMMAND.1 for each command, from the same
/// definitions as `--help`.
fn write_man_pages(dir: &std::path::Path) -> std::io::Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)?;
    let mut cmd = Cli::command();
    cmd.build();
    let render = |c: clap::Command, file: String| -> std::io::Result<()> {
        let mut out = Vec::new();
        clap_mangen::Man::new(c).render(&mut out)?;
        std::fs::write(dir.join(file), out)
    };
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = format!("unionfuse-{}", sub.get_name());
        // clap names are 'static; this runs once per page.
        let leaked: &'static str = Box::leak(name.clone().into_boxed_str());
        render(sub.clone().name(leaked), format!("{name}.1"))?;
    }
    render(cmd.clone(), "unionfuse.1".into())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let argv: Vec<OsString> = std::env::args_os().collect();
    if let Some(r) = unionfuse::compat::dispatch(&argv) {
        return match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("unionfuse: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    if let Cmd::Run {
        lowers,
        upper,
        hostname,
        setenv,
        chdir,
        bind,
        ro_bind,
        net,
        command,
    } = cli.cmd
    {
        let r = run_request(
            lowers, upper, hostname, setenv, chdir, bind, ro_bind, net, command,
        )
        .and_then(run::run);
        return match r {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => {
                eprintln!("unionfuse run: {e}");
                ExitCode::from(run::RUNNER_FAILED)
            }
        };
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("unionfuse: {e}");
            ExitCode::FAILURE
        }
    }
}
