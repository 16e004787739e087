//! The audit trail: an append-only, hash-chained record in the ledger of who or what started
//! each run, which compiled pipeline version and git commit ran, and what every block read and
//! wrote: row counts, the files each source read (by a checksum of their bytes) and the rows the
//! sinks loaded (by a checksum of their content).
//!
//! Each entry carries the SHA-256 of the previous entry's hash and its own fields, so changing,
//! inserting or deleting an entry anywhere but at the very end breaks the chain, and
//! `audit verify` finds it. Verification also compares the trail with the run records: a run
//! whose recorded outcome was edited, or whose entries were removed from the end, no longer
//! matches. To catch a truncated tail without any run to compare with, keep the head hash that
//! `audit verify` prints somewhere else (a ticket, a log shipper).

use std::collections::HashMap;
use std::fmt::Write as _;

use polars::prelude::{ChunkedArray, DataFrame, DataType, PolarsNumericType};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::ledger::{Ledger, LedgerError, RunRecord};

/// The hash that the first entry chains to.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One entry of the trail.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// Position in the trail, from 1, without gaps.
    pub seq: i64,
    /// When it was written, milliseconds since the Unix epoch.
    pub at: i64,
    /// The pipeline.
    pub pipeline: String,
    /// Who or what caused it: `user@host`, `scheduler@host`, `api token sha256:…@host`.
    pub actor: String,
    /// `run_started` or `run_finished`.
    pub event: String,
    /// The run it is about.
    pub run_id: String,
    /// The facts, as a JSON object.
    pub detail: String,
    /// The previous entry's hash ([`GENESIS`] for the first).
    pub prev_hash: String,
    /// SHA-256 over `prev_hash` and every field above, hex.
    pub hash: String,
}

impl AuditEntry {
    /// The entry's hash: SHA-256 over `prev_hash` and every other field but `hash`, each
    /// length-prefixed so that no two different entries can be written as the same bytes.
    pub fn compute_hash(&self) -> String {
        let mut hasher = Sha256::new();
        for field in [
            self.prev_hash.as_str(),
            &self.seq.to_string(),
            &self.at.to_string(),
            &self.pipeline,
            &self.actor,
            &self.event,
            &self.run_id,
            &self.detail,
        ] {
            hasher.update((field.len() as u64).to_le_bytes());
            hasher.update(field.as_bytes());
        }
        hex(&hasher.finalize())
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// Who is starting a run from this process: the operating-system user and the machine.
pub fn local_actor(host: &str) -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown-user".into());
    format!("{user}@{host}")
}

/// An API caller, named by a fingerprint of its token (never the token itself).
pub fn token_actor(token: &str, host: &str) -> String {
    let digest = hex(&Sha256::digest(token.as_bytes()));
    format!("api token sha256:{}@{host}", &digest[..12])
}

/// Feeds BLAKE3 in blocks: a frame is hashed value by value, and one hasher call per value
/// would cost more than the hashing itself (BLAKE3 hashes large inputs with SIMD, several times
/// faster than SHA-256). The digest is the same either way.
struct Blocks {
    hasher: blake3::Hasher,
    buffer: Vec<u8>,
}

impl Blocks {
    /// 16 KiB is as much as BLAKE3 hashes at once with the widest SIMD (16 chunks of 1 KiB);
    /// a larger block is no faster. A run holds two of these per column of every audited
    /// block, so their size is memory held for the whole run.
    const SIZE: usize = 1 << 14;

