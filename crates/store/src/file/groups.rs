//! Consumer group positions of the file store: one small file per group,
//! `<dir>/groups/<name>`, holding `<cursor>\n<lost_events>\n`, replaced atomically
//! (write a temporary file, fsync, rename, fsync the directory) on every commit, so a
//! crash leaves the old or the new position, never a torn one.

use super::io;
use crate::eventlog::GroupPosition;
use crate::{Cursor, Result};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The group files of one store directory.
pub(super) struct Groups {
    dir: PathBuf,
}

impl Groups {
    /// Groups kept under `<store dir>/groups`.
    pub fn new(store_dir: &Path) -> Self {
        Self { dir: store_dir.join("groups") }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Stores `pos` for group `name` (the name is checked by the caller).
    pub fn put(&self, name: &str, pos: &GroupPosition) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(io("create dir", &self.dir))?;
        let path = self.path(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
        write!(f, "{}\n{}\n", pos.cursor.0, pos.lost_events).map_err(io("write", &tmp))?;
        f.sync_data().map_err(io("fsync", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("rename", &path))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io("fsync dir", &self.dir))
    }

    /// Group `name`'s position, if it has one.
    pub fn get(&self, name: &str) -> Result<Option<GroupPosition>> {
        let path = self.path(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("read", &path)(e)),
        };
        let mut lines = text.lines();
        let cursor = lines.next().unwrap_or_default().to_owned();
        let lost_events = lines.next().and_then(|l| l.parse().ok()).unwrap_or(0);
        Ok(Some(GroupPosition { cursor: Cursor(cursor), lost_events }))
    }

    /// Every group and its position.
    pub fn all(&self) -> Result<Vec<(String, GroupPosition)>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("read dir", &self.dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let name = entry.map_err(io("read dir", &self.dir))?.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if let Some(pos) = self.get(&name)? {
                out.push((name, pos));
            }
        }
        Ok(out)
    }
}
