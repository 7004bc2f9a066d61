//! The write-ahead log: records `[payload length u32][crc32 of payload u32][seq u64]
//! [input length u32][input][intent length u32][signed intent]` (the intent, when the input came
//! from a user's signature, is what replay protection and the authorization challenge need).
//! Appends write a whole group then fsync once. The log is a run of segment files (`wal.log`
//! from sequence number 1, then `wal.<first sequence number>.log`): a new one starts once the
//! one appended to reaches `segment_bytes`, the old one made durable whole first, so that the
//! segments a snapshot covers can be deleted (`trim`). Opening reads every record, checks
//! sequence continuity (within and across segments) and checksums, and truncates a torn tail of
//! the last segment (an incomplete or corrupt record with no valid record after it, which was
//! never acknowledged); damage anywhere else is refused.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use optio_types::Input;

/// Largest record accepted (bounds what a corrupt length field can make us read).
pub const MAX_RECORD: usize = 1 << 20;
const HEADER: usize = 8;

/// Why the log cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// Filesystem error.
    #[error("wal io: {0}")]
    Io(#[from] std::io::Error),
    /// A damaged record followed by valid ones: acknowledged data would be lost, so refuse.
    #[error("wal corrupt at byte {0}, with valid records after it")]
    Corrupt(u64),
    /// Records out of sequence.
    #[error("wal sequence gap at byte {0}")]
    Gap(u64),
    /// A file named as a segment whose number is not one.
    #[error("wal segment misnamed: {0}")]
    Misnamed(String),
    /// An input too large to log.
    #[error("input of {0} bytes exceeds the record limit")]
    TooLarge(usize),
}

/// An open log.
pub struct Wal {
    file: File,
    dir: PathBuf,
    next_seq: u64,
    /// Bytes in the segment appended to.
    active_len: u64,
    segment_bytes: u64,
    buffer: Vec<u8>,
}

/// A new segment starts once the active one holds this many bytes (`Wal::set_segment_bytes`).
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

/// One logged input and the signed intent it came from, if any.
pub type Record = (u64, Input, Option<Vec<u8>>);

/// Parses one record at the start of `bytes`: (length consumed, record) or `None`.
fn parse(bytes: &[u8]) -> Option<(usize, Record)> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    if !(8..=MAX_RECORD).contains(&len) {
        return None;
    }
    let payload = bytes.get(HEADER..HEADER + len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let seq = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    let input_len = u32::from_le_bytes(payload.get(8..12)?.try_into().ok()?) as usize;
    let input = Input::decode(payload.get(12..12 + input_len)?).ok()?;
    let rest = payload.get(12 + input_len..)?;
    let intent_len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    if rest.len() != 4 + intent_len {
        return None;
    }
    let intent = (intent_len > 0).then(|| rest[4..].to_vec());
    Some((HEADER + len, (seq, input, intent)))
}

/// The log's first segment's name (its records start at 1).
const FIRST_SEGMENT: &str = "wal.log";

/// Where a segment starting at `first` lives in `dir`: `wal.log` for the first, then
/// `wal.<first, 20 digits>.log`.
fn segment_path(dir: &Path, first: u64) -> PathBuf {
    if first == 1 {
        dir.join(FIRST_SEGMENT)
    } else {
        dir.join(format!("wal.{first:020}.log"))
    }
}

/// The log's segments in `dir`, oldest first: the sequence number each starts at, and its path.
pub fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let first = if name == FIRST_SEGMENT {
            1
        } else if let Some(n) = name
            .strip_prefix("wal.")
            .and_then(|n| n.strip_suffix(".log"))
            .filter(|n| n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()))
        {
            match n.parse::<u64>() {
                Ok(first) if first > 1 => first,
                _ => return Err(WalError::Misnamed(name.to_owned())),
            }
        } else {
            continue;
        };
        found.push((first, path));
    }
    found.sort();
    Ok(found)
}

/// Deletes the segments whose every record has a sequence number at or below `through` (a
/// snapshot the node restores from covers them), never the last one, which the log appends to.
/// Returns the bytes freed. Safe beside the log's writer: it only ever adds a newer segment.
pub fn trim(dir: &Path, through: u64) -> Result<u64, WalError> {
    let found = segments(dir)?;
    let mut freed = 0;
    for pair in found.windows(2) {
        let ((_, path), (next, _)) = (&pair[0], &pair[1]);
        if next - 1 > through {
            break;
        }
        freed += std::fs::metadata(path)?.len();
        std::fs::remove_file(path)?;
    }
    if freed > 0 {
        File::open(dir)?.sync_all()?;
    }
    Ok(freed)
}

/// The log's segments and their total size in bytes.
pub fn size(dir: &Path) -> Result<(usize, u64), WalError> {
    let found = segments(dir)?;
    let mut bytes = 0;
    for (_, path) in &found {
        bytes += std::fs::metadata(path)?.len();
    }
    Ok((found.len(), bytes))
}

/// What reading the segments found.
struct Scan {
    records: Vec<Record>,
    /// The last segment: where it starts, its path, and the length of its valid records (a torn
    /// tail after them was never acknowledged).
    last: Option<(u64, PathBuf, u64)>,
    /// Whether bytes follow the last segment's valid records.
    torn: bool,
}