    fn new() -> Blocks {
        // The buffer is allocated on the first value: a column without nulls never fills
        // its positions' buffer.
        Blocks {
            hasher: blake3::Hasher::new(),
            buffer: Vec::new(),
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        // A whole column's memory goes to the hasher as it is, not through the buffer, which
        // would otherwise grow to the largest column seen.
        if bytes.len() >= Self::SIZE {
            self.hasher.update(&self.buffer);
            self.buffer.clear();
            self.hasher.update(bytes);
            return;
        }
        if self.buffer.capacity() == 0 {
            self.buffer.reserve_exact(Self::SIZE + 64);
        }
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= Self::SIZE {
            self.hasher.update(&self.buffer);
            self.buffer.clear();
        }
    }

    fn finish(self) -> String {
        self.digest().to_hex().to_string()
    }

    fn digest(mut self) -> blake3::Hash {
        self.hasher.update(&self.buffer);
        self.hasher.finalize()
    }
}

/// A checksum of a frame's content, so the same rows give the same checksum in any run, however
/// the columns are chunked and however the rows arrive in batches. Each column's values are
/// hashed in order (numbers as their little-endian bytes, a null's slot as zeros, straight from
/// the column's memory when a chunk has no nulls; text as its length and bytes), and so are
/// its null positions; the checksum is BLAKE3 over every column's name length, name, type, the
/// values' digest, `nulls`, the null count and the positions' digest. (Before rows streamed,
/// one hash ran over all columns in turn, which batches cannot give; that format was written
/// `blake3:`, this one `blake3-columns:`.)
pub fn frame_checksum(frame: &DataFrame) -> String {
    let mut checksum = RowsChecksum::default();
    checksum.update(frame);
    checksum.finish()
}

/// [`frame_checksum`] of rows that arrive in batches: the same value as for the batches
/// stacked into one frame, computed without holding them.
#[derive(Default)]
pub struct RowsChecksum {
    columns: Vec<ColumnChecksum>,
    /// Rows seen so far: where the next batch's null positions start.
    rows: u64,
}

/// The running hashes of one column.
struct ColumnChecksum {
    name: String,
    dtype: String,
    values: Blocks,
    nulls: Blocks,
    null_count: u64,
}

impl RowsChecksum {
    /// Adds the next batch of rows.
    pub fn update(&mut self, frame: &DataFrame) {
        if self.columns.is_empty() {
            self.columns = frame
                .columns()
                .iter()
                .map(|column| ColumnChecksum {
                    name: column.name().to_string(),
                    dtype: column.dtype().to_string(),
                    values: Blocks::new(),
                    nulls: Blocks::new(),
                    null_count: 0,
                })
                .collect();
        }
        for (column, state) in frame.columns().iter().zip(self.columns.iter_mut()) {
            // Dates and times hash as the integers they are stored as.
            let series = column.as_materialized_series().to_physical_repr();
            let mut nulls: Vec<u64> = Vec::new();
            let hash = &mut state.values;
            match series.dtype() {
                DataType::Int64 => numbers(hash, series.i64().expect("int64"), &mut nulls),
                DataType::Int32 => numbers(hash, series.i32().expect("int32"), &mut nulls),
                DataType::UInt32 => numbers(hash, series.u32().expect("uint32"), &mut nulls),
                DataType::Float64 => numbers(hash, series.f64().expect("float64"), &mut nulls),
                DataType::Boolean => {
                    for (i, value) in series.bool().expect("a boolean column").iter().enumerate() {
                        match value {
                            Some(b) => hash.push(&[u8::from(b)]),
                            None => nulls.push(i as u64),
                        }
                    }
                }
                DataType::String => {
                    for (i, value) in series.str().expect("a string column").iter().enumerate() {
                        match value {
                            Some(text) => {
                                hash.push(&(text.len() as u64).to_le_bytes());
                                hash.push(text.as_bytes());
                            }
                            None => nulls.push(i as u64),
                        }
                    }
                }
                // Types the compiler never produces; hashed through their text, still exact.
                _ => {
                    for (i, value) in series.iter().enumerate() {
                        if value.is_null() {
                            nulls.push(i as u64);
                        } else {
                            let text = value.to_string();
                            hash.push(&(text.len() as u64).to_le_bytes());
                            hash.push(text.as_bytes());
                        }
                    }
                }
            }
            state.null_count += nulls.len() as u64;
            for position in nulls {
                state.nulls.push(&(self.rows + position).to_le_bytes());
            }
        }
        self.rows += frame.height() as u64;
    }

