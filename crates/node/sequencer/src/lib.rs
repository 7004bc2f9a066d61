//! The sequencer: orders inputs, makes them durable, acknowledges them with signed receipts, and
//! applies them to the engine; after a crash it rebuilds the identical state.
//!
//! Owns: the write-ahead log (one checksummed record per input, fsync once per group before any
//! acknowledgement), the receipt chain (each input's link hashes `(seq, intent hash, previous link)`; one
//! signature per group seals the Merkle root of its links: two receipts for one sequence number
//! are proof of equivocation), engine snapshots, and
//! recovery (snapshot plus the log after it; a torn last record was never acknowledged and is
//! dropped; damage anywhere else refuses to start), and the record of the engine rules the log
//! was written under (a log is only replayed under them).
//!
//! Must not: verify user signatures or parse API requests (the gateway does, before it submits),
//! or block the engine on anything but its own log.

mod receipt;
mod wal;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use optio_engine::{Engine, RestoreError};
use optio_types::{EngineLimits, Event, Input, RejectCode, WorstCaseMargin};
use secp256k1::{PublicKey, SecretKey};

pub use receipt::{Receipt, ReceiptSigner, Seal, is_equivocation};
pub use wal::{DEFAULT_SEGMENT_BYTES, Record, Wal, WalError};

/// The log's segments in `dir`, oldest first, and what they hold: see `wal`.
pub mod log {
    pub use crate::wal::{read, segments, size, trim};
}

const SNAPSHOT_FILE: &str = "snapshot.bin";
/// An older snapshot kept while inputs after it are not yet batched (`PendingSnapshot::
/// write_keeping`): the log is kept from it on.
const BASE_FILE: &str = "snapshot.base.bin";
/// The oldest earlier snapshot not yet done with, waiting to become the base.
const NEXT_FILE: &str = "snapshot.next.bin";
/// The engine rules the directory's log was written under (`optio_engine::RULES`, in decimal).
const RULES_FILE: &str = "rules";

/// Why the sequencer could not start or continue.
#[derive(Debug, thiserror::Error)]
pub enum SequencerError {
    /// The log is damaged beyond a torn last record, or unreadable.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// The snapshot does not restore.
    #[error("snapshot: {0}")]
    Snapshot(#[from] RestoreError),
    /// Filesystem error writing a snapshot.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The snapshot file is malformed.
    #[error("snapshot file is malformed")]
    SnapshotFormat,
    /// Not a valid secret key.
    #[error("invalid sequencer key")]
    Key,
    /// A staged group must be committed before the next is staged (and only that group).
    #[error("a staged group is pending")]
    GroupPending,
    /// The directory's log was written under other engine rules than this binary applies (or
    /// before rules were recorded: `log` is `None`). Replaying it could give other results than
    /// the ones it gave: other fills than the receipts and batches already committed on L1.
    #[error(
        "the log in this directory was written under engine rules {}, and this \
         binary applies rules {binary}; replaying it could give other results than the ones it \
         gave (fills acknowledged, batches committed): run the binary that wrote it, or start a \
         new directory",
        log.map_or("not recorded (before rules were versioned)".to_owned(), |r| r.to_string())
    )]
    RulesMismatch {
        /// The rules the log was written under, if recorded.
        log: Option<u32>,
        /// `optio_engine::RULES`.
        binary: u32,
    },
    /// The rules file is not a decimal version number.
    #[error("the rules file is malformed")]
    RulesFormat,
    /// The log does not hold every input after the snapshot (its segments start later, or it
    /// ends before the snapshot).
    #[error(
        "the snapshot is at input {snapshot}, and the log holds inputs {first} \
         to {last}: the inputs between are lost"
    )]
    LogIncomplete {
        /// The snapshot's sequence number (0: none).
        snapshot: u64,
        /// The first input the log holds.
        first: u64,
        /// The last (`first - 1`: none).
        last: u64,
    },
    /// A part of the node started with the sequencer (the gateway's batcher over its batches
    /// directory) refused to start.
    #[error("{message}")]
    Startup {
        /// Its stable name (`code`).
        code: &'static str,
        /// What to do.
        message: String,
    },
}

