//! Revocation by `sub` or `jti`: inline entries plus an optional file that is watched.
//!
//! The file is polled (every 500 ms) for a change of inode, size or modification time, so both
//! in-place writes and replace-by-rename are seen within a second. A file that becomes unreadable
//! or malformed keeps the last good set in force and logs an error: revocation never silently
//! turns off.

use arc_swap::ArcSwap;
use serde::Deserialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How often the file is looked at.
pub const POLL: Duration = Duration::from_millis(500);

/// The revoked identifiers in force.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RevocationSet {
    pub sub: HashSet<String>,
    pub jti: HashSet<String>,
}

impl RevocationSet {
    pub fn is_empty(&self) -> bool {
        self.sub.is_empty() && self.jti.is_empty()
    }
}

/// The file format: `{sub: [...], jti: [...]}` (YAML or JSON).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    #[serde(default)]
    sub: Vec<String>,
    #[serde(default)]
    jti: Vec<String>,
}

/// Parse a revocation file's text.
pub fn parse_file(text: &str) -> Result<RevocationSet, String> {
    if text.trim().is_empty() {
        return Ok(RevocationSet::default());
    }
    // JSON is read as JSON: libyaml refuses raw characters that JSON allows in strings (DEL,
    // C1 controls), so a valid JSON file written by a tool could otherwise be refused.
    let json = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).ok()
    } else {
        None
    };
    let f: FileFormat = match json {
        Some(f) => f,
        None => serde_yaml::from_str(text).map_err(|e| e.to_string())?,
    };
    Ok(RevocationSet {
        sub: f.sub.into_iter().collect(),
        jti: f.jti.into_iter().collect(),
    })
}

/// Inline entries, the watched file, and the merged set in force.
#[derive(Debug)]
pub struct Revocation {
    inline: RevocationSet,
    pub file: Option<PathBuf>,
    current: ArcSwap<RevocationSet>,
    /// `shared: true`: the entries pushed through Redis.
    pub shared: Option<Arc<crate::cluster::revocation::SharedRevocation>>,
}

impl Revocation {
    /// Build from inline entries and an optional file, which must be readable and valid now.
    pub fn new(inline: RevocationSet, file: Option<PathBuf>) -> Result<Revocation, String> {
        let r = Revocation {
            current: ArcSwap::from_pointee(inline.clone()),
            inline,
            file,
            shared: None,
        };
        if let Some(path) = &r.file {
            let set = Self::read(path)?;
            r.install(set);
        }
        Ok(r)
    }

    fn read(path: &Path) -> Result<RevocationSet, String> {
        let text = crate::config::file::read_to_string(path)
            .map_err(|e| format!("cannot read {path:?}: {e}"))?;
        parse_file(&text).map_err(|e| format!("{path:?}: {e}"))
    }

    fn install(&self, mut set: RevocationSet) {
        set.sub.extend(self.inline.sub.iter().cloned());
        set.jti.extend(self.inline.jti.iter().cloned());
        self.current.store(Arc::new(set));
    }

    /// Re-read the file now. On error the set in force is kept.
    pub fn reload(&self) -> Result<(), String> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let set = Self::read(path)?;
        self.install(set);
        Ok(())
    }

    pub fn is_revoked(&self, sub: Option<&str>, jti: Option<&str>) -> bool {
        let set = self.current.load();
        sub.is_some_and(|s| set.sub.contains(s))
            || jti.is_some_and(|j| set.jti.contains(j))
            || self.shared.as_ref().is_some_and(|s| s.is_revoked(sub, jti))
    }

    pub fn snapshot(&self) -> Arc<RevocationSet> {
        self.current.load_full()
    }

    /// Watch the file on a background thread for as long as `this` is alive.
    pub fn watch(this: &Arc<Revocation>) {
        if let Some(s) = &this.shared {
            crate::cluster::revocation::SharedRevocation::watch(s);
        }
        if this.file.is_none() {
            return;
        }
        crate::watch::watch(
            this,
            crate::watch::Watched {
                name: "revocation-watch",
                every: POLL,
                files: |r| r.file.iter().cloned().collect(),
                reload: |r| match r.reload() {
                    Ok(()) => {
                        let set = r.snapshot();
                        Ok(format!(
                            "revocation file {:?} reloaded: {} sub, {} jti",
                            r.file.as_deref().unwrap_or(Path::new("")),
                            set.sub.len(),
                            set.jti.len()
                        ))
                    }
                    Err(e) => Err(format!("revocation file: {e}; keeping the last good set")),
                },
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `revocation` fuzz target: YAML escapes can put a DEL or a C1 control in a
    /// value; written back out as JSON (raw, as JSON allows), the file was refused, because it
    /// was read with the YAML parser only.
    #[test]
    fn json_with_characters_yaml_refuses_raw_is_read() {
        let json = "{\"sub\": [\"a\u{7f}b\", \"c\u{80}d\"], \"jti\": [\"\u{9f}\"]}";
        assert!(
            serde_yaml::from_str::<FileFormat>(json).is_err(),
            "libyaml refuses it"
        );
        let set = parse_file(json).unwrap();
        assert!(set.sub.contains("a\u{7f}b") && set.sub.contains("c\u{80}d"));
        assert!(set.jti.contains("\u{9f}"));
        // The same entries as YAML escapes read the same.
        let yaml = "sub: [\"a\\x7fb\", \"c\\x80d\"]\njti: [\"\\x9f\"]\n";
        assert_eq!(parse_file(yaml).unwrap(), set);
        // And a YAML flow mapping that is not JSON still reads as YAML.
        assert_eq!(parse_file("{sub: [x]}").unwrap().sub.len(), 1);
    }

    #[test]
    fn file_format() {
        let s = parse_file("sub: [a, b]\njti: [\"x\"]\n").unwrap();
        assert!(s.sub.contains("a") && s.jti.contains("x"));
        assert!(parse_file("").unwrap().is_empty());
        assert!(parse_file("{\"sub\": [\"j\"]}").unwrap().sub.contains("j"));
        assert!(parse_file("subs: [a]").is_err());
        assert!(parse_file("sub: a").is_err());
    }

    #[test]
    fn reload_keeps_the_last_good_set_on_error() {
        let dir = std::env::temp_dir().join(format!("portcullis-rev-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("revoked.yaml");
        std::fs::write(&path, "sub: [alice]\n").unwrap();
        let inline = RevocationSet {
            sub: ["inline".to_string()].into(),
            jti: HashSet::new(),
        };
        let r = Revocation::new(inline, Some(path.clone())).unwrap();
        assert!(r.is_revoked(Some("alice"), None));
        assert!(r.is_revoked(Some("inline"), None));
        assert!(!r.is_revoked(Some("bob"), Some("j1")));
        std::fs::write(&path, "sub: [bob]\njti: [j1]\n").unwrap();
        r.reload().unwrap();
        assert!(!r.is_revoked(Some("alice"), None));
        assert!(r.is_revoked(None, Some("j1")));
        assert!(r.is_revoked(Some("inline"), None));
        std::fs::write(&path, "sub: [bob\n").unwrap();
        assert!(r.reload().is_err());
        assert!(r.is_revoked(Some("bob"), None));
        std::fs::remove_file(&path).unwrap();
        assert!(r.reload().is_err());
        assert!(r.is_revoked(Some("bob"), None));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(Revocation::new(RevocationSet::default(), Some(path)).is_err());
    }
}
