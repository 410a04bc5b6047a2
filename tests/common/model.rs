//! A reference model of a union, in memory: layers as data (entries, whiteouts, opaque
//! directories, hard-link groups), the view they merge into as kernel overlayfs merges them,
//! and the operations of `ops.rs` applied to that view as POSIX says, with the link counts
//! kernel overlayfs shows with `index=on` (a lower hard link keeps counting the names a higher
//! layer hides until its group is copied up; then the upper copy counts them, until the upper
//! becomes a lower layer itself).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::ops::Op;

/// One entry of a layer, as written to disk.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerEntry {
    /// A regular file; files of one layer with the same `group` are one inode (hard links;
    /// the first one's data and mode).
    File {
        data: Vec<u8>,
        mode: u32,
        group: Option<u8>,
    },
    Dir {
        opaque: bool,
    },
    Symlink(String),
    /// An OCI whiteout (`.wh.NAME`) for the name.
    Whiteout,
}

/// A layer: paths (`a/b`) to entries. Parents are directories, made when not listed.
pub type LayerSpec = BTreeMap<String, LayerEntry>;

fn parent_of(p: &str) -> &str {
    p.rfind('/').map_or("", |i| &p[..i])
}

fn name_of(p: &str) -> &str {
    p.rfind('/').map_or(p, |i| &p[i + 1..])
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Makes a spec consistent: entries under a non-directory are dropped, missing parents
/// become plain directories.
pub fn normalize(raw: Vec<(String, LayerEntry)>) -> LayerSpec {
    let mut spec = LayerSpec::new();
    let mut sorted = raw;
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    'next: for (p, e) in sorted {
        if spec.contains_key(&p) {
            continue;
        }
        let mut anc = parent_of(&p).to_string();
        let mut missing = Vec::new();
        while !anc.is_empty() {
            match spec.get(&anc) {
                Some(LayerEntry::Dir { .. }) => break,
                Some(_) => continue 'next,
                None => missing.push(anc.clone()),
            }
            anc = parent_of(&anc).to_string();
        }
        for m in missing {
            spec.insert(m, LayerEntry::Dir { opaque: false });
        }
        spec.insert(p, e);
    }
    spec
}

/// Writes a layer to disk, whiteouts and opaque markers in the OCI format.
pub fn write_layer(root: &Path, spec: &LayerSpec) {
    let mut first_of_group: BTreeMap<u8, String> = BTreeMap::new();
    for (p, e) in spec {
        let at = root.join(p);
        match e {
            LayerEntry::Dir { opaque } => {
                std::fs::create_dir(&at).unwrap();
                std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o755)).unwrap();
                if *opaque {
                    std::fs::write(at.join(".wh..wh..opq"), b"").unwrap();
                }
            }
            LayerEntry::File { data, mode, group } => {
                if let Some(first) = group.and_then(|g| first_of_group.get(&g)) {
                    std::fs::hard_link(root.join(first), &at).unwrap();
                    continue;
                }
                std::fs::write(&at, data).unwrap();
                std::fs::set_permissions(&at, std::fs::Permissions::from_mode(*mode)).unwrap();
                if let Some(g) = group {
                    first_of_group.insert(*g, p.clone());
                }
            }
            LayerEntry::Symlink(t) => std::os::unix::fs::symlink(t, &at).unwrap(),
            LayerEntry::Whiteout => {
                let w = root.join(parent_of(p)).join(format!(".wh.{}", name_of(p)));
                std::fs::write(w, b"").unwrap();
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    File(Vec<u8>),
    Symlink(String),
}

/// A non-directory object of the view.
#[derive(Debug, Clone)]
pub struct Inode {
    pub kind: Kind,
    pub mode: u32,
    pub xattr: Option<Vec<u8>>,
    /// Links counted beyond the names the view shows (names a higher layer hides).
    pub hidden_links: u64,
    /// Copied up (or made) in the upper since the last rotation.
    pub upper: bool,
}

#[derive(Debug, Clone)]
pub enum Entry {
    Dir { mode: u32, xattr: Option<Vec<u8>> },
    Node(u64),
}

/// The view: every path but the root, and the objects the non-directories are.
#[derive(Debug, Clone, Default)]
pub struct Model {
    pub entries: BTreeMap<String, Entry>,
    pub inodes: BTreeMap<u64, Inode>,
    next: u64,
}

/// What one path of a view shows; the same shape is read from the union.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    pub kind: &'static str,
    pub mode: u32,
    pub size: Option<u64>,
    /// Non-directories (a merged directory cannot count its subdirectories).
    pub nlink: Option<u64>,
    pub content: Option<Vec<u8>>,
    pub target: Option<String>,
    pub xattr: Option<Vec<u8>>,
}

