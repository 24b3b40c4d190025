//! Watching files that are reloaded while the gateway runs (the revocation file, certificates):
//! polled for a change of inode, size or modification time, so both in-place writes and
//! replace-by-rename (certbot, cert-manager, a config-management tool) are seen within a poll.
//! A reload that fails keeps what is in force and is retried on every poll.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// What is compared between polls; `None` when the file is missing.
pub type Stamp = Option<(u64, u64, i64, i64)>;

pub fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
}

/// How one kind of watched thing is looked at and reloaded.
pub struct Watched<T> {
    /// Thread name.
    pub name: &'static str,
    pub every: Duration,
    /// The files to watch, asked again on every poll (a config reload may change them).
    pub files: fn(&T) -> Vec<PathBuf>,
    /// Reload; `Ok` carries a line for the log.
    pub reload: fn(&T) -> Result<String, String>,
}

/// Watch on a thread of its own for as long as `this` is alive.
pub fn watch<T: Send + Sync + 'static>(this: &Arc<T>, w: Watched<T>) {
    let weak: Weak<T> = Arc::downgrade(this);
    let _ = std::thread::Builder::new()
        .name(w.name.into())
        .spawn(move || {
            let stamps = |t: &T| -> Vec<Stamp> { (w.files)(t).iter().map(|p| stamp(p)).collect() };
            let Some(mut last) = weak.upgrade().map(|t| stamps(&t)) else {
                return;
            };
            let mut failing = false;
            loop {
                std::thread::sleep(w.every);
                let Some(t) = weak.upgrade() else { return };
                let now = stamps(&t);
                if now == last && !failing {
                    continue;
                }
                match (w.reload)(&t) {
                    Ok(line) => {
                        log::info!("{line}");
                        failing = false;
                    }
                    Err(e) => {
                        if !failing || now != last {
                            log::error!("{e}");
                        }
                        failing = true;
                    }
                }
                // Files may have been switched by the reload itself: stamp what is watched now.
                last = stamps(&t);
            }
        });
}
