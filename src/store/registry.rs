//! `pull` and `push` through an OCI distribution registry, with `oci-client`. Its async
//! runtime lives only inside these two calls (a current-thread tokio runtime, built and
//! dropped here): no process that later forks or unshares ever runs one.
//!
//! A pull downloads into the store's `tmp/` (each blob verified against its digest as it
//! streams), then brings the image in exactly as `load` does: checked again, extracted once,
//! moved into place last. Layers the store already has are not downloaded. A push uploads
//! the blobs the registry lacks, then the same manifest `save` writes, so the image keeps its
//! digests.

use std::path::PathBuf;
use std::str::FromStr;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::ingest::BlobWriter;
use super::load::{Report, bring_in_blobs};
use super::{Digest, Image, LayerRef, Store};
use crate::error::{Result, UserError, bail};

/// Downloads at once.
const PARALLEL: usize = 3;

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `Some(false)`: plain HTTP and any certificate (`--tls-verify=false`). Plain HTTP is
    /// otherwise only for localhost.
    pub tls_verify: Option<bool>,
    /// `os/arch[/variant]` of a multi-platform image (default: this machine's).
    pub platform: Option<String>,
}

fn reference(s: &str) -> Result<Reference> {
    Reference::from_str(s).map_err(|e| UserError(format!("'{s}' is not an image reference: {e}")))
}

/// The name an image pulled by `r` gets in the store, as users type it.
fn local_name(r: &Reference) -> String {
    let mut name = if r.registry() == "docker.io" {
        r.repository()
            .strip_prefix("library/")
            .unwrap_or(r.repository())
            .to_string()
    } else {
        format!("{}/{}", r.registry(), r.repository())
    };
    match (r.tag(), r.digest()) {
        (Some(t), _) => name.push_str(&format!(":{t}")),
        (None, Some(d)) => name.push_str(&format!("@{d}")),
        (None, None) => name.push_str(":latest"),
    }
    name
}

/// `registry/repository` of `r`, as the store's sources record it.
fn repo_of(r: &Reference) -> String {
    format!("{}/{}", r.resolve_registry(), r.repository())
}

/// A repository of `r`'s registry, other than `r`'s, that blob `d` was seen in.
fn mount_source(store: &Store, r: &Reference, d: &Digest) -> Option<Reference> {
    let prefix = format!("{}/", r.resolve_registry());
    store.sources(d).into_iter().rev().find_map(|s| {
        let repo = s.strip_prefix(&prefix)?;
        (repo != r.repository()).then(|| {
            Reference::with_tag(
                r.registry().to_string(),
                repo.to_string(),
                "latest".to_string(),
            )
        })
    })
}

