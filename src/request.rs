//! Mount requests: what was asked (from `unionfuse mount`, `run`, mount(8) or
//! fuse-overlayfs's command line, through one option parser), checked before anything is
//! mounted, every refusal one line for the user.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Result, UserError, bail};
use crate::sys;
use crate::union::UnionConfig;

/// Splits a layer list at unescaped `:`; `\:` stands for a colon and `\\` for a backslash.
pub fn split_layers(spec: &OsStr) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = spec.as_bytes().iter().copied();
    while let Some(b) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some(n @ (b':' | b'\\')) => cur.push(n),
                Some(n) => {
                    cur.push(b'\\');
                    cur.push(n);
                }
                None => cur.push(b'\\'),
            },
            b':' => out.push(std::mem::take(&mut cur)),
            _ => cur.push(b),
        }
    }
    out.push(cur);
    if out.iter().any(|p| p.is_empty()) {
        bail!(
            "empty layer in '{}': layers are separated by ':' (write '\\:' for a ':' in a path)",
            spec.to_string_lossy()
        );
    }
    Ok(out
        .into_iter()
        .map(|b| PathBuf::from(OsString::from_vec(b)))
        .collect())
}

#[derive(Debug, Clone, Default)]
pub struct MountRequest {
    /// The union as asked (layers as given; `validate` makes them canonical).
    pub union: UnionConfig,
    pub mountpoint: PathBuf,
    pub foreground: bool,
    /// `None`: allow other users when mounted by root, as a system mount is.
    pub allow_other: Option<bool>,
    pub threads: Option<usize>,
    /// Part of a `unionfuse run`: no pidfile, the daemon ends with the process that started
    /// it, and removes `remove_after` (the run's scratch directory) once unmounted.
    pub private: bool,
    pub remove_after: Option<PathBuf>,
    /// Where the daemon opens `fuse` and `null` (default `/dev`). A rootless run gives a
    /// `/proc/self/fd/N` of the host's `/dev`, opened before its mount namespace existed, so
    /// the daemon holds nothing of the namespace's copies of the host's mounts.
    pub dev_dir: Option<PathBuf>,
    /// fuse-overlayfs's squash_to_uid/squash_to_gid (squash_to_root sets both to 0).
    pub squash_uid: Option<u32>,
    pub squash_gid: Option<u32>,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
}

/// What `validate` made of a request: canonical paths, checked.
#[derive(Debug, Clone)]
pub struct Checked {
    pub union: UnionConfig,
    pub mountpoint: PathBuf,
    pub req: MountRequest,
}

fn describe(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => sys::Errno(code).to_string(),
        None => e.to_string(),
    }
}

pub fn check_dir(role: &str, p: &Path, spec: Option<&OsStr>) -> Result<PathBuf> {
    let md = match std::fs::metadata(p) {
        Ok(m) => m,
        Err(e) => {
            if let Some(spec) =
                spec.filter(|s| Path::new(s).is_dir() && s.as_bytes().contains(&b':'))
            {
                bail!(
                    "{role} '{}': {} ('{}' exists: write '\\:' for a ':' in a path)",
                    p.display(),
                    describe(&e),
                    spec.to_string_lossy()
                );
            }
            bail!("{role} '{}': {}", p.display(), describe(&e))
        }
    };
    if !md.is_dir() {
        bail!("{role} '{}': not a directory", p.display());
    }
    std::fs::canonicalize(p)
        .map_err(|e| UserError(format!("{role} '{}': {}", p.display(), describe(&e))))
}

/// Mount points currently in the mount table, from `/proc/self/mountinfo`, with their types.
pub fn mount_table() -> Vec<(PathBuf, String)> {
    mount_table_with_devices()
        .into_iter()
        .map(|(p, t, _)| (p, t))
        .collect()
}

/// The mount table with each mount's device (`major:minor`).
pub(crate) fn mount_table_with_devices() -> Vec<(PathBuf, String, String)> {
    let Ok(s) = std::fs::read("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in s.split(|&b| b == b'\n') {
        let f: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        if f.len() < 5 {
            continue;
        }
        let fstype = f
            .iter()
            .position(|x| *x == b"-")
            .and_then(|i| f.get(i + 1))
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .unwrap_or_default();
        out.push((
            PathBuf::from(OsString::from_vec(unescape_octal(f[4]))),
            fstype,
            String::from_utf8_lossy(f[2]).into_owned(),
        ));
    }
    out
}

