//! Log files that outlive a process and never grow without bound:
//! appended to across restarts, rotated by size.

use std::path::{Path, PathBuf};

/// A log is rotated once it passes this size, bytes.
pub const LOG_BYTES_MAX: u64 = 8 << 20;
/// Rotated logs kept beside the current one: `NAME.1` (newest) to
/// `NAME.<LOG_FILES_KEPT>`; older ones are deleted.
pub const LOG_FILES_KEPT: u32 = 3;

/// A log file appended to across restarts (of a child, or of `tern dev`)
/// and rotated by size, so it never grows past [`LOG_BYTES_MAX`] and at
/// most [`LOG_FILES_KEPT`] old ones are kept.
pub struct RotatingLog {
    path: PathBuf,
    file: std::fs::File,
    len: u64,
}

impl RotatingLog {
    /// Opens `path` for appending.
    pub fn open(path: &Path) -> std::io::Result<RotatingLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let len = file.metadata()?.len();
        Ok(RotatingLog {
            path: path.to_path_buf(),
            file,
            len,
        })
    }

    fn rotated(&self, i: u32) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{i}"));
        PathBuf::from(name)
    }

    /// Appends `bytes`, rotating first if they would take the file past
    /// [`LOG_BYTES_MAX`].
    pub fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write as _;
        if self.len > 0 && self.len + bytes.len() as u64 > LOG_BYTES_MAX {
            self.rotate()?;
        }
        self.file.write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let _ = std::fs::remove_file(self.rotated(LOG_FILES_KEPT));
        for i in (1..LOG_FILES_KEPT).rev() {
            match std::fs::rename(self.rotated(i), self.rotated(i + 1)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, self.rotated(1))?;
        *self = RotatingLog::open(&self.path)?;
        Ok(())
    }
}

impl std::io::Write for RotatingLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.append(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_append_and_rotate_within_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pop-fra.log");
        std::fs::write(&path, b"from an earlier run\n").unwrap();
        let mut log = RotatingLog::open(&path).unwrap();
        log.append(b"appended\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "from an earlier run\nappended\n",
            "a new run appends"
        );
        let chunk = vec![b'x'; (LOG_BYTES_MAX / 4) as usize];
        for _ in 0..4 * (LOG_FILES_KEPT as usize + 3) {
            log.append(&chunk).unwrap();
        }
        assert!(std::fs::metadata(&path).unwrap().len() <= LOG_BYTES_MAX);
        for i in 1..=LOG_FILES_KEPT {
            let old = dir.path().join(format!("pop-fra.log.{i}"));
            assert!(
                std::fs::metadata(&old).unwrap().len() <= LOG_BYTES_MAX,
                "{i}"
            );
        }
        assert!(
            !dir.path()
                .join(format!("pop-fra.log.{}", LOG_FILES_KEPT + 1))
                .exists(),
            "at most LOG_FILES_KEPT old logs"
        );
    }
}
