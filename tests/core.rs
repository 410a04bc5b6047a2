//! The union core tested the way the architecture promises: without FUSE, without root, on
//! every `cargo test`. Property tests (proptest, which shrinks a failure to a few steps) build
//! random lower layers (files, directories, symlinks, OCI whiteouts, opaque directories, hard
//! links), drive `Union` in-process through random operations, remounts and rotations (the
//! upper becomes the top lower layer under a fresh upper), and compare the whole view with the
//! reference model (`common/model.rs`) after every step: names, kinds, modes, sizes,
//! contents, symlink targets, xattrs, link counts, which names are one object, and every
//! operation's result or errno.
//!
//! The driver plays the kernel's part: it resolves paths one lookup at a time, makes the
//! checks the VFS makes before a filesystem is asked (rename into itself, same-inode rename,
//! link of a directory), and gives back every lookup reference after each step.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::model::{LayerEntry, LayerSpec, Model, Shown, normalize, write_layer};
use common::ops::Op;
use proptest::prelude::*;
use unionfuse::union::{Caller, SetAttr, Union, UnionConfig};

type R = Result<Vec<u8>, i32>;

const ROOT: u64 = 1;

struct Driver {
    u: Union,
    /// Lookup references taken during a step, given back at its end (as the kernel's
    /// forget would).
    refs: Vec<u64>,
    who: Caller,
}

fn fmt(st: &libc::stat) -> u32 {
    st.st_mode & libc::S_IFMT
}

fn under(a: &str, b: &str) -> bool {
    b.starts_with(&format!("{a}/"))
}

fn split(p: &str) -> (&str, &str) {
    match p.rfind('/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => ("", p),
    }
}

impl Driver {
    fn new(cfg: &UnionConfig) -> Driver {
        Driver {
            u: Union::new(cfg).expect("the union opens its layers"),
            refs: Vec::new(),
            who: Caller {
                uid: unsafe { libc::geteuid() },
                gid: unsafe { libc::getegid() },
                pid: 0,
            },
        }
    }

    fn lookup(&mut self, parent: u64, name: &str) -> Result<libc::stat, i32> {
        let st = self
            .u
            .lookup(parent, OsStr::new(name))
            .map_err(|e| e.code())?;
        self.refs.push(st.st_ino);
        Ok(st)
    }

    /// The object at `p`, resolved one name at a time ("" is the root).
    fn resolve(&mut self, p: &str) -> Result<(u64, libc::stat), i32> {
        let mut st = self.u.getattr(ROOT, None).map_err(|e| e.code())?;
        let mut ino = ROOT;
        if p.is_empty() {
            return Ok((ino, st));
        }
        for c in p.split('/') {
            if fmt(&st) != libc::S_IFDIR {
                return Err(libc::ENOTDIR);
            }
            st = self.lookup(ino, c)?;
            ino = st.st_ino;
        }
        Ok((ino, st))
    }