type R = Result<Vec<u8>, i32>;

impl Model {
    /// The view of `layers` (top first), merged as kernel overlayfs merges them.
    pub fn merge(layers: &[LayerSpec]) -> Model {
        let mut m = Model::default();
        let mut groups: BTreeMap<(usize, u8), u64> = BTreeMap::new();
        let chain: Vec<usize> = (0..layers.len()).collect();
        m.merge_dir(layers, "", &chain, &mut groups);
        // Every name of a group counts in its layer, also those the view does not show.
        for ((l, g), ino) in groups {
            let total = layers[l]
                .values()
                .filter(|e| matches!(e, LayerEntry::File { group: Some(x), .. } if *x == g))
                .count() as u64;
            let shown = m.names_of(ino).len() as u64;
            m.inodes.get_mut(&ino).unwrap().hidden_links = total - shown;
        }
        m
    }

    fn group_ino(&mut self, groups: &mut BTreeMap<(usize, u8), u64>, l: usize, g: u8) -> u64 {
        if let Some(i) = groups.get(&(l, g)) {
            return *i;
        }
        let i = self.alloc(Inode {
            kind: Kind::File(vec![]),
            mode: u32::MAX,
            xattr: None,
            hidden_links: 0,
            upper: false,
        });
        groups.insert((l, g), i);
        i
    }

    fn alloc(&mut self, i: Inode) -> u64 {
        self.next += 1;
        self.inodes.insert(self.next, i);
        self.next
    }

    fn merge_dir(
        &mut self,
        layers: &[LayerSpec],
        dir: &str,
        chain: &[usize],
        groups: &mut BTreeMap<(usize, u8), u64>,
    ) {
        let mut names = BTreeSet::new();
        for &l in chain {
            for p in layers[l].keys() {
                if parent_of(p) == dir && !p.is_empty() {
                    names.insert(name_of(p).to_string());
                }
            }
        }
        for n in names {
            let p = join(dir, &n);
            let mut sub: Vec<usize> = Vec::new();
            let mut top: Option<(usize, &LayerEntry)> = None;
            for &l in chain {
                let Some(e) = layers[l].get(&p) else { continue };
                match e {
                    LayerEntry::Whiteout => break,
                    LayerEntry::Dir { opaque } => {
                        if top.is_none() {
                            top = Some((l, e));
                        }
                        if !matches!(top, Some((_, LayerEntry::Dir { .. }))) {
                            break;
                        }
                        sub.push(l);
                        if *opaque {
                            break;
                        }
                    }
                    _ => {
                        if top.is_none() {
                            top = Some((l, e));
                        }
                        break;
                    }
                }
            }
            let Some((l, e)) = top else { continue };
            match e {
                LayerEntry::Dir { .. } => {
                    self.entries.insert(
                        p.clone(),
                        Entry::Dir {
                            mode: 0o755,
                            xattr: None,
                        },
                    );
                    self.merge_dir(layers, &p, &sub, groups);
                }
                LayerEntry::File { data, mode, group } => {
                    let ino = match group {
                        Some(g) => {
                            let ino = self.group_ino(groups, l, *g);
                            let i = self.inodes.get_mut(&ino).unwrap();
                            if i.mode == u32::MAX {
                                // The first file of the group in the layer gave it its data.
                                let (d, md) = first_of(&layers[l], *g);
                                i.kind = Kind::File(d);
                                i.mode = md;
                            }
                            ino
                        }
                        None => self.alloc(Inode {
                            kind: Kind::File(data.clone()),
                            mode: *mode,
                            xattr: None,
                            hidden_links: 0,
                            upper: false,
                        }),
                    };
                    self.entries.insert(p, Entry::Node(ino));
                }
                LayerEntry::Symlink(t) => {
                    let ino = self.alloc(Inode {
                        kind: Kind::Symlink(t.clone()),
                        mode: 0o777,
                        xattr: None,
                        hidden_links: 0,
                        upper: false,
                    });
                    self.entries.insert(p, Entry::Node(ino));
                }
                LayerEntry::Whiteout => unreachable!(),
            }
        }
    }