impl SequencerError {
    /// A stable name of what refused, for logs and alerts (`docs/rejections.md`, "Start-up
    /// refusals"): it never changes meaning; the message beside it may.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Wal(WalError::Io(_)) => "log_io",
            Self::Wal(WalError::Corrupt(_)) => "log_corrupt",
            Self::Wal(WalError::Gap(_)) => "log_gap",
            Self::Wal(WalError::Misnamed(_)) => "log_misnamed",
            Self::Wal(WalError::TooLarge(_)) => "log_record_too_large",
            Self::Snapshot(_) => "snapshot_unrestorable",
            Self::Io(_) => "io",
            Self::SnapshotFormat => "snapshot_malformed",
            Self::Key => "key_invalid",
            Self::GroupPending => "group_pending",
            Self::RulesMismatch { .. } => "rules_mismatch",
            Self::RulesFormat => "rules_malformed",
            Self::LogIncomplete { .. } => "log_incomplete",
            Self::Startup { code, .. } => code,
        }
    }
}

/// The engine rules recorded in `dir`, if any.
fn recorded_rules(dir: &Path) -> Result<Option<u32>, SequencerError> {
    match fs::read_to_string(dir.join(RULES_FILE)) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| SequencerError::RulesFormat),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Records this binary's engine rules in `dir`, atomically (temporary file, fsync, rename,
/// directory fsync), before the first record of a new log.
fn record_rules(dir: &Path) -> Result<(), SequencerError> {
    let tmp = dir.join("rules.tmp");
    let mut file = fs::File::create(&tmp)?;
    writeln!(file, "{}", optio_engine::RULES)?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join(RULES_FILE))?;
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// A group written to the log, waiting for its fsync and commit.
#[derive(Debug)]
pub struct Staged {
    first: u64,
    inputs: Vec<(Input, Option<Intent>)>,
}

/// Makes the log durable from another thread.
#[derive(Debug)]
pub struct Syncer {
    file: fs::File,
}

impl Syncer {
    /// fsync.
    pub fn sync(&self) -> Result<(), SequencerError> {
        Ok(self.file.sync_data()?)
    }
}

/// The signed intent behind an input: its EIP-712 digest, owner, nonce, expiry and signature.
/// Logged with the input, so that replay protection survives restarts and the posted data can
/// carry the signatures the authorization challenge checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intent {
    /// EIP-712 digest the user signed (the receipt's intent hash).
    pub digest: [u8; 32],
    /// Owner wallet.
    pub owner: [u8; 20],
    /// Per-owner nonce.
    pub nonce: u64,
    /// Signature expiry (seconds).
    pub expiry: u64,
    /// r || s || v.
    pub signature: [u8; 65],
    /// The client's label for the order (not signed; kept so that it survives restarts).
    pub label: Label,
    /// For an order: what its signature covers beyond the engine's order (`None` in logs
    /// written before it was kept).
    pub order: Option<OrderSigning>,
}

/// What an order's signature covers beyond the engine's order (its price and size): kept so
/// that the posted data can carry every fill's signed orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderSigning {
    /// The key that signed.
    pub signer: [u8; 20],
    /// Maximum fee, micro-USDC.
    pub max_fee: i64,
    /// The domain it was signed under (`optio_state::auth::domain`).
    pub domain: u8,
}

/// A client label of at most 64 bytes of UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label {
    bytes: [u8; Label::MAX],
    len: u8,
}

impl Default for Label {
    fn default() -> Self {
        Label {
            bytes: [0; Label::MAX],
            len: 0,
        }
    }
}

impl Label {
    /// Longest label, bytes.
    pub const MAX: usize = 64;

