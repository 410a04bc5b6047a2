//! The command lines other programs already speak:
//! - fuse-overlayfs's, for containers/storage's `mount_program`:
//!   `unionfuse [-f] [-d] -o lowerdir=A:B,upperdir=U,workdir=W MOUNTPOINT`;
//! - mount(8)'s helper protocol, when called as `mount.unionfuse` or `mount.fuse.unionfuse`:
//!   `mount.unionfuse SOURCE MOUNTPOINT [-sfnv] [-N NAMESPACE] [-o OPTIONS] [-t TYPE]`.
//!
//! Both end in the same `MountRequest` as `unionfuse mount`.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::daemon;
use crate::error::{Result, UserError, bail};
use crate::request::{self, Options};

fn version() {
    println!("unionfuse version {}", env!("CARGO_PKG_VERSION"));
    println!("(command-line compatible with fuse-overlayfs)");
}

/// `unionfuse [-f] [-d] [-o OPTS]... MOUNTPOINT`, as fuse-overlayfs.
fn fuse_overlayfs_cli(args: &[OsString]) -> Result<()> {
    let mut p = Options::default();
    let mut foreground = false;
    let mut mountpoint = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let b = a.as_bytes();
        match b {
            b"-f" => foreground = true,
            b"-d" | b"--debug" => foreground = true,
            b"-o" => {
                let Some(v) = it.next() else {
                    bail!("-o needs a value")
                };
                request::apply_options(&mut p, v, false)?;
            }
            b"--version" | b"-V" => {
                version();
                return Ok(());
            }
            _ if b.starts_with(b"-o") => {
                request::apply_options(&mut p, OsStr::from_bytes(&b[2..]), false)?
            }
            _ if b.starts_with(b"-") => bail!("unknown argument '{}'", a.to_string_lossy()),
            _ if mountpoint.is_none() => mountpoint = Some(PathBuf::from(a)),
            _ => bail!(
                "unexpected argument '{}' (usage: unionfuse -o lowerdir=A:B,upperdir=U,workdir=W MOUNTPOINT)",
                a.to_string_lossy()
            ),
        }
    }
    let Some(mp) = mountpoint else {
        bail!(
            "no mountpoint given (usage: unionfuse -o lowerdir=A:B,upperdir=U,workdir=W MOUNTPOINT)"
        )
    };
    let checked = request::finish(p, mp, foreground)?;
    daemon::mount(checked)
}

/// `mount.unionfuse SOURCE MOUNTPOINT [-sfnv] [-N NS] [-o OPTS] [-t TYPE]`, as mount(8) calls
/// a helper.
fn mount_helper(args: &[OsString]) -> Result<()> {
    let mut p = Options::default();
    let (mut sloppy, mut fake, mut verbose) = (false, false, false);
    let mut positional = Vec::new();
    let mut opts = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let b = a.as_bytes();
        match b {
            b"-o" | b"-t" | b"-N" => {
                let Some(v) = it.next() else {
                    bail!("{} needs a value", a.to_string_lossy())
                };
                match b {
                    b"-o" => opts.push(v.clone()),
                    b"-N" => enter_mount_namespace(v)?,
                    _ => {}
                }
            }
            _ if b.starts_with(b"-o") && b.len() > 2 => {
                opts.push(OsStr::from_bytes(&b[2..]).to_owned())
            }
            _ if b.starts_with(b"-") && b.len() > 1 => {
                for f in &b[1..] {
                    match f {
                        b's' => sloppy = true,
                        b'f' => fake = true,
                        b'v' => verbose = true,
                        b'n' => {}
                        _ => bail!("unknown flag '-{}'", *f as char),
                    }
                }
            }
            _ => positional.push(a.clone()),
        }
    }
    let [_source, mp] = positional.as_slice() else {
        bail!("usage: mount.unionfuse SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]");
    };
    for o in &opts {
        request::apply_options(&mut p, o, sloppy)?;
    }
    let checked = request::finish(p, PathBuf::from(mp), false)?;
    if verbose {
        eprintln!(
            "unionfuse: mounting {} layer(s){} on {}",
            checked.union.lowers.len(),
            if checked.union.upper.is_some() {
                " and an upper"
            } else {
                ", read-only"
            },
            checked.mountpoint.display()
        );
    }
    if fake {
        return Ok(());
    }
    daemon::mount(checked)
}

fn enter_mount_namespace(ns: &OsStr) -> Result<()> {
    let path = if ns.as_bytes().iter().all(u8::is_ascii_digit) {
        PathBuf::from(format!("/proc/{}/ns/mnt", ns.to_string_lossy()))
    } else {
        PathBuf::from(ns)
    };
    let f =
        std::fs::File::open(&path).map_err(|e| UserError(format!("-N {}: {e}", path.display())))?;
    use std::os::fd::AsFd;
    if let Err(e) = crate::sys::setns(f.as_fd(), libc::CLONE_NEWNS) {
        bail!("-N {}: {e}", path.display());
    }
    Ok(())
}

/// Runs one of the foreign command lines if that is what `argv` is; `None` for our own.
pub fn dispatch(argv: &[OsString]) -> Option<Result<()>> {
    let name = argv
        .first()
        .map(|a| {
            PathBuf::from(a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .unwrap_or_default();
    let rest = argv.get(1..).unwrap_or(&[]);
    if name.starts_with("mount.") {
        return Some(mount_helper(rest));
    }
    let first = rest.first().map(|a| a.as_bytes()).unwrap_or(b"");
    if first.starts_with(b"-o") || matches!(first, b"-f" | b"-d" | b"--debug") {
        return Some(fuse_overlayfs_cli(rest));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Options> {
        let mut p = Options::default();
        request::apply_options(&mut p, OsStr::new(s), false)?;
        Ok(p)
    }

    #[test]
    fn podman_style_options_parse() {
        let p = parse(",lowerdir=/a:/b,upperdir=/u,,workdir=/w,volatile,noacl,uidmapping=0:100000:65536,gidmapping=:0:100000:65536,x-systemd.automount,nofail,_netdev,").unwrap();
        assert_eq!(p.lower_spec.as_deref(), Some(OsStr::new("/a:/b")));
        assert_eq!(p.req.union.upper, Some(PathBuf::from("/u")));
        assert_eq!(p.workdir, Some(PathBuf::from("/w")));
        assert!(p.req.union.volatile);
        assert_eq!(p.req.union.ids.show(0, 1), (100000, 100001));
        assert!(parse("bogus").is_err());
        assert!(parse("uidmapping=0:1").is_err());
        let mut q = Options::default();
        request::apply_options(&mut q, OsStr::new("bogus,lowerdir=/x"), true).unwrap();
        assert!(q.lower_spec.is_some());
    }

    #[test]
    fn squash_uid_wins_over_squash_to_root_in_any_order() {
        for s in [
            "squash_to_uid=5,squash_to_root",
            "squash_to_root,squash_to_uid=5",
        ] {
            let p = parse(s).unwrap();
            assert_eq!(
                (p.req.squash_uid, p.req.squash_gid),
                (Some(5), Some(0)),
                "{s}"
            );
        }
    }
}
