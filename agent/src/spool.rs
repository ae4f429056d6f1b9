//! A bounded, crash-safe, on-disk FIFO for reports the agent could not deliver yet.
//!
//! Reports are [`Spool::push`]ed before they are sent, replayed in order with [`Spool::peek`]
//! and removed with [`Spool::ack`] once the control plane has them. Delivery is at least once:
//! the control plane deduplicates by message id, so replaying a record that was in fact
//! delivered is harmless, while losing an unacknowledged one is not.
//!
//! # Files
//!
//! The directory (created 0700 on Unix) holds owner-only (0600) files:
//!
//! | file | what |
//! |---|---|
//! | `seg-<first seq, 20 digits>.log` | a segment: records appended in sequence order |
//! | `ack` | the last acknowledged sequence number, in decimal; written atomically |
//! | `lock` | held while a [`Spool`] has the directory open (one writer) |
//! | `seg-….log.corrupt`, `seg-….log.<n>.corrupt` | a damaged segment set aside on open; never deleted here |
//!
//! **Record format (version 1).** Every record is one frame, written with a single `write`:
//! a magic/version byte `0xA1`, the body length as a little-endian `u32`, the same length
//! bit-inverted (`!len`, so a damaged length field is recognized as damage instead of being
//! mistaken for a torn write and cut off together with the good records behind it), the
//! CRC-32 (IEEE, as in zlib) of the body as a little-endian `u32`, then the body: the sequence
//! number (`u64` LE), the subject (`u16` LE length + UTF-8), the message id (`u16` LE length +
//! UTF-8) and the payload (`u32` LE length + bytes). That is 29 bytes of framing per record;
//! a whole frame may be at most [`MAX_RECORD_BYTES`]. Sequence numbers start at 1 and increase
//! by one per push; a segment's name is the number of its first record and its records follow
//! without gaps (anything else is damage). Across restarts numbering continues after every
//! number found on disk (segments, their names, set-aside copies, the `ack` file); only
//! records lost to a power cut before they were synced can have their numbers used again.
//!
//! # Bounds
//!
//! A segment is closed once the next record would take it past
//! `min(`[`MAX_SEGMENT_BYTES`]`, max_bytes / 8)` and a new one is started. The segment files
//! together never hold more than `max_bytes` ([`Spool::disk_bytes`]): before a record is
//! appended, whole oldest segments are deleted until it fits, acknowledged or not. The
//! unacknowledged records deleted that way are counted, and [`Spool::take_dropped`] hands the
//! count to the caller (reported as a "spool overflow" event). Set-aside `*.corrupt` files are
//! outside the bound.
//!
//! # Durability
//!
//! [`Spool::push`] calls `sync_data` after every [`Spool::set_sync_every`] records (default
//! [`DEFAULT_SYNC_EVERY`] = 1, every record). Syncing every record means a pushed record
//! survives power loss, at the price of one disk flush per record (milliseconds on spinning
//! disks and cheap SD cards, and flash wear). With `n > 1` up to `n - 1` records pushed just
//! before a power loss (not a process crash: those writes are already in the OS cache) can be
//! lost; call [`Spool::sync`] from a timer to bound that window in time as well. A closed
//! segment is always synced before the next one is started, and the `ack` file is written
//! atomically (temporary file, fsync, rename) before acknowledged segments are deleted, so
//! after a crash acknowledged records are at most replayed again, never the reverse.
//!
//! # Recovery
//!
//! [`Spool::open`] reads every segment and checks every frame:
//!
//! - A frame cut short at the end of a segment (a torn write) is truncated away; the records
//!   before it are kept. [`OpenReport::truncated_bytes`] counts the bytes removed.
//! - Any other damage (wrong magic byte, inconsistent length, CRC mismatch, malformed body,
//!   sequence numbers out of order) makes the rest of that segment unreadable, as frames can
//!   no longer be delimited. The segment file is copied as found to `*.corrupt`
//!   ([`OpenReport::set_aside`]), then cut back to the records before the damage, which stay in
//!   the spool. Later segments are not affected.
//!
//! Damaged data never makes `open` fail or panic; only real I/O errors do (permission denied,
//! disk full while setting a segment aside, the directory locked by another process). Damage
//! that appears while the spool is open (the file changed underneath it) is handled the same
//! way when [`Spool::peek`] or [`Spool::ack`] meets it, and the unacknowledged records lost
//! with it are added to the dropped count.
//!
//! ```no_run
//! use wegweiser_agent::spool::{Spool, DEFAULT_MAX_BYTES};
//! # fn demo() -> Result<(), wegweiser_agent::spool::SpoolError> {
//! let (mut spool, report) = Spool::open("/var/lib/wegweiser/spool".as_ref(), DEFAULT_MAX_BYTES)?;
//! spool.push("wg.acct.up.dev.tel.hb", "msg-1", b"{}")?;
//! for record in spool.peek(100)? {
//!     // publish record.subject / record.msg_id / record.payload, then, once confirmed:
//!     spool.ack(record.seq)?;
//! }
//! let overflowed = spool.take_dropped(); // report as a "spool overflow" event when > 0
//! # let _ = (report, overflowed); Ok(()) }
//! ```

use crate::platform;
use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, BufReader, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
};

/// The default bound on the segment files' total size: 64 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// The smallest `max_bytes` [`Spool::open`] accepts: 4 KiB.
pub const MIN_MAX_BYTES: u64 = 4 * 1024;
/// The largest record, framing included: 1 MiB (less when `max_bytes` is smaller).
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// A segment is closed at this size (or at `max_bytes / 8` if that is smaller).
pub const MAX_SEGMENT_BYTES: u64 = 4 * 1024 * 1024;
/// By default every pushed record is synced to disk.
pub const DEFAULT_SYNC_EVERY: usize = 1;

/// The magic/version byte that starts every frame (format version 1).
const FRAME_V1: u8 = 0xA1;
/// Magic byte, length, inverted length, CRC-32.
const HEADER_LEN: usize = 1 + 4 + 4 + 4;
/// The body's fixed part: sequence number and the three length prefixes.
const BODY_FIXED_LEN: usize = 8 + 2 + 2 + 4;
/// The smallest frame: empty subject, message id and payload.
const MIN_FRAME_LEN: usize = HEADER_LEN + BODY_FIXED_LEN;
const ACK_FILE: &str = "ack";
const LOCK_FILE: &str = "lock";
/// An `ack` file longer than this is not one the spool wrote.
const MAX_ACK_FILE: u64 = 64;
/// Set-aside copies of one segment tried before giving up.
const MAX_ASIDE_COPIES: u32 = 1000;

/// Why the spool cannot do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// Reading or writing a file in the spool directory failed (permissions, disk full, …).
    #[error("spool I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Another [`Spool`] (in this or another process) has the directory open.
    #[error("the spool directory {dir} is in use by another process")]
    Locked {
        /// The spool directory.
        dir: PathBuf,
    },
    /// The record, framing included, is larger than the spool accepts.
    #[error("a record of {size} bytes is larger than the spool's limit of {limit} bytes")]
    TooLarge {
        /// The record's size with its framing.
        size: usize,
        /// The largest record accepted (1 MiB, or `max_bytes` if smaller).
        limit: usize,
    },
    /// The subject or the message id is longer than 65535 bytes.
    #[error("the {field} is {len} bytes long; at most 65535 bytes are allowed")]
    FieldTooLong {
        /// `"subject"` or `"message id"`.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// `max_bytes` is below [`MIN_MAX_BYTES`].
    #[error("a spool of {max_bytes} bytes is too small; the minimum is {min} bytes")]
    TooSmall {
        /// The size asked for.
        max_bytes: u64,
        /// [`MIN_MAX_BYTES`].
        min: u64,
    },
}

