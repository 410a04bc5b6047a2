//! A container's log: what its command wrote, the two streams kept apart, in the k8s-file
//! format podman's conmon writes: one record a line, `TIME STREAM F|P DATA`, where `P` marks
//! a part of a line that the next record of the stream continues. Every run of a named
//! container appends to it (in the foreground the output also reaches the caller), and
//! `logs` gives each stream back on its own. Past [`LIMIT`] the log becomes `log.1` (the one
//! before is dropped).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::sys;

/// A log grows to this size, then becomes `log.1`.
pub const LIMIT: u64 = 8 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One record: a line, or a part of one (`partial`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub time: String,
    pub stream: Stream,
    pub partial: bool,
    pub data: Vec<u8>,
}

impl Record {
    /// The bytes the command wrote: the data, and the newline a full record stands for.
    pub fn bytes(&self) -> Vec<u8> {
        let mut v = self.data.clone();
        if !self.partial {
            v.push(b'\n');
        }
        v
    }

    fn parse(line: &[u8]) -> Option<Record> {
        let mut parts = line.splitn(4, |&b| b == b' ');
        let time = String::from_utf8_lossy(parts.next()?).into_owned();
        let stream = match parts.next()? {
            b"stdout" => Stream::Stdout,
            b"stderr" => Stream::Stderr,
            _ => return None,
        };
        let partial = match parts.next()? {
            b"P" => true,
            b"F" => false,
            _ => return None,
        };
        Some(Record {
            time,
            stream,
            partial,
            data: parts.next().unwrap_or_default().to_vec(),
        })
    }
}

/// The current time as RFC 3339 with nanoseconds, UTC.
fn timestamp() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let s = crate::store::load::rfc3339(d.as_secs() as i64);
    format!("{}.{:09}Z", s.trim_end_matches('Z'), d.subsec_nanos())
}

/// Appends records to a log, rotating it past [`LIMIT`].
struct Writer {
    path: PathBuf,
    file: Option<File>,
    size: u64,
}

impl Writer {
    fn open(path: &Path) -> Writer {
        let file = Self::open_file(path);
        let size = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        Writer {
            path: path.to_path_buf(),
            file,
            size,
        }
    }

    fn open_file(path: &Path) -> Option<File> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok()
    }

    /// Records what `stream` wrote: a record for each line, and one partial record for
    /// what follows the last newline.
    fn write(&mut self, stream: Stream, data: &[u8]) {
        let mut out = Vec::with_capacity(data.len() + 64);
        let now = timestamp();
        let mut rest = data;
        while !rest.is_empty() {
            let (line, tag, next) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], 'F', &rest[i + 1..]),
                None => (rest, 'P', &rest[rest.len()..]),
            };
            out.extend_from_slice(format!("{now} {} {tag} ", stream.name()).as_bytes());
            out.extend_from_slice(line);
            out.push(b'\n');
            rest = next;
        }
        if self.size + out.len() as u64 > LIMIT {
            let _ = std::fs::rename(&self.path, self.path.with_extension("1"));
            self.file = Self::open_file(&self.path);
            self.size = 0;
        }
        if let Some(f) = &mut self.file
            && f.write_all(&out).is_ok()
        {
            self.size += out.len() as u64;
        }
    }
}

/// Copies what the command writes on `out` and `err` into the log at `path` until both are
/// closed; with `tee`, to those descriptors as well (a foreground run's caller). A stream
/// whose tee cannot be written any more (a closed pipe) is closed here too, so the command
/// gets its EPIPE as it would have without the log in between.
pub fn keep(path: &Path, out: OwnedFd, err: OwnedFd, tee: Option<(OwnedFd, OwnedFd)>) {
    let mut w = Writer::open(path);
    let (tee_out, tee_err) = match tee {
        Some((o, e)) => (Some(o), Some(e)),
        None => (None, None),
    };
    let mut streams = [
        (Some(out), tee_out, Stream::Stdout),
        (Some(err), tee_err, Stream::Stderr),
    ];
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let open: Vec<usize> = (0..streams.len())
            .filter(|&i| streams[i].0.is_some())
            .collect();
        if open.is_empty() {
            return;
        }
        let fds: Vec<(i32, i16)> = open
            .iter()
            .map(|&i| {
                let fd = streams[i].0.as_ref().map_or(-1, |f| f.as_raw_fd());
                (fd, libc::POLLIN)
            })
            .collect();
        let Ok(ready) = sys::poll(&fds, -1) else {
            return;
        };
        for (k, &i) in open.iter().enumerate() {
            if ready[k] == 0 {
                continue;
            }
            let (from, tee, stream) = &mut streams[i];
            let fd = from.as_ref().map_or(-1, |f| f.as_raw_fd());
            let n = match sys::read(fd, &mut buf) {
                Ok(0) | Err(_) => {
                    *from = None;
                    continue;
                }
                Ok(n) => n,
            };
            w.write(*stream, &buf[..n]);
            if let Some(t) = tee
                && write_all(t.as_raw_fd(), &buf[..n]).is_err()
            {
                *tee = None;
                *from = None;
            }
        }
    }
}

