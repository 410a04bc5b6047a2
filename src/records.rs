//! The on-disk records of the store, as versioned serde types: an image (`images/ID.json`)
//! and a container (`containers/ID/config.json`), and the values they hold (digests, layer
//! references, a container's state and its confinement and limits). They sit below the
//! store, the runner and the container commands, and none of those parts' option structs
//! leak into them: the JSON on disk changes only with [`FORMAT`].

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::{Result, bail};

/// The records' format: 1, the first one written with a number (records without one are
/// of this format too).
pub const FORMAT: u32 = 1;

fn format_1() -> u32 {
    1
}

/// A sha256 digest as OCI writes it: `sha256:HEX`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Digest(pub String);

impl Digest {
    pub fn parse(s: &str) -> Result<Digest> {
        match s.strip_prefix("sha256:") {
            Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Ok(Digest(s.to_ascii_lowercase()))
            }
            _ => bail!("'{s}' is not a sha256 digest"),
        }
    }

    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The first 12 hex digits, as `docker images` shows an id.
    pub fn short(&self) -> &str {
        &self.hex()[..12]
    }

    pub fn of(data: &[u8]) -> Digest {
        Digest::from_sha(&Sha256::digest(data))
    }

    /// The digest of a finished sha256.
    pub fn from_sha(bytes: &[u8]) -> Digest {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Digest(format!("sha256:{hex}"))
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One layer of an image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerRef {
    /// sha256 of the uncompressed tar: the layer's identity, and its directory's name.
    pub diff_id: Digest,
    /// The blob as stored (compressed or not), for save and push.
    pub blob: Digest,
    pub media_type: String,
    /// The blob's size.
    pub size: u64,
}

/// An image: names, its config (whose digest is its id) and its layers, bottom first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Image {
    /// The record's format (see [`FORMAT`]).
    #[serde(default = "format_1")]
    pub format: u32,
    pub id: Digest,
    pub names: Vec<String>,
    pub layers: Vec<LayerRef>,
    /// Seconds since the epoch when the image was made (from its config, else at load).
    pub created: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum State {
    Created,
    /// Started, and not yet known to have ended (a run whose runner was killed says so
    /// here until the next look at the record finds its lock free).
    Running,
    /// Ran and ended with this status.
    Exited(i32),
}

/// A container: a named instance of an image with a writable layer of its own.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Container {
    /// The record's format (see [`FORMAT`]).
    #[serde(default = "format_1")]
    pub format: u32,
    pub id: String,
    pub name: String,
    pub image: Digest,
    /// The image's name as given when the container was made.
    pub image_name: String,
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub hostname: Option<String>,
    /// Who the command runs as (the image's User, or `--user`).
    #[serde(default)]
    pub user: Option<String>,
    pub created: i64,
    pub state: State,
    /// Confinement and limits, the same at every start.
    #[serde(default)]
    pub host: HostOptions,
    /// When the current (or last) run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<i64>,
    /// Why the last run ended, when not of itself ("OOMKilled").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A container's confinement and limits as its options gave them (`--privileged`,
/// `--cap-add`, `--memory`…): the same at every start. The runner makes its profile and
/// cgroup limits of them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostOptions {
    pub privileged: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub security_opt: Vec<String>,
    pub memory: Option<String>,
    pub memory_swap: Option<String>,
    pub cpus: Option<String>,
    pub cpu_shares: Option<u64>,
    pub pids_limit: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_read_the_unnumbered_format() {
        let c = Container {
            format: FORMAT,
            id: "ab".repeat(32),
            name: "c1".into(),
            image: Digest::of(b"config"),
            image_name: "base:1".into(),
            command: vec!["sh".into()],
            env: vec!["A=1".into()],
            workdir: None,
            hostname: Some("h".into()),
            user: None,
            created: 5,
            state: State::Exited(3),
            host: HostOptions {
                memory: Some("64m".into()),
                ..Default::default()
            },
            started: Some(6),
            reason: None,
        };
        let json = serde_json::to_string(&c).unwrap();
        let back: Container = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
        // A record written before the format had a number.
        let old = json.replace("\"format\":1,", "");
        assert_ne!(old, json);
        let back: Container = serde_json::from_str(&old).unwrap();
        assert_eq!(back.format, 1);
        assert_eq!(back.state, State::Exited(3));
        assert!(Digest::parse("sha256:12").is_err());
        assert_eq!(Digest::of(b"").short(), "e3b0c44298fc");
    }
}
