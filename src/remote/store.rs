//! The last accepted push, kept in the state directory as
//! `pushed-rules.json`: the push as received (version, rules text,
//! signature, id) and the target it was received for, so its signature can
//! be checked again at start.
//!
//! Written atomically: a temporary file beside it, written and fsync'd,
//! renamed over it, then the directory fsync'd, so after a crash or a power
//! cut the file is the old push or the new one, never a mix, and a push
//! answered `applied` is on disk.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::push::Push;

/// The file's name in the state directory.
pub const FILE: &str = "pushed-rules.json";

/// A push as kept on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    /// `gateway:ID` or `group:NAME` (`push::Target::name`).
    pub target: String,
    #[serde(flatten)]
    pub push: Push,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// The stored push; `None` when there is none.
pub fn load(state_dir: &Path) -> io::Result<Option<Stored>> {
    let bytes = match fs::read(path(state_dir)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Replaces the stored push, durably (see the module header).
pub fn save(state_dir: &Path, stored: &Stored) -> io::Result<()> {
    let bytes = serde_json::to_vec(stored).map_err(io::Error::other)?;
    let tmp = state_dir.join(format!("{FILE}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path(state_dir))?;
    // The rename itself must reach the disk.
    File::open(state_dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::Version;

    fn stored(version: &str) -> Stored {
        Stored {
            target: "group:north".into(),
            push: Push {
                version: Version::parse(version).unwrap(),
                rules: "[[rule]]\nid = \"x\"\n".into(),
                signature: Some("c2ln".into()),
                id: None,
            },
        }
    }

    #[test]
    fn nothing_stored_is_none_and_a_saved_push_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        save(dir.path(), &stored("1")).unwrap();
        save(dir.path(), &stored("2")).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(stored("2")));
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [FILE], "no temporary file is left");
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(path(dir.path()), b"{\"target\":").unwrap();
        assert_eq!(
            load(dir.path()).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn a_save_into_a_missing_directory_fails_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        assert!(save(&gone, &stored("1")).is_err());
        assert!(!gone.exists());
    }
}
