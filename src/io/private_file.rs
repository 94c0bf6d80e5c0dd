//! Files that hold keys: the card store, its backups, card.json, CW logs.
//!
//! One rule for all of them, because a key file written the wrong way leaks the key or damages
//! someone else's file:
//! - a key file is always a *new* inode, created with mode 0600 (`O_CREAT|O_EXCL`, so a
//!   symlink planted at the name is never followed), written beside the target under a
//!   temporary name, synced, and then renamed over the target (or hard-linked to it when the
//!   target must not be replaced). Readers see the old file or the whole new one.
//! - an existing path is never opened for writing, truncated or chmod-ed: a device, a FIFO,
//!   a directory, a symlink (whatever it points to) or another user's file keeps its mode
//!   and content. Only a regular file is replaced, and replacing only moves a name.
//! - the checks run before anything is created, so a refused target leaves no trace.
//!
//! The one exception is a log that streams keys as they are made (`--cw-log`): a FIFO or a
//! character device (`/dev/stdout` on a pipe, `/dev/null`) is the reader the operator chose,
//! so [`open_key_log`] writes to it as it is, without touching its mode; anything else gets
//! a new 0600 regular file.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a key file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PrivateFileError {
    /// The path exists and is not a regular file (or is a symlink).
    #[error(
        "{path} is {what}, not a regular file; a key file is only written as a new regular \
         file (give a path in a directory you own)"
    )]
    NotRegular { path: PathBuf, what: &'static str },
    /// The path exists and the caller asked never to replace a file.
    #[error("{path} already exists; it is not overwritten (remove it or give a new name)")]
    Exists { path: PathBuf },
    /// The path has no file name to put a temporary file beside.
    #[error("{path} does not name a file")]
    NoFileName { path: PathBuf },
    /// A file system call failed.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl PrivateFileError {
    fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        PrivateFileError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

/// What to do when the target is an existing regular file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Replace it (the name moves to the new file; the old inode is left as it was).
    Replace,
    /// Refuse with [`PrivateFileError::Exists`] (backups, a new store).
    Refuse,
}

/// What sits at a path, as `lstat` sees it (symlinks are not followed).
fn kind_of(meta: &fs::Metadata) -> Option<&'static str> {
    let t = meta.file_type();
    if t.is_file() {
        return None;
    }
    if t.is_symlink() {
        return Some("a symbolic link");
    }
    if t.is_dir() {
        return Some("a directory");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return Some("a FIFO");
        }
        if t.is_char_device() {
            return Some("a character device");
        }
        if t.is_block_device() {
            return Some("a block device");
        }
        if t.is_socket() {
            return Some("a socket");
        }
    }
    Some("not a regular file")
}

/// Check that `path` may be written as a key file: absent, or (with [`Existing::Replace`])
/// an existing regular file. Touches nothing.
pub fn check_target(path: &Path, existing: Existing) -> Result<(), PrivateFileError> {
    match fs::symlink_metadata(path) {
        Ok(meta) => match kind_of(&meta) {
            Some(what) => Err(PrivateFileError::NotRegular {
                path: path.to_owned(),
                what,
            }),
            None if existing == Existing::Refuse => Err(PrivateFileError::Exists {
                path: path.to_owned(),
            }),
            None => Ok(()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PrivateFileError::io("checking", path, e)),
    }
}

/// Open options for a new file readable by the owner only; `create_new` (O_EXCL) fails on
/// any existing name, a dangling symlink included.
fn new_file_options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o
}

/// Create `path` new, empty and mode 0600, refusing any existing name. For a file another
/// program fills in place (the SQLite store: it gives its `-wal`/`-shm` files the mode of
/// the database file).
pub fn create_new(path: &Path) -> Result<File, PrivateFileError> {
    check_target(path, Existing::Refuse)?;
    new_file_options().open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            // made by someone else between the check and the open
            PrivateFileError::Exists {
                path: path.to_owned(),
            }
        } else {
            PrivateFileError::io("creating", path, e)
        }
    })
}

/// A key file being written: a new 0600 file beside the target, renamed (or linked) into
/// place by [`PrivateFile::commit`]. Dropped without a commit, it removes the temporary file.
#[derive(Debug)]
pub struct PrivateFile {
    target: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
    existing: Existing,
}

impl PrivateFile {
    /// Check `target` and create the temporary file beside it.
    pub fn create(target: &Path, existing: Existing) -> Result<PrivateFile, PrivateFileError> {
        check_target(target, existing)?;
        let name = target
            .file_name()
            .ok_or_else(|| PrivateFileError::NoFileName {
                path: target.to_owned(),
            })?;
        // a name of our own beside the target (same file system, so rename is atomic); the
        // counter keeps two writers of one process apart, the pid two processes
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp{}.{seq}", std::process::id()));
        let tmp = target.with_file_name(tmp_name);
        let file = new_file_options()
            .open(&tmp)
            .map_err(|e| PrivateFileError::io("creating", &tmp, e))?;
        Ok(PrivateFile {
            target: target.to_owned(),
            tmp,
            file: Some(file),
            existing,
        })
    }

