//! Storage faults made for real: the bytes of an outbox's log to cut or
//! flip (and, in `tinyfs.rs`, a filesystem small enough to fill).

use std::fs;
use std::path::{Path, PathBuf};

/// The segment files of the outbox under `state_dir`, oldest first.
pub fn segments(state_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(state_dir.join("outbox/log"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "seg"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Where a segment's data ends (after it: space set aside, zeros).
pub fn data_end(seg: &Path) -> usize {
    let data = fs::read(seg).unwrap();
    data.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1)
}

/// Copies a folder tree.
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            fs::copy(e.path(), &target).unwrap();
        }
    }
}
