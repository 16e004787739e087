//! Emit: the checked pipeline as Rust source, formatted with prettyplease.
//!
//! The generated code is the executor itself: one function per block, the schema of every edge
//! as a constant, and a dispatcher the runtime calls in dependency order. Code is built with
//! `quote`, then comments (which token streams cannot carry) are spliced in after formatting.

use proc_macro2::{Ident, Span as TokenSpan, TokenStream};
use quote::{format_ident, quote};

use crate::expr::BinaryOp;
use crate::ir::{
    Aggregate, Block, BlockOp, Function, PartitionField, Pipeline, Schema, SourceOrigin, StepOp,
    TemplatePart, TypedExpr,
};
use crate::syntax::{
    CallbackOn, Catchup, CheckSeverity, Compression, FileFormat, ForEach, JoinHow, Overlap,
    Pagination, SecretRef, SensorKind, Trigger, WebhookFormat, WriteMode,
};
use crate::types::{BaseType, ColumnType, Granularity, Literal};

/// How the generated code reaches the pipeline's hand-written Rust module.
#[derive(Clone, Debug)]
pub enum RustModule {
    /// `#[path = "..."] mod blocks;` with a path relative to the generated file (committed code).
    Path(String),
    /// `mod blocks { include!("...") }` with an absolute path (proc-macro expansion).
    Include(String),
}

/// Options of one emission.
#[derive(Clone, Debug)]
pub struct EmitOptions {
    /// Emit `fn main` that runs the pipeline's CLI.
    pub with_main: bool,
    /// How to reach the hand-written module, if the pipeline has one.
    pub rust_module: Option<RustModule>,
    /// Emit `// pipelines/x.toml:LINE` comments above each step (files only: a proc-macro
    /// expansion has no comments).
    pub comments: bool,
}

const COMMENT_MARKER: &str = "__baton_comment__";