    /// The directory `p` is in, and its last name.
    fn parent<'a>(&mut self, p: &'a str) -> Result<(u64, &'a str), i32> {
        let (dir, name) = split(p);
        let (ino, st) = self.resolve(dir)?;
        if fmt(&st) != libc::S_IFDIR {
            return Err(libc::ENOTDIR);
        }
        Ok((ino, name))
    }

    /// A regular file at `p` for a content operation (symlinks are not followed: ELOOP).
    fn file(&mut self, p: &str) -> Result<u64, i32> {
        let (ino, st) = self.resolve(p)?;
        match fmt(&st) {
            libc::S_IFDIR => Err(libc::EISDIR),
            libc::S_IFLNK => Err(libc::ELOOP),
            _ => Ok(ino),
        }
    }

    fn write_at(&mut self, ino: u64, flags: i32, off: Option<u64>, data: &[u8]) -> R {
        let fh = self.u.open(ino, flags).map_err(|e| e.code())?;
        let off = match off {
            Some(o) => o,
            None => self.u.getattr(ino, None).map_err(|e| e.code())?.st_size as u64,
        };
        let r = self.u.write(ino, fh, off, data, None).map_err(|e| e.code());
        self.u.release(fh);
        r.map(|_| vec![])
    }

    fn read_all(&mut self, ino: u64) -> R {
        let fh = self.u.open(ino, libc::O_RDONLY).map_err(|e| e.code())?;
        let mut out = Vec::new();
        let r = loop {
            match self.u.read(fh, out.len() as u64, 4096) {
                Ok(b) if b.is_empty() => break Ok(out),
                Ok(b) => out.extend_from_slice(&b),
                Err(e) => break Err(e.code()),
            }
        };
        self.u.release(fh);
        r
    }

    fn listing(&mut self, ino: u64) -> Result<Vec<(String, u64)>, i32> {
        let fh = self.u.opendir(ino).map_err(|e| e.code())?;
        let l = self.u.dir_listing(fh, 0).map_err(|e| e.code());
        self.u.releasedir(fh);
        Ok(l?
            .iter()
            .filter(|e| e.name != "." && e.name != "..")
            .map(|e| (e.name.to_string_lossy().into_owned(), e.ino))
            .collect())
    }

    /// What a `user.*` xattr may be changed on: the VFS refuses other than files and
    /// directories.
    fn user_xattr_target(&mut self, p: &str) -> Result<u64, i32> {
        let (ino, st) = self.resolve(p)?;
        match fmt(&st) {
            libc::S_IFREG | libc::S_IFDIR => Ok(ino),
            _ => Err(libc::EPERM),
        }
    }

    fn apply(&mut self, op: &Op) -> R {
        let u = |r: unionfuse::union::Result<libc::stat>| r.map(|_| vec![]).map_err(|e| e.code());
        match op {
            Op::Create(p, mode, data) => {
                let (pino, name) = self.parent(p)?;
                let (st, fh) = self
                    .u
                    .create(pino, OsStr::new(name), *mode, self.who)
                    .map_err(|e| e.code())?;
                self.refs.push(st.st_ino);
                let r = self.u.write(st.st_ino, fh, 0, data, None);
                self.u.release(fh);
                r.map(|_| vec![]).map_err(|e| e.code())
            }
            Op::Write(p, off, data) => {
                let ino = self.file(p)?;
                self.write_at(ino, libc::O_WRONLY, Some(*off), data)
            }
            Op::Append(p, data) => {
                let ino = self.file(p)?;
                self.write_at(ino, libc::O_WRONLY | libc::O_APPEND, None, data)
            }
            Op::Truncate(p, len) => {
                let ino = self.file(p)?;
                let a = SetAttr {
                    size: Some(*len),
                    ..Default::default()
                };
                u(self.u.setattr(ino, &a))
            }
            Op::OpenTrunc(p) => {
                let ino = self.file(p)?;
                let fh = self
                    .u
                    .open(ino, libc::O_WRONLY | libc::O_TRUNC)
                    .map_err(|e| e.code())?;
                self.u.release(fh);
                Ok(vec![])
            }
            Op::Chmod(p, mode) => {
                let (ino, st) = self.resolve(p)?;
                if fmt(&st) == libc::S_IFLNK {
                    return Err(libc::ELOOP);
                }
                let a = SetAttr {
                    mode: Some(*mode),
                    ..Default::default()
                };
                u(self.u.setattr(ino, &a))
            }
            Op::SetXattr(p, v) => {
                let ino = self.user_xattr_target(p)?;
                self.u
                    .setxattr(ino, OsStr::new("user.x"), v, 0)
                    .map(|()| vec![])
                    .map_err(|e| e.code())
            }
            Op::RemoveXattr(p) => {
                let ino = self.user_xattr_target(p)?;
                self.u
                    .removexattr(ino, OsStr::new("user.x"))
                    .map(|()| vec![])
                    .map_err(|e| e.code())
            }
            Op::Link(src, dst) => {
                let (sino, sst) = self.resolve(src)?;
                let (pino, name) = self.parent(dst)?;
                if self.lookup(pino, name).is_ok() {
                    return Err(libc::EEXIST);
                }
                if fmt(&sst) == libc::S_IFDIR {
                    return Err(libc::EPERM);
                }
                let st = self
                    .u
                    .link(sino, pino, OsStr::new(name))
                    .map_err(|e| e.code())?;
                self.refs.push(st.st_ino);
                Ok(vec![])
            }
            Op::Symlink(t, p) => {
                let (pino, name) = self.parent(p)?;
                let st = self
                    .u
                    .symlink(pino, OsStr::new(name), OsStr::new(t), self.who)
                    .map_err(|e| e.code())?;
                self.refs.push(st.st_ino);
                Ok(vec![])
            }
            Op::Mkdir(p, mode) => {
                let (pino, name) = self.parent(p)?;
                let st = self
                    .u
                    .mkdir(pino, OsStr::new(name), *mode, self.who)
                    .map_err(|e| e.code())?;
                self.refs.push(st.st_ino);
                Ok(vec![])
            }
            Op::Unlink(p) => {
                let (pino, name) = self.parent(p)?;
                self.u
                    .unlink(pino, OsStr::new(name))
                    .map(|()| vec![])
                    .map_err(|e| e.code())
            }
            Op::Rmdir(p) => {
                let (pino, name) = self.parent(p)?;
                self.u
                    .rmdir(pino, OsStr::new(name))
                    .map(|()| vec![])
                    .map_err(|e| e.code())
            }
            Op::Rename(src, dst, flags) => {
                let (sp, sn) = self.parent(src)?;
                let (dp, dn) = self.parent(dst)?;
                // The VFS's part: the source exists, the flags' conditions, no directory
                // into itself, nothing to do between two names of one object.
                let sst = self.lookup(sp, sn)?;
                let dst_st = self.lookup(dp, dn).ok();
                let exchange = flags & libc::RENAME_EXCHANGE != 0;
                if flags & libc::RENAME_NOREPLACE != 0 && dst_st.is_some() {
                    return Err(libc::EEXIST);
                }
                if exchange && dst_st.is_none() {
                    return Err(libc::ENOENT);
                }
                if under(src, dst) {
                    return Err(libc::EINVAL);
                }
                if under(dst, src) {
                    return Err(if exchange {
                        libc::EINVAL
                    } else {
                        libc::ENOTEMPTY
                    });
                }
                if dst_st.is_some_and(|d| d.st_ino == sst.st_ino) {
                    return Ok(vec![]);
                }
                self.u
                    .rename(sp, OsStr::new(sn), dp, OsStr::new(dn), *flags)
                    .map(|()| vec![])
                    .map_err(|e| e.code())
            }
            Op::Read(p) => {
                let ino = self.file(p)?;
                self.read_all(ino)
            }
            Op::List(p) => {
                let (ino, _) = self.resolve(p)?;
                let mut v: Vec<String> = self.listing(ino)?.into_iter().map(|(n, _)| n).collect();
                v.sort();
                Ok(v.join("/").into_bytes())
            }
            Op::WriteWhileHeld(held, other, off, data) => {
                let h = self.file(held)?;
                let hfh = self.u.open(h, libc::O_RDWR).map_err(|e| e.code())?;
                let r = self.file(other).and_then(|o| {
                    self.write_at(o, libc::O_RDWR, Some(*off), data)?;
                    self.u
                        .read(hfh, *off, data.len() as u32 + 64)
                        .map_err(|e| e.code())
                });
                self.u.release(hfh);
                r
            }
            other => panic!("not driven in-process: {other:?}"),
        }
    }

    /// The whole view, as the model shows it, and which paths are one object.
    fn view(&mut self) -> (BTreeMap<String, Shown>, BTreeSet<Vec<String>>) {
        let mut out = BTreeMap::new();
        let mut by_ino: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        let mut stack = vec![(ROOT, String::new())];
        while let Some((dir, prefix)) = stack.pop() {
            let listing = self.listing(dir).expect("a listed directory lists");
            for (name, listed_ino) in listing {
                let p = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}/{name}")
                };
                let st = self
                    .lookup(dir, &name)
                    .unwrap_or_else(|e| panic!("{p:?} is listed but its lookup fails: {e}"));
                assert_eq!(
                    st.st_ino, listed_ino,
                    "{p:?}: listed and looked-up inodes differ"
                );
                let kind = match fmt(&st) {
                    libc::S_IFDIR => "dir",
                    libc::S_IFREG => "file",
                    libc::S_IFLNK => "symlink",
                    _ => "other",
                };
                let xattr = match self.u.getxattr(st.st_ino, OsStr::new("user.x")) {
                    Ok(v) => Some(v),
                    Err(e) if e.code() == libc::ENODATA => None,
                    Err(e) => panic!("{p:?}: getxattr: {e}"),
                };
                let dir_kind = kind == "dir";
                out.insert(
                    p.clone(),
                    Shown {
                        kind,
                        mode: st.st_mode & 0o7777,
                        size: (!dir_kind).then_some(st.st_size as u64),
                        nlink: (!dir_kind).then_some(st.st_nlink),
                        content: (kind == "file")
                            .then(|| self.read_all(st.st_ino).expect("a file reads")),
                        target: (kind == "symlink").then(|| {
                            String::from_utf8(self.u.readlink(st.st_ino).unwrap()).unwrap()
                        }),
                        xattr,
                    },
                );
                if dir_kind {
                    stack.push((st.st_ino, p));
                } else {
                    by_ino.entry(st.st_ino).or_default().push(p);
                }
            }
        }
        let groups = by_ino
            .into_values()
            .map(|mut g| {
                g.sort();
                g
            })
            .collect();
        (out, groups)
    }

    fn forget_all(&mut self) {
        for ino in self.refs.drain(..) {
            self.u.forget(ino, 1);
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    Op(Op),
    /// Unmount and mount the same layers again.
    Remount,
    /// The upper becomes the top lower layer, under a fresh upper.
    Rotate,
}

fn name() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "c"]).prop_map(String::from)
}

