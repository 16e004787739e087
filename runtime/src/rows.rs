//! The rows that flow from one block to the next: a whole frame, or batches that arrive while
//! the block before is still producing them.
//!
//! Streaming is what keeps memory flat when the data grows: a source hands over each batch as
//! it parses it, a row-wise transform maps each batch on its own, and a sink writes each batch
//! into its open transaction or file, so a month of trips is never held whole. Blocks that need
//! every row at once (joins, aggregates, hand-written Rust) collect the batches into one frame.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use futures::stream::BoxStream;
use polars::prelude::DataFrame;

use crate::error::{BlockError, BlockResult};
use crate::pipeline::Column;
use crate::schema::polars_schema;

/// Rows passed between blocks.
pub struct Rows {
    /// The compiled columns of every batch; they give an empty input its schema.
    columns: &'static [Column],
    body: Body,
    /// Counts the rows taken out, so the executor knows how many a streaming consumer read.
    taken: Option<Arc<AtomicUsize>>,
    /// The file the rows are parsed from, when a source streams them out of one.
    source_file: Option<SourceFile>,
}

/// The CSV file a source's batches are parsed from, whole on local disk before the first batch
/// is parsed: parsing it again gives the same rows, so a checkpoint can keep the file (a few
/// megabytes of gzip) instead of every parsed row.
#[derive(Clone, Debug)]
pub struct SourceFile {
    /// The open file; read with positioned reads, so the parser's position is left alone.
    pub(crate) file: Arc<std::fs::File>,
    /// How the file is compressed.
    pub(crate) compression: crate::source::Compression,
}

enum Body {
    /// One frame, handed out once.
    Frame(Option<DataFrame>),
    /// Batches in order; an error ends the stream.
    Batches(BoxStream<'static, BlockResult<DataFrame>>),
}

impl From<DataFrame> for Rows {
    fn from(frame: DataFrame) -> Rows {
        Rows {
            columns: &[],
            body: Body::Frame(Some(frame)),
            taken: None,
            source_file: None,
        }
    }
}

impl Rows {
    /// Batches that `stream` yields, each with exactly the compiled `columns`.
    pub fn batches(
        columns: &'static [Column],
        stream: impl futures::Stream<Item = BlockResult<DataFrame>> + Send + 'static,
    ) -> Rows {
        Rows {
            columns,
            body: Body::Batches(stream.boxed()),
            taken: None,
            source_file: None,
        }
    }

    /// Batches sent through a channel, in order; the stream ends when every sender is gone.
    pub fn received(
        columns: &'static [Column],
        receiver: tokio::sync::mpsc::Receiver<BlockResult<DataFrame>>,
    ) -> Rows {
        Rows::batches(
            columns,
            futures::stream::unfold(receiver, |mut receiver| async move {
                receiver.recv().await.map(|batch| (batch, receiver))
            }),
        )
    }

    /// The same rows, parsed from `file`.
    pub(crate) fn with_source_file(mut self, file: SourceFile) -> Rows {
        self.source_file = Some(file);
        self
    }

    /// The file the rows are parsed from, if a source streams them out of one.
    pub(crate) fn source_file(&self) -> Option<&SourceFile> {
        self.source_file.as_ref()
    }

    /// Whether the rows arrive in batches (rather than as one frame already in memory).
    pub fn is_streamed(&self) -> bool {
        matches!(self.body, Body::Batches(_))
    }

    /// The next batch: the whole frame for a frame, `None` once everything has been taken.
    pub async fn next_batch(&mut self) -> Option<BlockResult<DataFrame>> {
        let next = match &mut self.body {
            Body::Frame(frame) => frame.take().map(Ok),
            Body::Batches(stream) => stream.next().await,
        };
        if let (Some(Ok(batch)), Some(taken)) = (&next, &self.taken) {
            taken.fetch_add(batch.height(), Ordering::Relaxed);
        }
        next
    }

    /// Every row in one frame (the batches stacked, not copied together).
    pub async fn collect(mut self) -> BlockResult<DataFrame> {
        let mut whole: Option<DataFrame> = None;
        while let Some(batch) = self.next_batch().await {
            let batch = batch?;
            match &mut whole {
                None => whole = Some(batch),
                Some(whole) => {
                    whole.vstack_mut(&batch)?;
                }
            }
        }
        match whole {
            Some(whole) => Ok(whole),
            None if self.columns.is_empty() => Err(BlockError::fatal(
                "a stream of rows ended without a batch and without a schema",
            )),
            None => Ok(DataFrame::empty_with_schema(&polars_schema(self.columns))),
        }
    }

    /// How many rows, for rows that are one frame in memory; `None` for a stream.
    pub fn height(&self) -> Option<usize> {
        match &self.body {
            Body::Frame(frame) => frame.as_ref().map(DataFrame::height),
            Body::Batches(_) => None,
        }
    }

    /// The frame, for rows that are one frame already in memory; `None` for a stream.
    pub fn into_frame(self) -> Option<DataFrame> {
        match self.body {
            Body::Frame(frame) => frame,
            Body::Batches(_) => None,
        }
    }

    /// The same rows, adding the number of rows taken out to `taken`.
    pub(crate) fn counted(mut self, taken: Arc<AtomicUsize>) -> Rows {
        self.taken = Some(taken);
        self
    }
}