fn is_local(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

fn client(r: &Reference, o: &Options) -> Client {
    let registry = r.resolve_registry().to_string();
    let insecure = o.tls_verify == Some(false);
    let mut cfg = ClientConfig {
        protocol: if insecure || is_local(&registry) {
            ClientProtocol::HttpsExcept(vec![registry])
        } else {
            ClientProtocol::Https
        },
        accept_invalid_certificates: insecure,
        connect_timeout: Some(std::time::Duration::from_secs(15)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..ClientConfig::default()
    };
    if let Some(p) = &o.platform {
        let want: Vec<String> = p.split('/').map(String::from).collect();
        cfg.platform_resolver = Some(Box::new(move |entries| {
            entries
                .iter()
                .find(|e| {
                    e.platform.as_ref().is_some_and(|pl| {
                        pl.os.to_string() == want[0]
                            && want
                                .get(1)
                                .is_none_or(|a| pl.architecture.to_string() == *a)
                            && want
                                .get(2)
                                .is_none_or(|v| pl.variant.as_deref() == Some(v.as_str()))
                    })
                })
                .map(|e| e.digest.clone())
        }));
    }
    Client::new(cfg)
}

/// One line for what the registry said.
/// The HTTP status a registry answered with, whichever form the client library gives it in.
fn status_of(e: &oci_client::errors::OciDistributionError) -> Option<u16> {
    use oci_client::errors::OciDistributionError as E;
    match e {
        E::ServerError { code, .. } => Some(*code),
        E::RequestError(re) => re.status().map(|s| s.as_u16()),
        E::UnauthorizedError { .. } => Some(401),
        _ => None,
    }
}

fn registry_error(r: &Reference, e: oci_client::errors::OciDistributionError) -> UserError {
    use oci_client::errors::OciDistributionError as E;
    let reg = r.resolve_registry();
    let what = match (&e, status_of(&e)) {
        (E::AuthenticationFailure(_), _) | (_, Some(401 | 403)) => {
            format!("unauthorized at {reg} (unionfuse login {reg})")
        }
        (E::ImageManifestNotFoundError(_), _) | (_, Some(404)) => {
            format!("no image '{r}' at {reg}")
        }
        (E::RequestError(re), _) if re.is_connect() || re.is_timeout() => {
            format!("cannot reach {reg}: {re}")
        }
        (E::UnsupportedMediaTypeError(m), _) => format!("unsupported media type '{m}' at {reg}"),
        (E::DigestError(_), _) => {
            format!("{reg} sent content that does not match its digest: refused ({e})")
        }
        (E::RegistryError { envelope, .. }, _)
            if envelope
                .errors
                .iter()
                .any(|x| format!("{:?}", x.code).contains("Unknown")) =>
        {
            format!("no image '{r}' at {reg}")
        }
        _ => format!("{reg}: {e}"),
    };
    UserError(what)
}

/// The URL of a request the registry answered 429 (too many requests) to, if `e` is that.
fn rate_limited(e: &oci_client::errors::OciDistributionError) -> Option<String> {
    use oci_client::errors::{OciDistributionError as E, OciErrorCode};
    match e {
        E::ServerError { url, .. } if status_of(e) == Some(429) => Some(url.clone()),
        E::RequestError(re) if status_of(e) == Some(429) => {
            Some(re.url().map_or_else(String::new, |u| u.to_string()))
        }
        E::RegistryError { envelope, url }
            if envelope
                .errors
                .iter()
                .any(|x| x.code == OciErrorCode::Toomanyrequests) =>
        {
            Some(url.clone())
        }
        _ => None,
    }
}

/// `x`, or one line for what the registry said. A registry that rate-limits is asked once
/// more, for the `Retry-After` it sends (the client library keeps response headers to
/// itself), so the user knows when to come back.
async fn check<T>(
    r: &Reference,
    o: &Options,
    x: std::result::Result<T, oci_client::errors::OciDistributionError>,
) -> Result<T> {
    let e = match x {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let Some(url) = rate_limited(&e) else {
        return Err(registry_error(r, e));
    };
    let reg = r.resolve_registry();
    let after = match reqwest::Client::builder()
        .danger_accept_invalid_certs(o.tls_verify == Some(false))
        .timeout(std::time::Duration::from_secs(15))
        .build()
    {
        Ok(c) if !url.is_empty() => c.head(&url).send().await.ok().and_then(|a| {
            let v = a.headers().get(http::header::RETRY_AFTER)?.to_str().ok()?;
            Some(match v.trim().parse::<u64>() {
                Ok(secs) => format!("retry after {secs} s"),
                Err(_) => format!("retry after {}", v.trim()),
            })
        }),
        _ => None,
    };
    let after = after.unwrap_or_else(|| "try again later".to_string());
    Err(UserError(format!("{reg} is rate limiting: {after}")))
}

/// The credentials kept for `r`'s registry (by `login`, podman's or docker's), if any.
fn auth_for(r: &Reference) -> RegistryAuth {
    super::auth::lookup(r.registry())
        .or_else(|| super::auth::lookup(r.resolve_registry()))
        .map_or(RegistryAuth::Anonymous, |(u, p)| RegistryAuth::Basic(u, p))
}

/// `login REGISTRY`: checks `user`/`password` with the registry (a manifest request it
/// answers 401 to strangers), then keeps them where podman keeps them. Returns the file.
pub fn login(registry: &str, user: &str, password: &str, o: &Options) -> Result<PathBuf> {
    let r = reference(&format!("{registry}/library/unionfuse-login-probe:latest"))?;
    let c = client(&r, o);
    let auth = RegistryAuth::Basic(user.to_string(), password.to_string());
    let rt = runtime()?;
    let answer = rt.block_on(async {
        c.auth(&r, &auth, oci_client::RegistryOperation::Pull)
            .await?;
        c.pull_manifest_raw(&r, &auth, &["application/vnd.oci.image.manifest.v1+json"])
            .await
    });
    use oci_client::errors::OciDistributionError as E;
    match answer {
        Ok(_) => {}
        Err(E::AuthenticationFailure(_) | E::UnauthorizedError { .. }) => {
            bail!("{registry}: wrong user name or password for '{user}'")
        }
        Err(E::ServerError { code: 401, .. }) => {
            bail!("{registry}: wrong user name or password for '{user}'")
        }
        Err(E::RequestError(e)) if e.is_connect() || e.is_timeout() => {
            bail!("cannot reach {registry}: {e}")
        }
        // Anything else came from a registry that accepted the credentials (the probe's
        // repository does not exist).
        Err(_) => {}
    }
    super::auth::store(registry, user, password)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| UserError(format!("cannot start the network runtime: {e}")))
}

/// `pull REF`: the image into the store, under the name it was asked by.
pub fn pull(store: &Store, reference_s: &str, o: &Options, rep: &Report) -> Result<Image> {
    let r = reference(reference_s)?;
    let c = client(&r, o);
    let auth = auth_for(&r);
    let t = store.temp()?;
    let rt = runtime()?;
    let (config, layers) = rt.block_on(async {
        let (manifest, _digest, config) =
            check(&r, o, c.pull_manifest_and_config(&r, &auth).await).await?;
        let config_digest = Digest::parse(&manifest.config.digest)?;
        if Digest::of(config.as_bytes()) != config_digest {
            bail!(
                "{}: the image config does not match its digest {config_digest}: refused",
                r.resolve_registry()
            );
        }
        let config_path = t.path.join(config_digest.hex());
        std::fs::write(&config_path, config.as_bytes())
            .map_err(crate::error::about(config_path.display()))?;
        for l in &manifest.layers {
            if !(l.media_type.contains("layer") && l.media_type.contains("tar")) {
                bail!("unsupported layer media type '{}' in '{r}'", l.media_type);
            }
        }
        // Each layer: the store's blob, or a download (a few at once).
        let jobs = manifest.layers.iter().map(|l| {
            let (c, r, t) = (&c, &r, &t);
            async move {
                let d = Digest::parse(&l.digest)?;
                let have = store.blob_path(&d);
                if have.is_file() {
                    rep.line(&format!("blob {}: already exists", d.short()));
                    return Ok::<_, UserError>((have, d));
                }
                let bar = rep.bar(&format!("blob {}", d.short()), l.size.max(0) as u64);
                let path = t.path.join(d.hex());
                download(store, c, r, o, l, &d, &path, bar, rep).await?;
                Ok((path, d))
            }
        });
        let mut got: Vec<(usize, (PathBuf, Digest))> = futures_util::stream::iter(jobs.enumerate())
            .map(|(i, j)| async move { j.await.map(|x| (i, x)) })
            .buffer_unordered(PARALLEL)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_>>()?;
        got.sort_by_key(|(i, _)| *i);
        Ok::<_, UserError>((
            (config_path, config_digest),
            got.into_iter().map(|(_, x)| x).collect::<Vec<_>>(),
        ))
    })?;
    drop(rt);
    let blobs: Vec<Digest> = std::iter::once(config.1.clone())
        .chain(layers.iter().map(|(_, d)| d.clone()))
        .collect();
    // Checked again while extracted; moved into the store only when all of it is right.
    let img = bring_in_blobs(store, vec![local_name(&r)], config, layers, rep)?;
    let repo = repo_of(&r);
    for d in &blobs {
        store.add_source(d, &repo);
    }
    for l in &img.layers {
        store.add_registry_blob(&l.diff_id, r.resolve_registry(), l);
    }
    Ok(img)
}

/// `push IMAGE REF`: the blobs the registry lacks, then the manifest. Returns its digest.
pub fn push(
    store: &Store,
    image: &str,
    reference_s: &str,
    o: &Options,
    rep: &Report,
) -> Result<Digest> {
    let img = store.find_image(image)?;
    let r = reference(reference_s)?;
    let c = client(&r, o);
    let auth = auth_for(&r);
    let read = |d: &Digest| {
        std::fs::read(store.blob_path(d)).map_err(|e| UserError(format!("blob {d}: {e}")))
    };
    let registry = r.resolve_registry().to_string();
    let rt = runtime()?;
    let (pushed, digest) = rt.block_on(async {
        c.store_auth_if_needed(r.resolve_registry(), &auth).await;
        // Is `d` in the target repository now, or mounted there from another one?
        let there = |d: Digest| {
            let (c, r) = (&c, &r);
            async move {
                if check(r, o, c.blob_exists(r, &d.0).await).await? {
                    rep.line(&format!("blob {}: already exists", d.short()));
                    return Ok::<_, UserError>(true);
                }
                // Another repository of this registry has it: mounted, not uploaded, where
                // the registry allows (it answers 202 instead of 201 when it does not).
                if let Some(from) = mount_source(store, r, &d)
                    && c.mount_blob(r, &from, &d.0).await.is_ok()
                {
                    rep.line(&format!(
                        "blob {}: mounted from {}",
                        d.short(),
                        from.repository()
                    ));
                    return Ok(true);
                }
                Ok(false)
            }
        };
        let mut pushed = Vec::new();
        for l in &img.layers {
            let size = std::fs::metadata(store.blob_path(&l.blob)).map_or(l.size, |m| m.len());
            let own = LayerRef { size, ..l.clone() };
            // The registry may hold this layer as another blob (compressed otherwise, as
            // pulled): that one is used rather than uploading the same layer again.
            let mut chosen = None;
            for (blob, media_type, size) in store
                .registry_blobs(&l.diff_id, &registry)
                .into_iter()
                .rev()
            {
                if blob != l.blob && there(blob.clone()).await? {
                    rep.line(&format!(
                        "layer {}: the registry's blob {} of it is used",
                        l.diff_id.short(),
                        blob.short()
                    ));
                    chosen = Some(LayerRef {
                        diff_id: l.diff_id.clone(),
                        blob,
                        media_type,
                        size,
                    });
                    break;
                }
            }
            let chosen = match chosen {
                Some(c) => c,
                None => {
                    if !there(own.blob.clone()).await? {
                        let data = read(&own.blob)?;
                        let n = data.len();
                        check(&r, o, c.push_blob(&r, data, &own.blob.0).await).await?;
                        rep.line(&format!("blob {}: pushed ({n} bytes)", own.blob.short()));
                    }
                    own
                }
            };
            pushed.push(chosen);
        }
        if !there(img.id.clone()).await? {
            let data = read(&img.id)?;
            let n = data.len();
            check(&r, o, c.push_blob(&r, data, &img.id.0).await).await?;
            rep.line(&format!("blob {}: pushed ({n} bytes)", img.id.short()));
        }
        let layers: Vec<serde_json::Value> = pushed
            .iter()
            .map(|l| {
                serde_json::json!({
                    "mediaType": l.media_type,
                    "digest": l.blob.0,
                    "size": l.size,
                })
            })
            .collect();
        let config_size = std::fs::metadata(store.blob_path(&img.id)).map_or(0, |m| m.len());
        let manifest = super::save::oci_manifest(&img, config_size, &layers)?;
        let digest = Digest::of(&manifest);
        let ct = http::HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json");
        check(&r, o, c.push_manifest_raw(&r, manifest, ct).await).await?;
        Ok::<_, UserError>((pushed, digest))
    })?;
    let repo = repo_of(&r);
    for d in pushed.iter().map(|l| &l.blob).chain([&img.id]) {
        store.add_source(d, &repo);
    }
    for l in &pushed {
        store.add_registry_blob(&l.diff_id, &registry, l);
    }
    Ok(digest)
}

/// Downloads blob `d` (layer `l`) to `dest`, verified against its digest. It is written in
/// the store's `partial/` first, where a download that was cut or killed stays and is resumed
/// (a range request, the part already there hashed again) by the next pull; a download
/// that turns out wrong is removed, so the next one starts over. When another pull is
/// downloading the same blob, this one downloads its own copy into `dest` directly.
#[allow(clippy::too_many_arguments)]
async fn download(
    store: &Store,
    c: &Client,
    r: &Reference,
    o: &Options,
    l: &oci_client::manifest::OciDescriptor,
    d: &Digest,
    dest: &std::path::Path,
    bar: Option<indicatif::ProgressBar>,
    rep: &Report,
) -> Result<()> {
    use std::io::Write;
    let size = l.size.max(0) as u64;
    let known = (size > 0).then_some(size);
    // The store's partial/ (resumable), or, while another pull writes that, a copy of its own.
    let mut w = match BlobWriter::resume(store, d, known)? {
        Some(w) => w,
        None => BlobWriter::create(dest.to_path_buf(), Some(d.clone()), known)?,
    };
    let at = store.partial_path(d);
    if !w.is_complete() {
        let have = w.written();
        let stream = if have > 0 {
            match check(r, o, c.pull_blob_stream_partial(r, l, have, None).await).await? {
                oci_client::client::BlobResponse::Partial(s) => {
                    rep.line(&format!("blob {}: resuming at {have} bytes", d.short()));
                    s
                }
                oci_client::client::BlobResponse::Full(s) => {
                    // The registry sends it all again.
                    w.start_over()?;
                    s
                }
            }
        } else {
            check(r, o, c.pull_blob_stream(r, l).await).await?
        };
        if let Some(b) = &bar {
            b.set_position(w.written());
        }
        let mut stream = stream.stream;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(ch) => ch,
                // All of it came and the library's own check refused it: not kept.
                Err(e) if w.written() >= size => {
                    w.discard();
                    bail!(
                        "{} sent content that does not match its digest for blob {d}: refused ({e})",
                        r.resolve_registry()
                    );
                }
                Err(e) => {
                    w.keep();
                    bail!("{}: blob {}: {e}", r.resolve_registry(), d.short());
                }
            };
            w.write_all(&chunk)
                .map_err(crate::error::about(format!("blob {d}")))?;
            if let Some(b) = &bar {
                b.inc(chunk.len() as u64);
            }
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let what = format!("{}'s blob {d}", r.resolve_registry());
    let (_, have, path) = w.finish(&what).map_err(|e| {
        UserError(format!(
            "{} sent content that does not match its digest for blob {d}: refused ({})",
            r.resolve_registry(),
            e.0
        ))
    })?;
    if path != dest {
        std::fs::rename(&path, dest).map_err(crate::error::about(at.display()))?;
    }
    rep.line(&format!("blob {}: downloaded ({have} bytes)", d.short()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_users_type_them() {
        let n = |s: &str| local_name(&reference(s).unwrap());
        assert_eq!(n("alpine"), "alpine:latest");
        assert_eq!(n("library/alpine:3.20"), "alpine:3.20");
        assert_eq!(n("localhost:5000/app:1"), "localhost:5000/app:1");
        assert_eq!(n("quay.io/team/app:2"), "quay.io/team/app:2");
        assert!(is_local("127.0.0.1:5000") && is_local("localhost") && !is_local("quay.io"));
    }
}
