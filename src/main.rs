//! The `unionfuse` command line: parses, then calls the library.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use unionfuse::mount::{self, MountRequest, UserError};

#[derive(Parser)]
#[command(
    name = "unionfuse",
    version,
    about = "A userspace union filesystem: ordered read-only layers under one writable upper",
    after_help = "Examples:\n  unionfuse mount /layers/app:/layers/base /upper /mnt\n  unionfuse mount /layers/app:/layers/base /mnt        (read-only union)\n  unionfuse umount /mnt"
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
    Umount { mountpoint: PathBuf },
}

fn apply_options(req: &mut MountRequest, options: &[String]) -> Result<(), UserError> {
    for o in options
        .iter()
        .flat_map(|s| s.split(','))
        .filter(|s| !s.is_empty())
    {
        match o {
            "ro" => req.read_only = true,
            "rw" => req.read_only = false,
            "allow_other" => req.allow_other = Some(true),
            "noallow_other" => req.allow_other = Some(false),
            "volatile" => req.volatile = true,
            "whiteout=oci" => req.oci_whiteouts = true,
            "whiteout=kernel" => req.oci_whiteouts = false,
            _ => match o.strip_prefix("threads=").map(str::parse::<usize>) {
                Some(Ok(n)) if n > 0 => req.threads = Some(n),
                _ => return Err(UserError(format!("unknown mount option '{o}'"))),
            },
        }
    }
    Ok(())
}

fn run(cli: Cli) -> Result<(), UserError> {
    match cli.cmd {
        Cmd::Mount {
            foreground,
            options,
            paths,
        } => {
            let mut req = MountRequest {
                foreground,
                ..Default::default()
            };
            apply_options(&mut req, &options)?;
            let lower_spec = paths[0].clone();
            req.lowers = mount::split_layers(&lower_spec)?;
            if paths.len() == 3 {
                req.upper = Some(PathBuf::from(&paths[1]));
            }
            req.mountpoint = PathBuf::from(paths.last().unwrap());
            let checked = mount::validate(&req, Some(&lower_spec))?;
            mount::mount(checked)
        }
        Cmd::Umount { mountpoint } => mount::umount(&mountpoint, Duration::from_secs(30)),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("unionfuse: {e}");
            ExitCode::FAILURE
        }
    }
}
