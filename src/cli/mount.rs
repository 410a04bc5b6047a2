//! `mount`, `umount`, `unshare` and the manual pages.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;

use super::Outcome;
use crate::error::UserError;
use crate::{daemon, request};

#[derive(Subcommand)]
pub enum MountCmd {
    /// Mount a union: LOWERS is a ':'-separated list, leftmost on top ('\:' escapes a ':').
    #[command(
        override_usage = "unionfuse mount [OPTIONS] LOWERS [UPPER] MOUNTPOINT",
        after_help = "Requests reach the daemon over io_uring where the kernel offers it (Linux 6.14+, once root\nhas run: echo Y > /sys/module/fuse/parameters/enable_uring), through /dev/fuse otherwise or\nwith UNIONFUSE_NO_IO_URING=1 in the environment.\n\nExamples:\n  unionfuse mount top:middle:bottom upper /mnt\n  unionfuse mount -f top:bottom /mnt      (read-only, in the foreground)\n  RUST_LOG=debug unionfuse mount -f l1:l2 upper /mnt"
    )]
    Mount {
        /// Stay in the foreground, logging to stderr (RUST_LOG sets the level).
        #[arg(short, long)]
        foreground: bool,
        /// Comma-separated options: ro, allow_other, noallow_other, threads=N, volatile
        /// (no fsync to the upper), whiteout=oci|kernel (format of whiteouts written),
        /// metacopy=on (a change of owner, mode or times copies metadata alone).
        #[arg(short = 'o', value_name = "OPTIONS")]
        options: Vec<String>,
        /// The read-only layers, ':'-separated, leftmost on top.
        #[arg(value_name = "LOWERS")]
        lowers: OsString,
        /// Where to mount; with one more path after it, the writable upper (without: a
        /// read-only union).
        #[arg(value_name = "MOUNTPOINT")]
        second: PathBuf,
        /// Where to mount, after LOWERS UPPER.
        #[arg(value_name = "MOUNTPOINT")]
        third: Option<PathBuf>,
    },
    /// Unmount a union and wait for its daemon to exit.
    #[command(after_help = "Example:\n  unionfuse umount /mnt")]
    Umount { mountpoint: PathBuf },
    /// Write the manual pages (unionfuse.1 and one per command) into DIR.
    #[command(hide = true)]
    Man { dir: PathBuf },
    /// Run a command (default: a shell) as root of a user namespace with the same id map as
    /// a rootless run: to re-own a tree for a run, or remove an upper whose files belong to
    /// subordinate ids.
    #[command(trailing_var_arg = true)]
    Unshare {
        #[arg(allow_hyphen_values = true, value_name = "COMMAND")]
        command: Vec<OsString>,
    },
}

impl MountCmd {
    pub fn runs_container(&self) -> Option<&'static str> {
        matches!(self, MountCmd::Unshare { .. }).then_some("unshare")
    }

    pub fn dispatch(self) -> Result<Outcome, UserError> {
        match self {
            MountCmd::Mount {
                foreground,
                options,
                lowers,
                second,
                third,
            } => {
                let (upper, mountpoint) = match third {
                    Some(mp) => (Some(second), mp),
                    None => (None, second),
                };
                let checked =
                    request::mount_command(&options, &lowers, upper, mountpoint, foreground)?;
                daemon::mount(checked)?;
                Ok(Outcome::done())
            }
            MountCmd::Umount { mountpoint } => {
                daemon::umount(&mountpoint, Duration::from_secs(30))?;
                Ok(Outcome::done())
            }
            MountCmd::Man { dir } => {
                super::write_man_pages(&dir)
                    .map_err(|e| UserError(format!("{}: {e}", dir.display())))?;
                Ok(Outcome::done())
            }
            MountCmd::Unshare { command } => {
                crate::userns::unshare_command(&command).map(Outcome::Status)
            }
        }
    }
}