    /// The temporary file's path (for a writer that takes a path, such as `VACUUM INTO`).
    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// The temporary file, to write into.
    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("the file is held until commit")
    }

    /// Sync the data, put it at the target and sync the directory. Returns the file (still
    /// open, now under the target's name).
    pub fn commit(mut self) -> Result<File, PrivateFileError> {
        let file = self.file.take().expect("the file is held until commit");
        file.sync_all()
            .map_err(|e| PrivateFileError::io("syncing", &self.tmp, e))?;
        match self.existing {
            Existing::Replace => {
                // the target may have become something else since the check; rename only
                // replaces the name, so a symlink or device put there is not written through
                check_target(&self.target, Existing::Replace)?;
                fs::rename(&self.tmp, &self.target)
                    .map_err(|e| PrivateFileError::io("renaming into", &self.target, e))?;
            }
            Existing::Refuse => {
                // link(2) never replaces an existing name: no window in which a file made
                // meanwhile is overwritten
                fs::hard_link(&self.tmp, &self.target).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        PrivateFileError::Exists {
                            path: self.target.clone(),
                        }
                    } else {
                        PrivateFileError::io("linking into", &self.target, e)
                    }
                })?;
                fs::remove_file(&self.tmp)
                    .map_err(|e| PrivateFileError::io("removing", &self.tmp, e))?;
            }
        }
        // the rename is durable only once the directory is synced
        let dir = match self.target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if let Ok(d) = File::open(dir) {
            d.sync_all()
                .map_err(|e| PrivateFileError::io("syncing the directory of", &self.target, e))?;
        }
        // nothing left to clean up on drop
        self.tmp = PathBuf::new();
        Ok(file)
    }
}

impl Drop for PrivateFile {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Write `bytes` to `target` as a key file (see the module notes).
pub fn write(target: &Path, bytes: &[u8], existing: Existing) -> Result<(), PrivateFileError> {
    let mut f = PrivateFile::create(target, existing)?;
    f.file()
        .write_all(bytes)
        .map_err(|e| PrivateFileError::io("writing", &f.tmp, e))?;
    f.commit()?;
    Ok(())
}

/// Open a log that streams keys (the CW log): an existing FIFO or character device, also
/// through a symlink (`/dev/stdout`), is written as it is, its mode untouched; an existing
/// regular file is replaced by a new 0600 one; anything else is refused.
pub fn open_key_log(target: &Path) -> Result<File, PrivateFileError> {
    if let Ok(meta) = fs::metadata(target) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileTypeExt;
            let t = meta.file_type();
            if t.is_fifo() || t.is_char_device() {
                // no create, no truncate: the reader at the other end owns this path
                return OpenOptions::new()
                    .write(true)
                    .open(target)
                    .map_err(|e| PrivateFileError::io("opening", target, e));
            }
        }
        #[cfg(not(unix))]
        let _ = meta;
    }
    PrivateFile::create(target, Existing::Replace)?.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_file_is_0600_and_replaces_a_regular_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("card.json");
        fs::write(&p, "old").unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let old = fs::File::open(&p).unwrap();
        write(&p, b"new", Existing::Replace).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(mode(&p), 0o600);
        // the old inode keeps its mode: only the name moved
        assert_eq!(old.metadata().unwrap().permissions().mode() & 0o777, 0o644);
        // no temporary file left behind
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn refuse_keeps_an_existing_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("backup.db");
        fs::write(&p, "keep").unwrap();
        assert!(matches!(
            write(&p, b"x", Existing::Refuse),
            Err(PrivateFileError::Exists { .. })
        ));
        assert_eq!(fs::read(&p).unwrap(), b"keep");
        assert!(matches!(
            create_new(&p),
            Err(PrivateFileError::Exists { .. })
        ));
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn symlinks_directories_and_fifos_are_refused_untouched() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, "victim").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let dangling = d.path().join("dangling");
        std::os::unix::fs::symlink(d.path().join("nowhere"), &dangling).unwrap();
        let dir = d.path().join("dir");
        fs::create_dir(&dir).unwrap();
        for p in [&link, &dangling, &dir] {
            for how in [Existing::Replace, Existing::Refuse] {
                let e = write(p, b"key", how).unwrap_err();
                assert!(
                    matches!(e, PrivateFileError::NotRegular { .. }),
                    "{}: {e}",
                    p.display()
                );
            }
            assert!(create_new(p).is_err());
        }
        assert_eq!(fs::read(&victim).unwrap(), b"victim");
        assert!(!d.path().join("nowhere").exists());
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        // four names: victim, link, dangling, dir; no temporary file
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 4);
    }

    #[test]
    fn dropped_without_commit_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("card.json");
        let f = PrivateFile::create(&p, Existing::Replace).unwrap();
        assert!(f.tmp_path().exists());
        drop(f);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn key_log_is_new_0600_or_the_fifo_as_is() {
        use std::os::unix::fs::FileTypeExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cw.log");
        fs::write(&p, "old keys\n").unwrap();
        let mut f = open_key_log(&p).unwrap();
        f.write_all(b"0102\n").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"0102\n");
        assert_eq!(mode(&p), 0o600);
        // a FIFO of the test's own (never a system path) is written as it is
        let fifo = d.path().join("fifo");
        let st = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(st.success());
        let before = mode(&fifo);
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || fs::read(fifo).unwrap())
        };
        open_key_log(&fifo).unwrap().write_all(b"0304\n").unwrap();
        assert_eq!(reader.join().unwrap(), b"0304\n");
        assert_eq!(mode(&fifo), before);
        assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
        let dir = d.path().join("dir");
        fs::create_dir(&dir).unwrap();
        assert!(open_key_log(&dir).is_err());
    }
}
