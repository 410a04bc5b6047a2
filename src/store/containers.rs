//! Container records and their locks: listing (a record whose runner died unrecorded is
//! settled as it is read), lookup by name or id, the lock a runner holds.

use std::os::fd::AsFd;

use super::{Container, State, Store, io, read_json, write_replacing};
use crate::error::{Result, UserError, bail};
use crate::sys;

impl Store {
    pub fn containers(&self) -> Result<Vec<Container>> {
        let mut out = Vec::new();
        let dir = self.root.join("containers");
        for e in std::fs::read_dir(&dir)
            .map_err(io("cannot list", &dir))?
            .flatten()
        {
            let p = e.path().join("config.json");
            if p.exists() {
                out.push(self.settled(read_json(&p)?));
            }
        }
        out.sort_by_key(|c: &Container| std::cmp::Reverse(c.created));
        Ok(out)
    }

    /// `c` as it is: a record that says running while no runner holds the container's
    /// lock belongs to a run whose runner was killed (`kill -9`) before it could record
    /// the end; it ended with SIGKILL's status, 137, which is recorded now.
    fn settled(&self, c: Container) -> Container {
        if c.state != State::Running || self.is_running(&c) {
            return c;
        }
        // Read again: a runner that just recorded its end and let go of the lock wins.
        let p = self.container_dir(&c.id).join("config.json");
        let Ok(mut now) = read_json::<Container>(&p) else {
            return c;
        };
        if now.state == State::Running {
            now.state = State::Exited(137);
            let _ = self.put_container(&now);
        }
        now
    }

    /// A container's record: not synced (its state changes at every start and exit; a
    /// crash keeps the record before or after the change).
    pub fn put_container(&self, c: &Container) -> Result<()> {
        let data = serde_json::to_vec_pretty(c).map_err(|e| UserError(e.to_string()))?;
        write_replacing(&self.container_dir(&c.id).join("config.json"), &data, false)
    }

    /// A container by name, id or id prefix.
    pub fn find_container(&self, what: &str) -> Result<Container> {
        let all = self.containers()?;
        if let Some(c) = all.iter().find(|c| c.name == what) {
            return Ok(c.clone());
        }
        let hits: Vec<&Container> = all
            .iter()
            .filter(|c| what.len() >= 4 && c.id.starts_with(what))
            .collect();
        match hits.as_slice() {
            [one] => Ok((*one).clone()),
            [] => bail!("no container '{what}' (see unionfuse ps -a)"),
            _ => bail!("'{what}' names more than one container: give more digits"),
        }
    }

    /// Whether the container's runner is running (it holds the container's lock).
    pub fn is_running(&self, c: &Container) -> bool {
        match std::fs::File::open(self.container_dir(&c.id).join("lock")) {
            Ok(f) => sys::flock(f.as_fd(), libc::LOCK_SH | libc::LOCK_NB).is_err(),
            Err(_) => false,
        }
    }

    /// Takes the container's lock for a run: refused while another run holds it.
    pub fn lock_container(&self, c: &Container) -> Result<std::fs::File> {
        let p = self.container_dir(&c.id).join("lock");
        let f = std::fs::File::create(&p).map_err(io("cannot open", &p))?;
        if sys::flock(f.as_fd(), libc::LOCK_EX | libc::LOCK_NB).is_err() {
            bail!(
                "container '{}' is running (stop it with unionfuse stop {})",
                c.name,
                c.name
            );
        }
        Ok(f)
    }
}