    /// The label, if it fits.
    pub fn new(text: &str) -> Option<Label> {
        let mut label = Label::default();
        label
            .bytes
            .get_mut(..text.len())?
            .copy_from_slice(text.as_bytes());
        label.len = text.len() as u8;
        Some(label)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl Intent {
    const LEN: usize = 32 + 20 + 8 + 8 + 65;

    /// After the label, an order's trailer: signer, maximum fee, domain, the label's length
    /// and `TRAILER_MARK`.
    const TRAILER: usize = 20 + 8 + 1 + 1 + 1;
    const TRAILER_MARK: u8 = 0xA1;

    /// Fixed-width fields, the label, then for an order the trailer.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN + Label::MAX + Self::TRAILER);
        out.extend_from_slice(&self.digest);
        out.extend_from_slice(&self.owner);
        out.extend_from_slice(&self.nonce.to_le_bytes());
        out.extend_from_slice(&self.expiry.to_le_bytes());
        out.extend_from_slice(&self.signature);
        out.extend_from_slice(self.label.as_str().as_bytes());
        if let Some(o) = &self.order {
            out.extend_from_slice(&o.signer);
            out.extend_from_slice(&o.max_fee.to_le_bytes());
            out.push(o.domain);
            out.push(self.label.len);
            out.push(Self::TRAILER_MARK);
        }
        out
    }

    /// Parses the fixed-width fields, the label and the trailer (logs written before the
    /// trailer existed have none: their labels end the record).
    pub fn decode(bytes: &[u8]) -> Option<Intent> {
        if bytes.len() < Self::LEN {
            return None;
        }
        let rest = &bytes[Self::LEN..];
        let trailer = rest.len().checked_sub(Self::TRAILER).filter(|label| {
            rest.last() == Some(&Self::TRAILER_MARK) && usize::from(rest[rest.len() - 2]) == *label
        });
        let (label, order) = match trailer {
            Some(n) => {
                let t = &rest[n..];
                let order = OrderSigning {
                    signer: t[..20].try_into().ok()?,
                    max_fee: i64::from_le_bytes(t[20..28].try_into().ok()?),
                    domain: t[28],
                };
                (&rest[..n], Some(order))
            }
            None => (rest, None),
        };
        Some(Intent {
            digest: bytes[..32].try_into().ok()?,
            owner: bytes[32..52].try_into().ok()?,
            nonce: u64::from_le_bytes(bytes[52..60].try_into().ok()?),
            expiry: u64::from_le_bytes(bytes[60..68].try_into().ok()?),
            signature: bytes[68..Self::LEN].try_into().ok()?,
            label: Label::new(std::str::from_utf8(label).ok()?)?,
            order,
        })
    }
}

/// Hash identifying an input: the signed intent's digest, or for operator inputs the hash of
/// the input's canonical bytes.
pub fn intent_hash(input: &Input, intent: Option<&Intent>) -> [u8; 32] {
    intent.map_or_else(|| *blake3::hash(&input.encode()).as_bytes(), |i| i.digest)
}

/// One input replayed at start, as shown to an observer.
#[derive(Debug)]
pub struct Replayed<'a> {
    /// Its sequence number.
    pub seq: u64,
    /// The input.
    pub input: &'a Input,
    /// The signed intent logged with it, if any.
    pub intent: Option<&'a Intent>,
    /// What the engine did with it.
    pub events: &'a [Event],
}

/// What happened to one submitted input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The durable, signed acknowledgement.
    pub receipt: Receipt,
    /// The engine's verdict.
    pub result: Result<(), RejectCode>,
    /// The engine's events.
    pub events: Vec<Event>,
}

/// The sequencer with its engine.
pub struct Sequencer {
    dir: PathBuf,
    wal: Wal,
    engine: Engine,
    key: SecretKey,
    previous: [u8; 32],
    /// Signed intents found in the log at start (for rebuilding replay protection).
    recovered: Vec<Intent>,
    /// First sequence number of the group staged and not yet committed.
    staged: Option<u64>,
    /// Sequence number of the last snapshot (0: none).
    snapshot_seq: u64,
}