/// Few names, mostly shallow.
fn raw_path() -> impl Strategy<Value = String> {
    let depth = prop_oneof![5 => Just(1usize), 4 => Just(2usize), 1 => Just(3usize)];
    depth
        .prop_flat_map(|n| prop::collection::vec(name(), n))
        .prop_map(|v| v.join("/"))
}

/// A path chosen against the view when the step runs (`Model::choose`): mostly an
/// existing one; sometimes a new name in an existing directory, or any path, for the errors.
fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => any::<u16>().prop_map(|n| format!("@e{n}")),
        1 => (any::<u16>(), name()).prop_map(|(n, s)| format!("@n{n}/{s}")),
        1 => raw_path(),
    ]
}

/// Mostly a new name in an existing directory (a few names, so they meet again).
fn new_path() -> impl Strategy<Value = String> {
    let fresh = prop::sample::select(vec!["a", "b", "n1", "n2", "n3"]);
    prop_oneof![
        7 => (any::<u16>(), fresh).prop_map(|(n, s)| format!("@n{n}/{s}")),
        2 => any::<u16>().prop_map(|n| format!("@e{n}")),
        1 => raw_path(),
    ]
}

fn data() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..48)
}

fn mode() -> impl Strategy<Value = u32> {
    prop::sample::select(vec![0o644u32, 0o600, 0o755, 0o700])
}