/// Reads every segment in order: each must hold consecutive records from the number in its
/// name; only the last may end in a torn record (the others were made durable whole before the
/// next began).
fn scan(dir: &Path) -> Result<Scan, WalError> {
    let found = segments(dir)?;
    let mut records = Vec::new();
    let mut last = None;
    let mut torn = false;
    for (i, (first, path)) in found.iter().enumerate() {
        if i > 0 && *first != records.last().map_or(0, |r: &Record| r.0) + 1 {
            return Err(WalError::Gap(0));
        }
        let bytes = std::fs::read(path)?;
        let mut offset = 0usize;
        let mut expected = *first;
        let is_last = i + 1 == found.len();
        while offset < bytes.len() {
            match parse(&bytes[offset..]) {
                Some((used, (seq, input, intent))) => {
                    if seq != expected {
                        return Err(WalError::Gap(offset as u64));
                    }
                    records.push((seq, input, intent));
                    expected += 1;
                    offset += used;
                }
                None => {
                    // Torn tail, or damage in the middle? Look for any valid record after it.
                    let later = (offset + 1..bytes.len()).any(|o| {
                        parse(&bytes[o..]).is_some_and(|(_, (seq, _, _))| seq >= expected)
                    });
                    if later || !is_last {
                        return Err(WalError::Corrupt(offset as u64));
                    }
                    torn = true;
                    break;
                }
            }
        }
        if is_last {
            last = Some((*first, path.clone(), offset as u64));
        }
    }
    Ok(Scan {
        records,
        last,
        torn,
    })
}

/// The simulator's canary (`--features canary`, never in a release): a planted off-by-one that
/// also drops the last complete record of the active segment, which was acknowledged, when it
/// cuts a torn tail; returns the bytes it drops. `optio sim` must catch it.
#[cfg(feature = "canary")]
fn canary(records: &mut Vec<Record>, active_first: u64) -> u64 {
    match records.last() {
        Some(r) if r.0 >= active_first => {
            let (_, input, intent) = records.pop().expect("a last record");
            (HEADER + 12 + input.encode().len() + 4 + intent.as_ref().map_or(0, Vec::len)) as u64
        }
        _ => 0,
    }
}

/// Without the canary, cutting a torn tail drops nothing else.
#[cfg(not(feature = "canary"))]
fn canary(_records: &mut Vec<Record>, _active_first: u64) -> u64 {
    0
}

/// Every valid record of the log in `dir`, read without changing it (a torn tail is left to
/// the log's next `open`).
pub fn read(dir: &Path) -> Result<Vec<Record>, WalError> {
    Ok(scan(dir)?.records)
}

impl Wal {
    /// Opens the log in `dir` (creating its first segment if it has none), returning every
    /// valid record in order; a torn tail is cut off.
    pub fn open(dir: &Path) -> Result<(Wal, Vec<Record>), WalError> {
        let Scan {
            mut records,
            last,
            torn,
        } = scan(dir)?;
        let (active_first, path, valid) = last.unwrap_or((1, segment_path(dir, 1), 0));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let valid = if torn {
            let valid = valid - canary(&mut records, active_first);
            file.set_len(valid)?;
            file.sync_all()?;
            valid
        } else {
            valid
        };
        let next_seq = records.last().map_or(active_first, |r| r.0 + 1);
        file.seek(SeekFrom::Start(valid))?;
        Ok((
            Wal {
                file,
                dir: dir.to_owned(),
                next_seq,
                active_len: valid,
                segment_bytes: DEFAULT_SEGMENT_BYTES,
                buffer: Vec::new(),
            },
            records,
        ))
    }

    /// Starts a new segment once the one appended to holds `bytes` or more (at a group's
    /// start: a group never spans two segments).
    pub fn set_segment_bytes(&mut self, bytes: u64) {
        self.segment_bytes = bytes.max(1);
    }

    /// Closes the active segment (made durable whole) and starts the next at `next_seq`.
    fn rotate(&mut self) -> Result<(), WalError> {
        self.file.sync_all()?;
        let path = segment_path(&self.dir, self.next_seq);
        self.file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        File::open(&self.dir)?.sync_all()?;
        self.active_len = 0;
        Ok(())
    }

    /// Next sequence number to assign.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Writes a group of inputs with one write, not yet durable (see `append_durable` and
    /// `sync_handle`); returns the first's sequence number.
    pub fn append(&mut self, inputs: &[(Input, Option<Vec<u8>>)]) -> Result<u64, WalError> {
        if self.active_len >= self.segment_bytes {
            self.rotate()?;
        }
        let first = self.next_seq;
        self.buffer.clear();
        for (i, (input, intent)) in inputs.iter().enumerate() {
            let mut payload = (first + i as u64).to_le_bytes().to_vec();
            let encoded = input.encode();
            payload.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
            payload.extend_from_slice(&encoded);
            let intent = intent.as_deref().unwrap_or_default();
            payload.extend_from_slice(&(intent.len() as u32).to_le_bytes());
            payload.extend_from_slice(intent);
            if payload.len() > MAX_RECORD {
                return Err(WalError::TooLarge(payload.len()));
            }
            self.buffer
                .extend_from_slice(&(payload.len() as u32).to_le_bytes());
            self.buffer
                .extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            self.buffer.extend_from_slice(&payload);
        }
        self.file.write_all(&self.buffer)?;
        self.active_len += self.buffer.len() as u64;
        self.next_seq += inputs.len() as u64;
        Ok(first)
    }

    /// Appends and makes durable (write, then fsync).
    pub fn append_durable(&mut self, inputs: &[(Input, Option<Vec<u8>>)]) -> Result<u64, WalError> {
        let first = self.append(inputs)?;
        self.file.sync_data()?;
        Ok(first)
    }

    /// A second handle on the log file, to fsync without borrowing the log.
    pub fn sync_handle(&self) -> Result<File, WalError> {
        Ok(self.file.try_clone()?)
    }
}