    pub fn names_of(&self, ino: u64) -> Vec<&String> {
        self.entries
            .iter()
            .filter(|(_, e)| matches!(e, Entry::Node(i) if *i == ino))
            .map(|(p, _)| p)
            .collect()
    }

    fn nlink(&self, ino: u64) -> u64 {
        self.names_of(ino).len() as u64 + self.inodes[&ino].hidden_links
    }

    /// The upper becomes the top lower layer under a fresh upper: copies count only the
    /// names they have.
    pub fn rotate(&mut self) {
        for i in self.inodes.values_mut() {
            if i.upper {
                i.hidden_links = 0;
                i.upper = false;
            }
        }
    }

    /// What the view shows, path by path.
    pub fn view(&self) -> BTreeMap<String, Shown> {
        self.entries
            .iter()
            .map(|(p, e)| {
                let s = match e {
                    Entry::Dir { mode, xattr } => Shown {
                        kind: "dir",
                        mode: *mode,
                        size: None,
                        nlink: None,
                        content: None,
                        target: None,
                        xattr: xattr.clone(),
                    },
                    Entry::Node(ino) => {
                        let i = &self.inodes[ino];
                        let (kind, size, content, target) = match &i.kind {
                            Kind::File(d) => ("file", d.len() as u64, Some(d.clone()), None),
                            Kind::Symlink(t) => ("symlink", t.len() as u64, None, Some(t.clone())),
                        };
                        Shown {
                            kind,
                            mode: i.mode,
                            size: Some(size),
                            nlink: Some(self.nlink(*ino)),
                            content,
                            target,
                            xattr: i.xattr.clone(),
                        }
                    }
                };
                (p.clone(), s)
            })
            .collect()
    }

    /// Hard-link groups of the view: the sets of paths that are one object.
    pub fn link_groups(&self) -> BTreeSet<Vec<String>> {
        self.inodes
            .keys()
            .map(|i| self.names_of(*i).into_iter().cloned().collect::<Vec<_>>())
            .filter(|g| !g.is_empty())
            .collect()
    }

    /// Resolves a path chosen against the current view: `@eN` is the N-th existing path
    /// (modulo their number), `@nN/NAME` a name in the N-th directory (the root counts);
    /// anything else is the path itself. Generators choose this way so that most
    /// operations meet something, and shrinking keeps the choice meaningful.
    pub fn choose(&self, spec: &str) -> String {
        if let Some(n) = spec.strip_prefix("@e") {
            let n: usize = n.parse().unwrap();
            if self.entries.is_empty() {
                return "a".into();
            }
            return self
                .entries
                .keys()
                .nth(n % self.entries.len())
                .unwrap()
                .clone();
        }
        if let Some(rest) = spec.strip_prefix("@n") {
            let (n, name) = rest.split_once('/').unwrap();
            let n: usize = n.parse().unwrap();
            let dirs: Vec<&str> = std::iter::once("")
                .chain(
                    self.entries
                        .iter()
                        .filter(|(_, e)| matches!(e, Entry::Dir { .. }))
                        .map(|(p, _)| p.as_str()),
                )
                .collect();
            return join(dirs[n % dirs.len()], name);
        }
        spec.to_string()
    }

