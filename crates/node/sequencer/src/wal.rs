//! The write-ahead log: records `[payload length u32][crc32 of payload u32][seq u64]
//! [input length u32][input][intent length u32][signed intent]` (the intent, when the input came
//! from a user's signature, is what replay protection and the authorization challenge need).
//! Appends write a whole group then fsync once. Opening reads every record, checks sequence
//! continuity and checksums, and truncates a torn tail (an incomplete or corrupt record with no
//! valid record after it, which was never acknowledged).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

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
    /// An input too large to log.
    #[error("input of {0} bytes exceeds the record limit")]
    TooLarge(usize),
}

/// An open log.
pub struct Wal {
    file: File,
    next_seq: u64,
    buffer: Vec<u8>,
}

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

impl Wal {
    /// Opens the log, returning every valid record in order.
    pub fn open(path: &Path) -> Result<(Wal, Vec<Record>), WalError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut records = Vec::new();
        let mut offset = 0usize;
        let mut expected = 1u64;
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
                    if later {
                        return Err(WalError::Corrupt(offset as u64));
                    }
                    // The simulator's canary (`--features canary`, never in a release): a planted
                    // off-by-one that also drops the last complete record, which was
                    // acknowledged. `optio sim` must catch it.
                    #[cfg(feature = "canary")]
                    if let Some((_, input, intent)) = records.pop() {
                        let mut payload = 12 + input.encode().len() + 4;
                        payload += intent.as_ref().map_or(0, Vec::len);
                        offset -= HEADER + payload;
                        expected -= 1;
                    }
                    file.set_len(offset as u64)?;
                    file.sync_all()?;
                    break;
                }
            }
        }
        file.seek(SeekFrom::Start(offset as u64))?;
        Ok((
            Wal {
                file,
                next_seq: expected,
                buffer: Vec::new(),
            },
            records,
        ))
    }

    /// Next sequence number to assign.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Writes a group of inputs with one write, not yet durable (see `append_durable` and
    /// `sync_handle`); returns the first's sequence number.
    pub fn append(&mut self, inputs: &[(Input, Option<Vec<u8>>)]) -> Result<u64, WalError> {
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