/// A snapshot file's parts: sequence number, previous receipt link, engine bytes, extra bytes.
type SnapshotParts<'a> = (u64, [u8; 32], &'a [u8], &'a [u8]);

/// The bytes of the file at `path`; `None` if there is none.
fn read_if_there(path: &Path) -> Result<Option<Vec<u8>>, SequencerError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The snapshot file at `path` restored: its sequence number, previous receipt link and
/// engine; `None` if there is none.
fn restore(path: &Path) -> Result<Option<(u64, [u8; 32], Engine)>, SequencerError> {
    let Some(bytes) = read_if_there(path)? else {
        return Ok(None);
    };
    let (seq, previous, engine, _) =
        split_snapshot(&bytes).ok_or(SequencerError::SnapshotFormat)?;
    Ok(Some((
        seq,
        previous,
        Engine::restore_bytes(engine, WorstCaseMargin)?,
    )))
}

/// Splits a snapshot file into its parts.
fn split_snapshot(bytes: &[u8]) -> Option<SnapshotParts<'_>> {
    let seq = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let previous: [u8; 32] = bytes.get(8..40)?.try_into().ok()?;
    let len = usize::try_from(u64::from_le_bytes(bytes.get(40..48)?.try_into().ok()?)).ok()?;
    let end = 48usize.checked_add(len)?;
    Some((seq, previous, bytes.get(48..end)?, bytes.get(end..)?))
}

impl Sequencer {
    /// Opens (or creates) the sequencer in `dir`: restores the latest snapshot, replays the log
    /// after it, drops a torn last record.
    pub fn open(dir: &Path, key: [u8; 32], limits: EngineLimits) -> Result<Self, SequencerError> {
        Self::open_observed(dir, key, limits, &mut |_| {})
    }

    /// Like `open`, and shows every input replayed from the log after the snapshot, with its
    /// events, to `observer` (for rebuilding views such as order history).
    pub fn open_observed(
        dir: &Path,
        key: [u8; 32],
        limits: EngineLimits,
        observer: &mut dyn FnMut(Replayed<'_>),
    ) -> Result<Self, SequencerError> {
        let key = SecretKey::from_secret_bytes(key).map_err(|_| SequencerError::Key)?;
        fs::create_dir_all(dir)?;
        let snapshot = dir.join(SNAPSHOT_FILE);
        let (mut engine, snapshot_seq, mut previous) = match restore(&snapshot)? {
            Some((seq, previous, engine)) => (engine, seq, previous),
            None => (Engine::new(limits), 0, [0; 32]),
        };
        let (wal, records) = Wal::open(dir)?;
        let first = records.first().map_or(wal.next_seq(), |r| r.0);
        if first > snapshot_seq + 1 || wal.next_seq() <= snapshot_seq {
            return Err(SequencerError::LogIncomplete {
                snapshot: snapshot_seq,
                first,
                last: wal.next_seq() - 1,
            });
        }
        // A new directory takes this binary's rules; any other log must have been written
        // under them (the node replays it from the base snapshot, too, for the inputs not yet
        // batched).
        let fresh = records.is_empty() && !snapshot.exists();
        match recorded_rules(dir)? {
            Some(rules) if rules == optio_engine::RULES => {}
            _ if fresh => record_rules(dir)?,
            log => {
                return Err(SequencerError::RulesMismatch {
                    log,
                    binary: optio_engine::RULES,
                });
            }
        }
        let mut events = Vec::new();
        let mut recovered = Vec::new();
        for (seq, input, intent) in records {
            let intent = intent.as_deref().and_then(Intent::decode);
            recovered.extend(intent);
            if seq <= snapshot_seq {
                continue;
            }
            let _ = engine.apply(&input, &mut events);
            observer(Replayed {
                seq,
                input: &input,
                intent: intent.as_ref(),
                events: &events,
            });
            events.clear();
            previous = receipt::link(seq, &intent_hash(&input, intent.as_ref()), &previous);
        }
        Ok(Self {
            dir: dir.to_owned(),
            wal,
            engine,
            key,
            previous,
            recovered,
            staged: None,
            snapshot_seq,
        })
    }

    /// The sequencer's public key (receipts verify against it).
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_secret_key(&self.key)
    }

