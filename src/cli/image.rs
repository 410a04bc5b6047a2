//! The image commands: `load`, `import`, `save`, `images`, `history`, `tag`, `inspect`,
//! `rmi`, `prune`, `store-check`, and the registry's `pull`, `push`, `login`, `logout`.

use std::path::PathBuf;

use clap::Subcommand;

use super::Outcome;
use crate::containers;
use crate::error::UserError;
use crate::store::{self, Store, load, registry, show};

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Pull an image from a registry (alpine, library/alpine:3.20, localhost:5000/app:1,
    /// registry.example/team/app@sha256:...). Layers already in the store are not fetched.
    Pull {
        reference: String,
        /// os/arch[/variant] of a multi-platform image (default: this machine's).
        #[arg(long)]
        platform: Option<String>,
        /// false: plain HTTP and any certificate (plain HTTP is otherwise for localhost only).
        #[arg(long = "tls-verify", value_name = "BOOL")]
        tls_verify: Option<bool>,
    },
    /// Push an image of the store to a registry (REF: where; default: the image's name).
    Push {
        image: String,
        reference: Option<String>,
        #[arg(long = "tls-verify", value_name = "BOOL")]
        tls_verify: Option<bool>,
    },
    /// Keep credentials for a registry (checked with it first), where podman keeps them.
    Login {
        registry: String,
        #[arg(short, long)]
        username: String,
        /// Read the password from standard input (one line).
        #[arg(long = "password-stdin")]
        password_stdin: bool,
        #[arg(long = "tls-verify", value_name = "BOOL")]
        tls_verify: Option<bool>,
    },
    /// Forget the credentials kept for a registry.
    Logout { registry: String },
    /// Load images: a docker save tarball, an OCI image layout directory or an OCI archive
    /// (from standard input without -i: unionfuse save app:1 | ssh host unionfuse load).
    Load {
        /// The archive or directory (default, or -: standard input).
        #[arg(short, long, value_name = "FILE|DIR", default_value = "-")]
        input: PathBuf,
    },
    /// Make a one-layer image from a root filesystem tarball.
    Import { tarball: PathBuf, name: String },
    /// List the images of the store (--tree: how they share layers).
    Images {
        #[arg(long)]
        tree: bool,
    },
    /// The history of an image.
    History { image: String },
    /// Give an image another name.
    Tag { image: String, name: String },
    /// An image's or a container's record, as JSON.
    Inspect { what: String },
    /// Remove images (a name; the image once it has none). Refused while a container uses it.
    Rmi {
        /// Remove an image given by id with every name it has.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove the layers and blobs no image references.
    Prune,
    /// Write an image to an archive that podman, skopeo and unionfuse load.
    Save {
        image: String,
        /// Where: a file (written whole, then renamed into place), or what a symlink, a
        /// device or a fifo leads to (default, or -: standard output, not a terminal).
        #[arg(short, long, value_name = "FILE", default_value = "-")]
        output: PathBuf,
        /// oci-archive (default) or docker-archive.
        #[arg(long, default_value = "oci-archive")]
        format: String,
    },
    /// Check that every record's blobs and layers are there, with their digests.
    #[command(name = "store-check")]
    StoreCheck,
}

impl ImageCmd {
    pub fn dispatch(self, store: &Store) -> Result<Outcome, UserError> {
        let out = match self {
            ImageCmd::Load { input } => {
                if input.as_os_str() == "-" && crate::sys::is_terminal(0) {
                    return Err(UserError(
                        "load reads an image archive from standard input, which is a terminal: give -i FILE, or send one down a pipe".into(),
                    ));
                }
                containers::load_images(store, &input)?
            }
            ImageCmd::Login {
                registry: reg,
                username,
                password_stdin,
                tls_verify,
            } => {
                if !password_stdin {
                    return Err(UserError(
                        "give the password on standard input: unionfuse login --password-stdin -u USER REGISTRY".into(),
                    ));
                }
                let mut pw = String::new();
                std::io::stdin()
                    .read_line(&mut pw)
                    .map_err(|e| UserError(format!("the password: {e}")))?;
                let pw = pw.trim_end_matches(['\n', '\r']);
                let o = registry::Options {
                    tls_verify,
                    platform: None,
                };
                let f = registry::login(&reg, &username, pw, &o)?;
                format!("Login Succeeded (kept in {})\n", f.display())
            }
            ImageCmd::Logout { registry: reg } => {
                if !store::auth::forget(&reg)? {
                    return Err(UserError(format!("not logged in to {reg}")));
                }
                format!("Removed login credentials for {reg}\n")
            }
            ImageCmd::Pull {
                reference,
                platform,
                tls_verify,
            } => {
                let o = registry::Options {
                    tls_verify,
                    platform,
                };
                let img = registry::pull(store, &reference, &o, &load::Report::new())?;
                format!("{}\n", img.id)
            }
            ImageCmd::Push {
                image,
                reference,
                tls_verify,
            } => {
                let o = registry::Options {
                    tls_verify,
                    platform: None,
                };
                let to = reference.unwrap_or_else(|| image.clone());
                let d = registry::push(store, &image, &to, &o, &load::Report::new())?;
                format!("{to}@{d}\n")
            }
            ImageCmd::Import { tarball, name } => {
                let img = load::import(store, &tarball, &name, &load::Report::new())?;
                format!("{}\n", img.id)
            }
            ImageCmd::Images { tree: true } => show::tree(store)?,
            ImageCmd::Images { tree: false } => show::images(store)?,
            ImageCmd::History { image } => show::history(store, &store.find_image(&image)?)?,
            ImageCmd::Tag { image, name } => {
                let img = store.find_image(&image)?;
                let _l = store.lock()?;
                store.set_name(&img.id, &name)?;
                String::new()
            }
            ImageCmd::Inspect { what } => containers::inspect(store, &what)? + "\n",
            ImageCmd::Rmi { force, images } => {
                let mut out = String::new();
                for i in images {
                    out.push_str(&containers::remove_image(store, &i, force)?);
                    out.push('\n');
                }
                out
            }
            ImageCmd::Prune => format!("freed {}\n", store::human(store.prune()?)),
            ImageCmd::Save {
                image,
                output,
                format,
            } => {
                if output.as_os_str() == "-" && crate::sys::is_terminal(1) {
                    return Err(UserError(
                        "refusing to write an image archive to a terminal: give -o FILE, or send it down a pipe".into(),
                    ));
                }
                containers::save_image(store, &image, &format, &output)?;
                String::new()
            }
            ImageCmd::StoreCheck => {
                let bad = store.check()?;
                if !bad.is_empty() {
                    return Err(UserError(format!(
                        "the store has {} problem(s): {}",
                        bad.len(),
                        bad.join("; ")
                    )));
                }
                "the store is consistent\n".into()
            }
        };
        Ok(Outcome::Printed(out))
    }
}