    /// The entry at `p` ("" is the root), resolving every component as a directory.
    fn get(&self, p: &str) -> Result<Option<&Entry>, i32> {
        if p.is_empty() {
            return Ok(None);
        }
        self.check_parent(p)?;
        self.entries.get(p).map(Some).ok_or(libc::ENOENT)
    }

    /// The parent of `p` exists and is a directory.
    fn check_parent(&self, p: &str) -> Result<(), i32> {
        let mut at = String::new();
        let parent = parent_of(p);
        if parent.is_empty() {
            return Ok(());
        }
        for c in parent.split('/') {
            at = join(&at, c);
            match self.entries.get(&at) {
                None => return Err(libc::ENOENT),
                Some(Entry::Node(_)) => return Err(libc::ENOTDIR),
                Some(Entry::Dir { .. }) => {}
            }
        }
        Ok(())
    }

    fn is_dir(&self, p: &str) -> bool {
        p.is_empty() || matches!(self.entries.get(p), Some(Entry::Dir { .. }))
    }

    fn children(&self, p: &str) -> Vec<String> {
        self.entries
            .keys()
            .filter(|k| parent_of(k) == p)
            .map(|k| name_of(k).to_string())
            .collect()
    }

    /// A regular file's inode at `p`, for content operations: ELOOP for a symlink (the
    /// driver does not follow them), EISDIR for a directory.
    fn file_at(&self, p: &str) -> Result<u64, i32> {
        match self.get(p)? {
            None | Some(Entry::Dir { .. }) => Err(libc::EISDIR),
            Some(Entry::Node(i)) => match self.inodes[i].kind {
                Kind::File(_) => Ok(*i),
                Kind::Symlink(_) => Err(libc::ELOOP),
            },
        }
    }

    fn data_mut(&mut self, ino: u64) -> &mut Vec<u8> {
        let i = self.inodes.get_mut(&ino).unwrap();
        i.upper = true;
        match &mut i.kind {
            Kind::File(d) => d,
            Kind::Symlink(_) => unreachable!(),
        }
    }

    /// A name of a lower hard-link group goes away or moves: the whole group is copied up
    /// first, as index=on does.
    fn copy_up_group(&mut self, p: &str) {
        if let Some(Entry::Node(i)) = self.entries.get(p) {
            let i = *i;
            if self.nlink(i) > 1 {
                self.inodes.get_mut(&i).unwrap().upper = true;
            }
        }
    }

    fn new_node(&mut self, p: &str, kind: Kind, mode: u32) {
        let ino = self.alloc(Inode {
            kind,
            mode,
            xattr: None,
            hidden_links: 0,
            upper: true,
        });
        self.entries.insert(p.to_string(), Entry::Node(ino));
    }

