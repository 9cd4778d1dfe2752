//! The files a configuration names, read through one door: [`Files`].
//!
//! Compiling `outpost.toml` reads more than its own text: the rules files,
//! a `password_file`, the TLS files (parsed, so a wrong one is a `check`
//! error), and the permission bits of secrets. They are all read through
//! [`Files`], so the compiler is pure over its inputs: [`Disk`] at the edge
//! (`outpost check`, `run`, a SIGHUP reload), a map of files in tests.

use std::io;
use std::path::Path;

/// What is known of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    /// A regular file (after following links), not a folder or a device.
    pub is_file: bool,
    /// The permission bits (`0o640`), for the warning about secrets others
    /// can read.
    pub mode: u32,
}

/// Where the files a configuration names are read from.
pub trait Files {
    /// What `path` is, following links (as `std::fs::metadata`).
    fn info(&self, path: &Path) -> io::Result<FileInfo>;

    /// The whole contents of `path`.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;

    /// The contents of `path` as UTF-8 text.
    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        String::from_utf8(self.read(path)?).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "stream did not contain valid UTF-8",
            )
        })
    }
}

/// The real file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct Disk;

impl Files for Disk {
    fn info(&self, path: &Path) -> io::Result<FileInfo> {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(path)?;
        Ok(FileInfo {
            is_file: m.is_file(),
            mode: m.permissions().mode(),
        })
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// Files held in memory, for tests: a path with `None` contents is a folder.
#[cfg(test)]
#[derive(Debug, Clone, Default)]
pub struct MemFiles(pub std::collections::BTreeMap<std::path::PathBuf, (u32, Option<Vec<u8>>)>);

#[cfg(test)]
impl MemFiles {
    /// Adds a file with mode `0o600` (or replaces one).
    pub fn with(mut self, path: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.0
            .insert(path.into(), (0o100600, Some(contents.into())));
        self
    }

    /// Adds a file with the given mode.
    pub fn with_mode(mut self, path: &str, mode: u32, contents: impl Into<Vec<u8>>) -> Self {
        self.0.insert(path.into(), (mode, Some(contents.into())));
        self
    }

    /// Adds a folder.
    pub fn with_dir(mut self, path: &str) -> Self {
        self.0.insert(path.into(), (0o40755, None));
        self
    }

    fn get(&self, path: &Path) -> io::Result<&(u32, Option<Vec<u8>>)> {
        self.0.get(path).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "No such file or directory (os error 2)",
            )
        })
    }
}

#[cfg(test)]
impl Files for MemFiles {
    fn info(&self, path: &Path) -> io::Result<FileInfo> {
        let (mode, contents) = self.get(path)?;
        Ok(FileInfo {
            is_file: contents.is_some(),
            mode: *mode,
        })
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        match self.get(path)? {
            (_, Some(c)) => Ok(c.clone()),
            (_, None) => Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                "Is a directory (os error 21)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_disk_reports_files_folders_and_permission_bits() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        std::fs::write(&p, "x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let info = Disk.info(&p).unwrap();
        assert!(info.is_file);
        assert_eq!(info.mode & 0o777, 0o640);
        assert!(!Disk.info(dir.path()).unwrap().is_file);
        assert_eq!(Disk.read_to_string(&p).unwrap(), "x");
        assert!(Disk.info(&dir.path().join("missing")).is_err());
    }
}