/// The generated items as a token stream (used by the proc-macro).
pub fn tokens(pipeline: &Pipeline, options: &EmitOptions) -> TokenStream {
    let schemas = pipeline.blocks.iter().filter_map(|block| {
        let schema = block.output.as_ref()?;
        let name = schema_const(block);
        let columns = schema.iter().map(|(column, ty)| column_tokens(column, *ty));
        let doc = format!(
            " Columns leaving `{}` ({}:{}).",
            block.name, pipeline.source_path, block.line
        );
        Some(quote! {
            #[doc = #doc]
            pub const #name: &[Column] = &[#(#columns),*];
        })
    });
    let targets = pipeline.blocks.iter().filter_map(|block| {
        sink_target(pipeline, block).or_else(|| callback_target(pipeline, block))
    });
    let functions = pipeline
        .blocks
        .iter()
        .map(|block| block_function(pipeline, block, options));
    let lineages = crate::lineage::lineage(pipeline);
    let definitions = pipeline
        .blocks
        .iter()
        .zip(&lineages)
        .map(|(block, lineage)| block_definition(pipeline, block, lineage));
    let arms = pipeline
        .blocks
        .iter()
        .enumerate()
        .map(|(index, block)| dispatch_arm(index, block));
    let block_count = proc_macro2::Literal::usize_unsuffixed(pipeline.blocks.len());
    // Sinks and per-batch transforms take their input out of the vector; the other blocks
    // with inputs hand the whole vector on.
    let takes_out = |b: &Block| b.op.is_sink() || b.works_per_batch();
    let inputs_binding = if pipeline.blocks.iter().any(takes_out) {
        quote!(mut inputs)
    } else if pipeline.blocks.iter().any(|b| !b.inputs.is_empty()) {
        quote!(inputs)
    } else {
        quote!(_inputs)
    };
    let name = &pipeline.name;
    let description = pipeline.description.clone().unwrap_or_default();
    let owner = pipeline.owner.clone().unwrap_or_default();
    let tags = &pipeline.tags;
    let source_path = &pipeline.source_path;
    let source_hash = &pipeline.source_hash;
    let timeout_ms = match pipeline.timeout_ms {
        Some(ms) => {
            let ms = proc_macro2::Literal::u64_unsuffixed(ms);
            quote!(Some(#ms))
        }
        None => quote!(None),
    };
    let limits = pipeline.limits.iter().map(|(kind, limit)| {
        let kind = kind_name_tokens(kind);
        let limit = proc_macro2::Literal::usize_unsuffixed(*limit as usize);
        quote!((#kind, #limit))
    });
    let schedule = match &pipeline.schedule {
        Some(schedule) => {
            let cron = &schedule.cron;
            let timezone = &schedule.timezone;
            let overlap = match schedule.overlap {
                Overlap::Skip => quote!(Overlap::Skip),
                Overlap::Queue => quote!(Overlap::Queue),
            };
            let sla_ms = match schedule.sla_ms {
                Some(ms) => {
                    let ms = proc_macro2::Literal::u64_unsuffixed(ms);
                    quote!(Some(#ms))
                }
                None => quote!(None),
            };
            quote!(Some(ScheduleDef { cron: #cron, timezone: #timezone, overlap: #overlap, sla_ms: #sla_ms }))
        }
        None => quote!(None),
    };
    let (sensor, sensor_function) = match &pipeline.sensor {
        Some(sensor) => {
            let kind = match sensor.kind {
                SensorKind::Object => quote!(SensorKind::Object),
                SensorKind::Http => quote!(SensorKind::Http),
            };
            let connection = &sensor.connection;
            let text = template_text(&sensor.path);
            let poke = proc_macro2::Literal::u64_unsuffixed(sensor.poke_interval_ms);
            let timeout = proc_macro2::Literal::u64_unsuffixed(sensor.timeout_ms);
            let (value, partition) = template_value(&sensor.path);
            let doc = format!(
                " What the sensor looks for, for one partition ({}:{}).",
                pipeline.source_path, sensor.line
            );
            let context = if partition.is_empty() {
                quote!(_ctx)
            } else {
                quote!(ctx)
            };
            (
                quote!(Some(SensorDef { kind: #kind, connection: #connection, path: #text, target: sensor_target, poke_interval_ms: #poke, timeout_ms: #timeout })),
                quote! {
                    #[doc = #doc]
                    fn sensor_target(#context: &RunContext) -> BlockResult<String> {
                        #partition
                        Ok(#value)
                    }
                },
            )
        }
        None => (quote!(None), quote!()),
    };
    let conditions = pipeline
        .blocks
        .iter()
        .filter_map(|block| condition_function(pipeline, block));
    let partitions = match &pipeline.partitions {
        Some((granularity, start, catchup)) => {
            let granularity = granularity_tokens(*granularity);
            let catchup = match catchup {
                Catchup::Latest => quote!(Catchup::Latest),
                Catchup::All => quote!(Catchup::All),
            };
            quote!(Some(PartitionSpec { granularity: #granularity, start: #start, catchup: #catchup }))
        }
        None => quote!(None),
    };
    let params = pipeline.params.iter().map(|(name, default)| {
        let value = match default {
            Literal::Int(i) => quote!(ParamValue::Int(#i)),
            Literal::Float(x) => quote!(ParamValue::Float(#x)),
            Literal::String(s) => quote!(ParamValue::String(#s)),
            Literal::Bool(b) => quote!(ParamValue::Bool(#b)),
        };
        quote!(ParamDef { name: #name, default: #value })
    });
    let connections = pipeline.connections.iter().map(|connection| {
        let name = &connection.name;
        let url = &connection.url;
        let password = secret_tokens(connection.password.as_ref());
        quote!(ConnectionDef { name: #name, url: #url, password: #password })
    });
    let module = match &options.rust_module {
        Some(RustModule::Path(path)) => quote! {
            #[path = #path]
            mod blocks;
        },
        Some(RustModule::Include(path)) => quote! {
            mod blocks {
                include!(#path);
            }
        },
        None => quote!(),
    };
    let rows = rust_rows(pipeline);
    let main = if options.with_main {
        quote! {
            fn main() -> std::process::ExitCode {
                baton_runtime::cli::main(&PIPELINE)
            }
        }
    } else {
        quote!()
    };
    quote! {
        use baton_runtime::prelude::*;
        #module

        /// The pipeline as the runtime sees it: metadata, connections and the block graph.
        pub static PIPELINE: Pipeline = Pipeline {
            name: #name,
            description: #description,
            owner: #owner,
            tags: &[#(#tags),*],
            source_path: #source_path,
            source_hash: #source_hash,
            // Set by the pipeline crate's build script; absent in a proc-macro expansion.
            git_commit: option_env!("BATON_GIT_COMMIT"),
            timeout_ms: #timeout_ms,
            limits: &[#(#limits),*],
            schedule: #schedule,
            sensor: #sensor,
            partitions: #partitions,
            params: &[#(#params),*],
            connections: &[#(#connections),*],
            blocks: &BLOCKS,
            run_block,
        };

        /// The blocks in dependency order; `inputs` are indices into this array.
        static BLOCKS: [BlockDef; #block_count] = [#(#definitions),*];

        #(#schemas)*

        #rows

        #(#targets)*

        #sensor_function

        #(#functions)*

        #(#conditions)*

        /// Runs block `index` on its inputs; called by the runtime in dependency order.
        fn run_block(index: usize, ctx: RunContext, #inputs_binding: Vec<Rows>) -> BlockFuture {
            match index {
                #(#arms)*
                _ => unreachable!("the runtime only asks for blocks listed in BLOCKS"),
            }
        }

        #main
    }
}

/// The generated items as a formatted Rust file with its `@generated` header.
pub fn file(pipeline: &Pipeline, options: &EmitOptions) -> String {
    let tokens = tokens(pipeline, options);
    let syntax_tree: syn::File = syn::parse2(tokens).expect("the emitter produces valid Rust");
    let formatted = prettyplease::unparse(&syntax_tree);
    let mut out = String::new();
    out.push_str(&format!(
        "// @generated by baton-compiler from {} — do not edit by hand.\n\
         // Edit the TOML and run `cargo build`; the build script rewrites this file when it changes.\n\
         // `cargo test -p baton-tests --test generated_is_fresh` fails when this file is stale.\n",
        pipeline.source_path
    ));
    if let Some(description) = &pipeline.description {
        out.push_str(&format!("//\n// {}: {}\n", pipeline.name, description));
    }
    out.push('\n');
    out.push_str(&splice_comments(&formatted));
    out
}

/// The `main.rs` of a generated pipeline crate: it declares the generated module, which rustfmt
/// leaves alone so `cargo fmt` never fights the generator, and hands the CLI to the runtime.
pub fn main_file(pipeline: &Pipeline) -> String {
    format!(
        "// @generated by baton-compiler from {path} — do not edit by hand.\n\
         // The pipeline's executor is in pipeline.rs; `cargo build` rewrites both files when the TOML changes.\n\
         \n\
         #[rustfmt::skip]\n\
         mod pipeline;\n\
         \n\
         fn main() -> std::process::ExitCode {{\n    baton_runtime::cli::main(&pipeline::PIPELINE)\n}}\n",
        path = pipeline.source_path
    )
}

/// Turns `__baton_comment__("text");` statements (which prettyplease may have wrapped over
/// several lines) into `// text` lines, and separates top-level items with a blank line.
fn splice_comments(formatted: &str) -> String {
    let mut out = String::with_capacity(formatted.len());
    let mut lines = formatted.lines();
    let mut previous_top_level = "";
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with(COMMENT_MARKER) {
            let mut statement = trimmed.to_string();
            while !statement.ends_with(");") {
                match lines.next() {
                    Some(next) => statement.push_str(next.trim()),
                    None => break,
                }
            }
            let literal = statement[COMMENT_MARKER.len()..]
                .trim_start_matches('(')
                .trim_end_matches(");")
                .trim()
                .trim_end_matches(',');
            let text = syn::parse_str::<syn::LitStr>(literal)
                .map(|l| l.value())
                .unwrap_or_default();
            let indent = &line[..line.len() - trimmed.len()];
            for comment_line in text.lines() {
                out.push_str(indent);
                out.push_str("// ");
                out.push_str(comment_line);
                out.push('\n');
            }
            continue;
        }
        let top_level = !line.starts_with(' ') && !line.is_empty();
        let starts_item =
            top_level && !line.starts_with('}') && !line.starts_with(')') && !line.starts_with(']');
        let follows_attribute =
            previous_top_level.starts_with("///") || previous_top_level.starts_with("#[");
        let consecutive_use = line.starts_with("use ") && previous_top_level.starts_with("use ");
        if starts_item && !follows_attribute && !out.is_empty() && !consecutive_use {
            out.push('\n');
        }
        if top_level {
            previous_top_level = line;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn comment(text: String) -> TokenStream {
    let marker = Ident::new(COMMENT_MARKER, TokenSpan::call_site());
    quote!(#marker(#text);)
}

fn schema_const(block: &Block) -> Ident {
    format_ident!("{}_OUTPUT", block.name.to_uppercase())
}

fn function_name(block: &Block) -> Ident {
    format_ident!("{}", block.name)
}

fn base_tokens(base: BaseType) -> TokenStream {
    match base {
        BaseType::Int64 => quote!(BaseType::Int64),
        BaseType::Float64 => quote!(BaseType::Float64),
        BaseType::String => quote!(BaseType::String),
        BaseType::Bool => quote!(BaseType::Bool),
        BaseType::Date => quote!(BaseType::Date),
        BaseType::Timestamp => quote!(BaseType::Timestamp),
    }
}

fn column_tokens(name: &str, ty: ColumnType) -> TokenStream {
    let base = base_tokens(ty.base);
    if ty.nullable {
        quote!(Column::nullable(#name, #base))
    } else {
        quote!(Column::required(#name, #base))
    }
}

fn granularity_tokens(granularity: Granularity) -> TokenStream {
    match granularity {
        Granularity::Monthly => quote!(Granularity::Monthly),
        Granularity::Daily => quote!(Granularity::Daily),
        Granularity::Hourly => quote!(Granularity::Hourly),
    }
}

fn kind_tokens(op: &BlockOp) -> TokenStream {
    match op {
        BlockOp::Source {
            origin: SourceOrigin::Http(_),
            ..
        } => quote!(BlockKind::HttpSource),
        BlockOp::Source { .. } => quote!(BlockKind::FileSource),
        BlockOp::RestSource { .. } => quote!(BlockKind::RestSource),
        BlockOp::SqlSource { .. } => quote!(BlockKind::SqlSource),
        BlockOp::Transform { .. } => quote!(BlockKind::Transform),
        BlockOp::Join { .. } => quote!(BlockKind::Join),
        BlockOp::Union => quote!(BlockKind::Union),
        BlockOp::Aggregate { .. } => quote!(BlockKind::Aggregate),
        BlockOp::Rust { .. } => quote!(BlockKind::Rust),
        BlockOp::TableSink { .. } => quote!(BlockKind::TableSink),
        BlockOp::LakeSink { .. } => quote!(BlockKind::LakeSink),
        BlockOp::ExportSink { .. } => quote!(BlockKind::ExportSink),
        BlockOp::BigQuerySink { .. } => quote!(BlockKind::BigQuerySink),
        BlockOp::Callback { .. } => quote!(BlockKind::Callback),
    }
}

/// A block kind as written in pipeline files (checked already) as the runtime's `BlockKind`.
fn kind_name_tokens(kind: &str) -> TokenStream {
    match kind {
        "http" => quote!(BlockKind::HttpSource),
        "file" => quote!(BlockKind::FileSource),
        "rest" => quote!(BlockKind::RestSource),
        "sql" => quote!(BlockKind::SqlSource),
        "transform" => quote!(BlockKind::Transform),
        "join" => quote!(BlockKind::Join),
        "union" => quote!(BlockKind::Union),
        "aggregate" => quote!(BlockKind::Aggregate),
        "rust" => quote!(BlockKind::Rust),
        "table" => quote!(BlockKind::TableSink),
        "lake" => quote!(BlockKind::LakeSink),
        "export" => quote!(BlockKind::ExportSink),
        "bigquery" => quote!(BlockKind::BigQuerySink),
        "callback" => quote!(BlockKind::Callback),
        other => unreachable!("the checker rejects block kind `{other}`"),
    }
}

fn trigger_tokens(trigger: Trigger) -> TokenStream {
    match trigger {
        Trigger::AllSuccess => quote!(Trigger::AllSuccess),
        Trigger::AllDone => quote!(Trigger::AllDone),
        Trigger::OneFailed => quote!(Trigger::OneFailed),
        Trigger::AllFailed => quote!(Trigger::AllFailed),
        Trigger::NoneFailed => quote!(Trigger::NoneFailed),
        Trigger::OneSuccess => quote!(Trigger::OneSuccess),
    }
}

fn condition_name(block: &Block) -> Ident {
    format_ident!("{}_run_if", block.name)
}

/// A block's `run_if` as a function of the run: the typed expression evaluated once, on no
/// rows, so it can use parameters and partition fields but no columns.
fn condition_function(pipeline: &Pipeline, block: &Block) -> Option<TokenStream> {
    let (text, expr) = block.run_if.as_ref()?;
    let name = condition_name(block);
    let doc = format!(
        " `run_if` of `{}` ({}:{}): `{text}`.",
        block.name, pipeline.source_path, block.line
    );
    let expr = expr_tokens(expr);
    Some(quote! {
        #[doc = #doc]
        fn #name(ctx: &RunContext) -> BlockResult<bool> {
            evaluate_condition(#expr)
        }
    })
}

fn block_definition(
    pipeline: &Pipeline,
    block: &Block,
    lineage: &crate::lineage::Lineage,
) -> TokenStream {
    let name = &block.name;
    let lineage = lineage.iter().map(|(column, origins)| {
        let origins = crate::lineage::origins_text(origins);
        quote!((#column, #origins))
    });
    let kind = kind_tokens(&block.op);
    let line = proc_macro2::Literal::usize_unsuffixed(block.line);
    let description = block.description.clone().unwrap_or_default();
    let inputs = block
        .inputs
        .iter()
        .map(|&i| proc_macro2::Literal::usize_unsuffixed(i));
    let output = match &block.output {
        Some(_) => {
            let constant = schema_const(block);
            quote!(Some(#constant))
        }
        None => quote!(None),
    };
    let input_schema = match block.inputs.first() {
        Some(&input) => {
            let constant = schema_const(&pipeline.blocks[input]);
            quote!(Some(#constant))
        }
        None => quote!(None),
    };
    let retries = proc_macro2::Literal::u32_unsuffixed(block.policy.retries);
    let retry_delay_ms = proc_macro2::Literal::u64_unsuffixed(block.policy.retry_delay_ms);
    let max_retry_delay_ms = proc_macro2::Literal::u64_unsuffixed(block.policy.max_retry_delay_ms);
    let after = block
        .after
        .iter()
        .map(|&i| proc_macro2::Literal::usize_unsuffixed(i));
    let trigger = trigger_tokens(block.trigger);
    let run_if = match &block.run_if {
        Some((text, _)) => {
            let function = condition_name(block);
            quote!(Some(Condition { text: #text, eval: #function }))
        }
        None => quote!(None),
    };
    let timeout_ms = proc_macro2::Literal::u64_unsuffixed(block.policy.timeout_ms);
    let summary = summary(block);
    let sink_variant = match &block.op {
        BlockOp::TableSink { .. } => Some(quote!(Table)),
        BlockOp::LakeSink { .. } => Some(quote!(Lake)),
        BlockOp::ExportSink { .. } => Some(quote!(Export)),
        BlockOp::BigQuerySink { .. } => Some(quote!(BigQuery)),
        _ => None,
    };
    let callback = match &block.op {
        BlockOp::Callback { .. } => {
            let target = target_const(block);
            quote!(Some(&#target))
        }
        _ => quote!(None),
    };
    let sink = match sink_variant {
        Some(variant) => {
            let target = target_const(block);
            quote!(Some(SinkDef::#variant(#target)))
        }
        None => quote!(None),
    };
    quote! {
        BlockDef {
            name: #name,
            kind: #kind,
            line: #line,
            description: #description,
            summary: #summary,
            inputs: &[#(#inputs),*],
            after: &[#(#after),*],
            trigger: #trigger,
            run_if: #run_if,
            input: #input_schema,
            output: #output,
            policy: Policy { retries: #retries, retry_delay_ms: #retry_delay_ms, max_retry_delay_ms: #max_retry_delay_ms, timeout_ms: #timeout_ms },
            sink: #sink,
            callback: #callback,
            lineage: &[#(#lineage),*],
        }
    }
}

fn target_const(block: &Block) -> Ident {
    format_ident!("{}_TARGET", block.name.to_uppercase())
}

/// The constant describing what a callback reports and where; shared by its function, its
/// `BlockDef` and, for `on = "sla"`, the service that sends it.
fn callback_target(pipeline: &Pipeline, block: &Block) -> Option<TokenStream> {
    let BlockOp::Callback {
        on,
        message,
        webhook,
        webhook_format,
        email,
        dedupe,
    } = &block.op
    else {
        return None;
    };
    let name = target_const(block);
    let doc = format!(
        " What `{}` reports, and where ({}:{}).",
        block.name, pipeline.source_path, block.line
    );
    let event = match on {
        CallbackOn::Failure => quote!(CallbackEvent::Failure),
        CallbackOn::Success => quote!(CallbackEvent::Success),
        CallbackOn::Always => quote!(CallbackEvent::Always),
        CallbackOn::Recovery => quote!(CallbackEvent::Recovery),
        CallbackOn::Warning => quote!(CallbackEvent::Warning),
        CallbackOn::Sla => quote!(CallbackEvent::Sla),
    };
    let webhook = optional(webhook.as_deref());
    let email = optional(email.as_deref());
    let format = match webhook_format {
        WebhookFormat::Json => quote!(WebhookFormat::Json),
        WebhookFormat::Slack => quote!(WebhookFormat::Slack),
    };
    Some(quote! {
        #[doc = #doc]
        pub static #name: CallbackTarget = CallbackTarget {
            event: #event,
            message: #message,
            webhook: #webhook,
            format: #format,
            email: #email,
            dedupe: #dedupe,
        };
    })
}

/// The constant describing where a sink writes; shared by its function and its `BlockDef`.
fn sink_target(pipeline: &Pipeline, block: &Block) -> Option<TokenStream> {
    let name = target_const(block);
    let input_schema = block
        .inputs
        .first()
        .map(|&input| schema_const(&pipeline.blocks[input]))?;
    let doc = format!(
        " Where `{}` writes ({}:{}).",
        block.name, pipeline.source_path, block.line
    );
    match &block.op {
        BlockOp::TableSink {
            connection,
            table,
            db_schema,
            mode,
            partition_column,
            key,
        } => {
            let db_schema = optional(db_schema.as_deref());
            let mode = write_mode_tokens(*mode, partition_column.as_deref(), key);
            Some(quote! {
                #[doc = #doc]
                const #name: TableTarget = TableTarget {
                    connection: #connection,
                    schema: #db_schema,
                    table: #table,
                    mode: #mode,
                    columns: #input_schema,
                };
            })
        }
        BlockOp::LakeSink {
            connection,
            path,
            partition_by,
            max_rows_per_file,
            format,
        } => {
            let format = format_tokens(*format);
            let max_rows_per_file = match max_rows_per_file {
                Some(rows) => {
                    let rows = proc_macro2::Literal::usize_unsuffixed(*rows as usize);
                    quote!(Some(#rows))
                }
                None => quote!(None),
            };
            let path = template_text(path);
            Some(quote! {
                #[doc = #doc]
                const #name: LakeTarget = LakeTarget {
                    connection: #connection,
                    path: #path,
                    partition_by: &[#(#partition_by),*],
                    max_rows_per_file: #max_rows_per_file,
                    format: #format,
                    columns: #input_schema,
                };
            })
        }
        BlockOp::ExportSink {
            connection,
            path,
            format,
        } => {
            let format = format_tokens(*format);
            let path = template_text(path);
            Some(quote! {
                #[doc = #doc]
                const #name: ExportTarget = ExportTarget {
                    connection: #connection,
                    path: #path,
                    format: #format,
                    columns: #input_schema,
                };
            })
        }
        BlockOp::BigQuerySink {
            connection,
            table,
            dataset,
            mode,
            partition_column,
            key,
        } => {
            let dataset = optional(dataset.as_deref());
            let mode = write_mode_tokens(*mode, partition_column.as_deref(), key);
            Some(quote! {
                #[doc = #doc]
                const #name: BigQueryTarget = BigQueryTarget {
                    connection: #connection,
                    dataset: #dataset,
                    table: #table,
                    mode: #mode,
                    columns: #input_schema,
                };
            })
        }
        _ => None,
    }
}

/// `Some("text")` or `None`, as tokens.
fn optional(value: Option<&str>) -> TokenStream {
    match value {
        Some(text) => quote!(Some(#text)),
        None => quote!(None),
    }
}

/// A secret reference as the runtime's `Option<Secret>`.
fn secret_tokens(secret: Option<&SecretRef>) -> TokenStream {
    match secret {
        Some(SecretRef::Env(var)) => quote!(Some(Secret::Env(#var))),
        Some(SecretRef::File(path)) => quote!(Some(Secret::File(#path))),
        None => quote!(None),
    }
}

/// The runtime's `WriteMode` for a checked mode.
fn write_mode_tokens(
    mode: WriteMode,
    partition_column: Option<&str>,
    key: &[String],
) -> TokenStream {
    match (mode, partition_column) {
        (WriteMode::Replace, _) => quote!(WriteMode::Replace),
        (WriteMode::Append, _) => quote!(WriteMode::Append),
        (WriteMode::ReplacePartition, Some(column)) => {
            quote!(WriteMode::ReplacePartition { column: #column })
        }
        (WriteMode::Upsert, _) => quote!(WriteMode::Upsert { key: &[#(#key),*] }),
        (WriteMode::ReplacePartition, None) => {
            unreachable!("the checker requires partition_column")
        }
    }
}

fn format_tokens(format: FileFormat) -> TokenStream {
    match format {
        FileFormat::Csv => quote!(FileFormat::Csv),
        FileFormat::Parquet => quote!(FileFormat::Parquet),
    }
}

/// One line saying what the block does, for `explain` and `graph`.
/// `schema.table`, or `table` without a schema, as messages and summaries name a table.
pub(crate) fn qualified_table(db_schema: Option<&str>, table: &str) -> String {
    match db_schema {
        Some(schema) => format!("{schema}.{table}"),
        None => table.to_string(),
    }
}

/// A write mode as `explain` shows it: `replace_partition by partition_month`.
fn mode_text(mode: WriteMode, partition_column: Option<&str>, key: &[String]) -> String {
    match mode {
        WriteMode::Replace => "replace".to_string(),
        WriteMode::Append => "append".to_string(),
        WriteMode::ReplacePartition => {
            format!("replace_partition by {}", partition_column.unwrap_or("?"))
        }
        WriteMode::Upsert => format!("upsert on {}", key.join(", ")),
    }
}

/// One line saying what a block does, for `explain` and the review summary.
pub(crate) fn summary(block: &Block) -> String {
    match &block.op {
        BlockOp::Source {
            origin,
            path,
            format,
            compression,
            fan_out,
        } => {
            let format = match format {
                FileFormat::Csv => "csv",
                FileFormat::Parquet => "parquet",
            };
            let each = match fan_out.as_ref().map(|f| &f.items) {
                None => String::new(),
                Some(ForEach::Days) => " for each day".to_string(),
                Some(ForEach::Hours) => " for each hour".to_string(),
                Some(ForEach::Values(values)) => format!(" for each of {}", values.join(", ")),
            };
            let gzip = if *compression == Compression::Gzip {
                " (gzip)"
            } else {
                ""
            };
            let location = match origin {
                SourceOrigin::Http(connection) | SourceOrigin::Store(connection) => {
                    format!("{{{connection}}}/{}", template_text(path))
                }
                SourceOrigin::Local => template_text(path),
            };
            format!("read {format}{gzip} from {location}{each}")
        }
        BlockOp::RestSource {
            connection,
            path,
            options,
        } => {
            let pages = match &options.pagination {
                Pagination::None => "",
                Pagination::Page { .. } => ", page by page",
                Pagination::Offset { .. } => ", by offset",
                Pagination::Cursor { .. } => ", by cursor",
                Pagination::Link => ", following Link headers",
            };
            format!(
                "read JSON records from {{{connection}}}{}{pages}",
                template_text(path)
            )
        }
        BlockOp::SqlSource { connection, query } => {
            format!("query {{{connection}}}: {}", template_text(query))
        }
        BlockOp::Transform { steps } => format!(
            "{} step{}",
            steps.len(),
            if steps.len() == 1 { "" } else { "s" }
        ),
        BlockOp::Join {
            how,
            left_on,
            right_on,
            ..
        } => {
            let keys: Vec<String> = left_on
                .iter()
                .zip(right_on)
                .map(|(l, r)| {
                    if l == r {
                        l.clone()
                    } else {
                        format!("{l} = {r}")
                    }
                })
                .collect();
            format!("{} join on {}", how.name(), keys.join(", "))
        }
        BlockOp::Union => "union of its inputs' rows".to_string(),
        BlockOp::Aggregate {
            group_by,
            aggregates,
        } => {
            let names: Vec<&str> = aggregates.iter().map(|(n, _)| n.as_str()).collect();
            if group_by.is_empty() {
                format!("{} over all rows", names.join(", "))
            } else {
                format!("{} by {}", names.join(", "), group_by.join(", "))
            }
        }
        BlockOp::Rust { function } => format!("blocks::{function}"),
        BlockOp::TableSink {
            connection,
            table,
            db_schema,
            mode,
            partition_column,
            key,
        } => {
            let table = qualified_table(db_schema.as_deref(), table);
            let mode = mode_text(*mode, partition_column.as_deref(), key);
            format!("write table {table} on {{{connection}}} ({mode})")
        }
        BlockOp::LakeSink {
            connection,
            path,
            partition_by,
            format,
            ..
        } => {
            let path = template_text(path);
            let folders: String = partition_by.iter().map(|c| format!("{c}=*/")).collect();
            let format = match format {
                FileFormat::Csv => "csv",
                FileFormat::Parquet => "parquet",
            };
            format!("write {format} to {{{connection}}}/{path}/{folders}")
        }
        BlockOp::ExportSink {
            connection,
            path,
            format,
        } => {
            let format = match format {
                FileFormat::Csv => "csv",
                FileFormat::Parquet => "parquet",
            };
            format!(
                "write one {format} file to {{{connection}}}/{}",
                template_text(path)
            )
        }
        BlockOp::BigQuerySink {
            connection,
            table,
            dataset,
            mode,
            partition_column,
            key,
        } => {
            let table = qualified_table(dataset.as_deref(), table);
            let mode = mode_text(*mode, partition_column.as_deref(), key);
            format!("load BigQuery table {table} on {{{connection}}} ({mode})")
        }
        BlockOp::Callback { on, webhook, .. } => {
            let on = match on {
                CallbackOn::Always => "always".to_string(),
                on => format!("on {}", on.name()),
            };
            match webhook {
                Some(connection) => {
                    format!("report the run {on}: log and POST to {{{connection}}}")
                }
                None => format!("report the run {on}: log"),
            }
        }
    }
}

/// A template as written, for messages and summaries.
pub(crate) fn template_text(parts: &[TemplatePart]) -> String {
    parts
        .iter()
        .map(|part| match part {
            TemplatePart::Text(text) => text.clone(),
            TemplatePart::Field { field, .. } => format!("{{partition.{}}}", field.name()),
            TemplatePart::Date { field, format } => {
                format!("{{partition.{}:{format}}}", field.name())
            }
            TemplatePart::Item => "{item}".to_string(),
        })
        .collect()
}

fn dispatch_arm(index: usize, block: &Block) -> TokenStream {
    let function = function_name(block);
    let body = match &block.op {
        BlockOp::Source { .. } if block.streams_its_source() => {
            quote!(Box::pin(async move { #function(&ctx).await.map(Some) }))
        }
        BlockOp::Source { .. } | BlockOp::RestSource { .. } | BlockOp::SqlSource { .. } => {
            quote!(Box::pin(async move { #function(&ctx).await.map(|frame| Some(Rows::from(frame))) }))
        }
        BlockOp::Transform { .. } if block.works_per_batch() => {
            let output = schema_const(block);
            quote!(ctx.per_batch(inputs.remove(0), #output, #function))
        }
        BlockOp::Transform { .. } | BlockOp::Rust { .. } | BlockOp::Aggregate { .. } => {
            quote!(ctx.compute(inputs, move |ctx, mut inputs| #function(ctx, inputs.remove(0))))
        }
        BlockOp::Join { .. } => quote!(ctx.compute(inputs, move |ctx, mut inputs| {
            let right = inputs.remove(1);
            let left = inputs.remove(0);
            #function(ctx, left, right)
        })),
        BlockOp::Union => quote!(ctx.compute(inputs, #function)),
        BlockOp::TableSink { .. } | BlockOp::LakeSink { .. } => {
            quote!(Box::pin(async move { #function(&ctx, inputs.remove(0)).await.map(|()| None) }))
        }
        BlockOp::ExportSink { .. } | BlockOp::BigQuerySink { .. } => {
            quote!(Box::pin(async move {
                let input = inputs.remove(0).collect().await?;
                #function(&ctx, input).await.map(|()| None)
            }))
        }
        BlockOp::Callback { .. } => {
            quote!(Box::pin(async move { #function(ctx).await.map(|rows| rows.map(Rows::from)) }))
        }
    };
    let index = proc_macro2::Literal::usize_unsuffixed(index);
    quote!(#index => #body,)
}

fn block_function(pipeline: &Pipeline, block: &Block, options: &EmitOptions) -> TokenStream {
    let function = function_name(block);
    let kind = match &block.op {
        BlockOp::Source {
            origin: SourceOrigin::Http(_),
            ..
        } => "HTTP source",
        BlockOp::Source {
            origin: SourceOrigin::Store(_),
            ..
        } => "object store source",
        BlockOp::Source { .. } => "file source",
        BlockOp::RestSource { .. } => "REST source",
        BlockOp::SqlSource { .. } => "SQL source",
        BlockOp::Transform { .. } => "transform",
        BlockOp::Join { .. } => "join",
        BlockOp::Union => "union",
        BlockOp::Aggregate { .. } => "aggregate",
        BlockOp::Rust { .. } => "hand-written Rust block",
        BlockOp::TableSink { .. } => "table sink",
        BlockOp::LakeSink { .. } => "lake sink",
        BlockOp::ExportSink { .. } => "export sink",
        BlockOp::BigQuerySink { .. } => "BigQuery sink",
        BlockOp::Callback { .. } => "callback",
    };
    let mut doc = vec![format!(
        " `{}`: {kind}, declared at {}:{}.",
        block.name, pipeline.source_path, block.line
    )];
    if let Some(description) = &block.description {
        doc.push(String::new());
        doc.extend(description.lines().map(|line| format!(" {line}")));
    }
    let doc = doc.iter().map(|line| quote!(#[doc = #line]));
    let checks = check_calls(pipeline, block);
    match &block.op {
        BlockOp::Source {
            origin,
            path,
            format,
            compression,
            fan_out,
        } => {
            let output = schema_const(block);
            let (path_value, partition) = template_value(path);
            let location = match origin {
                SourceOrigin::Http(connection) => {
                    quote!(Location::Http { connection: #connection, path })
                }
                SourceOrigin::Store(connection) => {
                    quote!(Location::Store { connection: #connection, path })
                }
                SourceOrigin::Local => quote!(Location::File { path }),
            };
            let format = format_tokens(*format);
            let compression = match compression {
                Compression::None => quote!(Compression::None),
                Compression::Gzip => quote!(Compression::Gzip),
            };
            if block.streams_its_source() {
                return quote! {
                    #(#doc)*
                    async fn #function(ctx: &RunContext) -> BlockResult<Rows> {
                        #partition
                        let path = #path_value;
                        stream_source(ctx, #location, #compression, #output).await
                    }
                };
            }
            let Some(fan_out) = fan_out else {
                return quote! {
                    #(#doc)*
                    async fn #function(ctx: &RunContext) -> BlockResult<DataFrame> {
                        #partition
                        let path = #path_value;
                        let frame = read_source(ctx, #location, #format, #compression, #output).await?;
                        #checks
                        Ok(frame)
                    }
                };
            };
            // The item column, when there is one, is the last output column; the files hold
            // the others.
            let file_columns = match &fan_out.item_column {
                Some(_) => {
                    let count = block.output.as_ref().map_or(0, Vec::len) - 1;
                    let count = proc_macro2::Literal::usize_unsuffixed(count);
                    quote!(&#output[..#count])
                }
                None => quote!(#output),
            };
            let items = match &fan_out.items {
                ForEach::Days => quote!(FanOut::Days),
                ForEach::Hours => quote!(FanOut::Hours),
                ForEach::Values(values) => quote!(FanOut::Values(&[#(#values),*])),
            };
            let name = &block.name;
            let concurrency = proc_macro2::Literal::usize_unsuffixed(fan_out.concurrency as usize);
            let item_column = optional(fan_out.item_column.as_deref());
            let item_function = format_ident!("{}_item", block.name);
            let item_doc = format!(" One item of `{}`'s fan-out.", block.name);
            quote! {
                #(#doc)*
                async fn #function(ctx: &RunContext) -> BlockResult<DataFrame> {
                    let items = fan_out_items(ctx, #items)?;
                    let frame = read_each(ctx, #name, items, #concurrency, #item_column, |item| #item_function(ctx, item)).await?;
                    #checks
                    Ok(frame)
                }

                #[doc = #item_doc]
                async fn #item_function(ctx: &RunContext, item: String) -> BlockResult<DataFrame> {
                    #partition
                    let path = #path_value;
                    read_source(ctx, #location, #format, #compression, #file_columns).await
                }
            }
        }
        BlockOp::RestSource {
            connection,
            path,
            options,
        } => {
            let output = schema_const(block);
            let (path_value, partition) = template_value(path);
            let records = &options.records;
            let pagination = match &options.pagination {
                Pagination::None => quote!(Pagination::None),
                Pagination::Page { param, size } => {
                    let size = match size {
                        Some((name, n)) => quote!(Some((#name, #n))),
                        None => quote!(None),
                    };
                    quote!(Pagination::Page { param: #param, size: #size })
                }
                Pagination::Offset {
                    param,
                    limit_param,
                    limit,
                } => {
                    quote!(Pagination::Offset { param: #param, limit_param: #limit_param, limit: #limit })
                }
                Pagination::Cursor { param, next } => {
                    quote!(Pagination::Cursor { param: #param, next: #next })
                }
                Pagination::Link => quote!(Pagination::Link),
            };
            let auth = secret_tokens(options.auth.as_ref());
            let auth_header = optional(options.auth_header.as_deref());
            let max_pages = options.max_pages;
            quote! {
                #(#doc)*
                async fn #function(ctx: &RunContext) -> BlockResult<DataFrame> {
                    static API: RestApi = RestApi {
                        connection: #connection,
                        records: #records,
                        pagination: #pagination,
                        auth: #auth,
                        auth_header: #auth_header,
                        max_pages: #max_pages,
                    };
                    #partition
                    let path = #path_value;
                    let frame = read_rest(ctx, &API, path, #output).await?;
                    #checks
                    Ok(frame)
                }
            }
        }
        BlockOp::SqlSource { connection, query } => {
            let output = schema_const(block);
            let (query_value, partition) = sql_template_value(query);
            quote! {
                #(#doc)*
                async fn #function(ctx: &RunContext) -> BlockResult<DataFrame> {
                    #partition
                    let query = #query_value;
                    let frame = read_query(ctx, #connection, query, #output).await?;
                    #checks
                    Ok(frame)
                }
            }
        }
        BlockOp::Transform { steps } => {
            let mut statements = vec![quote!(let frame = input.lazy();)];
            for step in steps {
                if options.comments {
                    statements.push(comment(format!(
                        "{}:{}: {}",
                        pipeline.source_path, step.line, step.summary
                    )));
                }
                let applied = step_tokens(&step.op);
                statements.push(quote!(let frame = frame #applied;));
            }
            let output = schema_const(block);
            // Steps that read neither a parameter nor the partition, and no checks, leave the
            // context unused.
            let ctx = context_parameter(&quote!(#(#statements)* #checks));
            quote! {
                #(#doc)*
                fn #function(#ctx: &RunContext, input: DataFrame) -> BlockResult<DataFrame> {
                    #(#statements)*
                    let frame = conform(frame.collect()?, #output)?;
                    #checks
                    Ok(frame)
                }
            }
        }
        BlockOp::Join {
            how,
            left_on,
            right_on,
            suffix,
        } => {
            let output = schema_const(block);
            let ctx = context_parameter(&checks);
            let joined = join_tokens(*how, left_on, right_on, suffix.as_deref());
            quote! {
                #(#doc)*
                fn #function(#ctx: &RunContext, left: DataFrame, right: DataFrame) -> BlockResult<DataFrame> {
                    #joined
                    let frame = conform(frame.collect()?, #output)?;
                    #checks
                    Ok(frame)
                }
            }
        }
        BlockOp::Union => {
            let output = schema_const(block);
            let columns = block.output.iter().flatten().map(|(name, _)| name);
            let ctx = context_parameter(&checks);
            quote! {
                #(#doc)*
                fn #function(#ctx: &RunContext, inputs: Vec<DataFrame>) -> BlockResult<DataFrame> {
                    // Each input is put in the first one's column order, so rows stack by name.
                    let frames: Vec<LazyFrame> = inputs
                        .into_iter()
                        .map(|input| input.lazy().select([#(col(#columns)),*]))
                        .collect();
                    let frame = concat(frames, UnionArgs::default())?;
                    let frame = conform(frame.collect()?, #output)?;
                    #checks
                    Ok(frame)
                }
            }
        }
        BlockOp::Aggregate {
            group_by,
            aggregates,
        } => {
            let output = schema_const(block);
            let computed = aggregates.iter().map(|(name, expr)| {
                let expr = expr_tokens(expr);
                quote!(#expr.alias(#name))
            });
            // Groups keep the order in which their keys first appear, so a run's output
            // (and its checksum) does not change from run to run.
            let grouped = if group_by.is_empty() {
                quote!(input.lazy().select([#(#computed),*]))
            } else {
                quote!(input.lazy().group_by_stable([#(col(#group_by)),*]).agg([#(#computed),*]))
            };
            let ctx = context_parameter(&quote!(#grouped #checks));
            quote! {
                #(#doc)*
                fn #function(#ctx: &RunContext, input: DataFrame) -> BlockResult<DataFrame> {
                    let frame = #grouped;
                    let frame = conform(frame.collect()?, #output)?;
                    #checks
                    Ok(frame)
                }
            }
        }
        BlockOp::Rust {
            function: user_function,
        } => {
            let user = format_ident!("{}", user_function);
            let (rows_in, _) = rows_type_names(user_function);
            let output = schema_const(block);
            let ctx = if checks.is_empty() {
                quote!(_ctx)
            } else {
                quote!(ctx)
            };
            quote! {
                #(#doc)*
                fn #function(#ctx: &RunContext, input: DataFrame) -> BlockResult<DataFrame> {
                    let rows = #rows_in::from_frame(&input)?;
                    // The hand-written function's output is checked against the declared schema
                    // as well, so a column of the wrong length or with nulls is reported at this
                    // block, not in a sink downstream.
                    let frame = conform(blocks::#user(rows)?.into_frame()?, #output)?;
                    #checks
                    Ok(frame)
                }
            }
        }
        BlockOp::TableSink { .. } => {
            let target = target_const(block);
            quote! {
                #(#doc)*
                async fn #function(ctx: &RunContext, input: Rows) -> BlockResult<()> {
                    write_table(ctx, &#target, input).await
                }
            }
        }
        BlockOp::LakeSink { path, .. } => {
            let target = target_const(block);
            let (path_value, partition) = template_value(path);
            quote! {
                #(#doc)*
                async fn #function(ctx: &RunContext, input: Rows) -> BlockResult<()> {
                    #partition
                    let path = #path_value;
                    write_lake(ctx, &#target, &path, input).await
                }
            }
        }
        BlockOp::ExportSink { path, .. } => {
            let target = target_const(block);
            let (path_value, partition) = template_value(path);
            quote! {
                #(#doc)*
                async fn #function(ctx: &RunContext, input: DataFrame) -> BlockResult<()> {
                    #partition
                    let path = #path_value;
                    write_export(ctx, &#target, path, input).await
                }
            }
        }
        BlockOp::BigQuerySink { .. } => {
            let target = target_const(block);
            quote! {
                #(#doc)*
                async fn #function(ctx: &RunContext, input: DataFrame) -> BlockResult<()> {
                    write_bigquery(ctx, &#target, input).await
                }
            }
        }
        BlockOp::Callback { .. } => {
            let target = target_const(block);
            quote! {
                #(#doc)*
                async fn #function(ctx: RunContext) -> BlockResult<Option<DataFrame>> {
                    notify(ctx, &#target).await
                }
            }
        }
    }
}

/// The expression computing a path template's value, and the statement binding `partition`
/// when the template uses it.
fn template_value(path: &[TemplatePart]) -> (TokenStream, TokenStream) {
    let (literal, args) = template_format(path);
    let value = formatted(path, &literal, &args);
    let uses_partition = path
        .iter()
        .any(|p| matches!(p, TemplatePart::Field { .. } | TemplatePart::Date { .. }));
    let partition = if uses_partition {
        quote!(let partition = ctx.partition()?;)
    } else {
        quote!()
    };
    (value, partition)
}

/// Like [`template_value`] for a query: the partition key and formatted dates become quoted SQL
/// literals (`sql_text(...)`), numbers stay bare.
fn sql_template_value(query: &[TemplatePart]) -> (TokenStream, TokenStream) {
    let (literal, args) = template_format(query);
    let args = query
        .iter()
        .filter(|part| !matches!(part, TemplatePart::Text(_)))
        .zip(args)
        .map(|(part, arg)| match part {
            TemplatePart::Field {
                field: PartitionField::Key,
                ..
            }
            | TemplatePart::Date { .. } => quote!(sql_text(&#arg.to_string())),
            _ => arg,
        })
        .collect::<Vec<_>>();
    let (_, partition) = template_value(query);
    (formatted(query, &literal, &args), partition)
}

/// `format!(literal, args...)`, or the plain text when the template has no variables (the
/// `format!` literal escapes braces, the plain text does not).
fn formatted(parts: &[TemplatePart], literal: &str, args: &[TokenStream]) -> TokenStream {
    if args.is_empty() {
        let text: String = parts
            .iter()
            .filter_map(|part| match part {
                TemplatePart::Text(text) => Some(text.as_str()),
                _ => None,
            })
            .collect();
        quote!(#text.to_string())
    } else {
        quote!(format!(#literal, #(#args),*))
    }
}

/// Whether a token tree uses the identifier `ctx`.
/// The statements that join `left` and `right` into the lazy `frame`. Inner, left and full
/// joins merge the right keys into the left ones, which the compiled schema keeps (null keys
/// match nothing). A semi or anti join keeps the left rows with (without) a match among the
/// right's distinct keys: a join against those keys alone, so it needs no polars feature
/// beyond joins, and a left row is never repeated however often its key is on the right.
fn join_tokens(
    how: JoinHow,
    left_on: &[String],
    right_on: &[String],
    suffix: Option<&str>,
) -> TokenStream {
    let keys = quote!([#(col(#left_on)),*], [#(col(#right_on)),*]);
    let args = |kind: TokenStream| quote!(JoinArgs::new(#kind).with_coalesce(JoinCoalesce::CoalesceColumns));
    let distinct_keys = quote! {
        let keys = right
            .lazy()
            .select([#(col(#right_on)),*])
            .unique_stable(None, UniqueKeepStrategy::Any);
    };
    match how {
        JoinHow::Semi => {
            let args = args(quote!(JoinType::Inner));
            quote! {
                #distinct_keys
                let frame = left.lazy().join(keys, #keys, #args);
            }
        }
        JoinHow::Anti => {
            let args = args(quote!(JoinType::Left));
            quote! {
                #distinct_keys
                let frame = left
                    .lazy()
                    .join(keys.with_column(lit(true).alias("__baton_matched")), #keys, #args)
                    .filter(col("__baton_matched").is_null())
                    .drop(by_name(["__baton_matched"], true, false));
            }
        }
        JoinHow::Inner | JoinHow::Left | JoinHow::Full => {
            let kind = match how {
                JoinHow::Inner => quote!(JoinType::Inner),
                JoinHow::Left => quote!(JoinType::Left),
                _ => quote!(JoinType::Full),
            };
            let args = args(kind);
            let suffix = suffix.map(|suffix| quote!(.with_suffix(Some(#suffix.into()))));
            quote!(let frame = left.lazy().join(right.lazy(), #keys, #args #suffix);)
        }
    }
}

/// The identifiers of a hand-written function's typed rows (`ir::row_type_names`).
fn rows_type_names(function: &str) -> (proc_macro2::Ident, proc_macro2::Ident) {
    let (input, output) = crate::ir::row_type_names(function);
    (format_ident!("{input}"), format_ident!("{output}"))
}

/// The typed rows of every hand-written function: a struct with one typed column per field of
/// the schema flowing in, and one for the declared output (an alias when the output schema is
/// the input's). The function's signature and every field it reads or fills are checked by
/// rustc against what the pipeline file declares, with errors located in the user's code.
fn rust_rows(pipeline: &Pipeline) -> TokenStream {
    let mut seen = Vec::new();
    let mut items = Vec::new();
    for block in &pipeline.blocks {
        let BlockOp::Rust { function } = &block.op else {
            continue;
        };
        if seen.contains(function) {
            continue;
        }
        seen.push(function.clone());
        let (input_name, output_name) = rows_type_names(function);
        let input = block
            .inputs
            .first()
            .and_then(|&i| pipeline.blocks[i].output.clone())
            .unwrap_or_default();
        let output = block.output.clone().unwrap_or_default();
        let place = format!("{}:{}", pipeline.source_path, block.line);
        items.push(rows_struct(
            &input_name,
            &input,
            &format!(" The rows `blocks::{function}` receives from `{}` ({place}), one typed column per field.", block.name),
        ));
        if output == input {
            let doc = format!(
                " The rows `blocks::{function}` returns: the schema it receives ({place})."
            );
            items.push(quote! {
                #[doc = #doc]
                pub type #output_name = #input_name;
            });
        } else {
            items.push(rows_struct(
                &output_name,
                &output,
                &format!(
                    " The rows `blocks::{function}` returns: the `output` of `{}` ({place}).",
                    block.name
                ),
            ));
        }
    }
    quote!(#(#items)*)
}

/// A struct of typed columns with its conversions from and to a frame.
fn rows_struct(name: &proc_macro2::Ident, schema: &Schema, doc: &str) -> TokenStream {
    let idents = field_idents(schema);
    let fields = schema.iter().zip(&idents).map(|((column, ty), ident)| {
        let chunked = match ty.base {
            BaseType::Int64 => quote!(Int64Chunked),
            BaseType::Float64 => quote!(Float64Chunked),
            BaseType::String => quote!(StringChunked),
            BaseType::Bool => quote!(BooleanChunked),
            BaseType::Date => quote!(DateChunked),
            BaseType::Timestamp => quote!(DatetimeChunked),
        };
        let doc = format!(" `{column}`: {ty}.");
        quote!(#[doc = #doc] pub #ident: #chunked)
    });
    let takes = schema.iter().zip(&idents).map(|((column, ty), ident)| {
        let accessor = match ty.base {
            BaseType::Int64 => quote!(i64),
            BaseType::Float64 => quote!(f64),
            BaseType::String => quote!(str),
            BaseType::Bool => quote!(bool),
            BaseType::Date => quote!(date),
            BaseType::Timestamp => quote!(datetime),
        };
        quote!(#ident: frame.column(#column)?.#accessor()?.clone())
    });
    let gives = schema.iter().zip(&idents).map(
        |((column, _), ident)| quote!(self.#ident.into_series().with_name(#column.into()).into()),
    );
    quote! {
        #[doc = #doc]
        pub struct #name {
            #(#fields,)*
        }

        // A hand-written function uses only the conversions it needs.
        #[allow(dead_code)]
        impl #name {
            /// Takes the typed columns of a frame with this schema (an error names a missing
            /// column or another type).
            pub fn from_frame(frame: &DataFrame) -> PolarsResult<Self> {
                Ok(Self {
                    #(#takes,)*
                })
            }

            /// The columns as a frame, named as in the pipeline file; they must have one length.
            pub fn into_frame(self) -> PolarsResult<DataFrame> {
                DataFrame::new_infer_height(Vec::from([#(#gives),*]))
            }
        }
    }
}

/// Field names for columns: the column name when it is a Rust identifier (a keyword is
/// written raw), otherwise its snake_case with other characters as `_`, numbered on a clash.
fn field_idents(schema: &Schema) -> Vec<proc_macro2::Ident> {
    let mut taken: Vec<String> = Vec::new();
    schema
        .iter()
        .map(|(column, _)| {
            let mut base: String = crate::check::snake_case(column)
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            if base.is_empty() || base.starts_with(|c: char| c.is_ascii_digit()) {
                base = format!("column_{base}");
            }
            let mut name = base.clone();
            let mut n = 2;
            while taken.contains(&name) {
                name = format!("{base}_{n}");
                n += 1;
            }
            taken.push(name.clone());
            syn::parse_str::<proc_macro2::Ident>(&name).unwrap_or_else(|_| {
                proc_macro2::Ident::new_raw(&name, proc_macro2::Span::call_site())
            })
        })
        .collect()
}

/// `ctx` when the body uses the run context, `_ctx` when it does not (steps that read neither
/// a parameter nor the partition, and no checks).
fn context_parameter(body: &TokenStream) -> TokenStream {
    if body
        .clone()
        .into_iter()
        .any(|token| mentions_context(&token))
    {
        quote!(ctx)
    } else {
        quote!(_ctx)
    }
}

fn mentions_context(token: &proc_macro2::TokenTree) -> bool {
    match token {
        proc_macro2::TokenTree::Ident(ident) => ident == "ctx",
        proc_macro2::TokenTree::Group(group) => {
            group.stream().into_iter().any(|t| mentions_context(&t))
        }
        _ => false,
    }
}

/// The `format!` string and arguments of a path template.
fn template_format(parts: &[TemplatePart]) -> (String, Vec<TokenStream>) {
    let mut literal = String::new();
    let mut args = Vec::new();
    for part in parts {
        match part {
            TemplatePart::Text(text) => {
                literal.push_str(&text.replace('{', "{{").replace('}', "}}"))
            }
            TemplatePart::Item => {
                literal.push_str("{}");
                args.push(quote!(item));
            }
            TemplatePart::Field { field, width } => {
                if *width > 0 {
                    literal.push_str(&format!("{{:0{width}}}"));
                } else {
                    literal.push_str("{}");
                }
                let method = format_ident!("{}", field.name());
                args.push(quote!(partition.#method()));
            }
            TemplatePart::Date { field, format } => {
                literal.push_str("{}");
                let method = format_ident!("{}_time", field.name());
                args.push(quote!(partition.#method().format(#format)));
            }
        }
    }
    (literal, args)
}

fn check_calls(pipeline: &Pipeline, block: &Block) -> TokenStream {
    let calls = block.checks.iter().map(|check| {
        let name = &check.name;
        let location = format!("{}:{}", pipeline.source_path, check.line);
        let severity = match check.severity {
            CheckSeverity::Fail => quote!(CheckSeverity::Fail),
            CheckSeverity::Warn => quote!(CheckSeverity::Warn),
        };
        let predicate = expr_tokens(&check.predicate);
        quote! {
            run_check(ctx, &frame, &CheckDef { name: #name, location: #location, severity: #severity }, #predicate)?;
        }
    });
    quote!(#(#calls)*)
}

fn step_tokens(op: &StepOp) -> TokenStream {
    match op {
        StepOp::Filter(predicate) => {
            let predicate = expr_tokens(predicate);
            quote!(.filter(#predicate))
        }
        StepOp::Derive(columns) => {
            let exprs = columns.iter().map(|(name, expr)| {
                let expr = expr_tokens(expr);
                quote!(#expr.alias(#name))
            });
            quote!(.with_columns([#(#exprs),*]))
        }
        StepOp::Rename(pairs) => {
            let from = pairs.iter().map(|(from, _)| from);
            let to = pairs.iter().map(|(_, to)| to);
            quote!(.rename([#(#from),*], [#(#to),*], true))
        }
        StepOp::Select(columns) => quote!(.select([#(col(#columns)),*])),
        StepOp::Drop(columns) => quote!(.drop(by_name([#(#columns),*], true, false))),
        StepOp::Cast(casts) => {
            let exprs = casts.iter().map(|(name, ty)| {
                let dtype = dtype_tokens(ty.base);
                quote!(col(#name).strict_cast(#dtype))
            });
            quote!(.with_columns([#(#exprs),*]))
        }
    }
}

fn dtype_tokens(base: BaseType) -> TokenStream {
    let base = base_tokens(base);
    quote!(#base.dtype())
}

fn literal_tokens(literal: &Literal) -> TokenStream {
    match literal {
        Literal::Int(i) => quote!(lit(#i)),
        Literal::Float(x) => quote!(lit(#x)),
        Literal::String(s) => quote!(lit(#s)),
        Literal::Bool(b) => quote!(lit(#b)),
    }
}

/// A typed expression as a polars expression.
fn expr_tokens(expr: &TypedExpr) -> TokenStream {
    match expr {
        TypedExpr::Column(name) => quote!(col(#name)),
        TypedExpr::Literal(literal) => literal_tokens(literal),
        TypedExpr::DateLiteral(year, month, day) => quote!(date_lit(#year, #month, #day)),
        TypedExpr::Null(Some(base)) => {
            let dtype = dtype_tokens(*base);
            quote!(lit(NULL).cast(#dtype))
        }
        TypedExpr::Null(None) => quote!(lit(NULL)),
        TypedExpr::Param(name, base) => {
            let getter = match base {
                BaseType::Int64 => quote!(int),
                BaseType::Float64 => quote!(float),
                BaseType::Bool => quote!(bool),
                _ => quote!(string),
            };
            quote!(lit(ctx.param(#name)?.#getter()?))
        }
        TypedExpr::Partition(field) => {
            let method = format_ident!("{}", field.name());
            match field {
                PartitionField::Start | PartitionField::End => quote!(ctx.partition()?.#method()),
                _ => quote!(lit(ctx.partition()?.#method())),
            }
        }
        TypedExpr::Not(inner) => {
            let inner = expr_tokens(inner);
            quote!(#inner.not())
        }
        TypedExpr::Neg(inner) => {
            let inner = expr_tokens(inner);
            quote!(-(#inner))
        }
        TypedExpr::Binary(op, left, right) => {
            let l = expr_tokens(left);
            let r = expr_tokens(right);
            match op {
                BinaryOp::Or => quote!(#l.or(#r)),
                BinaryOp::And => quote!(#l.and(#r)),
                BinaryOp::Eq => quote!(#l.eq(#r)),
                BinaryOp::NotEq => quote!(#l.neq(#r)),
                BinaryOp::Lt => quote!(#l.lt(#r)),
                BinaryOp::LtEq => quote!(#l.lt_eq(#r)),
                BinaryOp::Gt => quote!(#l.gt(#r)),
                BinaryOp::GtEq => quote!(#l.gt_eq(#r)),
                BinaryOp::Add => quote!((#l + #r)),
                BinaryOp::Sub => quote!((#l - #r)),
                BinaryOp::Mul => quote!((#l * #r)),
                // Division is always true division, as in SQL engines with float semantics.
                BinaryOp::Div => quote!((#l.cast(DataType::Float64) / #r.cast(DataType::Float64))),
                BinaryOp::Rem => quote!((#l % #r)),
            }
        }
        TypedExpr::IsNull(inner, negated) => {
            let inner = expr_tokens(inner);
            if *negated {
                quote!(#inner.is_not_null())
            } else {
                quote!(#inner.is_null())
            }
        }
        TypedExpr::InList(inner, values, negated) => {
            let inner = expr_tokens(inner);
            let list = list_tokens(values);
            let test = quote!(#inner.is_in(#list, false));
            if *negated { quote!(#test.not()) } else { test }
        }
        TypedExpr::Aggregate(aggregate, argument) => {
            let Some(argument) = argument else {
                return quote!(len().cast(DataType::Int64));
            };
            let argument = expr_tokens(argument);
            match aggregate {
                Aggregate::Count => quote!(#argument.count().cast(DataType::Int64)),
                Aggregate::CountDistinct => {
                    quote!(#argument.drop_nulls().n_unique().cast(DataType::Int64))
                }
                Aggregate::Sum => quote!(#argument.sum()),
                Aggregate::Mean => quote!(#argument.mean()),
                Aggregate::Min => quote!(#argument.min()),
                Aggregate::Max => quote!(#argument.max()),
            }
        }
        // A window over no columns is the aggregate of the whole frame, which polars repeats
        // on every row by itself.
        TypedExpr::Window(aggregate, columns) if columns.is_empty() => expr_tokens(aggregate),
        TypedExpr::Window(aggregate, columns) => {
            let aggregate = expr_tokens(aggregate);
            quote!(#aggregate.over([#(col(#columns)),*])?)
        }
        TypedExpr::Call(function, typed_args) => {
            let args: Vec<TokenStream> = typed_args.iter().map(expr_tokens).collect();
            let first = &args[0];
            match function {
                Function::Date => quote!(#first.dt().date()),
                Function::Year => quote!(#first.dt().year().cast(DataType::Int64)),
                Function::Month => quote!(#first.dt().month().cast(DataType::Int64)),
                Function::Day => quote!(#first.dt().day().cast(DataType::Int64)),
                Function::Hour => quote!(#first.dt().hour().cast(DataType::Int64)),
                Function::Abs => quote!(#first.abs()),
                Function::Lower => quote!(#first.str().to_lowercase()),
                Function::Upper => quote!(#first.str().to_uppercase()),
                Function::Length => quote!(#first.str().len_chars().cast(DataType::Int64)),
                Function::Coalesce => quote!(coalesce(&[#(#args),*])),
                Function::Round => {
                    let decimals = match typed_args[1] {
                        TypedExpr::Literal(Literal::Int(n)) => n as u32,
                        _ => unreachable!("the checker only accepts a constant number of decimals"),
                    };
                    quote!(#first.round(#decimals, RoundMode::HalfAwayFromZero))
                }
            }
        }
    }
}

/// An `in` list as a typed series literal.
fn list_tokens(values: &[Literal]) -> TokenStream {
    let all_int = values.iter().all(|v| matches!(v, Literal::Int(_)));
    let all_numeric = values
        .iter()
        .all(|v| matches!(v, Literal::Int(_) | Literal::Float(_)));
    if all_int {
        let items = values
            .iter()
            .map(|v| if let Literal::Int(i) = v { *i } else { 0 });
        quote!(int_list(&[#(#items),*]))
    } else if all_numeric {
        let items = values.iter().map(|v| match v {
            Literal::Int(i) => *i as f64,
            Literal::Float(x) => *x,
            _ => 0.0,
        });
        quote!(float_list(&[#(#items),*]))
    } else if values.iter().all(|v| matches!(v, Literal::Bool(_))) {
        let items = values.iter().map(|v| matches!(v, Literal::Bool(true)));
        quote!(bool_list(&[#(#items),*]))
    } else {
        let items = values.iter().map(|v| match v {
            Literal::String(s) => s.clone(),
            other => other.to_string(),
        });
        quote!(string_list(&[#(#items),*]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[pipeline.concurrency]` accepts every kind name the checker knows; each must have a
    /// runtime kind (a missing one made the emitter panic on `join = 2`).
    #[test]
    fn every_block_kind_name_has_a_runtime_kind() {
        for kind in crate::syntax::BLOCK_KINDS {
            let tokens = kind_name_tokens(kind).to_string();
            assert!(tokens.starts_with("BlockKind"), "{kind}: {tokens}");
        }
    }
}
