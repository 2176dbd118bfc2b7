//! The POP's local-disk cache of compiled code: wasmtime's serialized
//! components, one file per component digest and engine configuration,
//! loaded with an mmapped `Component::deserialize_file`.
//!
//! Each code file `NAME.cwasm` has a sidecar `NAME.crc` holding its length
//! and crc32. Both are written to temporary names and renamed into place
//! (sidecar first), so a crash leaves either a whole pair or a pair that
//! fails the check. A file that fails the check, or that wasmtime refuses,
//! is deleted and the code is loaded from the store or compiled again:
//! never trusted. The directory holds at most [`CODE_FILES_MAX`] code
//! files; writing one past that removes the oldest.

use std::io::Write;
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// Most compiled-code files a code directory keeps.
pub const CODE_FILES_MAX: usize = 256;

/// A directory of compiled code.
#[derive(Debug, Clone)]
pub struct CodeDir {
    dir: PathBuf,
}

impl CodeDir {
    /// Uses (and creates) `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<CodeDir> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(CodeDir { dir })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The code file of `digest` under engine `key`.
    pub fn file(&self, digest: &str, key: &str) -> PathBuf {
        self.dir.join(format!("{}.cwasm", name(digest, key)))
    }

    fn sidecar(&self, digest: &str, key: &str) -> PathBuf {
        self.dir.join(format!("{}.crc", name(digest, key)))
    }

    /// The compiled component of `digest` under `key`, if this directory
    /// holds an intact one that `engine` accepts. A damaged file is
    /// removed (and the reason logged); `None` then means "load it from
    /// elsewhere".
    pub fn load(&self, engine: &Engine, digest: &str, key: &str) -> Option<Component> {
        let path = self.file(digest, key);
        // The check streams the file (the code is not copied onto the
        // heap: `deserialize_file` maps it).
        let actual = match std::fs::File::open(&path).and_then(file_check_line) {
            Ok(line) => line,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read cached compiled code");
                return None;
            }
        };
        let expected = std::fs::read_to_string(self.sidecar(digest, key)).unwrap_or_default();
        if expected.trim() != actual {
            tracing::warn!(path = %path.display(), "cached compiled code fails its checksum; compiling or fetching it again");
            self.remove(digest, key);
            return None;
        }
        // SAFETY: `deserialize_file` maps the file and runs its machine
        // code, so it must be what `Component::serialize` produced for this
        // component. It is: only `store` below writes these files, with
        // code that `Component::serialize` produced (or that the store
        // handed out after checking its sha256), and the file just matched
        // the length and crc32 `store` recorded beside it, so it is not a
        // torn or decayed copy. wasmtime refuses code of another version
        // or configuration, and the name carries the engine key. Only tern
        // writes this directory (the POP's own cache, not shared input).
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "cached compiled code is unusable; compiling or fetching it again");
                self.remove(digest, key);
                None
            }
        }
    }

    /// Keeps `code` (the output of `Component::serialize`) for `digest`
    /// under `key`. Failures are logged: the cache is an optimisation.
    pub fn store(&self, digest: &str, key: &str, code: &[u8]) {
        if let Err(e) = self.try_store(digest, key, code) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot keep compiled code on local disk");
        }
    }

    fn try_store(&self, digest: &str, key: &str, code: &[u8]) -> std::io::Result<()> {
        self.collect()?;
        let write = |path: &Path, bytes: &[u8]| -> std::io::Result<()> {
            let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
            tmp.write_all(bytes)?;
            tmp.as_file().sync_all()?;
            tmp.persist(path).map_err(|e| e.error)?;
            Ok(())
        };
        write(&self.sidecar(digest, key), check_line(code).as_bytes())?;
        write(&self.file(digest, key), code)
    }

    fn remove(&self, digest: &str, key: &str) {
        let _ = std::fs::remove_file(self.file(digest, key));
        let _ = std::fs::remove_file(self.sidecar(digest, key));
    }

    /// Removes the oldest code files while the directory is full.
    fn collect(&self) -> std::io::Result<()> {
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
            .map(|e| {
                let at = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                (at, e.path())
            })
            .collect();
        if files.len() < CODE_FILES_MAX {
            return Ok(());
        }
        files.sort();
        for (_, path) in files.iter().take(files.len() + 1 - CODE_FILES_MAX) {
            let _ = std::fs::remove_file(path);
            let _ = std::fs::remove_file(path.with_extension("crc"));
        }
        Ok(())
    }
}

/// A file name for `digest` under engine `key` (which holds `/`).
fn name(digest: &str, key: &str) -> String {
    let key: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let digest: String = digest
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .take(64)
        .collect();
    format!("{digest}-{key}")
}

/// What a sidecar holds for `code`: its length and crc32.
fn check_line(code: &[u8]) -> String {
    format!("{} {:08x}", code.len(), crc32fast::hash(code))
}

/// [`check_line`] of a file's contents, read in chunks.
fn file_check_line(mut file: std::fs::File) -> std::io::Result<String> {
    use std::io::Read;
    let mut hasher = crc32fast::Hasher::new();
    let mut len = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n;
    }
    Ok(format!("{len} {:08x}", hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_dir_keeps_at_most_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let cd = CodeDir::open(dir.path()).unwrap();
        for i in 0..CODE_FILES_MAX + 3 {
            cd.store(&format!("{i:064x}"), "k/1", b"code");
        }
        let n = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "cwasm")
            })
            .count();
        assert_eq!(n, CODE_FILES_MAX);
    }

    #[test]
    fn names_are_plain_file_names() {
        let n = name("../etc/passwd", "tern-0.1/wasmtime-48/ff");
        assert!(!n.contains('/') && !n.contains('.'), "{n}");
    }
}