    /// A new name `p`: its parent must be a directory, the name free.
    fn check_new(&self, p: &str) -> Result<(), i32> {
        match self.get(p) {
            Ok(_) => Err(libc::EEXIST),
            Err(libc::ENOENT) => {
                self.check_parent(p)?;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    pub fn apply(&mut self, op: &Op) -> R {
        match op {
            Op::Create(p, mode, data) => {
                self.check_new(p)?;
                self.new_node(p, Kind::File(data.clone()), *mode);
                Ok(vec![])
            }
            Op::Write(p, off, data) => {
                let i = self.file_at(p)?;
                let d = self.data_mut(i);
                if data.is_empty() {
                    // A write of nothing changes nothing, not even the size.
                    return Ok(vec![]);
                }
                let end = *off as usize + data.len();
                if d.len() < end {
                    d.resize(end, 0);
                }
                d[*off as usize..end].copy_from_slice(data);
                Ok(vec![])
            }
            Op::Append(p, data) => {
                let i = self.file_at(p)?;
                self.data_mut(i).extend_from_slice(data);
                Ok(vec![])
            }
            Op::Truncate(p, len) => {
                let i = self.file_at(p)?;
                self.data_mut(i).resize(*len as usize, 0);
                Ok(vec![])
            }
            Op::OpenTrunc(p) => {
                let i = self.file_at(p)?;
                self.data_mut(i).clear();
                Ok(vec![])
            }
            Op::Chmod(p, mode) => {
                match self.get(p)? {
                    None => return Err(libc::EPERM),
                    Some(Entry::Dir { .. }) => {
                        if let Some(Entry::Dir { mode: m, .. }) = self.entries.get_mut(p) {
                            *m = *mode;
                        }
                    }
                    Some(Entry::Node(_)) => {
                        let i = self.file_at(p)?;
                        let ino = self.inodes.get_mut(&i).unwrap();
                        ino.mode = *mode;
                        ino.upper = true;
                    }
                }
                Ok(vec![])
            }
            Op::SetXattr(p, _) | Op::RemoveXattr(p) if !p.is_empty() => {
                let value = match op {
                    Op::SetXattr(_, v) => Some(v.clone()),
                    _ => None,
                };
                match self.get(p)?.cloned() {
                    Some(Entry::Dir { xattr, .. }) => {
                        if value.is_none() && xattr.is_none() {
                            return Err(libc::ENODATA);
                        }
                        if let Some(Entry::Dir { xattr, .. }) = self.entries.get_mut(p) {
                            *xattr = value;
                        }
                    }
                    Some(Entry::Node(i)) => {
                        if let Kind::Symlink(_) = self.inodes[&i].kind {
                            return Err(libc::EPERM);
                        }
                        if value.is_none() && self.inodes[&i].xattr.is_none() {
                            return Err(libc::ENODATA);
                        }
                        let ino = self.inodes.get_mut(&i).unwrap();
                        ino.xattr = value;
                        ino.upper = true;
                    }
                    None => unreachable!(),
                }
                Ok(vec![])
            }
            Op::Link(src, dst) => {
                let s = self.get(src)?;
                self.check_parent(dst)?;
                if self.entries.contains_key(dst) {
                    return Err(libc::EEXIST);
                }
                match s {
                    None | Some(Entry::Dir { .. }) => Err(libc::EPERM),
                    Some(Entry::Node(i)) => {
                        let i = *i;
                        self.inodes.get_mut(&i).unwrap().upper = true;
                        self.entries.insert(dst.clone(), Entry::Node(i));
                        Ok(vec![])
                    }
                }
            }
            Op::Symlink(t, p) => {
                self.check_new(p)?;
                self.new_node(p, Kind::Symlink(t.clone()), 0o777);
                Ok(vec![])
            }
            Op::Mkdir(p, mode) => {
                self.check_new(p)?;
                self.entries.insert(
                    p.clone(),
                    Entry::Dir {
                        mode: *mode,
                        xattr: None,
                    },
                );
                Ok(vec![])
            }
            Op::Unlink(p) => match self.get(p)? {
                None | Some(Entry::Dir { .. }) => Err(libc::EISDIR),
                Some(Entry::Node(_)) => {
                    self.copy_up_group(p);
                    self.entries.remove(p);
                    Ok(vec![])
                }
            },
            Op::Rmdir(p) => match self.get(p)? {
                None => Err(libc::EBUSY),
                Some(Entry::Node(_)) => Err(libc::ENOTDIR),
                Some(Entry::Dir { .. }) => {
                    if !self.children(p).is_empty() {
                        return Err(libc::ENOTEMPTY);
                    }
                    self.entries.remove(p);
                    Ok(vec![])
                }
            },
            Op::Rename(src, dst, flags) => self.rename(src, dst, *flags),
            Op::Read(p) => {
                let i = self.file_at(p)?;
                match &self.inodes[&i].kind {
                    Kind::File(d) => Ok(d.clone()),
                    Kind::Symlink(_) => unreachable!(),
                }
            }
            Op::List(p) => {
                self.get(p)?;
                if !self.is_dir(p) {
                    return Err(libc::ENOTDIR);
                }
                let mut v = self.children(p);
                v.sort();
                Ok(v.join("/").into_bytes())
            }
            Op::WriteWhileHeld(held, other, off, data) => {
                let h = self.file_at(held)?;
                // Opened for writing: copied up.
                self.inodes.get_mut(&h).unwrap().upper = true;
                self.apply(&Op::Write(other.clone(), *off, data.clone()))?;
                let i = self.file_at(held)?;
                let Kind::File(d) = &self.inodes[&i].kind else {
                    unreachable!()
                };
                let from = (*off as usize).min(d.len());
                let to = (from + data.len() + 64).min(d.len());
                Ok(d[from..to].to_vec())
            }
            other => panic!("the model does not model {other:?}"),
        }
    }

    fn rename(&mut self, src: &str, dst: &str, flags: u32) -> R {
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        self.check_parent(src)?;
        self.check_parent(dst)?;
        if src.is_empty() || dst.is_empty() {
            return Err(libc::EBUSY);
        }
        let s = self.entries.get(src).cloned().ok_or(libc::ENOENT)?;
        let d = self.entries.get(dst).cloned();
        if noreplace && d.is_some() {
            return Err(libc::EEXIST);
        }
        if exchange && d.is_none() {
            return Err(libc::ENOENT);
        }
        let under = |a: &str, b: &str| b.starts_with(&format!("{a}/"));
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
        if src == dst {
            return Ok(vec![]);
        }
        if let (Entry::Node(a), Some(Entry::Node(b))) = (&s, &d)
            && a == b
        {
            return Ok(vec![]);
        }
        let s_dir = matches!(s, Entry::Dir { .. });
        if !exchange && let Some(d) = &d {
            let d_dir = matches!(d, Entry::Dir { .. });
            if s_dir && !d_dir {
                return Err(libc::ENOTDIR);
            }
            if !s_dir && d_dir {
                return Err(libc::EISDIR);
            }
            if d_dir && !self.children(dst).is_empty() {
                return Err(libc::ENOTEMPTY);
            }
        }
        // Non-directories that move are copied up, hard-link groups whole.
        for p in [src, dst] {
            if let Some(Entry::Node(i)) = self.entries.get(p) {
                let i = *i;
                self.inodes.get_mut(&i).unwrap().upper = true;
            }
        }
        let moved = |m: &Model, from: &str| -> Vec<(String, Entry)> {
            m.entries
                .iter()
                .filter(|(k, _)| k.as_str() == from || under(from, k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let a = moved(self, src);
        let b = if exchange || d.is_some() {
            moved(self, dst)
        } else {
            vec![]
        };
        for (k, _) in a.iter().chain(b.iter()) {
            self.entries.remove(k);
        }
        for (k, v) in a {
            self.entries.insert(format!("{dst}{}", &k[src.len()..]), v);
        }
        if exchange {
            for (k, v) in b {
                self.entries.insert(format!("{src}{}", &k[dst.len()..]), v);
            }
        }
        Ok(vec![])
    }
}

/// The first file of group `g` in a layer: its data and mode.
fn first_of(spec: &LayerSpec, g: u8) -> (Vec<u8>, u32) {
    spec.values()
        .find_map(|e| match e {
            LayerEntry::File {
                data,
                mode,
                group: Some(x),
            } if *x == g => Some((data.clone(), *mode)),
            _ => None,
        })
        .expect("a group has a first file")
}
