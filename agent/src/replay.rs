//! The replay cache: ids of the commands this device accepted, remembered until they expire and
//! across restarts, so a captured command cannot run twice.
//!
//! - **File**: `<state dir>/commands.seen`, owner-only, one line per command: `<exp> <id>`
//!   (unix seconds, 32 hex characters). An id is appended and the file `sync_data`'d *before*
//!   the command runs ([`ReplayCache::record`]): a crash after it never lets the command run again.
//! - **Open** reads the file, skips damaged lines with a warning (never fatal), drops entries
//!   whose `exp + MAX_SKEW_SECS` has passed (the verifier refuses such commands as expired
//!   anyway) and rewrites the file atomically with what is left.
//! - **Bounded**: at most [`MAX_ENTRIES`] ids. When full, expired entries are dropped first; if
//!   it is still full, the command is refused ([`Reject::ReplayCacheFull`]). When the file cannot
//!   be written, the command is refused as well: running a command at most once matters more
//!   than running it at all.
//! - The file is compacted (rewritten without expired entries) when it holds more than twice
//!   as many lines as live entries.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{self, BufRead, BufReader, Write},
    path::{Path, PathBuf},
};
use wegweiser_shared::command::{MAX_SKEW_SECS, Reject, valid_id};

/// Most command ids remembered.
pub const MAX_ENTRIES: usize = 100_000;
/// Fewest lines before the file is compacted.
const COMPACT_MIN_LINES: usize = 1024;

/// Why the cache could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The file could not be read or written.
    #[error("cannot use the replay cache {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: io::Error,
    },
}

/// Why an id was not recorded: the rejection reason and a detail for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// [`Reject::Replay`] or [`Reject::ReplayCacheFull`].
    pub reason: Reject,
    /// What happened.
    pub detail: String,
}

/// The cache of command ids seen (see the [module docs](self)).
#[derive(Debug)]
pub struct ReplayCache {
    path: PathBuf,
    /// Id → expiry.
    seen: HashMap<String, i64>,
    /// Open for appending; `None` after a failed write (the next record rewrites the file).
    file: Option<File>,
    /// Lines in the file (live and expired).
    lines: usize,
    max: usize,
}

/// Whether an entry expiring at `exp` can be forgotten at `now`.
fn expired(exp: i64, now: i64) -> bool {
    exp.saturating_add(MAX_SKEW_SECS) < now
}

impl ReplayCache {
    /// Opens (or creates) the cache at `path` with [`MAX_ENTRIES`].
    pub fn open(path: &Path, now: i64) -> Result<Self, ReplayError> {
        Self::open_with_limit(path, now, MAX_ENTRIES)
    }

