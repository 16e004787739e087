//! The Baton runtime: the library that generated pipeline code calls.
//!
//! It knows nothing about TOML. The compiler has already resolved, checked and typed the
//! pipeline; what arrives here is a static [`Pipeline`] description and one compiled function
//! per block. The runtime schedules those functions in dependency order, moves polars frames
//! between them, reads sources, writes sinks, runs data checks, records every run in the
//! ledger, checkpoints block outputs and provides each pipeline binary's command line.

pub mod audit;
pub mod callback;
pub mod check;
pub mod checkpoint;
pub mod cli;
pub mod context;
pub mod env;
pub mod error;
pub mod executor;
pub mod exprs;
pub mod fan_out;
mod files;
pub mod history;
mod http;
pub mod ledger;
pub mod logs;
pub mod parquet;
pub mod partition;
pub mod pipeline;
pub mod prepare;
pub mod query;
pub mod rest;
pub mod rows;
pub mod schema;
pub mod sensor;
pub mod serve;
pub mod sink;
pub mod source;
pub mod store;
mod typed_csv;

/// Everything generated code uses, in one import.
pub mod prelude {
    pub use crate::callback::{CallbackEvent, CallbackTarget, WebhookFormat, notify};
    pub use crate::check::{CheckDef, CheckSeverity, run_check};
    pub use crate::context::RunContext;
    pub use crate::error::{BlockError, BlockResult};
    pub use crate::exprs::{
        bool_list, date_lit, evaluate_condition, float_list, int_list, string_list,
    };
    pub use crate::fan_out::{FanOut, fan_out_items, read_each};
    pub use crate::partition::Granularity;
    pub use crate::pipeline::{
        BaseType, BlockDef, BlockFuture, BlockKind, Catchup, Column, Condition, ConnectionDef,
        Overlap, ParamDef, ParamValue, PartitionSpec, Pipeline, Policy, ScheduleDef, Secret,
        SensorDef, SensorKind, SinkDef, Trigger,
    };
    pub use crate::query::{read_query, sql_text};
    pub use crate::rest::{Pagination, RestApi, read_rest};
    pub use crate::rows::Rows;
    pub use crate::schema::conform;
    pub use crate::sink::bigquery::{BigQueryTarget, write_bigquery};
    pub use crate::sink::export::{ExportTarget, write_export};
    pub use crate::sink::lake::{LakeTarget, write_lake};
    pub use crate::sink::table::{TableTarget, WriteMode, write_table};
    pub use crate::source::{Compression, FileFormat, Location, read_source, stream_source};
    pub use polars::prelude::*;
}

/// Helpers shared by the unit tests of several modules.
#[cfg(test)]
pub(crate) mod test_support {
    /// Runs `attempt` against a Postgres URL on a loopback port where nothing listens, and
    /// returns its error, which must come within a few seconds: a server that is down is
    /// reported at once, not after a pool's timeout.
    pub(crate) async fn fails_fast_against_a_closed_port<T, E>(
        attempt: impl AsyncFnOnce(String) -> Result<T, E>,
    ) -> E {
        // Bound, then released: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let started = std::time::Instant::now();
        let outcome = attempt(format!("postgres://postgres@127.0.0.1:{port}/db")).await;
        let elapsed = started.elapsed();
        assert!(
            elapsed < std::time::Duration::from_secs(5),
            "took {elapsed:?}"
        );
        match outcome {
            Ok(_) => panic!("nothing listens on port {port}, yet the connection succeeded"),
            Err(error) => error,
        }
    }
}
