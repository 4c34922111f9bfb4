//! Files only the daemon's user may read: the data directory, the embedded
//! store and the development PKI's keys. Created private, and refused when
//! an existing one is readable by anyone else (the CA key lets its reader
//! mint administrator certificates; the store holds every lease id).

use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` and its missing parents with mode 0700 (existing ones are
/// left as they are).
pub fn create_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates `path` empty with mode 0600 unless it exists.
pub fn create_file(path: &Path) -> io::Result<()> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Refuses a file that group or others may read or write, naming the
/// `chmod` that fixes it. A missing file passes (it will be created private).
pub fn check_file(path: &Path, what: &str) -> Result<(), String> {
    let mode = match std::fs::metadata(path) {
        Ok(meta) => meta.permissions().mode(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot read {} ({what}): {e}", path.display())),
    };
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} ({what}) is readable or writable by group or others (mode {:o}); \
             run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_private_and_refused_when_shared() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("a/b");
        create_dir(&dir).expect("dir");
        for d in [tmp.path().join("a"), dir.clone()] {
            let mode = std::fs::metadata(&d).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", d.display());
        }
        let file = dir.join("store");
        create_file(&file).expect("file");
        create_file(&file).expect("existing file");
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        check_file(&file, "the store").expect("private");
        check_file(&dir.join("missing"), "x").expect("a missing file passes");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let err = check_file(&file, "the store").expect_err("group-readable");
        assert!(
            err.contains(&format!("chmod 600 {}", file.display())),
            "{err}"
        );
        assert!(err.contains("640"), "{err}");
    }
}
