//! `Wal`: the Raft log in append-only segment files, with an in-memory
//! index of where each entry is (16 bytes an entry).
//!
//! Why not sled: a sled key costs about 2 KB of memory per log entry
//! whatever its cache setting (measured: 10,000 one-claim entries, the
//! log of 10,000 clients connecting one after another, grew the process by
//! about 24 MB). Here an entry costs its index slot; its bytes stay on
//! disk (and in the OS page cache while recent).
//!
//! Layout: `<dir>/<seq>.wal` segments, written in order, rotated at
//! `SEGMENT_BYTES`. A record is `len: u32 | crc32(index, payload): u32 |
//! index: u64 | payload`, big-endian. Entries are contiguous within the log
//! after the purge point.
//!
//! Durability: `append` writes; the caller makes the touched files durable
//! (`sync_data`) before acknowledging (see `log_store.rs`). `truncate`
//! is made durable before it returns. A purged segment is renamed out of
//! the log (`<seq>.purged`, directory synced) and then shrunk 1 MiB at
//! a time before it is deleted (`remove_segments`): deleting 64 MiB at once
//! made the disk discard it all in one go (the `discard` mount option) and
//! stalled every fsync behind it, on every node at the same entry. A
//! `.purged` file a crash leaves behind is deleted when the log is opened
//! again. Recovery reads every
//! segment: a torn record at the tail of the last segment (a crash during
//! a write) is cut off; any other damage is an error that stops the node
//! rather than a silently shorter log.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Segment size at which a new segment is started.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Largest record accepted when reading back (a corrupt length is not
/// allowed to allocate gigabytes).
const MAX_RECORD: u32 = 256 * 1024 * 1024;
const HEADER: usize = 16;
/// A purged segment shrinks by this much at a time, `SHRINK_PAUSE` apart
/// (0.65 s for a 64 MiB segment). Each step's blocks are discarded in the
/// next journal commit, which every fsync on the file system waits for: at
/// 4 MiB a step, the queue group's log syncs took 4-6 ms instead of about
/// 0.3 ms on every node while a segment went (one every few seconds under
/// durable load); at 1 MiB they rarely pass 4 ms.
const SHRINK_STEP: u64 = 1024 * 1024;
const SHRINK_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);
const PURGED_SUFFIX: &str = "purged";

#[derive(Debug, Clone, Copy)]
struct Loc {
    seg: u64,
    offset: u64,
}

struct Segment {
    file: Arc<File>,
    path: PathBuf,
    len: u64,
    /// Index of the last entry written to it (`None`: empty).
    last: Option<u64>,
}

pub struct Wal {
    dir: PathBuf,
    /// Size at which a new segment is started (`SEGMENT_BYTES`).
    segment_bytes: u64,
    /// By sequence number, oldest first; the last one takes appends.
    segments: BTreeMap<u64, Segment>,
    /// Location of entry `first + i`.
    locs: VecDeque<Loc>,
    first: u64,
}