    /// The engine (read-only).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Next sequence number.
    pub fn next_seq(&self) -> u64 {
        self.wal.next_seq()
    }

    /// Starts a new log segment once the one appended to holds `bytes` or more.
    pub fn set_segment_bytes(&mut self, bytes: u64) {
        self.wal.set_segment_bytes(bytes);
    }

    /// The log's segment files and their total bytes.
    pub fn log_size(&self) -> Result<(usize, u64), SequencerError> {
        Ok(wal::size(&self.dir)?)
    }

    /// The older snapshot kept in `dir` (`PendingSnapshot::write_keeping`): its sequence number
    /// and its engine, restored; `None` without one.
    pub fn read_base(dir: &Path) -> Result<Option<(u64, Engine)>, SequencerError> {
        Ok(restore(&dir.join(BASE_FILE))?.map(|(seq, _, engine)| (seq, engine)))
    }

    /// The logged inputs in `dir` after `from` and before `until`, every one of them, read
    /// without opening the sequencer: `LogIncomplete` if the log no longer holds them all (its
    /// segments before a snapshot deleted).
    pub fn read_log_between(
        dir: &Path,
        from: u64,
        until: u64,
    ) -> Result<Vec<Record>, SequencerError> {
        let records: Vec<Record> = wal::read(dir)?
            .into_iter()
            .skip_while(|r| r.0 <= from)
            .take_while(|r| r.0 < until)
            .collect();
        let first = records.first().map_or(until, |r| r.0);
        if first != from + 1 || records.len() as u64 != until.saturating_sub(from + 1) {
            return Err(SequencerError::LogIncomplete {
                snapshot: from,
                first,
                last: records.last().map_or(first - 1, |r| r.0),
            });
        }
        Ok(records)
    }

    /// The extra bytes of the snapshot in `dir` (what `snapshot_with` kept beside the engine),
    /// read without opening the sequencer; `None` without a snapshot.
    pub fn read_snapshot_extra(dir: &Path) -> Result<Option<Vec<u8>>, SequencerError> {
        read_if_there(&dir.join(SNAPSHOT_FILE))?
            .map(|bytes| {
                split_snapshot(&bytes)
                    .map(|(_, _, _, extra)| extra.to_vec())
                    .ok_or(SequencerError::SnapshotFormat)
            })
            .transpose()
    }

    /// The sequence number of the last snapshot (0: none), written or restored.
    pub fn snapshot_seq(&self) -> u64 {
        self.snapshot_seq
    }

    /// Signed intents the log held when the sequencer opened.
    pub fn recovered_intents(&self) -> &[Intent] {
        &self.recovered
    }

    /// Sequences a group of operator inputs (no signed intent).
    pub fn submit(&mut self, inputs: &[Input]) -> Result<Vec<Outcome>, SequencerError> {
        let with: Vec<(Input, Option<Intent>)> = inputs.iter().map(|i| (i.clone(), None)).collect();
        self.submit_intents(&with)
    }

    /// Sequences a group of inputs with their signed intents: appends them to the log with one
    /// fsync, then applies them and signs their receipts. Nothing is acknowledged before it is
    /// durable.
    pub fn submit_intents(
        &mut self,
        inputs: &[(Input, Option<Intent>)],
    ) -> Result<Vec<Outcome>, SequencerError> {
        let mut outcomes = self.submit_intents_unsigned(inputs)?;
        self.receipt_signer()
            .seal(outcomes.iter_mut().map(|o| &mut o.receipt));
        Ok(outcomes)
    }

    /// Like `submit_intents`, but leaves the receipts unsealed, so that the caller can seal them
    /// with `receipt_signer()` off the sequencing path (without the lock).
    /// The chain of receipt hashes is fixed here, in order.
    pub fn submit_intents_unsigned(
        &mut self,
        inputs: &[(Input, Option<Intent>)],
    ) -> Result<Vec<Outcome>, SequencerError> {
        let staged = self.stage(inputs.to_vec())?;
        self.syncer()?.sync()?;
        self.commit(staged)
    }

