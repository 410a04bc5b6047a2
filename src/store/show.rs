//! What `images`, `images --tree`, `history` and `ps` print.

use std::collections::BTreeMap;

use super::{Container, Digest, Image, State, Store, ago, human, layer_users};
use crate::error::Result;

/// `unionfuse images`: one line an image and name, with how much it shares with others.
pub fn images(store: &Store) -> Result<String> {
    let images = store.images()?;
    let users = layer_users(&images);
    let mut out = format!(
        "{:<40} {:<14} {:<16} {:>10} {:>10}\n",
        "IMAGE", "ID", "CREATED", "SIZE", "SHARED"
    );
    for i in &images {
        let size: u64 = i.layers.iter().map(|l| l.size).sum();
        let shared: u64 = i
            .layers
            .iter()
            .filter(|l| users[&l.diff_id] > 1)
            .map(|l| l.size)
            .sum();
        let names = if i.names.is_empty() {
            vec!["<none>".to_string()]
        } else {
            i.names.clone()
        };
        for n in names {
            out.push_str(&format!(
                "{:<40} {:<14} {:<16} {:>10} {:>10}\n",
                n,
                i.id.short(),
                ago(i.created),
                human(size),
                human(shared)
            ));
        }
    }
    Ok(out)
}

/// `unionfuse images --tree`: the layers as a tree from the bottom up; images that share a
/// base branch off the same node, each node with its size and the images ending there.
pub fn tree(store: &Store) -> Result<String> {
    let images = store.images()?;
    let users = layer_users(&images);
    // A node: a chain of layers from the bottom, keyed by the chain (the ChainID idea).
    #[derive(Default)]
    struct Node {
        children: BTreeMap<Digest, Node>,
        size: u64,
        ends: Vec<String>,
    }
    let mut root = Node::default();
    for i in &images {
        let mut n = &mut root;
        for l in &i.layers {
            n = n.children.entry(l.diff_id.clone()).or_default();
            n.size = l.size;
        }
        let name = i.names.first().cloned().unwrap_or_else(|| "<none>".into());
        n.ends.push(format!("{name} ({})", i.id.short()));
    }
    fn walk(
        n: &BTreeMap<Digest, Node>,
        prefix: &str,
        users: &BTreeMap<Digest, usize>,
        out: &mut String,
    ) {
        let count = n.len();
        for (k, (d, child)) in n.iter().enumerate() {
            let last = k + 1 == count;
            let (branch, next) = if last {
                ("└─ ", "   ")
            } else {
                ("├─ ", "│  ")
            };
            let mut line = format!(
                "{prefix}{branch}{} {:>9}  used by {} image{}",
                d.short(),
                human(child.size),
                users[d],
                if users[d] == 1 { "" } else { "s" }
            );
            if !child.ends.is_empty() {
                line.push_str(&format!("  ← {}", child.ends.join(", ")));
            }
            out.push_str(&line);
            out.push('\n');
            walk(&child.children, &format!("{prefix}{next}"), users, out);
        }
    }
    let mut out = String::new();
    walk(&root.children, "", &users, &mut out);
    if out.is_empty() {
        out.push_str("(no images)\n");
    }
    Ok(out)
}

/// `unionfuse history IMAGE`: the config's history, newest first.
pub fn history(store: &Store, img: &Image) -> Result<String> {
    let cfg = store.image_config(img)?;
    let mut out = format!("{:<22} {:<8} {}\n", "CREATED", "LAYER", "CREATED BY");
    let mut layer = img.layers.len();
    let hist = cfg.history().clone().unwrap_or_default();
    for h in hist.iter().rev() {
        let empty = h.empty_layer().unwrap_or(false);
        let which = if empty {
            "-".to_string()
        } else {
            layer = layer.saturating_sub(1);
            img.layers
                .get(layer)
                .map_or("?".into(), |l| l.diff_id.short()[..8].to_string())
        };
        out.push_str(&format!(
            "{:<22} {:<8} {}\n",
            h.created().as_deref().unwrap_or(""),
            which,
            h.created_by().as_deref().unwrap_or("")
        ));
    }
    Ok(out)
}

/// `unionfuse ps [-a]`.
pub fn ps(store: &Store, all: bool) -> Result<String> {
    let mut out = format!(
        "{:<14} {:<16} {:<30} {:<24} {:<16} {}\n",
        "ID", "NAME", "IMAGE", "COMMAND", "CREATED", "STATUS"
    );
    for c in store.containers()? {
        let running = store.is_running(&c);
        if !all && !running {
            continue;
        }
        out.push_str(&format!(
            "{:<14} {:<16} {:<30} {:<24} {:<16} {}\n",
            &c.id[..12],
            c.name,
            c.image_name,
            shorten(&c.command.join(" "), 24),
            ago(c.created),
            status(&c, running)
        ));
    }
    Ok(out)
}

pub fn status(c: &Container, running: bool) -> String {
    if running {
        return match c.started {
            Some(t) => {
                let up = crate::store::ago(t);
                format!("up {}", up.strip_suffix(" ago").unwrap_or(&up))
            }
            None => "running".into(),
        };
    }
    match c.state {
        State::Created => "created".into(),
        State::Running => "running".into(),
        State::Exited(n) => format!("exited ({n})"),
    }
}

fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let t: String = s.chars().take(n - 1).collect();
        format!("{t}…")
    }
}