fn corrupt(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn checksum(index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_be_bytes());
    h.update(payload);
    h.finalize()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Wal {
    /// Opens (or creates) the log in `dir`, dropping entries up to
    /// `purged` (the last purged index, if any).
    pub fn open(dir: &Path, purged: Option<u64>) -> io::Result<Wal> {
        Wal::open_with(dir, purged, SEGMENT_BYTES)
    }

    fn open_with(dir: &Path, purged: Option<u64>, segment_bytes: u64) -> io::Result<Wal> {
        std::fs::create_dir_all(dir)?;
        let names: Vec<PathBuf> = std::fs::read_dir(dir)?.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        // Segments purged before a crash, out of the log already.
        for p in names.iter().filter(|p| p.extension().is_some_and(|e| e == PURGED_SUFFIX)) {
            std::fs::remove_file(p)?;
        }
        let mut seqs: Vec<u64> = names
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "wal"))
            .filter_map(|p| p.file_stem()?.to_str()?.parse().ok())
            .collect();
        seqs.sort_unstable();
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            segment_bytes,
            segments: BTreeMap::new(),
            locs: VecDeque::new(),
            first: 0,
        };
        let floor = purged.map_or(0, |p| p + 1);
        for (i, seq) in seqs.iter().enumerate() {
            let last_segment = i + 1 == seqs.len();
            wal.load_segment(*seq, last_segment, floor)?;
        }
        if wal.locs.is_empty() {
            wal.first = floor;
        }
        // A record written before a stop but never synced (the process
        // killed, the machine still up) is read back like the rest: make it
        // as durable as the rest before anything counts on it.
        if let Some(last) = wal.segments.values().next_back() {
            last.file.sync_data()?;
        }
        Ok(wal)
    }

    fn segment_path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.wal"))
    }

    /// Reads one segment into the index; cuts a torn tail off the last one.
    fn load_segment(&mut self, seq: u64, last_segment: bool, floor: u64) -> io::Result<()> {
        let path = self.segment_path(seq);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let mut data = Vec::new();
        (&file).read_to_end(&mut data)?;
        let mut offset = 0usize;
        let mut last = None;
        while offset < data.len() {
            match parse(&data[offset..]) {
                Some((index, record_len)) => {
                    if index >= floor {
                        self.index_entry(index, Loc { seg: seq, offset: offset as u64 }, &path)?;
                    }
                    last = Some(index);
                    offset += record_len;
                }
                None if last_segment => {
                    tracing::warn!(path = %path.display(), offset, "torn record at the end of the Raft log cut off");
                    file.set_len(offset as u64)?;
                    file.sync_all()?;
                    break;
                }
                None => {
                    return Err(corrupt(format!(
                        "{}: damaged record at byte {offset} (not at the end of the log)",
                        path.display()
                    )))
                }
            }
        }
        self.segments.insert(seq, Segment { file: Arc::new(file), path, len: offset as u64, last });
        Ok(())
    }

    fn index_entry(&mut self, index: u64, loc: Loc, path: &Path) -> io::Result<()> {
        if self.locs.is_empty() {
            self.first = index;
        } else if index != self.next_index() {
            return Err(corrupt(format!(
                "{}: entry {index} follows entry {} (a gap in the Raft log)",
                path.display(),
                self.next_index() - 1
            )));
        }
        self.locs.push_back(loc);
        Ok(())
    }

    /// The index the next appended entry must have (`first` when empty).
    pub fn next_index(&self) -> u64 {
        self.first + self.locs.len() as u64
    }

    pub fn last_index(&self) -> Option<u64> {
        (!self.locs.is_empty()).then(|| self.next_index() - 1)
    }

    /// Appends `entries` (index, payload) in order; returns the files to
    /// make durable before the entries count as stored.
    pub fn append(&mut self, entries: &[(u64, Vec<u8>)]) -> io::Result<Vec<Arc<File>>> {
        let mut touched: Vec<Arc<File>> = Vec::new();
        let mut buf = Vec::new();
        for (index, payload) in entries {
            if !self.locs.is_empty() && *index != self.next_index() {
                return Err(corrupt(format!("append of entry {index}, expected {}", self.next_index())));
            }
            if self.locs.is_empty() {
                // After a purge of everything (a snapshot installed) the log
                // starts again wherever the leader says.
                self.first = *index;
            }
            let seq = self.writable_segment(payload.len() as u64, &mut buf, &mut touched)?;
            let seg = self.segments.get_mut(&seq).ok_or_else(|| corrupt("no segment".into()))?;
            let offset = seg.len + buf.len() as u64;
            let len = u32::try_from(payload.len()).map_err(|_| corrupt("entry over 4 GiB".into()))?;
            buf.extend_from_slice(&len.to_be_bytes());
            buf.extend_from_slice(&checksum(*index, payload).to_be_bytes());
            buf.extend_from_slice(&index.to_be_bytes());
            buf.extend_from_slice(payload);
            seg.last = Some(*index);
            self.locs.push_back(Loc { seg: seq, offset });
        }
        self.flush_buffer(&mut buf, &mut touched)?;
        Ok(touched)
    }

    /// The segment taking the next record, starting a new one (after
    /// writing out what `buf` holds for the old one) when it is full.
    fn writable_segment(
        &mut self,
        record: u64,
        buf: &mut Vec<u8>,
        touched: &mut Vec<Arc<File>>,
    ) -> io::Result<u64> {
        let current = self.segments.last_key_value().map(|(s, seg)| (*s, seg.len + buf.len() as u64));
        match current {
            Some((seq, len)) if len == 0 || len + record + (HEADER as u64) <= self.segment_bytes => Ok(seq),
            other => {
                self.flush_buffer(buf, touched)?;
                let seq = other.map_or(1, |(s, _)| s + 1);
                let path = self.segment_path(seq);
                let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
                // The new name is made durable with the appends' data: the
                // directory is synced by the flusher with the files, not
                // here under the log's lock.
                touched.push(Arc::new(File::open(&self.dir)?));
                self.segments.insert(seq, Segment { file: Arc::new(file), path, len: 0, last: None });
                Ok(seq)
            }
        }
    }

    /// Writes `buf` at the end of the last segment.
    fn flush_buffer(&mut self, buf: &mut Vec<u8>, touched: &mut Vec<Arc<File>>) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let Some((_, seg)) = self.segments.iter_mut().next_back() else { return Ok(()) };
        seg.file.write_all_at(buf, seg.len)?;
        seg.len += buf.len() as u64;
        buf.clear();
        if !touched.iter().any(|f| Arc::ptr_eq(f, &seg.file)) {
            touched.push(seg.file.clone());
        }
        Ok(())
    }

    /// The payloads of entries `start..end` that are in the log, in order.
    pub fn read(&self, start: u64, end: u64) -> io::Result<Vec<Vec<u8>>> {
        let from = start.max(self.first);
        let to = end.min(self.next_index());
        let mut out = Vec::new();
        let mut i = from;
        while i < to {
            // One read for a run of entries in the same segment.
            let loc = self.locs[(i - self.first) as usize];
            let mut j = i + 1;
            while j < to && self.locs[(j - self.first) as usize].seg == loc.seg {
                j += 1;
            }
            let seg =
                self.segments.get(&loc.seg).ok_or_else(|| corrupt(format!("segment {} missing", loc.seg)))?;
            let end_offset = if j < self.next_index() && self.locs[(j - self.first) as usize].seg == loc.seg {
                self.locs[(j - self.first) as usize].offset
            } else {
                seg.len
            };
            let mut data = vec![0u8; (end_offset - loc.offset) as usize];
            seg.file.read_exact_at(&mut data, loc.offset)?;
            let mut at = 0usize;
            for index in i..j {
                let (got, record_len) = parse(&data[at..])
                    .ok_or_else(|| corrupt(format!("{}: damaged entry {index}", seg.path.display())))?;
                if got != index {
                    return Err(corrupt(format!(
                        "{}: entry {got} where {index} belongs",
                        seg.path.display()
                    )));
                }
                out.push(data[at + HEADER..at + record_len].to_vec());
                at += record_len;
            }
            i = j;
        }
        Ok(out)
    }

    /// Removes entries from `index` on (a leader's log overrides them).
    pub fn truncate(&mut self, index: u64) -> io::Result<()> {
        if index >= self.next_index() {
            return Ok(());
        }
        let keep = index.saturating_sub(self.first) as usize;
        let cut = self.locs[keep];
        self.locs.truncate(keep);
        let later: Vec<u64> = self.segments.range(cut.seg + 1..).map(|(s, _)| *s).collect();
        for seq in later {
            if let Some(seg) = self.segments.remove(&seq) {
                std::fs::remove_file(&seg.path)?;
            }
        }
        if let Some(seg) = self.segments.get_mut(&cut.seg) {
            seg.file.set_len(cut.offset)?;
            seg.file.sync_all()?;
            seg.len = cut.offset;
            seg.last = if cut.offset == 0 { None } else { index.checked_sub(1) };
        }
        sync_dir(&self.dir)
    }

    /// Forgets entries up to `index` and returns the segments holding
    /// nothing newer, for the caller to delete with `remove_segments` once
    /// it let go of the log (deleting a large file can take a while). The
    /// caller has recorded the purge point durably.
    pub fn purge(&mut self, index: u64) -> Vec<PathBuf> {
        let drop = (index + 1).saturating_sub(self.first).min(self.locs.len() as u64);
        self.locs.drain(..drop as usize);
        self.first = self.first.max(index + 1);
        let newest = self.segments.last_key_value().map(|(s, _)| *s);
        let done: Vec<u64> = self
            .segments
            .iter()
            .filter(|(s, seg)| Some(**s) != newest && seg.last.is_none_or(|l| l <= index))
            .map(|(s, _)| *s)
            .collect();
        done.into_iter().filter_map(|seq| self.segments.remove(&seq)).map(|seg| seg.path).collect()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Deletes purged segments (see `Wal::purge`): out of the log first
/// (renamed, directory synced), then shrunk `SHRINK_STEP` at a time and
/// deleted, so that the disk discards their blocks a little at a time.
pub fn remove_segments(dir: &Path, paths: &[PathBuf]) -> io::Result<()> {
    if paths.is_empty() {
        return Ok(());
    }
    let mut retired = Vec::with_capacity(paths.len());
    for p in paths {
        let to = p.with_extension(PURGED_SUFFIX);
        std::fs::rename(p, &to)?;
        retired.push(to);
    }
    sync_dir(dir)?;
    for p in &retired {
        let f = OpenOptions::new().write(true).open(p)?;
        let mut len = f.metadata()?.len();
        while len > SHRINK_STEP {
            len -= SHRINK_STEP;
            f.set_len(len)?;
            std::thread::sleep(SHRINK_PAUSE);
        }
        drop(f);
        std::fs::remove_file(p)?;
    }
    Ok(())
}

/// Parses the record at the start of `data`: its index and total length,
/// or `None` when it is incomplete or its checksum does not match.
fn parse(data: &[u8]) -> Option<(u64, usize)> {
    let header = data.get(..HEADER)?;
    let len = u32::from_be_bytes(header[0..4].try_into().ok()?);
    if len > MAX_RECORD {
        return None;
    }
    let crc = u32::from_be_bytes(header[4..8].try_into().ok()?);
    let index = u64::from_be_bytes(header[8..16].try_into().ok()?);
    let payload = data.get(HEADER..HEADER + len as usize)?;
    (checksum(index, payload) == crc).then_some((index, HEADER + len as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(range: std::ops::Range<u64>) -> Vec<(u64, Vec<u8>)> {
        range.map(|i| (i, format!("entry {i}").into_bytes())).collect()
    }

    fn payloads(range: std::ops::Range<u64>) -> Vec<Vec<u8>> {
        entries(range).into_iter().map(|(_, p)| p).collect()
    }

    #[test]
    fn append_read_reopen_truncate_purge() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), None).unwrap();
        assert_eq!(w.last_index(), None);
        w.append(&entries(1..11)).unwrap();
        assert_eq!(w.read(3, 6).unwrap(), payloads(3..6));
        drop(w);
        let mut w = Wal::open(dir.path(), None).unwrap();
        assert_eq!((w.first, w.last_index()), (1, Some(10)));
        w.truncate(8).unwrap();
        assert_eq!(w.last_index(), Some(7));
        w.append(&entries(8..9)).unwrap();
        assert!(w.append(&entries(10..11)).is_err(), "a gap is refused");
        let doomed = w.purge(4);
        remove_segments(&w.dir, &doomed).unwrap();
        assert_eq!(w.read(0, 100).unwrap(), payloads(5..9));
        drop(w);
        let w = Wal::open(dir.path(), Some(4)).unwrap();
        assert_eq!(w.read(0, 100).unwrap(), payloads(5..9));
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_damage_elsewhere_refused() {
        let dir = tempfile::tempdir().unwrap();
        // Small segments: entries 1-3 in the first, the rest in the next.
        let mut w = Wal::open_with(dir.path(), None, 3 * (HEADER as u64 + 7)).unwrap();
        w.append(&entries(1..6)).unwrap();
        let (first, last) = (w.segment_path(1), w.segment_path(2));
        drop(w);
        // A crash in the middle of writing entry 6.
        let f = OpenOptions::new().append(true).open(&last).unwrap();
        f.write_all_at(&[0, 0, 0, 9, 1, 2], std::fs::metadata(&last).unwrap().len()).unwrap();
        let w = Wal::open(dir.path(), None).unwrap();
        assert_eq!(w.last_index(), Some(5), "the torn record is cut off");
        assert_eq!(w.read(0, 10).unwrap(), payloads(1..6));
        drop(w);
        // A flipped byte inside entry 2, in a segment that is not the last.
        let mut data = std::fs::read(&first).unwrap();
        data[HEADER + 7 + HEADER + 2] ^= 0xff;
        std::fs::write(&first, data).unwrap();
        let e = Wal::open(dir.path(), None).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    }

    #[test]
    fn purged_segments_leave_the_log_and_a_half_deleted_one_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        // Small segments: entries 1-3, 4-6, 7.
        let mut w = Wal::open_with(dir.path(), None, 3 * (HEADER as u64 + 7)).unwrap();
        w.append(&entries(1..8)).unwrap();
        let doomed = w.purge(3);
        assert_eq!(doomed, vec![w.segment_path(1)]);
        // A crash while it was being shrunk: out of the log, cut mid-record.
        let retired = doomed[0].with_extension(PURGED_SUFFIX);
        std::fs::rename(&doomed[0], &retired).unwrap();
        OpenOptions::new().write(true).open(&retired).unwrap().set_len(HEADER as u64 + 3).unwrap();
        drop(w);
        let mut w = Wal::open_with(dir.path(), Some(3), 3 * (HEADER as u64 + 7)).unwrap();
        assert_eq!(w.read(0, 100).unwrap(), payloads(4..8));
        assert!(!retired.exists(), "deleted when the log is opened");
        let doomed = w.purge(6);
        remove_segments(&w.dir, &doomed).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        left.sort();
        assert_eq!(left, vec![format!("{:020}.wal", 3)]);
        assert_eq!(w.read(0, 100).unwrap(), payloads(7..8));
    }

    #[test]
    fn purging_everything_lets_the_log_restart_at_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), None).unwrap();
        w.append(&entries(1..6)).unwrap();
        let doomed = w.purge(100);
        remove_segments(&w.dir, &doomed).unwrap();
        assert_eq!((w.last_index(), w.next_index()), (None, 101));
        w.append(&entries(101..103)).unwrap();
        drop(w);
        let w = Wal::open(dir.path(), Some(100)).unwrap();
        assert_eq!(w.read(0, 1000).unwrap(), payloads(101..103));
    }
}