/// Modes that keep the owner's access (the model does not model permissions: run as an
/// ordinary user, a directory without `x` could not be looked into).
fn dir_mode() -> impl Strategy<Value = u32> {
    prop::sample::select(vec![0o755u32, 0o700, 0o750, 0o711])
}

fn layer_entry() -> impl Strategy<Value = LayerEntry> {
    prop_oneof![
        4 => (data(), mode(), prop::option::weighted(0.4, 0u8..3))
            .prop_map(|(data, mode, group)| LayerEntry::File { data, mode, group }),
        3 => prop::bool::weighted(0.25).prop_map(|opaque| LayerEntry::Dir { opaque }),
        1 => prop::sample::select(vec!["a", "../b", "/x"])
            .prop_map(|t| LayerEntry::Symlink(t.into())),
        2 => Just(LayerEntry::Whiteout),
    ]
}

fn layers() -> impl Strategy<Value = Vec<LayerSpec>> {
    let layer = prop::collection::vec((raw_path(), layer_entry()), 0..12).prop_map(normalize);
    prop::collection::vec(layer, 1..=3)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (new_path(), mode(), data()).prop_map(|(p, m, d)| Op::Create(p, m, d)),
        3 => (path(), 0u64..64, data()).prop_map(|(p, o, d)| Op::Write(p, o, d)),
        1 => (path(), data()).prop_map(|(p, d)| Op::Append(p, d)),
        1 => (path(), 0u64..80).prop_map(|(p, l)| Op::Truncate(p, l)),
        1 => path().prop_map(Op::OpenTrunc),
        1 => (path(), dir_mode()).prop_map(|(p, m)| Op::Chmod(p, m)),
        1 => (path(), prop::sample::select(vec!["v1", "v2"]))
            .prop_map(|(p, v)| Op::SetXattr(p, v.as_bytes().to_vec())),
        1 => path().prop_map(Op::RemoveXattr),
        2 => (path(), new_path()).prop_map(|(a, b)| Op::Link(a, b)),
        1 => (prop::sample::select(vec!["a", "../b"]), new_path())
            .prop_map(|(t, p)| Op::Symlink(t.into(), p)),
        3 => (new_path(), dir_mode()).prop_map(|(p, m)| Op::Mkdir(p, m)),
        3 => path().prop_map(Op::Unlink),
        2 => path().prop_map(Op::Rmdir),
        4 => (path(), prop_oneof![path(), new_path()], prop::sample::select(vec![
                0u32, 0, libc::RENAME_NOREPLACE, libc::RENAME_EXCHANGE,
            ]))
            .prop_map(|(a, b, f)| Op::Rename(a, b, f)),
        2 => path().prop_map(Op::Read),
        1 => path().prop_map(Op::List),
        1 => (path(), path(), 0u64..64, data())
            .prop_map(|(h, o, off, d)| Op::WriteWhileHeld(h, o, off, d)),
    ]
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        24 => op().prop_map(Step::Op),
        1 => Just(Step::Remount),
        1 => Just(Step::Rotate),
    ];
    prop::collection::vec(step, 1..40)
}