fn unescape_octal(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\'
            && i + 3 < s.len()
            && s[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (s[i + 1] - b'0') * 64 + (s[i + 2] - b'0') * 8 + (s[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// Checks a request before anything is mounted; every refusal is one line for the user.
/// Refuses two (canonical) paths of which one lies inside the other.
fn refuse_nesting((a_role, a): (&str, &Path), (b_role, b): (&str, &Path)) -> Result<()> {
    if a.starts_with(b) {
        bail!(
            "{a_role} '{}' is inside {b_role} '{}'",
            a.display(),
            b.display()
        );
    }
    if b.starts_with(a) {
        bail!(
            "{b_role} '{}' is inside {a_role} '{}'",
            b.display(),
            a.display()
        );
    }
    Ok(())
}

pub fn validate(req: &MountRequest, lower_spec: Option<&OsStr>) -> Result<Checked> {
    if req.union.lowers.is_empty() {
        bail!("no lower layer given");
    }
    let mut lowers = Vec::new();
    for l in &req.union.lowers {
        lowers.push(check_dir("lower layer", l, lower_spec)?);
    }
    let upper = match &req.union.upper {
        Some(u) => {
            let c = check_dir("upper layer", u, None)?;
            if !sys::is_writable_dir(&c) {
                bail!("upper layer '{}': not writable", u.display());
            }
            Some(c)
        }
        None => None,
    };
    let mountpoint = check_dir("mountpoint", &req.mountpoint, None)?;
    if req.union.workdir.is_some() && upper.is_none() {
        bail!("a workdir is given without an upper layer");
    }
    if let (Some(w), Some(u)) = (&req.union.workdir, &upper) {
        let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
        if dev(w) != dev(u) {
            bail!(
                "workdir '{}' is not on the filesystem of upperdir '{}'",
                w.display(),
                u.display()
            );
        }
    }

    let mut seen: Vec<((u64, u64), &Path)> = Vec::new();
    for p in upper.iter().chain(lowers.iter()) {
        let md = std::fs::metadata(p)
            .map_err(|e| UserError(format!("'{}': {}", p.display(), describe(&e))))?;
        let id = (md.dev(), md.ino());
        if let Some((_, first)) = seen.iter().find(|(i, _)| *i == id) {
            bail!(
                "layer '{}' is given twice (also as '{}')",
                p.display(),
                first.display()
            );
        }
        seen.push((id, p));
        if mountpoint == *p {
            bail!("mountpoint '{}' is also a layer", mountpoint.display());
        }
        refuse_nesting(("mountpoint", &mountpoint), ("layer", p))?;
    }
    // The lowers never change: no upper or work dir may lie inside one, nor one inside them.
    let writable = upper.iter().map(|u| ("upper layer", u.clone()));
    let work = req
        .union
        .workdir
        .iter()
        .filter_map(|w| std::fs::canonicalize(w).ok())
        .map(|w| ("workdir", w));
    for (role, w) in writable.chain(work) {
        for l in &lowers {
            refuse_nesting((role, &w), ("lower layer", l))?;
        }
    }
    if mount_table().iter().any(|(m, _)| *m == mountpoint) {
        bail!("mountpoint '{}': already mounted", mountpoint.display());
    }
    Ok(Checked {
        union: UnionConfig {
            lowers,
            upper,
            // Absolute, as every path of a checked request (the daemon works from `/`).
            workdir: req.union.workdir.as_ref().map(|w| {
                std::path::absolute(w)
                    .ok()
                    .and_then(|a| std::fs::canonicalize(&a).ok().or(Some(a)))
                    .unwrap_or_else(|| w.clone())
            }),
            ..req.union.clone()
        },
        mountpoint,
        req: req.clone(),
    })
}

// ---- the one option parser: `mount -o`, mount(8), fuse-overlayfs ----

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

/// A mount request as options give it: the request, and the layer options of the
/// `-o lowerdir=…,upperdir=…,workdir=…` form (mount(8), fuse-overlayfs).
#[derive(Debug, Default)]
pub struct Options {
    pub req: MountRequest,
    pub lower_spec: Option<OsString>,
    pub workdir: Option<PathBuf>,
}

/// `-o` lists, through the one option parser, for a command whose layers are its own
/// arguments: `lowerdir=` and `upperdir=` (and `workdir=` unless `workdir_ok`) are refused,
/// `layers` saying where they go instead.
pub fn option_lists(options: &[String], layers: &str, workdir_ok: bool) -> Result<Options> {
    let mut o = Options::default();
    for list in options {
        apply_options(&mut o, OsStr::new(list), false)?;
    }
    if o.lower_spec.is_some() || o.req.union.upper.is_some() || (!workdir_ok && o.workdir.is_some())
    {
        let which = if workdir_ok {
            "lowerdir= and upperdir="
        } else {
            "lowerdir=, upperdir= and workdir="
        };
        bail!("-o: {which} are not options here: the layers are {layers}");
    }
    Ok(o)
}

/// `unionfuse mount [-o OPTIONS] LOWERS [UPPER] MOUNTPOINT`, checked.
pub fn mount_command(
    options: &[String],
    lower_spec: &OsStr,
    upper: Option<PathBuf>,
    mountpoint: PathBuf,
    foreground: bool,
) -> Result<Checked> {
    let mut o = option_lists(
        options,
        "the LOWERS and UPPER arguments of unionfuse mount",
        true,
    )?;
    o.lower_spec = Some(lower_spec.to_owned());
    o.req.union.upper = upper;
    finish(o, mountpoint, foreground)
}

/// Checks what the options (and arguments) gave and turns it into a mount: the one end of
/// `unionfuse mount`, fuse-overlayfs' command line and mount(8)'s helper.
pub fn finish(mut p: Options, mountpoint: PathBuf, foreground: bool) -> Result<Checked> {
    let Some(spec) = p.lower_spec.take() else {
        bail!("no lowerdir= given (-o lowerdir=LOWER1:LOWER2,upperdir=UPPER,workdir=WORK)");
    };
    p.req.union.lowers = split_layers(&spec)?;
    if let Some(w) = &p.workdir {
        // Used as the kernel uses it (our work goes in a `unionfuse` directory inside);
        // without one, the work dir is hidden in the upper.
        let w = check_dir("workdir", w, None)?;
        if p.req.union.upper.is_none() {
            bail!("workdir= given without upperdir=");
        }
        p.req.union.workdir = Some(w);
    }
    let (u, g) = (p.req.squash_uid, p.req.squash_gid);
    p.req.union.ids.squash(u, g);
    p.req.mountpoint = mountpoint;
    p.req.foreground = foreground;
    validate(&p.req, Some(&spec))
}

fn num(o: &str, v: &str) -> Result<u32> {
    v.parse()
        .map_err(|_| UserError(format!("option '{o}': '{v}' is not a number")))
}

/// Applies one comma-separated option list. Empty fields (`,,`, a trailing `,`) are skipped;
/// with `sloppy` an unknown option is ignored rather than refused.
pub fn apply_options(p: &mut Options, opts: &OsStr, sloppy: bool) -> Result<()> {
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
            ("upperdir", Some(v)) => p.req.union.upper = Some(PathBuf::from(v)),
            ("workdir", Some(v)) => p.workdir = Some(PathBuf::from(v)),
            ("ro", None) => p.req.union.read_only = true,
            ("rw", None) => p.req.union.read_only = false,
            ("volatile", None) => p.req.union.volatile = true,
            ("metacopy", Some(v)) => match text(v).as_str() {
                "on" => p.req.union.metacopy = true,
                "off" => p.req.union.metacopy = false,
                other => bail!("option 'metacopy={other}': expected on or off"),
            },
            ("fsync", Some(v)) => p.req.union.volatile = text(v) == "0",
            ("allow_other" | "allow_root", None) => p.req.allow_other = Some(true),
            ("noallow_other", None) => p.req.allow_other = Some(false),
            ("nosuid", None) => p.req.nosuid = true,
            ("nodev", None) => p.req.nodev = true,
            ("noexec", None) => p.req.noexec = true,
            ("uidmapping", Some(v)) => p
                .req
                .union
                .ids
                .set_uid_mapping(&text(v))
                .map_err(|e| UserError(format!("uidmapping {e}")))?,
            ("gidmapping", Some(v)) => p
                .req
                .union
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
            ("override_stat", None) => p.req.union.override_stat = true,
            ("whiteout", Some(v)) if text(v) == "oci" => p.req.union.oci_whiteouts = true,
            ("whiteout", Some(v)) if text(v) == "kernel" => p.req.union.oci_whiteouts = false,
            (k, None) if IGNORED.contains(&k) => {}
            _ if IGNORED_PREFIXES.iter().any(|x| s.starts_with(x)) => {}
            _ if sloppy => log::info!("ignoring unknown option '{s}'"),
            _ => bail!("unknown mount option '{s}'"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_split_on_unescaped_colons() {
        let v = split_layers(OsStr::new("/a:/b\\:c:/d\\\\")).unwrap();
        assert_eq!(
            v,
            vec![
                PathBuf::from("/a"),
                PathBuf::from("/b:c"),
                PathBuf::from("/d\\")
            ]
        );
        assert!(split_layers(OsStr::new("/a::/b")).is_err());
        assert!(split_layers(OsStr::new(":/b")).is_err());
    }

    #[test]
    fn mountinfo_octal_escapes_decode() {
        assert_eq!(unescape_octal(b"/mnt/a\\040b"), b"/mnt/a b");
        assert_eq!(unescape_octal(b"/x\\134y"), b"/x\\y");
    }
}
