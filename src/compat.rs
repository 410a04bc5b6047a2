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

use crate::mount::{self, MountRequest, Result, UserError, bail};

/// Options accepted and ignored: mount(8)'s own (fstab), generic mount flags the union has no
/// use for, and fuse-overlayfs or kernel overlayfs tuning knobs that have no meaning here.
const IGNORED: &[&str] = &[
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "_netdev",
    "nofail",
    "async",
    "sync",
    "dirsync",
    "atime",
    "noatime",
    "diratime",
    "nodiratime",
    "relatime",
    "norelatime",
    "strictatime",
    "lazytime",
    "nolazytime",
    "loud",
    "silent",
    "dev",
    "suid",
    "exec",
    "default_permissions",
    "noacl",
    "acl",
    "static_nlink",
    "debug",
    "userxattr",
];
const IGNORED_PREFIXES: &[&str] = &[
    "x-",
    "comment=",
    "timeout=",
    "threaded=",
    "fast_ino=",
    "context=",
    "fscontext=",
    "defcontext=",
    "rootcontext=",
    "redirect_dir=",
    "index=",
    "xino=",
    "metacopy=",
    "max_read=",
    "noxattrs=",
    "plugins=",
];

/// What the options said besides the union itself.
#[derive(Debug, Default)]
pub struct Parsed {
    pub req: MountRequest,
    pub lower_spec: Option<OsString>,
    pub workdir: Option<PathBuf>,
}

fn num(o: &str, v: &str) -> Result<u32> {
    v.parse()
        .map_err(|_| UserError(format!("option '{o}': '{v}' is not a number")))
}

/// Applies one comma-separated option list. Empty fields (`,,`, a trailing `,`) are skipped;
/// with `sloppy` an unknown option is ignored rather than refused.
pub fn apply(p: &mut Parsed, opts: &OsStr, sloppy: bool) -> Result<()> {
    for raw in opts.as_bytes().split(|&b| b == b',') {
        if raw.is_empty() {
            continue;
        }
        let o = OsStr::from_bytes(raw);
        let s = o.to_string_lossy();
        let (key, val) = match raw.iter().position(|&b| b == b'=') {
            Some(i) => (
                String::from_utf8_lossy(&raw[..i]).into_owned(),
                Some(OsStr::from_bytes(&raw[i + 1..])),
            ),
            None => (s.to_string(), None),
        };
        let text = |v: &OsStr| v.to_string_lossy().into_owned();
        match (key.as_str(), val) {
            ("lowerdir", Some(v)) => p.lower_spec = Some(v.to_owned()),
            ("upperdir", Some(v)) => p.req.upper = Some(PathBuf::from(v)),
            ("workdir", Some(v)) => p.workdir = Some(PathBuf::from(v)),
            ("ro", None) => p.req.read_only = true,
            ("rw", None) => p.req.read_only = false,
            ("volatile", None) => p.req.volatile = true,
            ("fsync", Some(v)) => p.req.volatile = text(v) == "0",
            ("allow_other" | "allow_root", None) => p.req.allow_other = Some(true),
            ("noallow_other", None) => p.req.allow_other = Some(false),
            ("nosuid", None) => p.req.nosuid = true,
            ("nodev", None) => p.req.nodev = true,
            ("noexec", None) => p.req.noexec = true,
            ("uidmapping", Some(v)) => p
                .req
                .ids
                .set_uid_mapping(&text(v))
                .map_err(|e| UserError(format!("uidmapping {e}")))?,
            ("gidmapping", Some(v)) => p
                .req
                .ids
                .set_gid_mapping(&text(v))
                .map_err(|e| UserError(format!("gidmapping {e}")))?,
            ("squash_to_root", None) => {
                // squash_to_uid/gid win over it, whatever the order.
                let (u, g) = (p.req.squash_uid.or(Some(0)), p.req.squash_gid.or(Some(0)));
                p.req.squash_uid = u;
                p.req.squash_gid = g;
            }
            ("squash_to_uid", Some(v)) => p.req.squash_uid = Some(num(&s, &text(v))?),
            ("squash_to_gid", Some(v)) => p.req.squash_gid = Some(num(&s, &text(v))?),
            ("threads", Some(v)) => match text(v).parse::<usize>() {
                Ok(n) if n > 0 => p.req.threads = Some(n),
                _ => bail!("option '{s}': expected a positive number"),
            },
            ("whiteout", Some(v)) if text(v) == "oci" => p.req.oci_whiteouts = true,
            ("whiteout", Some(v)) if text(v) == "kernel" => p.req.oci_whiteouts = false,
            (k, None) if IGNORED.contains(&k) => {}
            _ if IGNORED_PREFIXES.iter().any(|x| s.starts_with(x)) => {}
            _ if sloppy => log::info!("ignoring unknown option '{s}'"),
            _ => bail!("unknown option '{s}'"),
        }
    }
    Ok(())
}

