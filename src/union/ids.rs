//! Owner translation between the layers and the view, as fuse-overlayfs's `uidmapping=`,
//! `gidmapping=`, `squash_to_root`, `squash_to_uid=` and `squash_to_gid=` define it: an id
//! stored in a layer is shown through the mapping, and an id written (a new file's owner, a
//! chown) goes back through it. Without a mapping ids pass unchanged.

/// The id shown for a stored id that no range maps (the kernel's overflow id).
pub const OVERFLOW_ID: u32 = 65534;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    /// First id as stored in the layers.
    stored: u32,
    /// First id as shown in the view.
    shown: u32,
    len: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMap {
    uids: Vec<Range>,
    gids: Vec<Range>,
    squash_uid: Option<u32>,
    squash_gid: Option<u32>,
}

/// `STORED:SHOWN:LEN[:STORED:SHOWN:LEN...]`; empty fields (a leading `:`) are skipped.
fn parse_ranges(spec: &str) -> Result<Vec<Range>, String> {
    let nums = spec
        .split(':')
        .filter(|f| !f.is_empty())
        .map(|f| {
            f.parse::<u32>()
                .map_err(|_| format!("'{spec}': '{f}' is not an id"))
        })
        .collect::<Result<Vec<u32>, String>>()?;
    if nums.is_empty() || nums.len() % 3 != 0 {
        return Err(format!(
            "'{spec}': expected ID:MAPPED-ID:LEN, repeated with ':'"
        ));
    }
    let ranges: Vec<Range> = nums
        .chunks(3)
        .map(|c| Range {
            stored: c[0],
            shown: c[1],
            len: c[2],
        })
        .collect();
    for r in &ranges {
        if r.len == 0
            || r.stored.checked_add(r.len - 1).is_none()
            || r.shown.checked_add(r.len - 1).is_none()
        {
            return Err(format!("'{spec}': empty or overflowing range"));
        }
    }
    Ok(ranges)
}

fn forward(ranges: &[Range], id: u32) -> Option<u32> {
    if ranges.is_empty() {
        return Some(id);
    }
    ranges
        .iter()
        .find(|r| id >= r.stored && id - r.stored < r.len)
        .map(|r| r.shown + (id - r.stored))
}

fn backward(ranges: &[Range], id: u32) -> Option<u32> {
    if ranges.is_empty() {
        return Some(id);
    }
    ranges
        .iter()
        .find(|r| id >= r.shown && id - r.shown < r.len)
        .map(|r| r.stored + (id - r.shown))
}

impl IdMap {
    pub fn set_uid_mapping(&mut self, spec: &str) -> Result<(), String> {
        self.uids = parse_ranges(spec)?;
        Ok(())
    }
    pub fn set_gid_mapping(&mut self, spec: &str) -> Result<(), String> {
        self.gids = parse_ranges(spec)?;
        Ok(())
    }
    /// `squash_to_root` sets both to 0; `squash_to_uid`/`squash_to_gid` take precedence.
    pub fn squash(&mut self, uid: Option<u32>, gid: Option<u32>) {
        if uid.is_some() {
            self.squash_uid = uid;
        }
        if gid.is_some() {
            self.squash_gid = gid;
        }
    }
    pub fn is_identity(&self) -> bool {
        *self == IdMap::default()
    }
    /// The owner a stored owner is shown as.
    pub fn show(&self, uid: u32, gid: u32) -> (u32, u32) {
        (
            self.squash_uid
                .or_else(|| forward(&self.uids, uid))
                .unwrap_or(OVERFLOW_ID),
            self.squash_gid
                .or_else(|| forward(&self.gids, gid))
                .unwrap_or(OVERFLOW_ID),
        )
    }
    /// The owner to store for a shown uid; `None` when no range maps it.
    pub fn store_uid(&self, uid: u32) -> Option<u32> {
        backward(&self.uids, uid)
    }
    pub fn store_gid(&self, gid: u32) -> Option<u32> {
        backward(&self.gids, gid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_goes_both_ways_and_overflows() {
        let mut m = IdMap::default();
        assert!(m.is_identity());
        assert_eq!(m.show(5, 6), (5, 6));
        m.set_uid_mapping("0:1000:1:1:110000:65536").unwrap();
        m.set_gid_mapping(":0:2000:1").unwrap();
        assert_eq!(m.show(0, 0), (1000, 2000));
        assert_eq!(m.show(1, 1), (110000, OVERFLOW_ID));
        assert_eq!(m.show(65536, 0), (175535, 2000));
        assert_eq!(m.show(65537, 0), (OVERFLOW_ID, 2000));
        assert_eq!(m.store_uid(110005), Some(6));
        assert_eq!(m.store_uid(1000), Some(0));
        assert_eq!(m.store_uid(5), None);
        assert_eq!(m.store_gid(2000), Some(0));
        m.squash(Some(0), Some(0));
        assert_eq!(m.show(1, 1), (0, 0));
        m.squash(Some(7), None);
        assert_eq!(m.show(1, 1), (7, 0));
        assert!(IdMap::default().set_uid_mapping("0:1").is_err());
        assert!(IdMap::default().set_uid_mapping("0:x:1").is_err());
        assert!(IdMap::default().set_uid_mapping("0:0:0").is_err());
        assert!(IdMap::default().set_uid_mapping("4294967295:0:2").is_err());
    }
}
