//! Registry credentials in the files podman and docker use: `{"auths": {"REGISTRY": {"auth":
//! base64("user:password")}}}`. Read from `$REGISTRY_AUTH_FILE`, then
//! `$XDG_RUNTIME_DIR/containers/auth.json` (`/run/containers/UID/auth.json` without it),
//! `~/.config/containers/auth.json` and `~/.docker/config.json`; written to the first of them.

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::error::{Result, UserError};

/// The files searched, in order; the first is the one `login` writes.
pub fn files() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(f) = std::env::var_os("REGISTRY_AUTH_FILE") {
        v.push(PathBuf::from(f));
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => v.push(PathBuf::from(d).join("containers/auth.json")),
        None => v.push(PathBuf::from(format!(
            "/run/containers/{}/auth.json",
            crate::sys::geteuid()
        ))),
    }
    if let Some(h) = std::env::var_os("HOME") {
        let h = PathBuf::from(h);
        v.push(h.join(".config/containers/auth.json"));
        v.push(h.join(".docker/config.json"));
    }
    v
}

fn read(p: &PathBuf) -> serde_json::Value {
    std::fs::read(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| serde_json::json!({}))
}

/// The user and password kept for `registry`, if any file has them.
pub fn lookup(registry: &str) -> Option<(String, String)> {
    let keys = [
        registry.to_string(),
        format!("https://{registry}"),
        // Docker Hub's historical key.
        if registry == "docker.io" || registry == "index.docker.io" {
            "https://index.docker.io/v1/".to_string()
        } else {
            registry.to_string()
        },
    ];
    for f in files() {
        let v = read(&f);
        for k in &keys {
            if let Some(a) = v["auths"][k]["auth"].as_str()
                && let Ok(raw) = STANDARD.decode(a)
                && let Ok(s) = String::from_utf8(raw)
                && let Some((u, p)) = s.split_once(':')
            {
                return Some((u.to_string(), p.to_string()));
            }
        }
    }
    None
}

fn write(p: &PathBuf, v: &serde_json::Value) -> Result<()> {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).map_err(|e| UserError(format!("{}: {e}", d.display())))?;
    }
    let tmp = p.with_extension("tmp");
    let data = serde_json::to_vec_pretty(v).map_err(|e| UserError(e.to_string()))?;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &data))
        .and_then(|()| std::fs::rename(&tmp, p))
        .map_err(|e| UserError(format!("{}: {e}", p.display())))
}

/// Keeps `user`/`password` for `registry`; returns the file written.
pub fn store(registry: &str, user: &str, password: &str) -> Result<PathBuf> {
    let p = files().remove(0);
    let mut v = read(&p);
    v["auths"][registry] =
        serde_json::json!({ "auth": STANDARD.encode(format!("{user}:{password}")) });
    write(&p, &v)?;
    Ok(p)
}

/// Forgets `registry`'s credentials in every file; whether there were any.
pub fn forget(registry: &str) -> Result<bool> {
    let mut any = false;
    for p in files() {
        let mut v = read(&p);
        let removed = v["auths"]
            .as_object_mut()
            .and_then(|m| m.remove(registry))
            .is_some();
        if removed {
            write(&p, &v)?;
            any = true;
        }
    }
    Ok(any)
}