static CASES: AtomicUsize = AtomicUsize::new(0);
static STEPS: AtomicUsize = AtomicUsize::new(0);
static ERRORS: AtomicUsize = AtomicUsize::new(0);
static ROTATIONS: AtomicUsize = AtomicUsize::new(0);

fn compare(d: &mut Driver, model: &Model, ctx: &str) -> Result<(), TestCaseError> {
    let (view, groups) = d.view();
    d.forget_all();
    let expect = model.view();
    for (p, e) in &expect {
        let got = view.get(p);
        prop_assert_eq!(got, Some(e), "{}: {} differs (left: the union)", ctx, p);
    }
    for p in view.keys() {
        prop_assert!(expect.contains_key(p), "{}: {} only in the union", ctx, p);
    }
    prop_assert_eq!(groups, model.link_groups(), "{}: hard-link groups", ctx);
    Ok(())
}

fn run_case(layers: Vec<LayerSpec>, steps: Vec<Step>) -> Result<(), TestCaseError> {
    CASES.fetch_add(1, Ordering::Relaxed);
    let t = tempfile::tempdir().unwrap();
    let mut lowers: Vec<PathBuf> = Vec::new();
    for (i, spec) in layers.iter().enumerate() {
        let p = t.path().join(format!("l{i}"));
        std::fs::create_dir(&p).unwrap();
        write_layer(&p, spec);
        lowers.push(p);
    }
    let mut model = Model::merge(&layers);
    let mut upper_n = 0;
    let fresh_upper = |n: usize| {
        let p = t.path().join(format!("u{n}"));
        std::fs::create_dir(&p).unwrap();
        p
    };
    let mut upper = fresh_upper(upper_n);
    let cfg = |lowers: &Vec<PathBuf>, upper: &PathBuf| UnionConfig {
        lowers: lowers.clone(),
        upper: Some(upper.clone()),
        ..Default::default()
    };
    let mut d = Driver::new(&cfg(&lowers, &upper));
    compare(&mut d, &model, "at mount")?;
    for (i, step) in steps.iter().enumerate() {
        let ctx = match step {
            Step::Op(op) => format!("step {i} ({:?})", op.map_paths(|p| model.choose(p))),
            _ => format!("step {i} ({step:?})"),
        };
        match step {
            Step::Op(op) => {
                let op = &op.map_paths(|p| model.choose(p));
                let want = model.apply(op);
                let got = d.apply(op);
                prop_assert_eq!(&got, &want, "{}: result (left: the union)", ctx);
                STEPS.fetch_add(1, Ordering::Relaxed);
                ERRORS.fetch_add(want.is_err() as usize, Ordering::Relaxed);
                if std::env::var_os("UNIONFUSE_CORE_TRACE").is_some() {
                    let k = format!("{op:?}");
                    eprintln!(
                        "TRACE {} {:?}",
                        &k[..k.find('(').unwrap()],
                        want.as_ref().err()
                    );
                }
            }
            Step::Remount => {
                drop(d);
                d = Driver::new(&cfg(&lowers, &upper));
            }
            Step::Rotate => {
                drop(d);
                lowers.insert(0, upper);
                upper_n += 1;
                upper = fresh_upper(upper_n);
                model.rotate();
                d = Driver::new(&cfg(&lowers, &upper));
                ROTATIONS.fetch_add(1, Ordering::Relaxed);
            }
        }
        compare(&mut d, &model, &ctx)?;
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("UNIONFUSE_CORE_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400)
}

#[test]
fn random_operations_on_random_layers_match_the_model() {
    // What the caller asks for is what is made (the kernel applies the umask before a
    // filesystem is asked).
    unionfuse::sys::set_umask_zero();
    let config = ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(layers in layers(), steps in steps())| {
        run_case(layers, steps)?;
    });
    eprintln!(
        "core: {} cases, {} operations ({} of them errors, each matched by errno), {} \
         rotations, the whole view compared with the model after every step",
        CASES.load(Ordering::Relaxed),
        STEPS.load(Ordering::Relaxed),
        ERRORS.load(Ordering::Relaxed),
        ROTATIONS.load(Ordering::Relaxed)
    );
}