/// Maps an I/O error on `path` to [`SpoolError::Io`].
fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One spooled report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its sequence number: increasing, unique within the spool.
    pub seq: u64,
    /// The NATS subject it is to be published on.
    pub subject: String,
    /// The message id the control plane deduplicates by.
    pub msg_id: String,
    /// The message.
    pub payload: Vec<u8>,
}

/// What [`Spool::open`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpenReport {
    /// Unacknowledged records found, to be replayed.
    pub recovered_records: u64,
    /// Bytes of torn records cut off the ends of segments.
    pub truncated_bytes: u64,
    /// Copies of damaged segments, set aside and never deleted by the spool.
    pub set_aside: Vec<PathBuf>,
}

/// One segment file, as the spool knows it.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// Valid bytes; the file holds exactly these.
    size: u64,
    /// Records in the file, acknowledged or not.
    records: u64,
    /// The last record's sequence number, or an upper bound on it (`None`: no records).
    last_seq: Option<u64>,
}

/// The spool. See the [module documentation](self) for the format and the guarantees.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_limit: u64,
    record_limit: usize,
    /// Oldest first; the last one is the one appended to (when `active` is open).
    segments: VecDeque<Segment>,
    /// Append handle on the last segment.
    active: Option<File>,
    /// Where the first unacknowledged record of the first segment starts.
    head_offset: u64,
    /// Records of the first segment before `head_offset` (all acknowledged).
    head_skipped: u64,
    /// The last acknowledged sequence number (0: none).
    acked: u64,
    next_seq: u64,
    disk_bytes: u64,
    total_records: u64,
    dropped: u64,
    sync_every: usize,
    unsynced: usize,
    /// Held for the spool's lifetime: one writer per directory.
    _lock: File,
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, bounded to `max_bytes` of segment files
    /// ([`DEFAULT_MAX_BYTES`] is a good default), and recovers what a previous run left.
    ///
    /// Fails only on I/O errors, a `max_bytes` below [`MIN_MAX_BYTES`], or when another
    /// `Spool` holds the directory; damaged data is repaired or set aside (see the module
    /// docs). If `max_bytes` is smaller than what is on disk, the oldest segments are dropped
    /// now and counted in [`Spool::take_dropped`].
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(Spool, OpenReport), SpoolError> {
        if max_bytes < MIN_MAX_BYTES {
            return Err(SpoolError::TooSmall {
                max_bytes,
                min: MIN_MAX_BYTES,
            });
        }
        platform::create_private_dir(dir).map_err(io_err(dir))?;
        if let Ok(Some(access)) = platform::too_open(dir) {
            tracing::warn!(dir = %dir.display(), %access, "The spool directory is accessible to other users.");
        }
        let lock_path = dir.join(LOCK_FILE);
        let lock = platform::try_lock(&lock_path)
            .map_err(io_err(&lock_path))?
            .ok_or_else(|| SpoolError::Locked {
                dir: dir.to_path_buf(),
            })?;
        platform::restrict_to_owner(&lock_path).map_err(io_err(&lock_path))?;
        let acked = read_ack(&dir.join(ACK_FILE))?;

        let mut report = OpenReport::default();
        let mut segments = VecDeque::new();
        let (mut head_offset, mut head_skipped) = (0, 0);
        let mut next_seq = acked.saturating_add(1);
        let mut prev_last = None;
        let files = list_segments(dir)?;
        let count = files.len();
        for (i, (first_seq, path)) in files.into_iter().enumerate() {
            next_seq = next_seq.max(first_seq);
            let scan = scan_segment(&path, first_seq, prev_last, acked).map_err(io_err(&path))?;
            match scan.damage {
                None => {}
                Some(Damage::Torn) => {
                    truncate(&path, scan.valid_end).map_err(io_err(&path))?;
                    let cut = scan.file_len.saturating_sub(scan.valid_end);
                    report.truncated_bytes += cut;
                    tracing::warn!(segment = %path.display(), bytes = cut, "Spool: cut a torn record off the end of a segment.");
                }
                Some(Damage::Corrupt(why)) => {
                    let aside = set_aside(&path, scan.valid_end).map_err(io_err(&path))?;
                    tracing::error!(
                        segment = %path.display(),
                        offset = scan.valid_end,
                        reason = why,
                        set_aside = %aside.display(),
                        "Spool: a damaged segment was set aside; records after the damage are not replayed."
                    );
                    report.set_aside.push(aside);
                }
            }
            if let Some(last) = scan.last_seq {
                prev_last = Some(last);
                next_seq = next_seq.max(last.saturating_add(1));
            }
            if let Some(Damage::Corrupt(_)) = scan.damage
                && i + 1 == count
            {
                // Never reuse a number a set-aside record may carry: the damaged bytes hold at
                // most one record per `MIN_FRAME_LEN` bytes, numbered on from the good ones.
                // (A later segment's name already lies beyond them.)
                let start = scan
                    .last_seq
                    .map_or(first_seq, |last| last.saturating_add(1));
                let most = scan.file_len.saturating_sub(scan.valid_end) / MIN_FRAME_LEN as u64;
                next_seq = next_seq.max(start.saturating_add(most));
            }
            // Empty or fully acknowledged (a crash came between writing `ack` and deleting).
            if scan.last_seq.is_none_or(|last| last <= acked) {
                remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            if segments.is_empty() {
                (head_offset, head_skipped) = (scan.head_offset, scan.head_skipped);
            }
            segments.push_back(Segment {
                path,
                size: scan.valid_end,
                records: scan.records,
                last_seq: scan.last_seq,
            });
        }

        let segment_limit = MAX_SEGMENT_BYTES.min(max_bytes / 8);
        // Append to the last segment only where the next record continues it.
        let active = match segments.back() {
            Some(last)
                if last.size < segment_limit
                    && last.last_seq.map(|l| l.saturating_add(1)) == Some(next_seq) =>
            {
                Some(
                    OpenOptions::new()
                        .append(true)
                        .open(&last.path)
                        .map_err(io_err(&last.path))?,
                )
            }
            _ => None,
        };
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_limit,
            record_limit: usize::try_from(max_bytes)
                .unwrap_or(usize::MAX)
                .min(MAX_RECORD_BYTES),
            disk_bytes: segments.iter().map(|s| s.size).sum(),
            total_records: segments.iter().map(|s| s.records).sum(),
            segments,
            active,
            head_offset,
            head_skipped,
            acked,
            next_seq,
            dropped: 0,
            sync_every: DEFAULT_SYNC_EVERY,
            unsynced: 0,
            _lock: lock,
        };
        spool.make_room(0)?;
        report.recovered_records = spool.len();
        tracing::debug!(
            dir = %dir.display(),
            records = report.recovered_records,
            next_seq = spool.next_seq,
            "Spool opened."
        );
        Ok((spool, report))
    }

    /// Appends a record and returns its sequence number.
    ///
    /// Refuses records larger than 1 MiB with their framing ([`SpoolError::TooLarge`]). When
    /// the record would take the spool past `max_bytes`, whole oldest segments are deleted
    /// first (see [`Spool::take_dropped`]). On an I/O error the record is not in the spool,
    /// except when only the `sync_data` after a successful write failed: then it is, but
    /// may not be durable.
    pub fn push(&mut self, subject: &str, msg_id: &str, payload: &[u8]) -> Result<u64, SpoolError> {
        let seq = self.next_seq;
        let frame = encode(seq, subject, msg_id, payload, self.record_limit)?;
        let len = frame.len() as u64;
        self.make_room(len)?;
        let fits = match (&self.active, self.segments.back()) {
            (Some(_), Some(last)) => last.size == 0 || last.size + len <= self.segment_limit,
            _ => false,
        };
        if !fits {
            self.rotate()?;
        }
        let (Some(file), Some(last)) = (self.active.as_mut(), self.segments.back_mut()) else {
            return Err(SpoolError::Io {
                path: self.dir.clone(),
                source: io::Error::other("no segment is open for appending"),
            });
        };
        if let Err(source) = file.write_all(&frame) {
            // Take back a partial write so the segment stays well-formed; if even that fails,
            // stop appending to this segment (the next open cuts the torn tail).
            let rolled_back = file.set_len(last.size).is_ok();
            let path = last.path.clone();
            if !rolled_back {
                self.close_active();
            }
            return Err(SpoolError::Io { path, source });
        }
        last.size += len;
        last.records += 1;
        last.last_seq = Some(seq);
        self.disk_bytes += len;
        self.total_records += 1;
        self.next_seq = seq.saturating_add(1);
        self.unsynced += 1;
        if self.unsynced >= self.sync_every {
            file.sync_data().map_err(io_err(&last.path))?;
            self.unsynced = 0;
        }
        Ok(seq)
    }

    /// The oldest unacknowledged records, at most `max`, oldest first; nothing is removed.
    pub fn peek(&mut self, max: usize) -> Result<Vec<Record>, SpoolError> {
        self.peek_bounded(max, usize::MAX)
    }

    /// Like [`Spool::peek`], but stops before the payloads would exceed `max_bytes` (the first
    /// record is always returned, whatever its size).
    pub fn peek_bounded(
        &mut self,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, SpoolError> {
        let len = usize::try_from(self.len()).unwrap_or(usize::MAX);
        let mut out = Vec::with_capacity(max.min(len).min(1024));
        let mut bytes = 0usize;
        let mut full = false;
        let mut idx = 0;
        while !full && out.len() < max && idx < self.segments.len() {
            let (offset, skipped) = if idx == 0 {
                (self.head_offset, self.head_skipped)
            } else {
                (0, 0)
            };
            self.walk(idx, offset, skipped, &mut |record, _| {
                if !out.is_empty() && bytes.saturating_add(record.payload.len()) > max_bytes {
                    full = true;
                    return false;
                }
                bytes = bytes.saturating_add(record.payload.len());
                out.push(record);
                out.len() < max
            })?;
            idx += 1;
        }
        Ok(out)
    }

    /// Removes every record up to and including `up_to_seq`.
    ///
    /// The `ack` file is updated first (atomically), then fully acknowledged segments are
    /// deleted; the segment being appended to is kept until it is closed. Acknowledging a
    /// sequence number not pushed yet acknowledges everything pushed so far; an older one
    /// than the last acknowledged does nothing.
    pub fn ack(&mut self, up_to_seq: u64) -> Result<(), SpoolError> {
        let up_to = up_to_seq.min(self.next_seq.saturating_sub(1));
        if up_to <= self.acked {
            return Ok(());
        }
        let path = self.dir.join(ACK_FILE);
        platform::write_owner_only(&path, format!("{up_to}\n").as_bytes())
            .map_err(io_err(&path))?;
        self.acked = up_to;
        while let Some(first) = self.segments.front() {
            if first.last_seq.is_some_and(|last| last > up_to) {
                break;
            }
            if self.segments.len() == 1 && self.active.is_some() {
                // Keep the file to append to; everything in it is acknowledged.
                self.head_offset = first.size;
                self.head_skipped = first.records;
                return Ok(());
            }
            self.remove_first()?;
        }
        if self.segments.is_empty() {
            return Ok(());
        }
        let (mut offset, mut skipped) = (self.head_offset, self.head_skipped);
        self.walk(0, offset, skipped, &mut |record, end| {
            if record.seq > up_to {
                return false;
            }
            (offset, skipped) = (end, skipped + 1);
            true
        })?;
        (self.head_offset, self.head_skipped) = (offset, skipped);
        Ok(())
    }

    /// Unacknowledged records lost since the last call (overflow, or damage found after
    /// open), and resets the count. Report it as a "spool overflow" event when not zero.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    /// The sequence number the next [`Spool::push`] will return (so a report can carry its own
    /// sequence number in its payload).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Unacknowledged records in the spool.
    pub fn len(&self) -> u64 {
        self.total_records.saturating_sub(self.head_skipped)
    }

    /// Whether every record has been acknowledged (or dropped).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of unacknowledged records, framing included (the spool's depth).
    pub fn bytes(&self) -> u64 {
        self.disk_bytes.saturating_sub(self.head_offset)
    }

    /// Bytes of segment files on disk, acknowledged records not yet deleted included; this
    /// is what `max_bytes` bounds.
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }

    /// The last acknowledged sequence number (0 before the first acknowledgement).
    pub fn last_acked(&self) -> u64 {
        self.acked
    }

    /// Syncs to disk after every `n` pushed records (0 counts as 1). See the module docs for
    /// the tradeoff; [`Spool::sync`] flushes the rest.
    pub fn set_sync_every(&mut self, n: usize) {
        self.sync_every = n.max(1);
    }

    /// Makes every pushed record durable now.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if self.unsynced > 0
            && let (Some(file), Some(last)) = (&self.active, self.segments.back())
        {
            file.sync_data().map_err(io_err(&last.path))?;
        }
        self.unsynced = 0;
        Ok(())
    }

    /// Deletes whole oldest segments until `len` more bytes fit, counting the unacknowledged
    /// records deleted.
    fn make_room(&mut self, len: u64) -> Result<(), SpoolError> {
        while self.disk_bytes + len > self.max_bytes && !self.segments.is_empty() {
            let lost = self.remove_first()?;
            if lost > 0 {
                tracing::warn!(
                    dir = %self.dir.display(),
                    dropped = lost,
                    "Spool full: dropped the oldest unacknowledged records."
                );
            }
            self.dropped += lost;
        }
        Ok(())
    }

    /// Closes the segment being appended to (synced) and starts a new one at `next_seq`.
    fn rotate(&mut self) -> Result<(), SpoolError> {
        self.sync()?;
        self.active = None;
        // The closed segment may hold nothing but acknowledged records.
        if let Some(first) = self.segments.front()
            && self.segments.len() == 1
            && first.records == self.head_skipped
        {
            self.remove_first()?;
        }
        self.start_segment()
    }

    /// Creates an empty segment named for `next_seq` and appends to it from now on.
    fn start_segment(&mut self) -> Result<(), SpoolError> {
        let path = self.dir.join(segment_name(self.next_seq));
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        platform::restrict_to_owner(&path).map_err(io_err(&path))?;
        platform::sync_dir(&self.dir);
        self.segments.push_back(Segment {
            path,
            size: 0,
            records: 0,
            last_seq: None,
        });
        self.active = Some(file);
        Ok(())
    }

    /// Stops appending to the last segment after syncing it (best effort).
    fn close_active(&mut self) {
        if let Some(file) = self.active.take()
            && self.unsynced > 0
        {
            let _ = file.sync_data();
        }
        self.unsynced = 0;
    }

    /// Deletes the first segment; returns how many unacknowledged records it held.
    fn remove_first(&mut self) -> Result<u64, SpoolError> {
        if self.segments.len() == 1 {
            // No point syncing a file about to be deleted.
            self.active = None;
            self.unsynced = 0;
        }
        let Some(first) = self.segments.front() else {
            return Ok(0);
        };
        remove_file(&first.path).map_err(io_err(&first.path))?;
        let lost = first.records.saturating_sub(self.head_skipped);
        self.disk_bytes = self.disk_bytes.saturating_sub(first.size);
        self.total_records = self.total_records.saturating_sub(first.records);
        self.segments.pop_front();
        (self.head_offset, self.head_skipped) = (0, 0);
        Ok(lost)
    }

    /// Reads the records of segment `idx` from `offset` (where `skipped` records precede it),
    /// handing each with the offset after it to `visit` until `visit` returns `false`.
    ///
    /// These bytes were checked on open or written by this spool, so damage here means the
    /// file changed underneath it: the segment is set aside and cut back as on open, and the
    /// unacknowledged records lost are counted as dropped.
    fn walk(
        &mut self,
        idx: usize,
        offset: u64,
        skipped: u64,
        visit: &mut dyn FnMut(Record, u64) -> bool,
    ) -> Result<(), SpoolError> {
        let Some(segment) = self.segments.get(idx) else {
            return Ok(());
        };
        if offset >= segment.size {
            return Ok(());
        }
        let path = segment.path.clone();
        let mut reader = match FrameReader::open(&path, offset, segment.size) {
            Ok(reader) => reader,
            // Deleted by someone else: do not stay stuck on it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let last_seq = (skipped > 0).then_some(self.acked);
                return self.damaged(idx, offset, skipped, last_seq, "segment file missing");
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let (mut count, mut last_seq) = (0, None);
        loop {
            let start = reader.offset;
            let why = match reader.next().map_err(io_err(&path))? {
                Next::Record(record) => {
                    count += 1;
                    last_seq = Some(record.seq);
                    if visit(record, reader.offset) {
                        continue;
                    }
                    return Ok(());
                }
                Next::End => return Ok(()),
                Next::Torn => "truncated",
                Next::Corrupt(why) => why,
            };
            let records_before = skipped + count;
            let last_seq = last_seq.or((records_before > 0).then_some(self.acked));
            return self.damaged(idx, start, records_before, last_seq, why);
        }
    }

    /// Sets aside segment `idx`, damaged at `valid_end` (unless the file is gone), and keeps
    /// the records before it.
    fn damaged(
        &mut self,
        idx: usize,
        valid_end: u64,
        records_before: u64,
        last_seq: Option<u64>,
        why: &'static str,
    ) -> Result<(), SpoolError> {
        let Some(segment) = self.segments.get_mut(idx) else {
            return Ok(());
        };
        let aside = match set_aside(&segment.path, valid_end) {
            Ok(aside) => Some(aside),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&segment.path)(e)),
        };
        let lost = segment.records.saturating_sub(records_before);
        self.disk_bytes = self
            .disk_bytes
            .saturating_sub(segment.size.saturating_sub(valid_end));
        self.total_records = self.total_records.saturating_sub(lost);
        segment.size = valid_end;
        segment.records = records_before;
        segment.last_seq = last_seq;
        self.dropped += lost;
        let path = segment.path.clone();
        if idx + 1 == self.segments.len() {
            // Go on in a new segment: its name keeps the numbers of the lost records from
            // being reused after a restart, and every segment stays numbered without gaps.
            self.close_active();
            self.start_segment()?;
        }
        tracing::error!(
            segment = %path.display(),
            offset = valid_end,
            reason = why,
            lost,
            set_aside = ?aside,
            "Spool: a segment was damaged while open; it was set aside and its later records dropped."
        );
        Ok(())
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.close_active();
    }
}

