//! The command line: clap's definitions by command group (`mount`, `container`, `image`),
//! one dispatch, and one mapping of outcomes to exit statuses. No engine decision is made
//! here: each command turns its arguments into the library's typed values and calls it.
//!
//! Exit statuses: 0 and what was printed; for a command that runs a container (`run`,
//! `start -a`, `exec`, `attach`, `unshare`) the command's own status, and docker's 125 when
//! it could not start; 1 for any other failure; clap's 2 for a bad command line (125 for
//! `run` and `start`, as docker has it).

mod container;
mod image;
mod mount;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::UserError;
use crate::run::RUNNER_FAILED;
use crate::store::Store;

#[derive(Parser)]
#[command(
    name = "unionfuse",
    version,
    about = "A userspace union filesystem: ordered read-only layers under one writable upper",
    after_help = "Examples:\n  unionfuse mount /layers/app:/layers/base /upper /mnt\n  unionfuse mount /layers/app:/layers/base /mnt        (read-only union)\n  unionfuse umount /mnt\n  unionfuse run --lower /layers/app:/layers/base -- /bin/sh\n\nImages and containers (the store: /var/lib/unionfuse, ~/.local/share/unionfuse rootless):\n  unionfuse load -i image.tar        (docker save, OCI archive or OCI layout)\n  unionfuse run --name c1 IMAGE sh -c 'echo hi > /hello.txt'\n  unionfuse start c1; unionfuse ps -a; unionfuse commit c1 NAME:TAG; unionfuse images --tree\n\nThe command line of fuse-overlayfs is understood too (for containers/storage's\nmount_program):\n  unionfuse [-f] [-d] -o lowerdir=A:B,upperdir=U,workdir=W[,OPTION...] MOUNTPOINT\nwith volatile, noacl, uidmapping=ID:MAPPED:LEN[:...], gidmapping=..., squash_to_root,\nsquash_to_uid=N, squash_to_gid=N, ro, nosuid, nodev, noexec, allow_other.\n\nAs mount(8)'s helper (mount-helper/install links mount.unionfuse and\nmount.fuse.unionfuse to this binary):\n  mount -t fuse.unionfuse -o lowerdir=/l1:/l2,upperdir=/u,workdir=/w none /mnt\n  none /mnt fuse.unionfuse lowerdir=/l1:/l2,upperdir=/u,workdir=/w,nofail 0 0   (fstab)\nmount(8)'s own options (nofail, _netdev, noauto, x-*, comment=...) are ignored.\numount /mnt ends the daemon."
)]
pub struct Cli {
    /// The image store (default: /var/lib/unionfuse as root, ~/.local/share/unionfuse
    /// otherwise; or UNIONFUSE_ROOT).
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
// Parsed once per process: the size of its largest variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Cmd {
    #[command(flatten)]
    Mount(mount::MountCmd),
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
    Run(container::RunArgs),
    #[command(flatten)]
    Container(container::ContainerCmd),
    #[command(flatten)]
    Image(image::ImageCmd),
}

/// What a command came to.
pub enum Outcome {
    /// Done: what to print on standard output (exit 0).
    Printed(String),
    /// A command that ran: its exit status.
    Status(i32),
}

impl Outcome {
    fn done() -> Outcome {
        Outcome::Printed(String::new())
    }
}

impl Cmd {
    /// The name a failure is said under, and whether it runs a container (whose failure to
    /// start is docker's 125).
    fn runs_container(&self) -> Option<&'static str> {
        match self {
            Cmd::Mount(m) => m.runs_container(),
            Cmd::Run(_) => Some("run"),
            Cmd::Container(c) => c.runs_container(),
            Cmd::Image(_) => None,
        }
    }

    fn dispatch(self, root: Option<PathBuf>) -> Result<Outcome, UserError> {
        match self {
            Cmd::Mount(m) => m.dispatch(),
            Cmd::Run(r) => r.dispatch(root),
            Cmd::Container(c) => c.dispatch(root),
            Cmd::Image(i) => {
                let store = Store::open(root)?;
                i.dispatch(&store).map_err(|e| store.when_full(e))
            }
        }
    }
}

/// The program: the foreign command lines first (fuse-overlayfs', mount(8)'s helper), then
/// ours.
pub fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let argv: Vec<OsString> = std::env::args_os().collect();
    if let Some(r) = crate::compat::dispatch(&argv) {
        return match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("unionfuse: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            // A run that could not start exits 125, as docker's does.
            let is_run = argv.get(1).is_some_and(|a| a == "run" || a == "start");
            if is_run && !matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::from(RUNNER_FAILED);
            }
            e.exit();
        }
    };
    let runs = cli.cmd.runs_container();
    match cli.cmd.dispatch(cli.root) {
        Ok(Outcome::Printed(out)) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Ok(Outcome::Status(code)) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => match runs {
            Some(what) => {
                eprintln!("unionfuse {what}: {e}");
                ExitCode::from(RUNNER_FAILED)
            }
            None => {
                eprintln!("unionfuse: {e}");
                ExitCode::FAILURE
            }
        },
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
