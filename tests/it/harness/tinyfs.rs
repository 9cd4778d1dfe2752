//! A filesystem of its own, small enough to fill for real (a tmpfs).
//!
//! Also used by the outbox's unit tests (`src/outbox/tests.rs` includes
//! this file by path): keep it free of the rest of the harness.

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