/// `seg-<20 digits>.log`.
fn segment_name(first_seq: u64) -> String {
    format!("seg-{first_seq:020}.log")
}

/// The first sequence number in a segment file's name.
fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segment files in `dir`, oldest first. Also removes temporary files a crash left from
/// writing the `ack` file.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, SpoolError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = parse_segment_name(name) {
            if entry.file_type().map_err(io_err(&entry.path()))?.is_file() {
                out.push((seq, entry.path()));
            }
        } else if name.starts_with(".ack.") && name.ends_with(".tmp") {
            remove_file(&entry.path()).map_err(io_err(&entry.path()))?;
        }
    }
    out.sort();
    Ok(out)
}

/// The last acknowledged sequence number; 0 when the file is missing or damaged (records are
/// then replayed, which the at-least-once contract allows).
fn read_ack(path: &Path) -> Result<u64, SpoolError> {
    let mut text = String::new();
    match File::open(path) {
        Ok(file) => {
            if file.take(MAX_ACK_FILE).read_to_string(&mut text).is_err() {
                text.clear();
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err(path)(e)),
    }
    match text.trim().parse::<u64>() {
        // Far beyond any real count: damage, and trusting it would hide every new record.
        Ok(seq) if seq <= u64::MAX / 2 => Ok(seq),
        _ => {
            tracing::warn!(file = %path.display(), "Spool: the ack file is damaged; unacknowledged records may be replayed twice.");
            Ok(0)
        }
    }
}

/// Deletes `path`; one already gone is fine.
fn remove_file(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Cuts `path` back to `len` bytes, durably.
fn truncate(path: &Path, len: u64) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(len)?;
    file.sync_all()
}

/// Copies a damaged segment as found to `<name>.corrupt` (or `<name>.<n>.corrupt` if that
/// exists), then cuts the segment back to its `valid_end` good bytes. Copying before cutting
/// makes a crash in between harmless: the next open finds the damage again.
fn set_aside(path: &Path, valid_end: u64) -> io::Result<PathBuf> {
    let mut damaged = File::open(path)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut aside = None;
    for n in 0..MAX_ASIDE_COPIES {
        let candidate = if n == 0 {
            path.with_file_name(format!("{name}.corrupt"))
        } else {
            path.with_file_name(format!("{name}.{n}.corrupt"))
        };
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&candidate)
        {
            Ok(file) => {
                aside = Some((candidate, file));
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    let Some((aside, mut out)) = aside else {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "too many set-aside copies of this segment",
        ));
    };
    platform::restrict_to_owner(&aside)?;
    io::copy(&mut damaged, &mut out)?;
    out.sync_all()?;
    if let Some(dir) = path.parent() {
        platform::sync_dir(dir);
    }
    truncate(path, valid_end)?;
    Ok(aside)
}

/// Why a segment could not be read to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Damage {
    /// The last frame is cut short: a torn write.
    Torn,
    /// A frame is not valid; the reason.
    Corrupt(&'static str),
}

/// What reading a whole segment found.
#[derive(Debug)]
struct Scan {
    records: u64,
    last_seq: Option<u64>,
    /// The end of the last good record.
    valid_end: u64,
    file_len: u64,
    /// The end of the last record at or below the acknowledged sequence number.
    head_offset: u64,
    /// Records up to `head_offset`.
    head_skipped: u64,
    damage: Option<Damage>,
}

/// Reads and checks a whole segment. Its records must be numbered `first_seq` (its name),
/// `first_seq + 1`, … without gaps, after `prev_last` (the previous segment's last record).
fn scan_segment(
    path: &Path,
    first_seq: u64,
    prev_last: Option<u64>,
    acked: u64,
) -> io::Result<Scan> {
    let file_len = fs::metadata(path)?.len();
    let mut reader = FrameReader::open(path, 0, file_len)?;
    let mut scan = Scan {
        records: 0,
        last_seq: None,
        valid_end: 0,
        file_len,
        head_offset: 0,
        head_skipped: 0,
        damage: None,
    };
    if prev_last.is_some_and(|prev| first_seq <= prev) {
        scan.damage = Some(Damage::Corrupt("segment out of order"));
        return Ok(scan);
    }
    let mut expected = first_seq;
    scan.damage = loop {
        match reader.next()? {
            Next::Record(record) if record.seq != expected => {
                break Some(Damage::Corrupt("sequence number out of order"));
            }
            Next::Record(record) => {
                scan.records += 1;
                scan.last_seq = Some(record.seq);
                scan.valid_end = reader.offset;
                expected = record.seq.saturating_add(1);
                if record.seq <= acked {
                    scan.head_offset = reader.offset;
                    scan.head_skipped = scan.records;
                }
            }
            Next::End => break None,
            Next::Torn => break Some(Damage::Torn),
            Next::Corrupt(why) => break Some(Damage::Corrupt(why)),
        }
    };
    Ok(scan)
}

/// What the next frame of a segment is.
#[derive(Debug)]
enum Next {
    Record(Record),
    /// No bytes left.
    End,
    /// The bytes left are fewer than the frame needs.
    Torn,
    /// The frame is not valid; why.
    Corrupt(&'static str),
}

/// Reads frames from a segment between an offset and `end`.
#[derive(Debug)]
struct FrameReader {
    reader: BufReader<File>,
    /// Where the next frame starts.
    offset: u64,
    end: u64,
}

impl FrameReader {
    fn open(path: &Path, offset: u64, end: u64) -> io::Result<Self> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(Self {
            reader: BufReader::with_capacity(64 * 1024, file),
            offset,
            end,
        })
    }

    fn next(&mut self) -> io::Result<Next> {
        let left = self.end.saturating_sub(self.offset);
        if left == 0 {
            return Ok(Next::End);
        }
        if left < HEADER_LEN as u64 {
            return Ok(Next::Torn);
        }
        let mut header = [0u8; HEADER_LEN];
        if !read_full(&mut self.reader, &mut header)? {
            return Ok(Next::Torn);
        }
        let [magic, l0, l1, l2, l3, n0, n1, n2, n3, c0, c1, c2, c3] = header;
        if magic != FRAME_V1 {
            return Ok(Next::Corrupt("bad magic byte"));
        }
        let len = u32::from_le_bytes([l0, l1, l2, l3]);
        if len != !u32::from_le_bytes([n0, n1, n2, n3]) {
            return Ok(Next::Corrupt("inconsistent length"));
        }
        let body_len = len as usize;
        if !(BODY_FIXED_LEN..=MAX_RECORD_BYTES - HEADER_LEN).contains(&body_len) {
            return Ok(Next::Corrupt("impossible length"));
        }
        if left < (HEADER_LEN + body_len) as u64 {
            return Ok(Next::Torn);
        }
        let mut body = vec![0; body_len];
        if !read_full(&mut self.reader, &mut body)? {
            return Ok(Next::Torn);
        }
        if crc32(&[&body]) != u32::from_le_bytes([c0, c1, c2, c3]) {
            return Ok(Next::Corrupt("checksum mismatch"));
        }
        let Some(record) = decode_body(&body) else {
            return Ok(Next::Corrupt("malformed record"));
        };
        self.offset += (HEADER_LEN + body_len) as u64;
        Ok(Next::Record(record))
    }
}

/// Fills `buf`; `false` when the file ends first (it is shorter than the spool thought).
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    match reader.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Frames a record (see the module docs for the layout).
fn encode(
    seq: u64,
    subject: &str,
    msg_id: &str,
    payload: &[u8],
    limit: usize,
) -> Result<Vec<u8>, SpoolError> {
    let field_len = |field, value: &str| {
        u16::try_from(value.len()).map_err(|_| SpoolError::FieldTooLong {
            field,
            len: value.len(),
        })
    };
    let subject_len = field_len("subject", subject)?;
    let msg_id_len = field_len("message id", msg_id)?;
    let size =
        (HEADER_LEN + BODY_FIXED_LEN + subject.len() + msg_id.len()).saturating_add(payload.len());
    let too_large = || SpoolError::TooLarge { size, limit };
    if size > limit {
        return Err(too_large());
    }
    let body_len = u32::try_from(size - HEADER_LEN).map_err(|_| too_large())?;
    let payload_len = u32::try_from(payload.len()).map_err(|_| too_large())?;
    let (seq, subject_len, msg_id_len, payload_len) = (
        seq.to_le_bytes(),
        subject_len.to_le_bytes(),
        msg_id_len.to_le_bytes(),
        payload_len.to_le_bytes(),
    );
    let body: [&[u8]; 7] = [
        &seq,
        &subject_len,
        subject.as_bytes(),
        &msg_id_len,
        msg_id.as_bytes(),
        &payload_len,
        payload,
    ];
    let mut frame = Vec::with_capacity(size);
    frame.push(FRAME_V1);
    frame.extend_from_slice(&body_len.to_le_bytes());
    frame.extend_from_slice(&(!body_len).to_le_bytes());
    frame.extend_from_slice(&crc32(&body).to_le_bytes());
    for part in body {
        frame.extend_from_slice(part);
    }
    Ok(frame)
}

/// Parses a body whose CRC matched; `None` if it is not a well-formed record.
fn decode_body(body: &[u8]) -> Option<Record> {
    let (seq, rest) = body.split_first_chunk::<8>()?;
    let (subject_len, rest) = rest.split_first_chunk::<2>()?;
    let (subject, rest) = rest.split_at_checked(usize::from(u16::from_le_bytes(*subject_len)))?;
    let (msg_id_len, rest) = rest.split_first_chunk::<2>()?;
    let (msg_id, rest) = rest.split_at_checked(usize::from(u16::from_le_bytes(*msg_id_len)))?;
    let (payload_len, payload) = rest.split_first_chunk::<4>()?;
    let seq = u64::from_le_bytes(*seq);
    if seq == 0 || u32::from_le_bytes(*payload_len) as usize != payload.len() {
        return None;
    }
    Some(Record {
        seq,
        subject: String::from_utf8(subject.to_vec()).ok()?,
        msg_id: String::from_utf8(msg_id.to_vec()).ok()?,
        payload: payload.to_vec(),
    })
}

/// The CRC-32 lookup table (IEEE 802.3, reflected polynomial 0xEDB88320), built at compile
/// time.
const CRC32_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32 (as in zlib and gzip) of the concatenation of `parts`.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for part in parts {
        for &byte in *part {
            crc = CRC32_TABLE[((crc ^ u32::from(byte)) & 0xFF) as usize] ^ (crc >> 8);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    const SUBJECT: &str = "wg.acct.up.dev.tel.hb";

    /// Frame size of a record pushed with [`push_n`].
    fn frame_len(msg_id: &str, payload_len: usize) -> u64 {
        (HEADER_LEN + BODY_FIXED_LEN + SUBJECT.len() + msg_id.len() + payload_len) as u64
    }

    fn open(dir: &Path, max: u64) -> (Spool, OpenReport) {
        let (mut spool, report) = Spool::open(dir, max).unwrap();
        spool.set_sync_every(64);
        (spool, report)
    }

    /// Pushes records whose payload is `payload_len` copies of the sequence number's low byte.
    fn push_n(spool: &mut Spool, n: usize, payload_len: usize) -> Vec<u64> {
        (0..n)
            .map(|_| {
                let seq = spool.next_seq;
                let payload = vec![seq as u8; payload_len];
                let pushed = spool
                    .push(SUBJECT, &format!("m{seq:06}"), &payload)
                    .unwrap();
                assert_eq!(pushed, seq);
                pushed
            })
            .collect()
    }

    fn seqs(records: &[Record]) -> Vec<u64> {
        records.iter().map(|r| r.seq).collect()
    }

    /// Segment files, oldest first.
    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(parse_segment_name)
                    .is_some()
            })
            .collect();
        files.sort();
        files
    }

    #[test]
    fn bounded_peeks_stop_at_the_byte_budget_but_return_one_record() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut spool, _) = open(tmp.path(), DEFAULT_MAX_BYTES);
        push_n(&mut spool, 10, 100);
        assert_eq!(seqs(&spool.peek_bounded(100, 350).unwrap()), [1, 2, 3]);
        assert_eq!(seqs(&spool.peek_bounded(2, 350).unwrap()), [1, 2]);
        assert_eq!(seqs(&spool.peek_bounded(100, 10).unwrap()), [1]);
        assert_eq!(spool.peek_bounded(100, usize::MAX).unwrap().len(), 10);
        spool.ack(9).unwrap();
        assert_eq!(seqs(&spool.peek_bounded(100, 10).unwrap()), [10]);
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
        assert_eq!(crc32(&[b"1234", b"", b"56789"]), 0xCBF4_3926);
        assert_eq!(crc32(&[]), 0);
    }

    #[test]
    fn frames_round_trip() {
        let frame = encode(7, "a.b", "id-1", b"hello", MAX_RECORD_BYTES).unwrap();
        assert_eq!(frame.len(), HEADER_LEN + BODY_FIXED_LEN + 3 + 4 + 5);
        assert_eq!(frame[0], FRAME_V1);
        let record = decode_body(&frame[HEADER_LEN..]).unwrap();
        assert_eq!(
            record,
            Record {
                seq: 7,
                subject: "a.b".into(),
                msg_id: "id-1".into(),
                payload: b"hello".to_vec(),
            }
        );
        // A body whose payload length disagrees with the body is not a record.
        let mut bad = frame[HEADER_LEN..].to_vec();
        bad.push(0);
        assert!(decode_body(&bad).is_none());
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name("seg-42.log"), None);
        assert_eq!(
            parse_segment_name("seg-00000000000000000042.log.corrupt"),
            None
        );
    }

    #[test]
    fn push_peek_ack_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut spool, report) = open(tmp.path(), DEFAULT_MAX_BYTES);
        assert_eq!(report, OpenReport::default());
        assert!(spool.is_empty());
        assert_eq!(spool.peek(10).unwrap(), vec![]);

        assert_eq!(push_n(&mut spool, 5, 10), vec![1, 2, 3, 4, 5]);
        assert_eq!(spool.len(), 5);
        assert_eq!(spool.bytes(), 5 * frame_len("m000001", 10));
        let records = spool.peek(3).unwrap();
        assert_eq!(seqs(&records), vec![1, 2, 3]);
        assert_eq!(records[1].subject, SUBJECT);
        assert_eq!(records[1].msg_id, "m000002");
        assert_eq!(records[1].payload, vec![2u8; 10]);
        // Peeking removes nothing.
        assert_eq!(seqs(&spool.peek(100).unwrap()), vec![1, 2, 3, 4, 5]);
        assert_eq!(spool.peek(0).unwrap(), vec![]);

        spool.ack(2).unwrap();
        assert_eq!(spool.last_acked(), 2);
        assert_eq!(spool.len(), 3);
        assert_eq!(seqs(&spool.peek(100).unwrap()), vec![3, 4, 5]);
        // Older acknowledgements change nothing; future ones stop at the last pushed record.
        spool.ack(1).unwrap();
        assert_eq!(spool.len(), 3);
        spool.ack(1000).unwrap();
        assert_eq!(spool.last_acked(), 5);
        assert!(spool.is_empty());
        assert_eq!(spool.bytes(), 0);
        assert_eq!(spool.peek(100).unwrap(), vec![]);
        // The next record is not taken for acknowledged.
        assert_eq!(push_n(&mut spool, 1, 1), vec![6]);
        assert_eq!(seqs(&spool.peek(100).unwrap()), vec![6]);
        assert_eq!(spool.take_dropped(), 0);
    }

    #[test]
    fn survives_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool");
        let (mut spool, _) = open(&dir, DEFAULT_MAX_BYTES);
        push_n(&mut spool, 10, 100);
        spool.ack(4).unwrap();
        // One directory, one spool.
        assert!(matches!(
            Spool::open(&dir, DEFAULT_MAX_BYTES),
            Err(SpoolError::Locked { .. })
        ));
        drop(spool);

        let (mut spool, report) = open(&dir, DEFAULT_MAX_BYTES);
        assert_eq!(report.recovered_records, 6);
        assert_eq!(report.truncated_bytes, 0);
        assert!(report.set_aside.is_empty());
        assert_eq!(spool.last_acked(), 4);
        assert_eq!(
            seqs(&spool.peek(100).unwrap()),
            (5..=10).collect::<Vec<_>>()
        );
        assert_eq!(push_n(&mut spool, 2, 100), vec![11, 12]);
        spool.ack(12).unwrap();
        drop(spool);

        // Everything acknowledged: nothing is replayed and numbering continues.
        let (mut spool, report) = open(&dir, DEFAULT_MAX_BYTES);
        assert_eq!(report.recovered_records, 0);
        assert!(spool.peek(100).unwrap().is_empty());
        assert_eq!(push_n(&mut spool, 1, 1), vec![13]);
        drop(spool);

        // An ack file ahead of the segments (a power cut lost unsynced records that had been
        // acknowledged): nothing is replayed, and numbering continues after it.
        fs::write(dir.join(ACK_FILE), "20\n").unwrap();
        let (mut spool, report) = open(&dir, DEFAULT_MAX_BYTES);
        assert_eq!(report.recovered_records, 0);
        assert_eq!(push_n(&mut spool, 1, 1), vec![21]);
        spool.ack(20).unwrap();
        drop(spool);
        // (Record 13 went with its segment when that open found it acknowledged.)
        fs::write(dir.join(ACK_FILE), "12\n").unwrap();
        let (mut spool, _) = open(&dir, DEFAULT_MAX_BYTES);
        assert_eq!(seqs(&spool.peek(100).unwrap()), vec![21]);
        drop(spool);

        // A damaged ack file only means replaying.
        fs::write(dir.join(ACK_FILE), "garbage").unwrap();
        let (mut spool, report) = open(&dir, DEFAULT_MAX_BYTES);
        assert_eq!(report.recovered_records, 1);
        assert_eq!(seqs(&spool.peek(100).unwrap()), vec![21]);
        assert_eq!(push_n(&mut spool, 1, 1), vec![22]);
    }

    #[test]
    fn rotates_segments_and_deletes_acknowledged_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let max = 64 * 1024; // segments of 8 KiB
        let (mut spool, _) = open(tmp.path(), max);
        let frame = frame_len("m000001", 1000);
        push_n(&mut spool, 20, 1000);
        let per_segment = (max / 8) / frame; // 7 records
        let files = segment_files(tmp.path());
        assert_eq!(files.len(), 20usize.div_ceil(per_segment as usize));
        for (i, file) in files.iter().enumerate() {
            let first = 1 + i as u64 * per_segment;
            assert_eq!(
                file.file_name().unwrap().to_str().unwrap(),
                segment_name(first)
            );
            assert!(fs::metadata(file).unwrap().len() <= max / 8);
        }
        assert_eq!(spool.disk_bytes(), 20 * frame);

        // Acknowledging into the second segment deletes the first only.
        spool.ack(per_segment + 2).unwrap();
        assert_eq!(segment_files(tmp.path()), files[1..]);
        assert_eq!(spool.len(), 20 - per_segment - 2);
        assert_eq!(spool.peek(1).unwrap()[0].seq, per_segment + 3);
        assert_eq!(spool.bytes(), spool.len() * frame);
        // Acknowledging everything keeps only the segment being appended to (6 records)...
        spool.ack(20).unwrap();
        assert_eq!(segment_files(tmp.path()), files[2..]);
        assert_eq!(spool.bytes(), 0);
        assert_eq!(push_n(&mut spool, 1, 1000), vec![21]);
        spool.ack(21).unwrap();
        assert_eq!(segment_files(tmp.path()), files[2..]);
        // ...until it is closed.
        assert_eq!(push_n(&mut spool, 1, 1000), vec![22]);
        assert_eq!(
            segment_files(tmp.path()),
            vec![tmp.path().join(segment_name(22))]
        );
        assert_eq!(seqs(&spool.peek(100).unwrap()), vec![22]);
    }

    #[test]
    fn overflow_drops_oldest_and_counts() {
        let tmp = tempfile::tempdir().unwrap();
        let max = 16 * 1024; // segments of 2 KiB
        let (mut spool, _) = open(tmp.path(), max);
        let frame = frame_len("m000001", 400);
        push_n(&mut spool, 100, 400);
        assert!(spool.disk_bytes() <= max);
        assert!(spool.disk_bytes() + frame > max - max / 8);
        let kept = spool.len();
        let dropped = spool.take_dropped();
        assert!(dropped > 0);
        assert_eq!(dropped + kept, 100);
        assert_eq!(spool.take_dropped(), 0);
        // The newest records survive, in order.
        let records = spool.peek(1000).unwrap();
        assert_eq!(seqs(&records), (dropped + 1..=100).collect::<Vec<_>>());
        // Dropping acknowledged records is not counted.
        spool.ack(100).unwrap();
        push_n(&mut spool, 100, 400);
        assert_eq!(spool.take_dropped() + spool.len(), 100);
        // A record as large as the spool empties it.
        let big = vec![0u8; max as usize - frame_len("m000201", 0) as usize];
        spool.push(SUBJECT, "m000201", &big).unwrap();
        assert_eq!(spool.disk_bytes(), max);
        assert_eq!(spool.len(), 1);
        assert!(spool.take_dropped() > 0);
        // Shrinking the bound on reopen drops at once.
        drop(spool);
        let (mut spool, report) = open(tmp.path(), 8 * 1024);
        assert_eq!(report.recovered_records, 0);
        assert_eq!(spool.take_dropped(), 1);
        assert_eq!(spool.disk_bytes(), 0);
    }

    #[test]
    fn oversize_records_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut spool, _) = open(tmp.path(), DEFAULT_MAX_BYTES);
        let err = spool
            .push(SUBJECT, "big", &vec![0; MAX_RECORD_BYTES])
            .unwrap_err();
        assert!(
            matches!(err, SpoolError::TooLarge { limit, .. } if limit == MAX_RECORD_BYTES),
            "{err}"
        );
        assert!(err.to_string().contains("larger than"), "{err}");
        let fits = MAX_RECORD_BYTES - frame_len("big", 0) as usize;
        assert_eq!(spool.push(SUBJECT, "big", &vec![0; fits]).unwrap(), 1);
        assert!(matches!(
            spool.push(SUBJECT, "big", &vec![0; fits + 1]),
            Err(SpoolError::TooLarge { .. })
        ));
        assert!(matches!(
            spool.push(&"s".repeat(70_000), "x", b""),
            Err(SpoolError::FieldTooLong {
                field: "subject",
                ..
            })
        ));
        // Refusals do not use up sequence numbers.
        assert_eq!(spool.push(SUBJECT, "small", b"x").unwrap(), 2);
        assert_eq!(spool.len(), 2);
        // A small spool refuses what it could never hold.
        let (mut small, _) = open(&tmp.path().join("small"), MIN_MAX_BYTES);
        assert!(matches!(
            small.push(SUBJECT, "x", &[0; MIN_MAX_BYTES as usize]),
            Err(SpoolError::TooLarge { limit: 4096, .. })
        ));
        assert!(matches!(
            Spool::open(&tmp.path().join("tiny"), 100),
            Err(SpoolError::TooSmall { .. })
        ));
    }

    #[test]
    fn torn_tail_is_truncated() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut spool, _) = open(tmp.path(), DEFAULT_MAX_BYTES);
        push_n(&mut spool, 3, 50);
        drop(spool);
        let file = segment_files(tmp.path()).remove(0);
        let len = fs::metadata(&file).unwrap().len();
        // The last record lost its last 5 bytes.
        OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(len - 5)
            .unwrap();

        let (mut spool, report) = open(tmp.path(), DEFAULT_MAX_BYTES);
        assert_eq!(report.recovered_records, 2);
        assert_eq!(report.truncated_bytes, frame_len("m000003", 50) - 5);
        assert!(report.set_aside.is_empty());
        assert_eq!(
            fs::metadata(&file).unwrap().len(),
            2 * frame_len("m000001", 50)
        );
        assert_eq!(seqs(&spool.peek(10).unwrap()), vec![1, 2]);
        // Appending continues after the good records.
        assert_eq!(push_n(&mut spool, 1, 50), vec![3]);
        spool.sync().unwrap();
        drop(spool);

        // A torn header (a few bytes of a next frame) is cut too.
        let mut f = OpenOptions::new().append(true).open(&file).unwrap();
        f.write_all(&[FRAME_V1, 0x10]).unwrap();
        drop(f);
        let (mut spool, report) = open(tmp.path(), DEFAULT_MAX_BYTES);
        assert_eq!(report.truncated_bytes, 2);
        assert_eq!(seqs(&spool.peek(10).unwrap()), vec![1, 2, 3]);
        assert_eq!(segment_files(tmp.path()), vec![file]);
    }

    #[test]
    fn corrupt_middle_is_set_aside_and_the_rest_stays_usable() {
        let tmp = tempfile::tempdir().unwrap();
        let max = 64 * 1024;
        let (mut spool, _) = open(tmp.path(), max);
        push_n(&mut spool, 20, 1000); // 7 records per segment
        spool.ack(2).unwrap();
        drop(spool);
        let files = segment_files(tmp.path());
        assert_eq!(files.len(), 3);
        // Flip a payload byte of the 4th record (first segment).
        let frame = frame_len("m000001", 1000);
        let mut bytes = fs::read(&files[0]).unwrap();
        let original = bytes.clone();
        bytes[(3 * frame + frame - 10) as usize] ^= 0x40;
        fs::write(&files[0], &bytes).unwrap();

        let (mut spool, report) = open(tmp.path(), max);
        assert_eq!(report.set_aside.len(), 1);
        let aside = &report.set_aside[0];
        assert!(
            aside.to_str().unwrap().ends_with(".log.corrupt"),
            "{aside:?}"
        );
        assert_eq!(fs::read(aside).unwrap(), bytes);
        assert_eq!(report.truncated_bytes, 0);
        // Records 1-2 are acknowledged, 3 precedes the damage, 4-7 are lost, 8-20 are fine.
        assert_eq!(report.recovered_records, 1 + 13);
        let expected: Vec<u64> = std::iter::once(3).chain(8..=20).collect();
        assert_eq!(seqs(&spool.peek(100).unwrap()), expected);
        assert_eq!(fs::metadata(&files[0]).unwrap().len(), 3 * frame);
        assert_eq!(
            &original[..3 * frame as usize],
            &fs::read(&files[0]).unwrap()[..]
        );
        // Still usable: push, ack, reopen.
        assert_eq!(push_n(&mut spool, 1, 1000), vec![21]);
        spool.ack(10).unwrap();
        assert_eq!(
            seqs(&spool.peek(100).unwrap()),
            (11..=21).collect::<Vec<_>>()
        );
        spool.ack(21).unwrap();
        drop(spool);
        let (mut spool, report) = open(tmp.path(), max);
        assert_eq!(report, OpenReport::default());
        assert!(spool.peek(100).unwrap().is_empty());
        // The set-aside copy is never deleted by the spool.
        assert!(aside.exists());

        // Damage in the very first frame (a bad length) leaves nothing to keep.
        push_n(&mut spool, 3, 10);
        drop(spool);
        let file = segment_files(tmp.path()).pop().unwrap();
        let mut bytes = fs::read(&file).unwrap();
        bytes[2] ^= 0x01;
        fs::write(&file, &bytes).unwrap();
        let (mut spool, report) = open(tmp.path(), max);
        assert_eq!(report.set_aside.len(), 1);
        assert_eq!(report.recovered_records, 0);
        assert!(!file.exists());
        // Numbers the set-aside records may carry (22-24) are not reused.
        let seq = spool.push(SUBJECT, "after", b"").unwrap();
        assert!(seq > 24, "{seq}");
    }

    #[test]
    fn damage_found_while_open_is_set_aside_and_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut spool, _) = open(tmp.path(), DEFAULT_MAX_BYTES);
        push_n(&mut spool, 5, 100);
        let file = segment_files(tmp.path()).remove(0);
        let mut bytes = fs::read(&file).unwrap();
        let frame = frame_len("m000001", 100);
        bytes[(2 * frame) as usize] = 0; // magic byte of record 3
        fs::write(&file, &bytes).unwrap();

        assert_eq!(seqs(&spool.peek(10).unwrap()), vec![1, 2]);
        assert_eq!(spool.take_dropped(), 3);
        assert_eq!(spool.len(), 2);
        assert_eq!(spool.disk_bytes(), 2 * frame);
        assert!(
            file.with_file_name(format!("{}.corrupt", segment_name(1)))
                .exists()
        );
        assert_eq!(push_n(&mut spool, 1, 100), vec![6]);
        assert_eq!(seqs(&spool.peek(10).unwrap()), vec![1, 2, 6]);
        drop(spool);
        let (mut spool, report) = open(tmp.path(), DEFAULT_MAX_BYTES);
        assert_eq!(report.recovered_records, 3);
        assert!(report.set_aside.is_empty());
        assert_eq!(seqs(&spool.peek(10).unwrap()), vec![1, 2, 6]);

        // A segment deleted behind the spool's back is counted, not an error forever.
        fs::remove_file(&file).unwrap();
        assert_eq!(seqs(&spool.peek(10).unwrap()), vec![6]);
        assert_eq!(spool.take_dropped(), 2);
        assert_eq!(spool.len(), 1);
        spool.ack(6).unwrap();
        assert!(spool.is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn files_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool");
        let (mut spool, _) = open(&dir, DEFAULT_MAX_BYTES);
        push_n(&mut spool, 2, 1);
        spool.ack(1).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(ACK_FILE)), 0o600);
        for file in segment_files(&dir) {
            assert_eq!(mode(&file), 0o600);
        }
    }

    /// Random pushes (sizes from empty to several segments' worth of a small spool), peeks,
    /// acknowledgements and reopens (some after a torn write), checked against a queue in
    /// memory. Phases without acknowledgements (the device offline) alternate with phases
    /// with them.
    #[test]
    fn matches_an_in_memory_model() {
        for seed in [1, 2, 3, 0x5_7001_ed00] {
            run_model(seed, 3000);
        }
    }

    fn run_model(seed: u64, steps: u32) {
        let mut rng = StdRng::seed_from_u64(seed);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool");
        let max = 48 * 1024; // segments of 6 KiB
        let (mut spool, _) = open(&dir, max);
        let mut model: VecDeque<Record> = VecDeque::new();
        let mut last_seq = 0;
        let mut dropped_total = 0;
        for step in 0..steps {
            let online = (step / 500) % 2 == 1;
            match rng.gen_range(0..100) {
                op if op < 55 || (!online && (80..96).contains(&op)) => {
                    let len = if rng.gen_bool(0.05) {
                        rng.gen_range(0..12_000)
                    } else {
                        rng.gen_range(0..300)
                    };
                    let mut payload = vec![0u8; len];
                    rng.fill(&mut payload[..]);
                    let msg_id = format!("msg-{step}");
                    let seq = spool.push(SUBJECT, &msg_id, &payload).unwrap();
                    assert!(seq > last_seq);
                    last_seq = seq;
                    let dropped = spool.take_dropped();
                    assert!(dropped as usize <= model.len());
                    model.drain(..dropped as usize);
                    dropped_total += dropped;
                    model.push_back(Record {
                        seq,
                        subject: SUBJECT.into(),
                        msg_id,
                        payload,
                    });
                }
                55..80 => {
                    let n = rng.gen_range(0..40);
                    let got = spool.peek(n).unwrap();
                    assert_eq!(got.len(), n.min(model.len()));
                    assert!(
                        got.iter().zip(&model).all(|(a, b)| a == b),
                        "seed {seed} step {step}"
                    );
                }
                80..96 => {
                    if model.is_empty() {
                        spool.ack(last_seq).unwrap();
                    } else {
                        let k = rng.gen_range(0..=model.len());
                        // Acknowledge the k oldest, sometimes by a seq between records.
                        let up_to = match k {
                            0 => model[0].seq - 1,
                            _ => model[k - 1].seq,
                        };
                        spool.ack(up_to).unwrap();
                        model.drain(..k);
                    }
                }
                _ => {
                    drop(spool);
                    // Half the time, a crash tore the write of one more record.
                    let mut torn = 0;
                    if let Some(last) = segment_files(&dir).pop()
                        && rng.gen_bool(0.5)
                    {
                        let frame =
                            encode(last_seq + 1, SUBJECT, "torn", &[7; 200], MAX_RECORD_BYTES)
                                .unwrap();
                        torn = rng.gen_range(1..frame.len());
                        let mut file = OpenOptions::new().append(true).open(last).unwrap();
                        file.write_all(&frame[..torn]).unwrap();
                    }
                    let (reopened, report) = open(&dir, max);
                    spool = reopened;
                    assert_eq!(report.recovered_records, model.len() as u64);
                    assert_eq!(
                        report.truncated_bytes, torn as u64,
                        "seed {seed} step {step}"
                    );
                    assert!(report.set_aside.is_empty());
                    assert_eq!(spool.take_dropped(), 0);
                }
            }
            assert_eq!(spool.len(), model.len() as u64, "seed {seed} step {step}");
            assert!(spool.bytes() <= spool.disk_bytes());
            assert!(spool.disk_bytes() <= max);
        }
        assert!(
            dropped_total > 0,
            "seed {seed}: the run should have overflowed"
        );
        let all = spool.peek(usize::MAX).unwrap();
        assert!(all.iter().eq(model.iter()));
    }

    /// Not timed: 10,000 small records go through push, peek and ack intact and in order.
    #[test]
    fn ten_thousand_small_records() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(tmp.path(), DEFAULT_MAX_BYTES).unwrap();
        spool.set_sync_every(1000);
        for i in 0..10_000u64 {
            let seq = spool
                .push(SUBJECT, &format!("m{i}"), &i.to_le_bytes())
                .unwrap();
            assert_eq!(seq, i + 1);
        }
        spool.sync().unwrap();
        assert_eq!(spool.len(), 10_000);
        let mut expected = 1;
        loop {
            let batch = spool.peek(256).unwrap();
            let Some(last) = batch.last() else { break };
            for record in &batch {
                assert_eq!(record.seq, expected);
                assert_eq!(record.payload, (expected - 1).to_le_bytes());
                assert_eq!(record.msg_id, format!("m{}", expected - 1));
                expected += 1;
            }
            spool.ack(last.seq).unwrap();
        }
        assert_eq!(expected, 10_001);
        assert!(spool.is_empty());
        assert_eq!(spool.take_dropped(), 0);
    }
}
