//! Reading the files a config names (the config itself, keys, certificates, CA bundles, the
//! revocation list): only regular files, and only up to a size. A path that names a FIFO
//! would block `check`, a start or a reload forever, and one that names a device such as
//! `/dev/zero` or `/dev/urandom` would be read until memory runs out; both are refused with an
//! error instead, as is a file larger than any of these can sensibly be.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The largest file read: far above any real config, key set, certificate bundle or revocation
/// list, far below what would hurt a gateway's memory.
pub const MAX_FILE: u64 = 64 << 20;

/// The bytes of the regular file at `path`; an error for anything else, or for more than
/// `MAX_FILE` bytes.
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    read_at_most(path, MAX_FILE)
}

/// `read`, as UTF-8 text.
pub fn read_to_string(path: &Path) -> io::Result<String> {
    String::from_utf8(read(path)?).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )
    })
}

fn read_at_most(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    // Looked at before opening: opening a FIFO for reading waits for a writer.
    regular(&std::fs::metadata(path)?, limit)?;
    // Non-blocking, so that a FIFO put there between the look and the open does not block
    // either; what was opened is looked at again.
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let size = regular(&file.metadata()?, limit)?;
    let mut bytes = Vec::with_capacity(size as usize);
    // One byte past the limit tells a file that grew past it since it was looked at.
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(limit));
    }
    Ok(bytes)
}

/// The file's size when it is a regular file of at most `limit` bytes.
fn regular(meta: &std::fs::Metadata, limit: u64) -> io::Result<u64> {
    if !meta.is_file() {
        let what = kind(meta.file_type());
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a regular file ({what})"),
        ));
    }
    if meta.len() > limit {
        return Err(too_large(limit));
    }
    Ok(meta.len())
}

fn too_large(limit: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("larger than {} MiB, the most read", limit >> 20),
    )
}

fn kind(t: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "an unknown kind of file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("portcullis-file-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_regular_file_is_read_whole() {
        let dir = scratch("regular");
        let p = dir.join("f");
        std::fs::write(&p, b"keys: {}\n").unwrap();
        assert_eq!(read(&p).unwrap(), b"keys: {}\n");
        assert_eq!(read_to_string(&p).unwrap(), "keys: {}\n");
        // through a symbolic link too (how Kubernetes mounts secrets)
        let link = dir.join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert_eq!(read(&link).unwrap(), b"keys: {}\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn devices_directories_and_fifos_are_refused_without_blocking() {
        for (p, what) in [
            ("/dev/zero", "a character device"),
            ("/dev/urandom", "a character device"),
            ("/", "a directory"),
        ] {
            let e = read(Path::new(p)).unwrap_err();
            assert_eq!(e.to_string(), format!("not a regular file ({what})"), "{p}");
        }
        let dir = scratch("fifo");
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // No writer ever opens it: a plain read would wait forever.
        let e = read(&fifo).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file (a FIFO)");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_over_the_limit_is_refused() {
        let dir = scratch("large");
        let p = dir.join("f");
        std::fs::write(&p, vec![b'a'; 3 << 20]).unwrap();
        assert_eq!(read_at_most(&p, 3 << 20).unwrap().len(), 3 << 20);
        let e = read_at_most(&p, 2 << 20).unwrap_err();
        assert_eq!(e.to_string(), "larger than 2 MiB, the most read");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_file_and_bad_text_are_errors() {
        let dir = scratch("missing");
        assert_eq!(
            read(&dir.join("none")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        let p = dir.join("bin");
        std::fs::write(&p, [0xff, 0xfe]).unwrap();
        assert_eq!(
            read_to_string(&p).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