/// Checks what the options gave and turns it into a mount.
fn finish(mut p: Parsed, mountpoint: PathBuf, foreground: bool) -> Result<mount::Checked> {
    let Some(spec) = p.lower_spec.take() else {
        bail!("no lowerdir= given (-o lowerdir=LOWER1:LOWER2,upperdir=UPPER,workdir=WORK)");
    };
    p.req.lowers = mount::split_layers(&spec)?;
    if let Some(w) = &p.workdir {
        // Used as the kernel uses it (our work goes in a `unionfuse` directory inside);
        // without one, the work dir is hidden in the upper.
        let w = mount::check_dir("workdir", w, None)?;
        if p.req.upper.is_none() {
            bail!("workdir= given without upperdir=");
        }
        p.req.workdir = Some(w);
    }
    let (u, g) = (p.req.squash_uid, p.req.squash_gid);
    p.req.ids.squash(u, g);
    p.req.mountpoint = mountpoint;
    p.req.foreground = foreground;
    mount::validate(&p.req, Some(&spec))
}

fn version() {
    println!("unionfuse version {}", env!("CARGO_PKG_VERSION"));
    println!("(command-line compatible with fuse-overlayfs)");
}

/// `unionfuse [-f] [-d] [-o OPTS]... MOUNTPOINT`, as fuse-overlayfs.
fn fuse_overlayfs_cli(args: &[OsString]) -> Result<()> {
    let mut p = Parsed::default();
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
                apply(&mut p, v, false)?;
            }
            b"--version" | b"-V" => {
                version();
                return Ok(());
            }
            _ if b.starts_with(b"-o") => apply(&mut p, OsStr::from_bytes(&b[2..]), false)?,
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
    let checked = finish(p, mp, foreground)?;
    mount::mount(checked).map(drop)
}

/// `mount.unionfuse SOURCE MOUNTPOINT [-sfnv] [-N NS] [-o OPTS] [-t TYPE]`, as mount(8) calls
/// a helper.
fn mount_helper(args: &[OsString]) -> Result<()> {
    let mut p = Parsed::default();
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
        apply(&mut p, o, sloppy)?;
    }
    let checked = finish(p, PathBuf::from(mp), false)?;
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
    mount::mount(checked).map(drop)
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

    fn parse(s: &str) -> Result<Parsed> {
        let mut p = Parsed::default();
        apply(&mut p, OsStr::new(s), false)?;
        Ok(p)
    }

    #[test]
    fn podman_style_options_parse() {
        let p = parse(",lowerdir=/a:/b,upperdir=/u,,workdir=/w,volatile,noacl,uidmapping=0:100000:65536,gidmapping=:0:100000:65536,x-systemd.automount,nofail,_netdev,").unwrap();
        assert_eq!(p.lower_spec.as_deref(), Some(OsStr::new("/a:/b")));
        assert_eq!(p.req.upper, Some(PathBuf::from("/u")));
        assert_eq!(p.workdir, Some(PathBuf::from("/w")));
        assert!(p.req.volatile);
        assert_eq!(p.req.ids.show(0, 1), (100000, 100001));
        assert!(parse("bogus").is_err());
        assert!(parse("uidmapping=0:1").is_err());
        let mut q = Parsed::default();
        apply(&mut q, OsStr::new("bogus,lowerdir=/x"), true).unwrap();
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