fn write_all(fd: i32, mut data: &[u8]) -> sys::Result<()> {
    while !data.is_empty() {
        let n = sys::write(fd, data)?;
        if n == 0 {
            return Err(sys::Errno(libc::EIO));
        }
        data = &data[n..];
    }
    Ok(())
}

/// Reads a log as it grows: the records added since the last call.
pub struct Follower {
    path: PathBuf,
    pos: u64,
    ino: u64,
    /// The bytes of a record not yet complete (being written).
    pending: Vec<u8>,
}

impl Follower {
    /// From the start of the log (the rotated part first, with `rotated`).
    pub fn from_start(path: &Path) -> Follower {
        Follower {
            path: path.to_path_buf(),
            pos: 0,
            ino: 0,
            pending: Vec::new(),
        }
    }

    /// From what is written next.
    pub fn from_end(path: &Path) -> Follower {
        let md = std::fs::metadata(path).ok();
        Follower {
            path: path.to_path_buf(),
            pos: md.as_ref().map_or(0, |m| m.len()),
            ino: md.as_ref().map_or(0, |m| m.ino()),
            pending: Vec::new(),
        }
    }

    /// The records of the rotated log, `log.1`.
    pub fn rotated(path: &Path) -> Vec<Record> {
        std::fs::read(path.with_extension("1"))
            .map(|d| d.split(|&b| b == b'\n').filter_map(Record::parse).collect())
            .unwrap_or_default()
    }

    /// The complete records written since the last call.
    pub fn next_records(&mut self) -> Vec<Record> {
        let Ok(mut f) = File::open(&self.path) else {
            return Vec::new();
        };
        let Ok(md) = f.metadata() else {
            return Vec::new();
        };
        if md.ino() != self.ino || md.len() < self.pos {
            self.ino = md.ino();
            self.pos = 0;
            self.pending.clear();
        }
        if f.seek(SeekFrom::Start(self.pos)).is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return Vec::new();
        }
        self.pos += buf.len() as u64;
        self.pending.extend_from_slice(&buf);
        let Some(end) = self.pending.iter().rposition(|&b| b == b'\n') else {
            return Vec::new();
        };
        let done: Vec<u8> = self.pending.drain(..=end).collect();
        done.split(|&b| b == b'\n')
            .filter_map(Record::parse)
            .collect()
    }
}

/// Writes each record to the stream it came from.
pub fn write_records(records: &[Record], out: &mut impl Write, err: &mut impl Write) {
    for r in records {
        let to: &mut dyn Write = match r.stream {
            Stream::Stdout => out,
            Stream::Stderr => err,
        };
        let _ = to.write_all(&r.bytes());
    }
    let _ = out.flush();
    let _ = err.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_keep_lines_parts_and_streams() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let mut w = Writer::open(&p);
        w.write(Stream::Stdout, b"one\ntwo ");
        w.write(Stream::Stderr, b"oops\n");
        w.write(Stream::Stdout, b"halves\n");
        let mut f = Follower::from_start(&p);
        let r = f.next_records();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        write_records(&r, &mut out, &mut err);
        assert_eq!(out, b"one\ntwo halves\n");
        assert_eq!(err, b"oops\n");
        assert_eq!(r.len(), 4);
        assert!(r[1].partial && r[1].data == b"two ");
        assert!(f.next_records().is_empty());
    }
}