    /// The checksum of every row added.
    pub fn finish(self) -> String {
        let mut hash = Blocks::new();
        for column in self.columns {
            hash.push(&(column.name.len() as u64).to_le_bytes());
            hash.push(column.name.as_bytes());
            hash.push(column.dtype.as_bytes());
            hash.push(column.values.digest().as_bytes());
            hash.push(b"nulls");
            hash.push(&column.null_count.to_le_bytes());
            hash.push(column.nulls.digest().as_bytes());
        }
        format!("blake3-columns:{}", hash.finish())
    }
}

/// A numeric column's values as little-endian bytes (nulls as zeros, their positions noted).
fn numbers<T>(hash: &mut Blocks, column: &ChunkedArray<T>, nulls: &mut Vec<u64>)
where
    T: PolarsNumericType,
{
    let zero = T::Native::default();
    let mut offset = 0u64;
    for chunk in column.downcast_iter() {
        let values: &[T::Native] = chunk.values().as_slice();
        match chunk
            .validity()
            .filter(|validity| validity.unset_bits() > 0)
        {
            None => hash.push(bytemuck::cast_slice(values)),
            Some(validity) => {
                for (i, (value, valid)) in values.iter().zip(validity.iter()).enumerate() {
                    if valid {
                        hash.push(bytemuck::bytes_of(value));
                    } else {
                        hash.push(bytemuck::bytes_of(&zero));
                        nulls.push(offset + i as u64);
                    }
                }
            }
        }
        offset += chunk.len() as u64;
    }
    // Little-endian bytes straight from memory: every platform Baton builds for is
    // little-endian, and the checksum must not depend on it.
    const _: () = assert!(cfg!(target_endian = "little"));
}

tokio::task_local! {
    /// The block whose attempt is running in this task, so that a source reading a file can
    /// note the file's checksum for it.
    static CURRENT_BLOCK: &'static str;
}

/// Runs one attempt of `block` with the block known to [`note_input`].
pub(crate) async fn in_block<F: std::future::Future>(block: &'static str, attempt: F) -> F::Output {
    CURRENT_BLOCK.scope(block, attempt).await
}

/// The block whose attempt runs in this task, if any.
pub(crate) fn current_block() -> Option<&'static str> {
    CURRENT_BLOCK.try_with(|block| *block).ok()
}

/// Notes that the running block read `bytes` from `label` (a file or URL): the audit trail
/// records a source's input files by their bytes as stored, which identify them exactly and
/// cost a tenth of hashing the decoded rows of a gzip CSV.
pub(crate) fn note_input(ctx: &crate::context::RunContext, label: &str, bytes: &[u8]) {
    if let Ok(block) = CURRENT_BLOCK.try_with(|block| *block) {
        ctx.record_input(block, label, blake3::hash(bytes).to_hex().to_string());
    }
}

/// The checksum of a source's input files: BLAKE3 over each file's name and checksum, in name
/// order (so reading them in another order, or concurrently, gives the same value).
pub fn files_checksum(files: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = files.iter().collect();
    sorted.sort();
    let mut hasher = blake3::Hasher::new();
    for (label, hash) in sorted {
        hasher.update(&(label.len() as u64).to_le_bytes());
        hasher.update(label.as_bytes());
        hasher.update(hash.as_bytes());
    }
    format!("blake3-files:{}", hasher.finalize().to_hex())
}

/// The facts of a run's start.
pub fn run_started(run: &RunRecord) -> Value {
    json!({
        "partition": run.partition,
        "trigger": run.trigger,
        "version": run.version,
        "git_commit": run.git_commit,
        "params": serde_json::from_str::<Value>(&run.params).unwrap_or(Value::Null),
        "resumed_from": run.resumed_from,
        "host": run.host,
        "pid": run.pid,
    })
}

/// The facts of a run's end, read back from the ledger: its outcome and, per block, what it
/// read and wrote.
pub async fn run_finished(ledger: &Ledger, run_id: &str) -> Result<Value, LedgerError> {
    let run = ledger.run(run_id).await?;
    let blocks = ledger.blocks(run_id).await?;
    Ok(json!({
        "status": run.as_ref().map(|r| r.status.clone()),
        "error": run.as_ref().and_then(|r| r.error.clone()),
        "blocks": blocks.iter().map(|b| json!({
            "block": b.block,
            "status": b.status,
            "rows_in": b.rows_in,
            "rows_out": b.rows_out,
            "checksum": b.checksum,
        })).collect::<Vec<_>>(),
    }))
}

/// What `audit verify` found.
#[derive(Debug, Default)]
pub struct Verification {
    /// Entries checked.
    pub entries: usize,
    /// The last entry's hash: keep it elsewhere to detect a truncated trail later.
    pub head: Option<String>,
    /// Every break found, first to last; empty when the trail is intact.
    pub problems: Vec<String>,
}

/// Recomputes the whole chain and compares the trail with the run records.
pub async fn verify(ledger: &Ledger) -> Result<Verification, LedgerError> {
    let entries = ledger.audit_entries().await?;
    let mut report = Verification {
        entries: entries.len(),
        ..Verification::default()
    };
    let mut prev = GENESIS.to_string();
    let mut expected_seq = 1;
    let mut finished: HashMap<String, &AuditEntry> = HashMap::new();
    let mut started: HashMap<String, &AuditEntry> = HashMap::new();
    for entry in &entries {
        if entry.seq != expected_seq {
            report.problems.push(format!(
                "entry {} follows entry {}: entries {}..{} are missing",
                entry.seq,
                expected_seq - 1,
                expected_seq,
                entry.seq - 1
            ));
        }
        if entry.prev_hash != prev {
            report.problems.push(format!(
                "entry {} does not chain to the entry before it (it names {}, the chain has {})",
                entry.seq,
                short(&entry.prev_hash),
                short(&prev)
            ));
        }
        let recomputed = entry.compute_hash();
        if recomputed != entry.hash {
            report.problems.push(format!(
                "entry {} ({} of run {}) was changed after it was written: its content hashes to {}, it claims {}",
                entry.seq,
                entry.event,
                entry.run_id,
                short(&recomputed),
                short(&entry.hash)
            ));
        }
        match entry.event.as_str() {
            "run_started" => {
                started.insert(entry.run_id.clone(), entry);
            }
            "run_finished" => {
                finished.insert(entry.run_id.clone(), entry);
            }
            _ => {}
        }
        prev = entry.hash.clone();
        expected_seq = entry.seq + 1;
    }
    report.head = entries.last().map(|e| e.hash.clone());
    // The runs recorded since the trail began must agree with it.
    if let Some(first) = entries.first() {
        for run in ledger.runs_since(first.at).await? {
            if !started.contains_key(&run.run_id) {
                report.problems.push(format!(
                    "run {} (started {}) has no `run_started` entry: entries were removed",
                    run.run_id,
                    crate::ledger::format_ms(run.started_at)
                ));
            }
            if run.status == "running" {
                continue;
            }
            match finished.get(&run.run_id) {
                Some(entry) => {
                    let recorded: Value = serde_json::from_str(&entry.detail).unwrap_or_default();
                    if recorded["status"] != run.status.as_str() && run.status != "abandoned" {
                        report.problems.push(format!(
                            "run {} is recorded as {}, but the audit trail says it {}",
                            run.run_id, run.status, recorded["status"]
                        ));
                    }
                }
                None if run.status != "abandoned" => report.problems.push(format!(
                    "run {} ({}) has no `run_finished` entry: entries were removed",
                    run.run_id, run.status
                )),
                None => {}
            }
        }
    }
    Ok(report)
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use polars::prelude::*;

    #[test]
    fn checksums_depend_on_every_value_name_and_null() {
        let frame = df!("a" => [Some(1i64), None], "b" => ["x", "y"]).unwrap();
        let same = df!("a" => [Some(1i64), None], "b" => ["x", "y"]).unwrap();
        assert_eq!(frame_checksum(&frame), frame_checksum(&same));
        let changed = df!("a" => [Some(1i64), Some(0)], "b" => ["x", "y"]).unwrap();
        assert_ne!(frame_checksum(&frame), frame_checksum(&changed));
        let renamed = df!("a" => [Some(1i64), None], "c" => ["x", "y"]).unwrap();
        assert_ne!(frame_checksum(&frame), frame_checksum(&renamed));
        // Moving bytes between two strings changes the checksum too.
        let shifted = df!("a" => [Some(1i64), None], "b" => ["xy", ""]).unwrap();
        assert_ne!(frame_checksum(&frame), frame_checksum(&shifted));
        assert!(frame_checksum(&frame).starts_with("blake3-columns:"));
    }

    #[test]
    fn the_checksum_format_is_stable() {
        // Audit entries of old runs are compared with new ones: the bytes hashed must not change.
        let column = |name: &str, values: &[u8], nulls: &[u64]| {
            let mut bytes = Vec::new();
            bytes.extend((name.len() as u64).to_le_bytes());
            bytes.extend(name.as_bytes());
            bytes.extend(b"i64");
            bytes.extend(blake3::hash(values).as_bytes());
            bytes.extend(b"nulls");
            bytes.extend((nulls.len() as u64).to_le_bytes());
            let positions: Vec<u8> = nulls.iter().flat_map(|p| p.to_le_bytes()).collect();
            bytes.extend(blake3::hash(&positions).as_bytes());
            bytes
        };
        let values: Vec<u8> = [1i64, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let frame = df!("a" => [Some(1i64), None]).unwrap();
        assert_eq!(
            frame_checksum(&frame),
            format!(
                "blake3-columns:{}",
                blake3::hash(&column("a", &values, &[1])).to_hex()
            )
        );
        // Past the hasher's block size, however the column is chunked and in whatever batches
        // the rows arrive, the digest is what one update over all bytes gives.
        let long: Vec<i64> = (0..100_000).collect();
        let values: Vec<u8> = long.iter().flat_map(|v| v.to_le_bytes()).collect();
        let expected = format!(
            "blake3-columns:{}",
            blake3::hash(&column("n", &values, &[])).to_hex()
        );
        let whole = df!("n" => long.clone()).unwrap();
        assert_eq!(frame_checksum(&whole), expected);
        let mut chunked = df!("n" => long[..30_000].to_vec()).unwrap();
        chunked
            .vstack_mut(&df!("n" => long[30_000..].to_vec()).unwrap())
            .unwrap();
        assert!(chunked.first_col_n_chunks() > 1);
        assert_eq!(frame_checksum(&chunked), expected);
    }

    #[test]
    fn batches_checksum_as_the_whole_frame() {
        let frame = df!(
            "id" => (0..1_000i64).collect::<Vec<_>>(),
            "note" => (0..1_000).map(|i| (i % 7 != 0).then(|| format!("n{i}"))).collect::<Vec<_>>(),
            "fare" => (0..1_000).map(|i| (i % 5 != 0).then_some(f64::from(i) / 3.0)).collect::<Vec<_>>(),
        )
        .unwrap();
        let whole = frame_checksum(&frame);
        for cuts in [vec![1], vec![500], vec![3, 4, 999], vec![0, 250, 251, 800]] {
            let mut checksum = RowsChecksum::default();
            let mut start = 0;
            for &cut in cuts.iter().chain([frame.height()].iter()) {
                checksum.update(&frame.slice(start as i64, cut - start));
                start = cut;
            }
            assert_eq!(checksum.finish(), whole, "cuts {cuts:?}");
        }
        let mut shifted = frame.clone();
        shifted
            .with_column(Column::new("fare".into(), vec![Some(1.0f64); 1_000]))
            .unwrap();
        assert_ne!(frame_checksum(&shifted), whole);
    }

    #[test]
    fn every_field_is_part_of_an_entry_hash() {
        let base = AuditEntry {
            seq: 1,
            at: 10,
            pipeline: "p".into(),
            actor: "me@here".into(),
            event: "run_started".into(),
            run_id: "r1".into(),
            detail: "{}".into(),
            prev_hash: GENESIS.into(),
            hash: String::new(),
        };
        let hash = base.compute_hash();
        assert_eq!(hash.len(), 64);
        let changes: Vec<fn(&mut AuditEntry)> = vec![
            |e| e.seq = 2,
            |e| e.at = 11,
            |e| e.pipeline = "q".into(),
            |e| e.actor = "you@here".into(),
            |e| e.event = "run_finished".into(),
            |e| e.run_id = "r2".into(),
            |e| e.detail = "{ }".into(),
            |e| e.prev_hash = "1".repeat(64),
            // Fields cannot trade characters: "p" + "me@here" differs from "pm" + "e@here".
            |e| {
                e.pipeline = "pm".into();
                e.actor = "e@here".into();
            },
        ];
        for change in changes {
            let mut other = base.clone();
            change(&mut other);
            assert_ne!(other.compute_hash(), hash, "{other:?}");
        }
        // The stored hash itself is not an input.
        let mut stored = base.clone();
        stored.hash = hash.clone();
        assert_eq!(stored.compute_hash(), hash);
    }

    #[test]
    fn input_files_are_checksummed_in_name_order() {
        let a = ("s3://b/2021-01.csv".to_string(), "11".to_string());
        let b = ("s3://b/2021-02.csv".to_string(), "22".to_string());
        let forward = files_checksum(&[a.clone(), b.clone()]);
        assert_eq!(forward, files_checksum(&[b.clone(), a.clone()]));
        assert!(forward.starts_with("blake3-files:"));
        assert_ne!(forward, files_checksum(std::slice::from_ref(&a)));
        let changed = ("s3://b/2021-02.csv".to_string(), "23".to_string());
        assert_ne!(forward, files_checksum(&[a, changed]));
    }

    #[test]
    fn token_fingerprints_never_contain_the_token() {
        let actor = token_actor("secret-token", "host1");
        assert!(!actor.contains("secret"));
        assert!(actor.starts_with("api token sha256:") && actor.ends_with("@host1"));
    }
}
