//! Pull and push through a real registry (#17): Debian's `docker-registry` (the
//! `distribution` server) started by the test on 127.0.0.1 with a temporary config and
//! storage: without authentication, with htpasswd Basic authentication, and with Bearer
//! tokens from a token server of the test. unionfuse pushes and podman pulls and runs;
//! skopeo pushes and unionfuse pulls and runs; digests survive the round trip; a base layer
//! is fetched once and mounted across repositories on push; a proxy that corrupts a byte or
//! cuts the connection leaves the store without any of it; unknown images, unreachable and
//! rate-limiting registries are one-line errors.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A registry process of this test; killed (by pid) and reaped when dropped.
struct Registry {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        Registry::start_with(dir, "")
    }

    /// With htpasswd Basic authentication: `user` / `secret`.
    fn start_with_auth(dir: &Path) -> Registry {
        let htpasswd = dir.join("htpasswd");
        let hash = bcrypt::hash("secret", 5).unwrap();
        std::fs::write(&htpasswd, format!("user:{hash}\n")).unwrap();
        Registry::start_with(
            dir,
            &format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                htpasswd.display()
            ),
        )
    }

    fn start_with(dir: &Path, extra: &str) -> Registry {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n{extra}",
                dir.join("registry-data").display()
            ),
        )
        .unwrap();
        let log = dir.join("registry.log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join("registry.err")).unwrap())
            .spawn()
            .expect("docker-registry (scripts/setup installs it)");
        assert!(
            wait_until(Duration::from_secs(20), || TcpStream::connect(&addr)
                .is_ok()),
            "the registry did not start: {}",
            std::fs::read_to_string(dir.join("registry.err")).unwrap_or_default()
        );
        Registry { child, addr, log }
    }

    /// The access log's lines.
    fn log_lines(&self) -> Vec<String> {
        let err = self.log.with_file_name("registry.err");
        [&self.log, &err]
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .flat_map(|t| t.lines().map(String::from).collect::<Vec<_>>())
            .collect()
    }

    /// How many times a blob was fetched (GET) from any repository.
    fn blob_gets(&self, digest: &str) -> usize {
        self.log_lines()
            .iter()
            .filter(|l| {
                l.contains("\"GET /v2/")
                    && l.contains(&format!("/blobs/{digest}"))
                    && l.contains("\" 200 ")
            })
            .count()
    }

    /// How many requests starting with `what` were answered `status`.
    fn requests(&self, what: &str, status: &str) -> usize {
        self.log_lines()
            .iter()
            .filter(|l| l.contains(&format!("\"{what}")) && l.contains(&format!("\" {status} ")))
            .count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a proxy does to the registry's answers.
#[derive(Clone, Copy)]
enum Harm {
    /// Flips the byte at this offset of a connection's answers.
    Flip(usize),
    /// Closes the connection after this many bytes of answers.
    Cut(usize),
    /// Sends nothing more after this many bytes, and keeps the connection open.
    Stall(usize),
}

/// A server of this test on 127.0.0.1: each connection handled by `serve` in a thread of its
/// own; stops accepting when dropped.
struct Server {
    addr: String,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn start(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> Server {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let serve = Arc::new(serve);
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((c, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                c.set_nonblocking(false).unwrap();
                let serve = serve.clone();
                std::thread::spawn(move || serve(c));
            }
        });
        Server { addr, stop }
    }

    /// A TCP proxy in front of `to`, harming what flows back.
    fn proxy(to: &str, harm: Harm) -> Server {
        let to = to.to_string();
        Server::start(move |down| {
            let up = TcpStream::connect(&to).unwrap();
            let (mut d2, mut u2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
            std::thread::spawn(move || {
                let mut b = [0u8; 8192];
                let mut down = down;
                while let Ok(n) = down.read(&mut b) {
                    if n == 0 || u2.write_all(&b[..n]).is_err() {
                        break;
                    }
                }
                let _ = u2.shutdown(std::net::Shutdown::Both);
            });
            let mut up = up;
            let mut b = [0u8; 8192];
            let mut seen = 0usize;
            while let Ok(n) = up.read(&mut b) {
                if n == 0 {
                    break;
                }
                let mut n = n;
                match harm {
                    Harm::Flip(at) if seen <= at && at < seen + n => b[at - seen] ^= 0xff,
                    Harm::Cut(at) | Harm::Stall(at) if seen + n > at => n = at.saturating_sub(seen),
                    _ => {}
                }
                if d2.write_all(&b[..n]).is_err() {
                    break;
                }
                seen += n;
                if matches!(harm, Harm::Cut(at) if seen >= at) {
                    break;
                }
                if matches!(harm, Harm::Stall(at) if seen >= at) {
                    std::thread::sleep(Duration::from_secs(120));
                    break;
                }
            }
            let _ = d2.shutdown(std::net::Shutdown::Both);
        })
    }

    /// A small HTTP/1.1 server: `answer(request head)` gives the status line, extra headers
    /// and body of each answer; one request a connection.
    fn http(answer: impl Fn(&str) -> Answer + Send + Sync + 'static) -> Server {
        Server::start(move |mut c| {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match c.read(&mut b) {
                    Ok(1) => head.push(b[0]),
                    _ => return,
                }
            }
            let (status, headers, body) = answer(&String::from_utf8_lossy(&head));
            let mut out = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (k, v) in headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            let _ = c.write_all(out.as_bytes());
            let _ = c.write_all(&body);
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

type Answer = (String, Vec<(String, String)>, Vec<u8>);

/// A token server as Docker Hub's: checks Basic credentials (`user` / `secret`) and gives
/// JSON Web Tokens signed with a key the registry trusts, for the scopes asked. Returns
/// the server and the registry's `auth:` configuration.
fn token_server(dir: &Path) -> (Server, String) {
    use base64::Engine as _;
    let key = dir.join("token.key");
    let cert = dir.join("token.crt");
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=unionfuse test token issuer", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null()));
    let der = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(&cert)
        .output()
        .unwrap()
        .stdout;
    assert!(!der.is_empty());
    let b64 = base64::engine::general_purpose::STANDARD;
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let x5c = b64.encode(&der);
    let work = dir.to_path_buf();
    let server = Server::http(move |head| {
        let line = head.lines().next().unwrap_or("");
        let creds = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            let v = v.trim().strip_prefix("Basic ")?;
            k.eq_ignore_ascii_case("authorization")
                .then(|| String::from_utf8(b64.decode(v).ok()?).ok())?
        });
        if creds.as_deref() != Some("user:secret") {
            return ("401 Unauthorized".into(), vec![], b"{}".to_vec());
        }
        // The scopes asked: repository:NAME:ACTIONS, each its own `scope=`.
        let query = line.split_whitespace().nth(1).unwrap_or("");
        let access: Vec<serde_json::Value> = query
            .split(['?', '&'])
            .filter_map(|p| p.strip_prefix("scope="))
            .map(|p| p.replace("%3A", ":").replace("%2C", ",").replace("%2F", "/"))
            .filter_map(|sc| {
                let mut it = sc.splitn(3, ':');
                let (t, n, a) = (it.next()?, it.next()?, it.next()?);
                Some(serde_json::json!({"type": t, "name": n, "actions": a.split(',').collect::<Vec<_>>()}))
            })
            .collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5c": [x5c]});
        let claims = serde_json::json!({
            "iss": "unionfuse-test", "sub": "user", "aud": "test-registry",
            "exp": now + 600, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", access.len()),
            "access": access,
        });
        let input = format!(
            "{}.{}",
            url.encode(header.to_string()),
            url.encode(claims.to_string())
        );
        let mut sign = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(work.join("token.key"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        sign.stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let sig = sign.wait_with_output().unwrap().stdout;
        let token = format!("{input}.{}", url.encode(sig));
        let body = serde_json::json!({"token": token, "access_token": token, "expires_in": 600});
        (
            "200 OK".into(),
            vec![("Content-Type".into(), "application/json".into())],
            body.to_string().into_bytes(),
        )
    });
    let config = format!(
        "auth:\n  token:\n    realm: http://{}/token\n    service: test-registry\n    issuer: unionfuse-test\n    rootcertbundle: {}\n",
        server.addr,
        cert.display()
    );
    (server, config)
}

struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> Option<World> {
        if !require_root() {
            return None;
        }
        Some(World { dir: scratch() })
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn uf(&self, store: &str, args: &[&str]) -> Output {
        self.uf_in(store, args, b"")
    }

    /// With `input` on standard input, and the credentials file of this test.
    fn uf_in(&self, store: &str, args: &[&str], input: &[u8]) -> Output {
        let mut c = store_cli::command(&self.path(store), self.dir.path(), args);
        c.env("REGISTRY_AUTH_FILE", self.path("auth.json"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let _ = child.stdin.take().unwrap().write_all(input);
        child.wait_with_output().unwrap()
    }

    /// Both streams (progress lines go to stderr), asserting success.
    fn ok(&self, store: &str, args: &[&str]) -> String {
        let o = self.uf(store, args);
        store_cli::assert_ok(args, &o) + &String::from_utf8_lossy(&o.stderr)
    }

    /// A refusal saying `expect`, in one line.
    fn refused(&self, store: &str, args: &[&str], expect: &str) {
        let err = store_cli::assert_refused(args, &self.uf(store, args), expect);
        // Progress lines may come first; the error is one line.
        assert_eq!(
            err.lines().filter(|l| l.starts_with("unionfuse")).count(),
            1,
            "{args:?}: {err}"
        );
    }

    /// A store with `base` (busybox).
    fn base(&self, store: &str) {
        let rootfs = self.path("rootfs");
        if !rootfs.exists() {
            common::runenv::build_rootfs(&rootfs);
            run(Command::new("tar")
                .arg("-C")
                .arg(&rootfs)
                .arg("-czf")
                .arg(self.path("rootfs.tgz"))
                .arg("."));
        }
        self.ok(
            store,
            &["import", self.path("rootfs.tgz").to_str().unwrap(), "base"],
        );
    }

    /// A store with `base` and `app:1` (base plus a committed /hello).
    fn images(&self, store: &str) {
        self.base(store);
        self.ok(
            store,
            &["run", "--name", "c", "base", "sh", "-c", "echo hi > /hello"],
        );
        self.ok(store, &["commit", "c", "app:1"]);
    }

    /// The store's images, layers and blobs (what a refused pull must leave as it was).
    fn contents(&self, store: &str) -> Vec<String> {
        let mut v = Vec::new();
        for d in ["images", "layers", "blobs/sha256"] {
            if let Ok(rd) = std::fs::read_dir(self.path(store).join(d)) {
                v.extend(
                    rd.flatten()
                        .map(|e| format!("{d}/{}", e.file_name().to_string_lossy())),
                );
            }
        }
        v.sort();
        v
    }

    /// Unfinished downloads kept for the next pull.
    fn partials(&self, store: &str) -> usize {
        std::fs::read_dir(self.path(store).join("partial")).map_or(0, |d| d.count())
    }

    fn podman(&self, args: &[&str]) -> String {
        store_cli::podman(self.dir.path(), args)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg(self.path("pgraph/vfs"))
            .stderr(Stdio::null())
            .status();
    }
}

fn image_id(w: &World, store: &str, name: &str) -> String {
    let out = w.ok(store, &["inspect", name]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    v["Image"]["id"].as_str().unwrap().to_string()
}

/// The manifest digest `push` printed (`REF@sha256:…`).
fn pushed_digest(out: &str) -> String {
    out.split('@')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn push_and_pull_round_trip_with_podman_and_skopeo() {
    let Some(w) = World::new() else { return };
    let reg = Registry::start(w.dir.path());
    let r = &reg.addr;
    w.images("a");
    // unionfuse pushes; the registry's manifest digest is the one push printed.
    let pushed = w.ok("a", &["push", "app:1", &format!("{r}/app:1")]);
    let digest = pushed_digest(&pushed);
    let inspect = Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{r}/app:1"),
        ])
        .output()
        .unwrap();
    let inspect = String::from_utf8_lossy(&inspect.stdout);
    assert!(inspect.contains(&digest), "{digest} not in {inspect}");
    // podman pulls and runs it.
    let out = w.podman(&[
        "run",
        "--rm",
        "--tls-verify=false",
        &format!("{r}/app:1"),
        "cat",
        "/hello",
    ]);
    assert_eq!(out, "hi\n");
    // base's layer is in the registry's `app` already: mounted from there, not uploaded.
    let base_push = w.ok("a", &["push", "base", &format!("{r}/base:1")]);
    assert!(base_push.contains("mounted from app"), "{base_push}");
    assert_eq!(base_push.matches("pushed (").count(), 1, "{base_push}");
    assert_eq!(
        reg.requests("POST /v2/base/blobs/uploads/?mount=", "201"),
        1
    );
    // unionfuse pulls it into another store: the same image id, and it runs.
    let first = w.ok("b", &["pull", &format!("{r}/base:1")]);
    assert!(first.contains("downloaded"), "{first}");
    let second = w.ok("b", &["pull", &format!("{r}/app:1")]);
    assert!(
        second.contains("already exists"),
        "the base layer again: {second}"
    );
    assert_eq!(
        image_id(&w, "a", "app:1"),
        image_id(&w, "b", &format!("{r}/app:1"))
    );
    assert_eq!(
        w.ok(
            "b",
            &["run", "--rm", &format!("{r}/app:1"), "cat", "/hello"]
        )
        .lines()
        .last(),
        Some("hi")
    );
    // The base layer's blob went over the wire once for store b (and once for podman's pull
    // of app, which has it too).
    let base_layer = inspect
        .split("\"Layers\": [")
        .nth(1)
        .and_then(|s| s.split('"').nth(1))
        .unwrap()
        .to_string();
    assert_eq!(reg.blob_gets(&base_layer), 2, "GETs of {base_layer}");
    // Pushed again from b: every blob is there already.
    let again = w.ok("b", &["push", &format!("{r}/app:1")]);
    assert!(!again.contains("pushed ("), "{again}");
    assert!(again.contains(&digest), "the same manifest: {again}");
    // skopeo pushes (unionfuse's save of it), unionfuse pulls and runs it.
    let archive = w.path("app.tar");
    w.ok("a", &["save", "app:1", "-o", archive.to_str().unwrap()]);
    let o = Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci-archive:{}", archive.display()))
        .arg(format!("docker://{r}/by-skopeo:2"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    w.ok("c", &["pull", &format!("{r}/by-skopeo:2")]);
    assert_eq!(
        w.ok(
            "c",
            &["run", "--rm", &format!("{r}/by-skopeo:2"), "cat", "/hello"]
        )
        .lines()
        .last(),
        Some("hi")
    );
    w.ok("c", &["store-check"]);
}

#[test]
fn bad_registries_and_bad_content_leave_the_store_unchanged() {
    let Some(w) = World::new() else { return };
    let reg = Registry::start(w.dir.path());
    let r = reg.addr.clone();
    w.images("a");
    w.ok("a", &["push", "app:1", &format!("{r}/app:1")]);
    std::fs::create_dir_all(w.path("b")).unwrap();
    let empty = w.contents("b");
    w.refused("b", &["pull", &format!("{r}/app:nosuch")], "no image");
    w.refused("b", &["pull", &format!("{r}/nosuch:1")], "no image");
    let closed = format!("127.0.0.1:{}", free_port());
    w.refused("b", &["pull", &format!("{closed}/app:1")], "cannot reach");
    w.refused("b", &["pull", "UPPER/Case:1"], "not an image reference");
    // A byte flipped in the layer's blob: refused for its digest, nothing kept.
    let flip = Server::proxy(&r, Harm::Flip(100_000));
    w.refused("b", &["pull", &format!("{}/app:1", flip.addr)], "digest");
    assert_eq!(w.contents("b"), empty);
    assert_eq!(w.partials("b"), 0, "a wrong download was kept to resume");
    // The connection cut in the middle of the blob: an error, nothing kept; the next pull
    // (straight from the registry) completes and the store checks out.
    let cut = Server::proxy(&r, Harm::Cut(200_000));
    let o = w.uf("b", &["pull", &format!("{}/app:1", cut.addr)]);
    assert!(!o.status.success());
    assert_eq!(w.contents("b"), empty);
    // What came is kept aside, and the next pull asks only for the rest (206).
    assert_eq!(w.partials("b"), 1);
    let resumed = w.ok("b", &["pull", &format!("{r}/app:1")]);
    assert!(resumed.contains("resuming at"), "{resumed}");
    assert!(reg.requests("GET /v2/app/blobs/", "206") >= 1);
    assert_eq!(w.partials("b"), 0);
    w.ok("b", &["store-check"]);
    w.ok("b", &["rmi", &format!("{r}/app:1")]);
    w.ok("b", &["prune"]);
    assert_eq!(w.contents("b"), empty);
    // kill -9 while a blob is half downloaded: nothing kept.
    let stall = Server::proxy(&r, Harm::Stall(200_000));
    let mut pull = Command::new(bin())
        .args(["pull", &format!("{}/app:1", stall.addr)])
        .env("UNIONFUSE_ROOT", w.path("b"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(pull.try_wait().unwrap(), None, "the stalled pull ended");
    pull.kill().unwrap();
    pull.wait().unwrap();
    assert_eq!(w.contents("b"), empty);
    let resumed = w.ok("b", &["pull", &format!("{r}/app:1")]);
    assert!(resumed.contains("resuming at"), "{resumed}");
    w.ok("b", &["store-check"]);
    assert!(w.ok("b", &["images"]).contains("app"));
    drop((flip, cut, stall));
}

#[test]
fn login_keeps_credentials_where_podman_reads_them() {
    let Some(w) = World::new() else { return };
    let reg = Registry::start_with_auth(w.dir.path());
    let r = &reg.addr;
    w.base("a");
    let to = format!("{r}/base:1");
    w.refused("a", &["push", "base", &to], "unauthorized");
    let o = w.uf_in(
        "a",
        &["login", "-u", "user", "--password-stdin", r],
        b"wrong\n",
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("wrong user name or password"));
    assert!(!w.path("auth.json").exists(), "bad credentials were kept");
    let o = w.uf_in(
        "a",
        &["login", "-u", "user", "--password-stdin", r],
        b"secret\n",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The file podman reads: skopeo (same library) uses it for the same registry.
    let auth = std::fs::read_to_string(w.path("auth.json")).unwrap();
    assert!(
        auth.contains(r.as_str()) && auth.contains("auths"),
        "{auth}"
    );
    w.ok("a", &["push", "base", &to]);
    let o = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--authfile"])
        .arg(w.path("auth.json"))
        .arg(format!("docker://{to}"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    w.ok("b", &["pull", &to]);
    w.ok("b", &["logout", r]);
    w.refused("b", &["pull", &to], "unauthorized");
    w.refused("b", &["logout", r], "not logged in");
}

#[test]
fn bearer_tokens_from_a_token_server() {
    let Some(w) = World::new() else { return };
    let (tokens, auth) = token_server(w.dir.path());
    let reg = Registry::start_with(w.dir.path(), &auth);
    let r = &reg.addr;
    w.images("a");
    let to = format!("{r}/app:1");
    // The registry sends a Bearer challenge; without credentials the token server refuses.
    w.refused("a", &["push", "app:1", &to], "unauthorized");
    let o = w.uf_in(
        "a",
        &["login", "-u", "user", "--password-stdin", r],
        b"wrong\n",
    );
    assert!(!o.status.success(), "a wrong password was accepted");
    let o = w.uf_in(
        "a",
        &["login", "-u", "user", "--password-stdin", r],
        b"secret\n",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // With a token for each scope, a push and a pull into another store go through.
    w.ok("a", &["push", "app:1", &to]);
    assert!(reg.requests("PUT /v2/app/manifests/1", "201") == 1);
    w.ok("b", &["pull", &to]);
    assert_eq!(image_id(&w, "a", "app:1"), image_id(&w, "b", &to));
    w.ok("b", &["store-check"]);
    // skopeo, with the same credentials file, agrees.
    let o = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--authfile"])
        .arg(w.path("auth.json"))
        .arg(format!("docker://{to}"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    w.ok("b", &["logout", r]);
    w.refused("b", &["pull", &to], "unauthorized");
    drop(tokens);
}

#[test]
fn a_rate_limiting_registry_says_when_to_come_back() {
    let Some(w) = World::new() else { return };
    let limited = Server::http(|_| {
        (
            "429 Too Many Requests".into(),
            vec![
                ("Retry-After".into(), "42".into()),
                ("Content-Type".into(), "application/json".into()),
            ],
            br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#.to_vec(),
        )
    });
    std::fs::create_dir_all(w.path("b")).unwrap();
    let empty = w.contents("b");
    w.refused(
        "b",
        &["pull", &format!("{}/app:1", limited.addr)],
        "rate limiting: retry after 42 s",
    );
    assert_eq!(w.contents("b"), empty);
}

/// `sha256:HEX` of `b`.
fn sha256(b: &[u8]) -> String {
    use sha2::Digest as _;
    let h = sha2::Sha256::digest(b);
    format!(
        "sha256:{}",
        h.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

/// A registry of the test serving one image `x:1` made of `manifest`, `config` and `layer`.
fn fake_registry(manifest: String, config: Vec<u8>, layer: Vec<u8>) -> Server {
    let sha = sha256;
    let (cd, ld) = (sha(&config), sha(&layer));
    Server::http(move |head| {
        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
        let json = |ct: &str, b: Vec<u8>| {
            (
                "200 OK".to_string(),
                vec![("Content-Type".to_string(), ct.to_string())],
                b,
            )
        };
        if path == "/v2/" {
            json("application/json", b"{}".to_vec())
        } else if path == "/v2/x/manifests/1" {
            json(
                "application/vnd.oci.image.manifest.v1+json",
                manifest.clone().into_bytes(),
            )
        } else if path == format!("/v2/x/blobs/{cd}") {
            json("application/octet-stream", config.clone())
        } else if path == format!("/v2/x/blobs/{ld}") {
            json("application/octet-stream", layer.clone())
        } else {
            ("404 Not Found".into(), vec![], b"{}".to_vec())
        }
    })
}

#[test]
fn images_a_registry_serves_wrong_are_refused() {
    let Some(w) = World::new() else { return };
    let sha = sha256;
    // One layer: a tar of one file.
    let mut t = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_cksum();
    t.append_data(&mut h, "f", &b"hi\n"[..]).unwrap();
    let layer = t.into_inner().unwrap();
    let config = |diff_ids: &[String]| {
        serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "config": {},
        })
        .to_string()
        .into_bytes()
    };
    let manifest = |config: &[u8], config_digest: &str, layer_type: &str| {
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": layer_type, "digest": sha(&layer), "size": layer.len()}],
        })
        .to_string()
    };
    let tar_type = "application/vnd.oci.image.layer.v1.tar";
    std::fs::create_dir_all(w.path("b")).unwrap();
    let empty = w.contents("b");
    // As it should be: pulled, and it runs nothing but it is there.
    let good = config(&[sha(&layer)]);
    let reg = fake_registry(
        manifest(&good, &sha(&good), tar_type),
        good.clone(),
        layer.clone(),
    );
    w.ok("c", &["pull", &format!("{}/x:1", reg.addr)]);
    w.ok("c", &["store-check"]);
    drop(reg);
    // A layer of a media type no tool unpacks.
    let reg = fake_registry(
        manifest(&good, &sha(&good), "application/vnd.example.thing"),
        good.clone(),
        layer.clone(),
    );
    w.refused(
        "b",
        &["pull", &format!("{}/x:1", reg.addr)],
        "unsupported layer media type",
    );
    drop(reg);
    // A config that lists two layers for a manifest's one.
    let two = config(&[sha(&layer), sha(b"other")]);
    let reg = fake_registry(manifest(&two, &sha(&two), tar_type), two, layer.clone());
    w.refused(
        "b",
        &["pull", &format!("{}/x:1", reg.addr)],
        "lists 2 layers, the manifest 1",
    );
    drop(reg);
    // A config whose diff_id is not the layer's content.
    let wrong = config(&[sha(b"other")]);
    let reg = fake_registry(
        manifest(&wrong, &sha(&wrong), tar_type),
        wrong,
        layer.clone(),
    );
    w.refused(
        "b",
        &["pull", &format!("{}/x:1", reg.addr)],
        "should uncompress to DiffID",
    );
    drop(reg);
    assert_eq!(w.contents("b"), empty);
}

/// A reference by digest (`repo@sha256:…`, as the README shows) pulls, runs, inspects and
/// removes like a tag (#28).
#[test]
fn pull_by_digest_names_the_image_by_it() {
    let Some(w) = World::new() else { return };
    let reg = Registry::start(w.dir.path());
    let r = &reg.addr;
    w.images("a");
    let pushed = w.ok("a", &["push", "app:1", &format!("{r}/app:1")]);
    let digest = pushed_digest(&pushed);
    let by_digest = format!("{r}/app@{digest}");
    w.ok("b", &["pull", &by_digest]);
    let images = w.ok("b", &["images"]);
    assert!(images.contains(&by_digest), "{images}");
    assert!(!images.contains("<none>"), "{images}");
    assert_eq!(
        w.ok("b", &["run", "--rm", &by_digest, "cat", "/hello"]),
        "hi\n"
    );
    assert_eq!(image_id(&w, "b", &by_digest), image_id(&w, "a", "app:1"));
    // Pulled again: already there, the same single image.
    w.ok("b", &["pull", &by_digest]);
    assert_eq!(w.ok("b", &["images"]).lines().count(), 2);
    assert!(w.ok("b", &["rmi", &by_digest]).contains("deleted"));
    assert_eq!(w.ok("b", &["images"]).lines().count(), 1);
}

/// A layer the registry holds compressed (pulled from there) and the store has as a plain
/// tar too (loaded from a docker-archive: the same DiffID, other bytes) is pushed as the
/// registry's blob, not uploaded again under another digest (#29).
#[test]
fn a_layer_the_registry_has_is_not_uploaded_again_as_other_bytes() {
    let Some(w) = World::new() else { return };
    let reg = Registry::start(w.dir.path());
    let r = &reg.addr;
    w.images("a");
    w.ok("a", &["push", "base", &format!("{r}/base:1")]);
    w.ok("c", &["pull", &format!("{r}/base:1")]);
    let archive = w.path("app.tar");
    w.ok(
        "a",
        &[
            "save",
            "app:1",
            "--format",
            "docker-archive",
            "-o",
            archive.to_str().unwrap(),
        ],
    );
    w.ok("c", &["load", "-i", archive.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&w.ok("c", &["inspect", "app:1"])).unwrap();
    let plain_base = v["Image"]["layers"][0]["blob"]
        .as_str()
        .unwrap()
        .to_string();
    let pulled: serde_json::Value =
        serde_json::from_str(&w.ok("c", &["inspect", &format!("{r}/base:1")])).unwrap();
    let gz_base = pulled["Image"]["layers"][0]["blob"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(plain_base, gz_base, "the test needs two blobs of one layer");
    let out = w.ok("c", &["push", "app:1", &format!("{r}/app2:1")]);
    assert!(out.contains("the registry's blob"), "{out}");
    let uploads: Vec<String> = reg
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("\"PUT /v2/app2/blobs/uploads/"))
        .collect();
    assert!(
        !uploads.iter().any(|l| l.contains(&plain_base)),
        "the base layer was uploaded again: {uploads:?}"
    );
    // What the registry now has reads back whole, by unionfuse and by skopeo.
    let inspect = Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{r}/app2:1"),
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&inspect.stdout).contains(&gz_base));
    w.ok("d", &["pull", &format!("{r}/app2:1")]);
    assert_eq!(
        w.ok(
            "d",
            &["run", "--rm", &format!("{r}/app2:1"), "cat", "/hello"]
        ),
        "hi\n"
    );
}