    /// Opens (or creates) the cache at `path`, remembering at most `max` ids.
    pub fn open_with_limit(path: &Path, now: i64, max: usize) -> Result<Self, ReplayError> {
        let io_err = |source| ReplayError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut seen = HashMap::new();
        let mut damaged = 0usize;
        match File::open(path) {
            Ok(f) => {
                for line in BufReader::new(f).split(b'\n') {
                    let line = line.map_err(io_err)?;
                    match parse_line(&line) {
                        Some((exp, id)) => {
                            if !expired(exp, now) {
                                let e = seen.entry(id).or_insert(exp);
                                *e = (*e).max(exp);
                            }
                        }
                        None if line.iter().all(u8::is_ascii_whitespace) => {}
                        None => damaged += 1,
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }
        if damaged > 0 {
            tracing::warn!(
                file = %path.display(),
                lines = damaged,
                "Skipped damaged lines in the replay cache."
            );
        }
        let mut cache = Self {
            path: path.to_owned(),
            seen,
            file: None,
            lines: 0,
            max,
        };
        cache.rewrite().map_err(io_err)?;
        Ok(cache)
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Whether `id` was seen.
    pub fn contains(&self, id: &str) -> bool {
        self.seen.contains_key(id)
    }

    /// Records `id` (expiring at `exp`) durably, or refuses it: seen before
    /// ([`Reject::Replay`]), no room ([`Reject::ReplayCacheFull`]), or the file cannot be
    /// written (also [`Reject::ReplayCacheFull`]). Only after `Ok` may the command run.
    pub fn record(&mut self, id: &str, exp: i64, now: i64) -> Result<(), Refused> {
        if self.seen.contains_key(id) {
            return Err(Refused {
                reason: Reject::Replay,
                detail: "command id seen before".to_owned(),
            });
        }
        if self.seen.len() >= self.max {
            self.seen.retain(|_, e| !expired(*e, now));
            if self.seen.len() >= self.max {
                return Err(Refused {
                    reason: Reject::ReplayCacheFull,
                    detail: format!("{} unexpired command ids remembered", self.seen.len()),
                });
            }
        }
        let written = if self.file.is_none() {
            // The last append failed (a partial line may be in the file): start clean.
            self.seen.insert(id.to_owned(), exp);
            let r = self.rewrite();
            if r.is_err() {
                self.seen.remove(id);
            }
            r
        } else {
            self.append(id, exp).inspect(|()| {
                self.seen.insert(id.to_owned(), exp);
            })
        };
        if let Err(e) = written {
            self.file = None;
            return Err(Refused {
                reason: Reject::ReplayCacheFull,
                detail: format!("cannot record the command id: {e}"),
            });
        }
        if self.lines > COMPACT_MIN_LINES.max(self.seen.len().saturating_mul(2)) {
            self.seen.retain(|_, e| !expired(*e, now));
            if let Err(e) = self.rewrite() {
                // The id is in the file already; the next record tries again.
                tracing::warn!(file = %self.path.display(), error = %e, "Cannot compact the replay cache.");
                self.file = None;
            }
        }
        Ok(())
    }

    fn append(&mut self, id: &str, exp: i64) -> io::Result<()> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("replay cache file not open"))?;
        file.write_all(format!("{exp} {id}\n").as_bytes())?;
        file.sync_data()?;
        self.lines += 1;
        Ok(())
    }

    /// Writes every remembered id to a new file, atomically, and opens it for appending.
    fn rewrite(&mut self) -> io::Result<()> {
        self.file = None;
        let mut text = String::with_capacity(self.seen.len() * 45);
        for (id, exp) in &self.seen {
            text.push_str(&format!("{exp} {id}\n"));
        }
        crate::platform::write_owner_only(&self.path, text.as_bytes())?;
        self.file = Some(OpenOptions::new().append(true).open(&self.path)?);
        self.lines = self.seen.len();
        Ok(())
    }
}

fn parse_line(line: &[u8]) -> Option<(i64, String)> {
    let text = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let (exp, id) = text.split_once(' ')?;
    let exp: i64 = exp.parse().ok()?;
    valid_id(id).then(|| (exp, id.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wegweiser_shared::command::new_id;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_replay_is_refused_even_after_reopening() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("commands.seen");
        let id = new_id();
        let mut c = ReplayCache::open(&path, NOW).unwrap();
        c.record(&id, NOW + 300, NOW).unwrap();
        assert_eq!(
            c.record(&id, NOW + 300, NOW).unwrap_err().reason,
            Reject::Replay
        );
        drop(c);
        let mut c = ReplayCache::open(&path, NOW + 10).unwrap();
        assert!(c.contains(&id));
        assert_eq!(
            c.record(&id, NOW + 300, NOW + 10).unwrap_err().reason,
            Reject::Replay
        );
        // Another id is fine.
        c.record(&new_id(), NOW + 300, NOW + 10).unwrap();
        assert_eq!(c.len(), 2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    #[test]
    fn expired_entries_are_dropped_on_open() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("commands.seen");
        let (old, young) = (new_id(), new_id());
        let mut c = ReplayCache::open(&path, NOW).unwrap();
        c.record(&old, NOW + 10, NOW).unwrap();
        c.record(&young, NOW + 1000, NOW).unwrap();
        drop(c);
        // Within the skew the old one is still remembered.
        let c = ReplayCache::open(&path, NOW + 10 + MAX_SKEW_SECS).unwrap();
        assert!(c.contains(&old) && c.contains(&young));
        drop(c);
        let c = ReplayCache::open(&path, NOW + 11 + MAX_SKEW_SECS).unwrap();
        assert!(!c.contains(&old));
        assert!(c.contains(&young));
        drop(c);
        // The file was compacted.
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{} {young}\n", NOW + 1000));
    }

    #[test]
    fn the_bound_is_enforced_after_dropping_expired_ids() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("commands.seen");
        let mut c = ReplayCache::open_with_limit(&path, NOW, 3).unwrap();
        c.record(&new_id(), NOW + 5, NOW).unwrap();
        c.record(&new_id(), NOW + 500, NOW).unwrap();
        c.record(&new_id(), NOW + 500, NOW).unwrap();
        let e = c.record(&new_id(), NOW + 500, NOW).unwrap_err();
        assert_eq!(e.reason, Reject::ReplayCacheFull);
        assert_eq!(c.len(), 3);
        // Once the first has expired, there is room again.
        let later = NOW + 6 + MAX_SKEW_SECS;
        c.record(&new_id(), later + 300, later).unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(
            c.record(&new_id(), later + 300, later).unwrap_err().reason,
            Reject::ReplayCacheFull
        );
    }

    #[test]
    fn damaged_lines_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("commands.seen");
        let good = new_id();
        let text = format!(
            "garbage\n{} {good}\n12 not-an-id\n\u{0}\u{1}\nabc {good}\n{} {}",
            NOW + 100,
            NOW + 100,
            &good[..10]
        );
        std::fs::write(&path, text).unwrap();
        let mut c = ReplayCache::open(&path, NOW).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(
            c.record(&good, NOW + 100, NOW).unwrap_err().reason,
            Reject::Replay
        );
        // A torn last line (crash while appending) does not hide the next record.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"18000").unwrap();
        drop(f);
        let mut c = ReplayCache::open(&path, NOW).unwrap();
        let next = new_id();
        c.record(&next, NOW + 100, NOW).unwrap();
        drop(c);
        let c = ReplayCache::open(&path, NOW).unwrap();
        assert!(c.contains(&next) && c.contains(&good));
    }

    #[cfg(unix)]
    #[test]
    fn an_unwritable_file_refuses_the_command() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("commands.seen");
        let mut c = ReplayCache::open(&path, NOW).unwrap();
        // Appends go to a file that cannot take them.
        c.file = Some(File::open(&path).unwrap());
        let id = new_id();
        let e = c.record(&id, NOW + 100, NOW).unwrap_err();
        assert_eq!(e.reason, Reject::ReplayCacheFull);
        assert!(!c.contains(&id));
        // The next record starts a clean file.
        c.record(&id, NOW + 100, NOW).unwrap();
        drop(c);
        assert!(ReplayCache::open(&path, NOW).unwrap().contains(&id));
    }
}
