//! Storage faults made for real: a filesystem of its own, small enough to
//! fill (a tmpfs), and the bytes of an outbox's log to cut or flip.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of `bytes`, mounted on a fresh folder and unmounted on drop.
/// Mounting needs root, which the tests have in CI; elsewhere it fails
/// with a message saying so rather than skipping.
pub struct TinyFs {
    dir: tempfile::TempDir,
}

impl TinyFs {
    pub fn mount(bytes: u64) -> TinyFs {
        let dir = tempfile::Builder::new()
            .prefix("outpost-tinyfs")
            .tempdir()
            .unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs (these tests need root, as in CI): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TinyFs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Takes every free byte with a file `name`; remove it to give them back.
    pub fn fill(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let mut f = fs::File::create(&path).unwrap();
        let chunk = vec![0xAAu8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

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