    /// Writes a group to the log without waiting for it to be durable, so that the caller can
    /// fsync (with `syncer`) without holding the sequencer. Nothing is applied or acknowledged
    /// until `commit`, which must follow that fsync; one group at a time.
    pub fn stage(
        &mut self,
        inputs: Vec<(Input, Option<Intent>)>,
    ) -> Result<Staged, SequencerError> {
        if self.staged.is_some() {
            return Err(SequencerError::GroupPending);
        }
        let logged: Vec<(Input, Option<Vec<u8>>)> = inputs
            .iter()
            .map(|(i, intent)| (i.clone(), intent.map(|x| x.encode())))
            .collect();
        let first = self.wal.append(&logged)?;
        self.staged = Some(first);
        Ok(Staged { first, inputs })
    }

    /// A handle that makes everything written so far durable.
    pub fn syncer(&self) -> Result<Syncer, SequencerError> {
        Ok(Syncer {
            file: self.wal.sync_handle()?,
        })
    }

    /// Applies a staged group (after its fsync) and builds its receipts, unsigned.
    pub fn commit(&mut self, staged: Staged) -> Result<Vec<Outcome>, SequencerError> {
        if self.staged != Some(staged.first) {
            return Err(SequencerError::GroupPending);
        }
        self.staged = None;
        let mut outcomes = Vec::with_capacity(staged.inputs.len());
        for (i, (input, signed)) in staged.inputs.iter().enumerate() {
            let seq = staged.first + i as u64;
            let mut events = Vec::new();
            let result = self.engine.apply(input, &mut events);
            let intent = intent_hash(input, signed.as_ref());
            let receipt = Receipt {
                seq,
                intent_hash: intent,
                previous: self.previous,
                seal: Seal::UNSIGNED,
                path: Vec::new(),
            };
            self.previous = receipt.link();
            outcomes.push(Outcome {
                receipt,
                result,
                events,
            });
        }
        Ok(outcomes)
    }

    /// Signs receipts with the sequencer key (cheap to copy, usable from any thread).
    pub fn receipt_signer(&self) -> ReceiptSigner {
        ReceiptSigner { key: self.key }
    }

    /// Writes a snapshot of the engine at the current sequence number, atomically (temporary
    /// file, fsync, rename, directory fsync).
    pub fn snapshot(&mut self) -> Result<(), SequencerError> {
        self.snapshot_with(&[])
    }

    /// Like `snapshot`, with `extra` bytes kept beside the engine (the gateway's views at the
    /// same sequence number), read back by `read_snapshot_extra`. Refused while
    /// a group is staged (the engine would not match the log's end).
    pub fn snapshot_with(&mut self, extra: &[u8]) -> Result<(), SequencerError> {
        self.take_snapshot()?.write(extra)
    }

    /// The engine's part of a snapshot at the current sequence number, to be written (with the
    /// extra bytes) by `PendingSnapshot::write`, off the caller's critical path: taking it
    /// copies the engine state, writing it encodes nothing more from the sequencer. It counts
    /// as the latest snapshot from now on. Refused while a group is staged.
    pub fn take_snapshot(&mut self) -> Result<PendingSnapshot, SequencerError> {
        if self.staged.is_some() {
            return Err(SequencerError::GroupPending);
        }
        let seq = self.wal.next_seq() - 1;
        self.snapshot_seq = seq;
        Ok(PendingSnapshot {
            dir: self.dir.clone(),
            seq,
            previous: self.previous,
            engine: self.engine.snapshot(),
        })
    }
}

/// Makes `to` the file `from` is (a hard link, or a copy where links are not supported),
/// atomically: through a temporary name, then a rename over `to`.
fn link_as(dir: &Path, from: &Path, to: &Path) -> Result<(), SequencerError> {
    let tmp = dir.join("snapshot.link.tmp");
    remove_if_there(&tmp)?;
    if fs::hard_link(from, &tmp).is_err() {
        fs::copy(from, &tmp)?;
        fs::File::open(&tmp)?.sync_all()?;
    }
    fs::rename(&tmp, to)?;
    Ok(())
}

fn remove_if_there(path: &Path) -> Result<(), SequencerError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// The sequence number of the snapshot file at `path` (its first 8 bytes; the file is not read
/// further), if there is one.
fn seq_of(path: &Path) -> Result<Option<u64>, SequencerError> {
    use std::io::Read;
    let mut seq = [0u8; 8];
    match fs::File::open(path).and_then(|mut f| f.read_exact(&mut seq)) {
        Ok(()) => Ok(Some(u64::from_le_bytes(seq))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(SequencerError::SnapshotFormat)
        }
        Err(e) => Err(e.into()),
    }
}

/// A snapshot taken and not yet on disk (see `Sequencer::take_snapshot`).
pub struct PendingSnapshot {
    dir: PathBuf,
    seq: u64,
    previous: [u8; 32],
    engine: Vec<u8>,
}

impl PendingSnapshot {
    /// The sequence number it is at.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Writes it with `extra` atomically, like `write`, then deletes the log segments that
    /// the base snapshot covers. The base is the newest earlier snapshot whose inputs were
    /// all `done` with (the node's: batched) when a later one was written: the snapshot this
    /// one replaces if it is done with, or else the one kept waiting (`snapshot.next.bin`, the
    /// oldest not yet done with) once it is. So the log holds what a restart replays after
    /// the snapshot, and what the node replays after the base (the inputs not yet batched);
    /// without a base, all of it. Returns the base's sequence number (0: none) and the bytes
    /// the log freed.
    pub fn write_keeping(self, extra: &[u8], done: u64) -> Result<(u64, u64), SequencerError> {
        let dir = self.dir.clone();
        let (current, waiting) = (dir.join(SNAPSHOT_FILE), dir.join(NEXT_FILE));
        if seq_of(&waiting)?.is_some_and(|s| s <= done) {
            fs::rename(&waiting, dir.join(BASE_FILE))?;
        }
        if let Some(seq) = seq_of(&current)?.filter(|&s| s < self.seq) {
            // Linked before it is replaced: whenever this stops, the directory holds a
            // snapshot, and a base that is done with.
            if seq <= done {
                link_as(&dir, &current, &dir.join(BASE_FILE))?;
                remove_if_there(&waiting)?;
            } else if !waiting.exists() {
                link_as(&dir, &current, &waiting)?;
            }
        }
        self.write(extra)?;
        let base = seq_of(&dir.join(BASE_FILE))?.unwrap_or(0);
        let freed = if base > 0 { wal::trim(&dir, base)? } else { 0 };
        Ok((base, freed))
    }

    /// Writes it with `extra` atomically (temporary file, fsync, rename, directory fsync).
    pub fn write(self, extra: &[u8]) -> Result<(), SequencerError> {
        let mut bytes = Vec::with_capacity(48 + self.engine.len() + extra.len());
        bytes.extend_from_slice(&self.seq.to_le_bytes());
        bytes.extend_from_slice(&self.previous);
        bytes.extend_from_slice(&(self.engine.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&self.engine);
        bytes.extend_from_slice(extra);
        let tmp = self.dir.join("snapshot.tmp");
        let mut file = fs::File::create(&tmp)?;
        // Synced a slice at a time: the log's fsyncs (which on ext4 can wait for other files'
        // dirty data) never wait for more than one slice of a large snapshot.
        for slice in bytes.chunks(256 * 1024) {
            file.write_all(slice)?;
            file.sync_data()?;
        }
        file.sync_all()?;
        fs::rename(&tmp, self.dir.join(SNAPSHOT_FILE))?;
        fs::File::open(&self.dir)?.sync_all()?;
        Ok(())
    }
}
