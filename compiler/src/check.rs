//! Check: propagate schemas through every block, type every expression, validate templates,
//! connections and sinks, and build the checked pipeline that `emit` turns into Rust.

use std::collections::HashSet;

use crate::diagnostic::{Diagnostic, Span, did_you_mean, line_col};
use crate::expr::{self, BinaryOp, Expr, ExprKind, UnaryOp};
use crate::ir::{
    self, Aggregate, ExprType, Function, PartitionField, Policy, Schema, SourceOrigin,
    TemplatePart, TypedExpr,
};
use crate::resolve::Graph;
use crate::syntax::{
    self, BLOCK_KINDS, BlockKind, CallbackOn, CheckKind, CheckSeverity, ColumnDecl, ExprSource,
    ForEach, JoinHow, Located, PipelineFile, StepOp, Trigger, WriteMode,
};
use crate::types::{BaseType, ColumnType, Granularity, Literal};

/// The placeholders a callback message may use; the runtime's `callback::PLACEHOLDERS`.
const CALLBACK_PLACEHOLDERS: [&str; 8] = [
    "pipeline",
    "partition",
    "run_id",
    "status",
    "failed_blocks",
    "error",
    "warnings",
    "run_url",
];

/// Default retry and timeout policy when neither the pipeline nor the block says otherwise.
const DEFAULT_POLICY: Policy = Policy {
    retries: 0,
    retry_delay_ms: 1_000,
    max_retry_delay_ms: 300_000,
    timeout_ms: 3_600_000,
};

/// What the checker needs besides the parsed file.
pub struct Context<'a> {
    /// The pipeline file's text (for line numbers and spans inside strings).
    pub source: &'a str,
    /// How the file is named in messages.
    pub source_path: &'a str,
    /// The text of the pipeline's hand-written Rust module, if it has one, and its path.
    pub rust_module: Option<(&'a str, &'a str)>,
}

/// Checks the whole pipeline. Returns the checked pipeline; it is only meaningful when no error
/// was recorded in `diagnostics`.
pub fn check(
    file: &PipelineFile,
    graph: &Graph,
    context: &Context<'_>,
    diagnostics: &mut Vec<Diagnostic>,
) -> ir::Pipeline {
    let mut checker = Checker {
        file,
        context,
        diagnostics,
        granularity: file
            .pipeline
            .partitions
            .as_ref()
            .map(|p| p.granularity.value),
        aggregates: AggregateScope::Rows,
    };
    checker.pipeline(graph)
}

struct Checker<'a, 'd> {
    file: &'a PipelineFile,
    context: &'a Context<'a>,
    diagnostics: &'d mut Vec<Diagnostic>,
    granularity: Option<Granularity>,
    /// Where aggregate functions may appear in the expression being typed.
    aggregates: AggregateScope,
}

/// Where aggregate functions (`sum`, `count`, ...) may appear while an expression is typed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AggregateScope {
    /// Row by row (filters, derivations, checks): only as windows, `sum(x) over (k)`.
    Rows,
    /// Inside the `over (...)` of a window, before its aggregate call.
    Window,
    /// An `aggregate` block's expression: aggregates, and no bare columns.
    Groups {
        /// Whether the block has no `group_by`, so an empty input gives one row of nulls.
        whole_input: bool,
    },
    /// Inside an aggregate call's argument: columns, but no other aggregate.
    Argument,
}

/// A template without leading and trailing `/`: dataset folders are relative to the lake.
fn trim_slashes(mut parts: Vec<TemplatePart>) -> Vec<TemplatePart> {
    if let Some(TemplatePart::Text(first)) = parts.first_mut() {
        *first = first.trim_start_matches('/').to_string();
    }
    if let Some(TemplatePart::Text(last)) = parts.last_mut() {
        *last = last.trim_end_matches('/').to_string();
    }
    parts.retain(|part| !matches!(part, TemplatePart::Text(text) if text.is_empty()));
    parts
}

fn find<'s>(schema: &'s Schema, name: &str) -> Option<&'s ColumnType> {
    schema.iter().find(|(n, _)| n == name).map(|(_, t)| t)
}

fn decls_to_schema(decls: &[ColumnDecl]) -> Schema {
    decls
        .iter()
        .map(|d| (d.name.value.clone(), d.ty.value))
        .collect()
}

/// Converts `PULocationID` to `pu_location_id`, `VendorID` to `vendor_id`, `lpep_pickup` stays.
pub fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let previous = i.checked_sub(1).map(|p| chars[p]);
            let next = chars.get(i + 1);
            let after_lower = previous.is_some_and(|p| p.is_lowercase() || p.is_ascii_digit());
            let ends_acronym = previous.is_some_and(|p| p.is_uppercase())
                && next.is_some_and(|n| n.is_lowercase());
            if (after_lower || ends_acronym) && !out.ends_with('_') {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else if c == ' ' || c == '-' || c == '.' {
            if !out.ends_with('_') {
                out.push('_');
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Checker<'_, '_> {
    fn line(&self, span: &Span) -> usize {
        line_col(self.context.source, span.start).0
    }

    fn push(&mut self, diagnostic: Diagnostic) {
        self.diagnostics.push(diagnostic);
    }

    fn unknown_column(&mut self, name: &str, span: Span, schema: &Schema, place: &str) {
        let names = schema.iter().map(|(n, _)| n.as_str());
        let help = did_you_mean(name, names).unwrap_or_else(|| {
            let available = schema
                .iter()
                .map(|(n, _)| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ");
            format!("the columns here are: {available}")
        });
        self.push(
            Diagnostic::error(
                "E0008",
                format!("unknown column `{name}`"),
                span,
                format!("not a column {place}"),
            )
            .with_help(help),
        );
    }

    fn pipeline(&mut self, graph: &Graph) -> ir::Pipeline {
        let file = self.file;
        let meta = &file.pipeline;
        let defaults = Policy {
            retries: meta.defaults.retries.unwrap_or(DEFAULT_POLICY.retries),
            retry_delay_ms: meta
                .defaults
                .retry_delay_ms
                .unwrap_or(DEFAULT_POLICY.retry_delay_ms),
            max_retry_delay_ms: meta
                .defaults
                .max_retry_delay_ms
                .unwrap_or(DEFAULT_POLICY.max_retry_delay_ms),
            timeout_ms: meta
                .defaults
                .timeout_ms
                .unwrap_or(DEFAULT_POLICY.timeout_ms),
        };
        if let Some(partitions) = &meta.partitions
            && !partitions
                .granularity
                .value
                .is_valid_key(&partitions.start.value)
        {
            let example = match partitions.granularity.value {
                Granularity::Monthly => "2019-01",
                Granularity::Daily => "2019-01-01",
                Granularity::Hourly => "2019-01-01T00",
            };
            self.push(
                Diagnostic::error(
                    "E0016",
                    "invalid partition start",
                    partitions.start.span.clone(),
                    format!(
                        "not a {} partition key",
                        partitions.granularity.value.name()
                    ),
                )
                .with_help(format!("write it like `{example}`")),
            );
        }
        self.connections();
        self.required_timeouts();
        let mut seen_params = HashSet::new();
        for param in &file.params {
            if !seen_params.insert(param.name.value.as_str()) {
                self.push(Diagnostic::error(
                    "E0005",
                    format!("parameter `{}` is defined more than once", param.name.value),
                    param.name.span.clone(),
                    "defined again here",
                ));
            }
        }
        let mut schemas: Vec<Option<Schema>> = vec![None; file.blocks.len()];
        let mut consumed = vec![false; file.blocks.len()];
        let mut blocks = Vec::new();
        let mut position = vec![usize::MAX; file.blocks.len()];
        let mut rust_module = None;
        for &b in &graph.order {
            let block = &file.blocks[b];
            for &i in &graph.inputs[b] {
                consumed[i] = true;
            }
            let inputs: Option<Vec<Schema>> = graph.inputs[b]
                .iter()
                .map(|&i| schemas[i].clone())
                .collect();
            let Some(inputs) = inputs else {
                // An input failed to check; its errors are already reported and checking this
                // block against a guessed schema would only add noise.
                continue;
            };
            let Some((op, output)) = self.block(block, &inputs) else {
                continue;
            };
            if matches!(op, ir::BlockOp::Rust { .. }) {
                rust_module = self.context.rust_module.map(|(path, _)| path.to_string());
            }
            let checks = match &output {
                Some(schema) => self.checks(&block.checks, schema),
                None => {
                    if let Some(check) = block.checks.first() {
                        self.push(
                            Diagnostic::error(
                                "E0018",
                                "a sink has no output to check",
                                check.span.clone(),
                                "check on a sink",
                            )
                            .with_help("move the check to the block that feeds the sink"),
                        );
                    }
                    Vec::new()
                }
            };
            let trigger = self.trigger(block, &graph.inputs[b]);
            let run_if = block.run_if.as_ref().and_then(|source| {
                let (expr, ty) = self.typed_expr(source, &Schema::new())?;
                if ty.base.is_some_and(|b| b != BaseType::Bool) {
                    self.push(
                        Diagnostic::error(
                            "E0009",
                            "`run_if` must be a condition",
                            source.span.clone(),
                            format!("this is {}, not bool", ty.base.map_or("null", BaseType::name)),
                        )
                        .with_help("compare parameters or partition fields, e.g. `param.full_refresh` or `partition.month = 1`"),
                    );
                    return None;
                }
                if constant_truth(&expr) == Some(false) {
                    self.push(
                        Diagnostic::warning("W0006", format!("block `{}` never runs", block.name.value), source.span.clone(), "this condition is always false")
                            .with_note("the block is skipped in every run, and so is every block that needs its rows")
                            .with_help("remove the block, or make the condition depend on a parameter (`param.NAME`) or the partition"),
                    );
                }
                Some((source.text.clone(), expr))
            });
            schemas[b] = output.clone();
            position[b] = blocks.len();
            blocks.push(ir::Block {
                name: block.name.value.clone(),
                line: self.line(&block.span),
                description: block.description.clone(),
                inputs: graph.inputs[b].iter().map(|&i| position[i]).collect(),
                after: graph.after[b].iter().map(|&i| position[i]).collect(),
                trigger,
                run_if,
                pii: block.pii.iter().map(|c| c.value.clone()).collect(),
                pii_allowed: block.pii_allowed.as_ref().is_some_and(|a| a.value),
                op,
                output,
                checks,
                policy: Policy {
                    retries: block.policy.retries.unwrap_or(defaults.retries),
                    retry_delay_ms: block
                        .policy
                        .retry_delay_ms
                        .unwrap_or(defaults.retry_delay_ms),
                    max_retry_delay_ms: block
                        .policy
                        .max_retry_delay_ms
                        .unwrap_or(defaults.max_retry_delay_ms),
                    timeout_ms: block.policy.timeout_ms.unwrap_or(defaults.timeout_ms),
                },
            });
        }
        // Judge use by the names written in `inputs`, so a block whose consumer has an error
        // is not reported as unused as well.
        for (b, block) in file.blocks.iter().enumerate() {
            consumed[b] |= file
                .blocks
                .iter()
                .any(|other| other.inputs.iter().any(|i| i.value == block.name.value));
        }
        for &b in &graph.order {
            let block = &file.blocks[b];
            if schemas[b].is_some() && !consumed[b] {
                self.push(
                    Diagnostic::warning(
                        "W0001",
                        format!("the output of block `{}` is never used", block.name.value),
                        block.name.span.clone(),
                        "no block reads this",
                    )
                    .with_help("add it to a block's `inputs`, or remove the block"),
                );
            }
        }
        ir::Pipeline {
            name: meta.name.value.clone(),
            description: meta.description.clone(),
            owner: meta.owner.clone(),
            tags: meta.tags.clone(),
            source_path: self.context.source_path.to_string(),
            source_hash: crate::source_hash(self.context.source),
            timeout_ms: meta.timeout_ms,
            limits: self.limits(),
            schedule: {
                let schedule = self.schedule();
                if let Some(schedule) = &schedule {
                    self.schedule_fits(schedule, &blocks);
                }
                schedule
            },
            sensor: self.sensor(),
            partitions: meta
                .partitions
                .as_ref()
                .map(|p| (p.granularity.value, p.start.value.clone(), p.catchup)),
            params: file
                .params
                .iter()
                .map(|p| (p.name.value.clone(), p.default.value.clone()))
                .collect(),
            connections: file
                .connections
                .iter()
                .map(|c| ir::Connection {
                    name: c.name.value.clone(),
                    url: c.url.value.clone(),
                    password: c.password.as_ref().map(|p| p.value.clone()),
                })
                .collect(),
            blocks,
            rust_module,
        }
    }

    /// The block's trigger rule. A rule other than `all_success` can fire when an upstream
    /// block failed or was skipped, and then there are no rows to read: such a block must
    /// wait for its upstream blocks with `after`, not read them with `inputs`.
    fn trigger(&mut self, block: &syntax::Block, inputs: &[usize]) -> Trigger {
        let from_kind = match &block.kind {
            BlockKind::Callback { on, .. } => Some(on),
            _ => None,
        };
        match (&block.trigger, from_kind) {
            (Some(trigger), Some(on)) => {
                self.push(
                    Diagnostic::error(
                        "E0021",
                        "a callback takes `on`, not `trigger`",
                        trigger.span.clone(),
                        "set by `on` already",
                    )
                    .with_label(on.span.clone(), "`on` is here")
                    .with_help("remove `trigger`: `on = \"failure\"` means `one_failed`, `\"success\"` means `all_success`, `\"always\"` means `all_done`"),
                );
                on.value.trigger()
            }
            (None, Some(on)) => on.value.trigger(),
            (Some(trigger), None) => {
                if trigger.value != Trigger::AllSuccess && !inputs.is_empty() {
                    let first = &block.inputs[0];
                    self.push(
                        Diagnostic::error(
                            "E0021",
                            format!(
                                "trigger `{}` can run `{}` when its input has no rows",
                                trigger.value.name(),
                                block.name.value
                            ),
                            trigger.span.clone(),
                            "fires even when an upstream block failed or was skipped",
                        )
                        .with_label(first.span.clone(), "but the block reads this block's rows")
                        .with_help(format!(
                            "wait for the block without reading it: `after = [\"{}\"]` instead of `inputs`, or use `trigger = \"all_success\"`",
                            first.value
                        )),
                    );
                }
                trigger.value
            }
            (None, None) => Trigger::AllSuccess,
        }
    }

    /// `upsert` needs key columns that exist, are never null and are not floats; `key` means
    /// nothing in other modes.
    fn upsert_key(&mut self, sink: &syntax::TableSink, input: &Schema) {
        let upsert = sink.mode.value == WriteMode::Upsert;
        let Some(key) = &sink.key else {
            if upsert {
                self.push(
                    Diagnostic::error("E0004", "`upsert` needs `key`", sink.mode.span.clone(), "which columns identify a row?")
                        .with_help("add `key = [\"trip_id\"]`: the columns whose values identify a row, so a re-run updates it instead of adding it again"),
                );
            }
            return;
        };
        if !upsert {
            self.push(
                Diagnostic::error(
                    "E0004",
                    "`key` is only used by `mode = \"upsert\"`",
                    key.span.clone(),
                    "ignored in this mode",
                )
                .with_label(sink.mode.span.clone(), "the mode is set here")
                .with_help("set `mode = \"upsert\"`, or remove `key`"),
            );
            return;
        }
        if key.value.is_empty() {
            self.push(
                Diagnostic::error(
                    "E0004",
                    "`key` names no column",
                    key.span.clone(),
                    "empty list",
                )
                .with_help("list the columns that identify a row"),
            );
        }
        if let Some(column) = &sink.partition_column {
            self.push(
                Diagnostic::error(
                    "E0004",
                    "`partition_column` is only used by `replace_partition`",
                    column.span.clone(),
                    "ignored by `upsert`",
                )
                .with_help("remove it: `upsert` replaces rows by `key`"),
            );
        }
        let mut seen = HashSet::new();
        for column in &key.value {
            if !seen.insert(column.value.as_str()) {
                self.push(Diagnostic::error(
                    "E0005",
                    format!("key column `{}` is listed twice", column.value),
                    column.span.clone(),
                    "listed again here",
                ));
                continue;
            }
            match find(input, &column.value) {
                None => self.unknown_column(&column.value, column.span.clone(), input, "flowing into this sink"),
                Some(ty) if ty.base == BaseType::Float64 => self.push(
                    Diagnostic::error("E0010", "a float column cannot be a key", column.span.clone(), "float64 column")
                        .with_help("use an integer, string, date or timestamp column"),
                ),
                Some(ty) if ty.nullable => self.push(
                    Diagnostic::error("E0010", format!("key column `{}` may be null", column.value), column.span.clone(), format!("{ty} flows in here"))
                        .with_help(format!("filter out the nulls first (`filter = \"{} is not null\"`) or derive a non-null value with `coalesce`", column.value)),
                ),
                Some(_) => {}
            }
        }
    }

    /// `[pipeline.sensor]`: the connection exists, the path's variables exist, and it looks at
    /// least once before it gives up.
    fn sensor(&mut self) -> Option<ir::Sensor> {
        let declared = self.file.pipeline.sensor.clone()?;
        let connection_ok = self.connection(&declared.connection);
        let path = self.template(&declared.path, false);
        let poke_interval_ms = declared.poke_interval_ms.unwrap_or(60_000);
        let timeout_ms = declared.timeout_ms.unwrap_or(6 * 3_600_000);
        if poke_interval_ms > timeout_ms {
            self.push(
                Diagnostic::error(
                    "E0029",
                    "the sensor gives up before it looks a second time",
                    declared.span.clone(),
                    format!(
                        "`poke_interval` ({}) is longer than `timeout` ({})",
                        human_ms(poke_interval_ms),
                        human_ms(timeout_ms)
                    ),
                )
                .with_help("poke more often than the timeout, e.g. `poke_interval = \"5m\"` with `timeout = \"6h\"`"),
            );
        }
        Some(ir::Sensor {
            kind: declared.kind.value,
            connection: declared.connection.value.clone(),
            path: path.filter(|_| connection_ok)?,
            line: self.line(&declared.span),
            poke_interval_ms,
            timeout_ms,
        })
    }

    /// `[pipeline.schedule]`: the cron pattern parses and fires at least once in the next
    /// five years, the time zone is a real IANA zone.
    fn schedule(&mut self) -> Option<ir::Schedule> {
        let declared = self.file.pipeline.schedule.as_ref()?;
        let cron = &declared.cron;
        let mut ok = true;
        let timezone = match &declared.timezone {
            None => chrono_tz::Tz::UTC,
            Some(name) => match name.value.parse::<chrono_tz::Tz>() {
                Ok(zone) => zone,
                Err(_) => {
                    ok = false;
                    let zones = chrono_tz::TZ_VARIANTS.iter().map(|z| z.name());
                    self.push(
                        Diagnostic::error("E0023", format!("unknown time zone `{}`", name.value), name.span.clone(), "not an IANA time zone")
                            .with_optional_help(did_you_mean(&name.value, zones).or_else(|| Some("use a name like `Europe/Berlin` or `America/New_York` (IANA tz database)".into()))),
                    );
                    chrono_tz::Tz::UTC
                }
            },
        };
        match cron.value.parse::<croner::Cron>() {
            Err(error) => {
                ok = false;
                self.push(
                    Diagnostic::error("E0023", "invalid cron pattern", cron.span.clone(), error.to_string())
                        .with_help("five fields `minute hour day-of-month month day-of-week` (or six with seconds first), e.g. `0 6 2 * *`"),
                );
            }
            Ok(parsed) => {
                // A pattern such as `0 0 30 2 *` (February 30th) parses but never fires.
                let now = chrono::Utc::now().with_timezone(&timezone);
                let horizon = now + chrono::Duration::days(5 * 366);
                let fires = parsed
                    .find_next_occurrence(&now, false)
                    .is_ok_and(|next| next < horizon);
                if !fires {
                    ok = false;
                    self.push(
                        Diagnostic::error(
                            "E0023",
                            "this cron pattern never fires",
                            cron.span.clone(),
                            "no matching time in the next five years",
                        )
                        .with_help(
                            "check the day of month against the month (February has no 30th)",
                        ),
                    );
                }
            }
        }
        ok.then(|| ir::Schedule {
            cron: cron.value.clone(),
            timezone: timezone.name().to_string(),
            overlap: declared.overlap,
            sla_ms: declared.sla_ms,
        })
    }

    /// A block whose retries and timeouts can outlast the time between two scheduled runs makes
    /// runs pile up or be skipped: warn, naming the block and both durations.
    fn schedule_fits(&mut self, schedule: &ir::Schedule, blocks: &[ir::Block]) {
        let (Ok(cron), Ok(timezone)) = (
            schedule.cron.parse::<croner::Cron>(),
            schedule.timezone.parse::<chrono_tz::Tz>(),
        ) else {
            return;
        };
        let start = chrono::Utc::now().with_timezone(&timezone);
        let times: Vec<_> = cron.iter_after(start).take(50).collect();
        let Some(interval) = times
            .windows(2)
            .map(|pair| (pair[1] - pair[0]).num_milliseconds())
            .min()
            .filter(|ms| *ms > 0)
        else {
            return;
        };
        let Some(declared) = &self.file.pipeline.schedule else {
            return;
        };
        // One warning for the schedule, with a note per block that can outlast it.
        let mut notes = Vec::new();
        for block in blocks {
            let policy = block.policy;
            let attempts = u64::from(policy.retries) + 1;
            let delays: u64 = (1..attempts)
                .map(|n| {
                    policy
                        .retry_delay_ms
                        .saturating_mul(1 << (n - 1).min(30))
                        .min(policy.max_retry_delay_ms)
                })
                .sum();
            let worst = policy
                .timeout_ms
                .saturating_mul(attempts)
                .saturating_add(delays);
            if worst > interval as u64 {
                notes.push((block.name.clone(), format!("`{}` may take up to {}: {attempts} attempt(s) of at most {} plus retry delays", block.name, human_ms(worst), human_ms(policy.timeout_ms))));
            }
        }
        let Some((first, _)) = notes.first() else {
            return;
        };
        let message = match notes.len() {
            1 => {
                format!("block `{first}` can take longer than the time between two scheduled runs")
            }
            n => format!("{n} blocks can take longer than the time between two scheduled runs"),
        };
        let mut diagnostic = Diagnostic::warning(
            "W0005",
            message,
            declared.cron.span.clone(),
            format!("runs start every {}", human_ms(interval as u64)),
        );
        for (_, note) in notes {
            diagnostic = diagnostic.with_note(note);
        }
        self.push(diagnostic.with_help("lower their `timeout` or `retries`, or schedule runs less often; overlapping ticks are skipped or queued, not run twice"));
    }

    /// With `require_timeouts = true`, every block has a timeout chosen on purpose: its own or
    /// the pipeline's default, not the built-in hour.
    fn required_timeouts(&mut self) {
        let meta = &self.file.pipeline;
        let Some(required) = meta.require_timeouts.as_ref().filter(|r| r.value) else {
            return;
        };
        if meta.defaults.timeout_ms.is_some() {
            return;
        }
        for block in &self.file.blocks {
            if block.policy.timeout_ms.is_none() {
                self.push(
                    Diagnostic::error("E0026", format!("block `{}` has no timeout", block.name.value), block.name.span.clone(), "the pipeline requires one")
                        .with_label(required.span.clone(), "required here")
                        .with_help("add `timeout = \"10m\"` to the block, or a default in `[pipeline.defaults]`"),
                );
            }
        }
    }

    /// `[pipeline.concurrency]`: its keys must be block kinds, each given once.
    fn limits(&mut self) -> Vec<(String, u32)> {
        let mut limits: Vec<(String, u32)> = Vec::new();
        for (kind, limit) in &self.file.pipeline.concurrency {
            if !BLOCK_KINDS.contains(&kind.value.as_str()) {
                self.push(
                    Diagnostic::error(
                        "E0003",
                        format!(
                            "unknown block kind `{}` in `[pipeline.concurrency]`",
                            kind.value
                        ),
                        kind.span.clone(),
                        "not a block kind",
                    )
                    .with_optional_help(
                        did_you_mean(&kind.value, BLOCK_KINDS.iter().copied()).or_else(|| {
                            Some(format!(
                                "limits are per block kind: {}",
                                BLOCK_KINDS.join(", ")
                            ))
                        }),
                    ),
                );
            } else {
                limits.push((kind.value.clone(), limit.value));
            }
        }
        limits
    }

    fn connections(&mut self) {
        let mut seen = HashSet::new();
        for connection in &self.file.connections {
            if !seen.insert(connection.name.value.as_str()) {
                self.push(Diagnostic::error(
                    "E0005",
                    format!(
                        "connection `{}` is defined more than once",
                        connection.name.value
                    ),
                    connection.name.span.clone(),
                    "defined again here",
                ));
            }
            let url = &connection.url.value;
            if let Err(message) = validate_env_template(url) {
                self.push(
                    Diagnostic::error(
                        "E0011",
                        "invalid environment reference in connection URL",
                        connection.url.span.clone(),
                        message,
                    )
                    .with_help("write `${VAR}` or `${VAR:-default}`"),
                );
            }
            if has_literal_password(url) {
                self.push(
                    Diagnostic::error("E0013", "a password is written in the connection URL", connection.url.span.clone(), "literal secret")
                        .with_help("remove it from the URL and add `password = { env = \"PGPASSWORD\" }` to the connection"),
                );
            } else if let Some(variable) = interpolated_password(url) {
                self.push(
                    Diagnostic::warning("W0004", format!("the secret `{variable}` is interpolated into the connection URL"), connection.url.span.clone(), "the password becomes part of the URL text")
                        .with_help(format!("remove it from the URL and add `password = {{ env = \"{variable}\" }}`: the password is then injected when connecting and never part of a URL that a message or a log could show")),
                );
            }
        }
    }

    fn connection(&mut self, name: &Located<String>) -> bool {
        if self
            .file
            .connections
            .iter()
            .any(|c| c.name.value == name.value)
        {
            return true;
        }
        let names = self.file.connections.iter().map(|c| c.name.value.as_str());
        self.push(
            Diagnostic::error(
                "E0012",
                format!("unknown connection `{}`", name.value),
                name.span.clone(),
                "not defined in `[connections]`",
            )
            .with_optional_help(did_you_mean(&name.value, names)),
        );
        false
    }

    fn block(
        &mut self,
        block: &syntax::Block,
        inputs: &[Schema],
    ) -> Option<(ir::BlockOp, Option<Schema>)> {
        let input = inputs.first();
        match &block.kind {
            BlockKind::HttpSource(source) | BlockKind::FileSource(source) => {
                let connection_ok = source
                    .connection
                    .as_ref()
                    .is_none_or(|c| self.connection(c));
                let path = self.template(&source.path, source.for_each.is_some());
                if source.for_each.is_none()
                    && let Some(parts) = &path
                {
                    self.path_granularity(&source.path, parts);
                }
                self.unique_columns(&source.schema);
                let mut schema = decls_to_schema(&source.schema);
                let fan_out = self.fan_out(source, path.as_deref(), &mut schema);
                // The declared schema is known even when the path or connection is wrong, so
                // downstream blocks are still checked; the errors above keep the pipeline from
                // being emitted.
                let _ = connection_ok;
                let origin = match (&block.kind, &source.connection) {
                    (BlockKind::HttpSource(_), Some(c)) => SourceOrigin::Http(c.value.clone()),
                    (_, Some(c)) => SourceOrigin::Store(c.value.clone()),
                    (_, None) => SourceOrigin::Local,
                };
                let op = ir::BlockOp::Source {
                    origin,
                    path: path.unwrap_or_default(),
                    format: source.format,
                    compression: source.compression,
                    fan_out,
                };
                Some((op, Some(schema)))
            }
            BlockKind::RestSource(source, _) | BlockKind::SqlSource(source) => {
                let connection = source.connection.as_ref()?;
                let connection_ok = self.connection(connection);
                let path = self.template(&source.path, false);
                self.unique_columns(&source.schema);
                let schema = decls_to_schema(&source.schema);
                let connection = connection.value.clone();
                let op = match &block.kind {
                    BlockKind::RestSource(_, options) => ir::BlockOp::RestSource {
                        connection,
                        path: path?,
                        options: options.clone(),
                    },
                    _ => ir::BlockOp::SqlSource {
                        connection,
                        query: path?,
                    },
                };
                connection_ok.then_some((op, Some(schema)))
            }
            BlockKind::Transform { steps } => {
                let mut schema = input?.clone();
                let mut checked = Vec::new();
                let mut failed = false;
                for step in steps {
                    match self.step(&step.op, &mut schema) {
                        Some(op) => checked.push(ir::Step {
                            line: self.line(&step.span),
                            summary: summarize(&self.context.source[step.span.clone()]),
                            op,
                        }),
                        // A filter does not change the schema, so the steps after a wrong
                        // filter can still be checked; after other steps the schema is unknown.
                        None if matches!(step.op, StepOp::Filter(_)) => failed = true,
                        None => return None,
                    }
                }
                if failed {
                    return None;
                }
                Some((ir::BlockOp::Transform { steps: checked }, Some(schema)))
            }
            BlockKind::Join { keys, how, suffix } => match inputs {
                [left, right] => self.join(block, keys, how, suffix.as_ref(), left, right),
                // `resolve` reports a join without exactly two inputs.
                _ => None,
            },
            BlockKind::Union => self.union(block, inputs),
            BlockKind::Aggregate {
                group_by,
                aggregates,
            } => self.aggregate(group_by, aggregates, input?),
            BlockKind::Rust { function, output } => {
                self.rust_function(function);
                let schema = match output {
                    Some(decls) => {
                        self.unique_columns(decls);
                        decls_to_schema(decls)
                    }
                    None => input?.clone(),
                };
                Some((
                    ir::BlockOp::Rust {
                        function: function.value.clone(),
                    },
                    Some(schema),
                ))
            }
            BlockKind::TableSink(sink) | BlockKind::BigQuerySink(sink) => {
                let bigquery = matches!(block.kind, BlockKind::BigQuerySink(_));
                let input = input?;
                let connection_ok = self.connection(&sink.connection);
                if let Some(columns) = &sink.columns {
                    self.sink_columns(&block.name.value, columns, input, &sink.table);
                }
                match (&sink.partition_column, sink.mode.value) {
                    (Some(column), _) => match find(input, &column.value) {
                        Some(ty) if ty.base == BaseType::Float64 => self.push(
                            Diagnostic::error("E0010", "a float column cannot identify partitions", column.span.clone(), "float64 column").with_help("use a date, string or integer column"),
                        ),
                        Some(_) => {}
                        None => self.unknown_column(&column.value, column.span.clone(), input, "flowing into this sink"),
                    },
                    (None, WriteMode::ReplacePartition) => self.push(
                        Diagnostic::error("E0004", "`replace_partition` needs `partition_column`", sink.mode.span.clone(), "which rows belong to this run's partition?")
                            .with_help("add `partition_column = \"...\"`: the column whose value identifies the run's partition (for example a column derived from `partition.start`)"),
                    ),
                    (None, _) => {}
                }
                self.upsert_key(sink, input);
                if sink.mode.value == WriteMode::Append && self.granularity.is_some() {
                    self.push(
                        Diagnostic::warning("W0002", "`append` in a partitioned pipeline adds a partition's rows again when it is re-run", sink.mode.span.clone(), "re-running a partition (`run`, `backfill --rerun-all`) inserts its rows twice")
                            .with_help("use `replace_partition` (with `partition_column`) or `upsert` (with `key`) so that re-runs are idempotent"),
                    );
                }
                for name in [Some(&sink.table), sink.db_schema.as_ref()]
                    .into_iter()
                    .flatten()
                {
                    let valid = if bigquery {
                        // BigQuery's rule for dataset and table names.
                        !name.value.is_empty()
                            && name.value.len() <= 1024
                            && name
                                .value
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || c == '_')
                    } else {
                        !name.value.is_empty() && !name.value.contains(['"', '\0'])
                    };
                    if !valid {
                        let (message, label) = if bigquery {
                            ("invalid BigQuery name", "use letters, digits and `_`")
                        } else {
                            ("invalid SQL identifier", "empty or contains `\"`")
                        };
                        self.push(Diagnostic::error(
                            "E0003",
                            message,
                            name.span.clone(),
                            label,
                        ));
                    }
                }
                let key: Vec<String> = sink
                    .key
                    .as_ref()
                    .map(|k| k.value.iter().map(|c| c.value.clone()).collect())
                    .unwrap_or_default();
                let op = if bigquery {
                    ir::BlockOp::BigQuerySink {
                        connection: sink.connection.value.clone(),
                        table: sink.table.value.clone(),
                        dataset: sink.db_schema.as_ref().map(|s| s.value.clone()),
                        mode: sink.mode.value,
                        partition_column: sink.partition_column.as_ref().map(|c| c.value.clone()),
                        key: key.clone(),
                    }
                } else {
                    ir::BlockOp::TableSink {
                        connection: sink.connection.value.clone(),
                        table: sink.table.value.clone(),
                        db_schema: sink.db_schema.as_ref().map(|s| s.value.clone()),
                        mode: sink.mode.value,
                        partition_column: sink.partition_column.as_ref().map(|c| c.value.clone()),
                        key,
                    }
                };
                connection_ok.then_some((op, None))
            }
            BlockKind::Callback {
                on,
                message,
                webhook,
                webhook_format,
                email,
                dedupe,
            } => {
                let webhook_ok = webhook.as_ref().is_none_or(|w| self.connection(w));
                let email_ok = email.as_ref().is_none_or(|e| self.connection(e));
                let sla_ok = on.value != CallbackOn::Sla
                    || self
                        .file
                        .pipeline
                        .schedule
                        .as_ref()
                        .is_some_and(|s| s.sla_ms.is_some());
                if !sla_ok {
                    self.push(
                        Diagnostic::error(
                            "E0028",
                            "a callback on `sla` needs a schedule with an `sla`",
                            on.span.clone(),
                            "no run can miss a deadline that is not set",
                        )
                        .with_help(
                            "add `sla = \"2h\"` (how long after its tick a scheduled run must be finished) to [pipeline.schedule]",
                        ),
                    );
                }
                let text = message.as_ref().map_or_else(
                    || {
                        match on.value {
                            CallbackOn::Warning => "{pipeline} run {run_id} [{partition}]: data checks warned: {warnings}",
                            CallbackOn::Sla => "{pipeline} [{partition}]: run {run_id} {status}: {error}",
                            _ => "{pipeline} run {run_id} [{partition}]: {status} {failed_blocks} {error}",
                        }
                        .to_string()
                    },
                    |m| m.value.clone(),
                );
                if let Some(message) = message {
                    self.callback_placeholders(message);
                }
                let op = ir::BlockOp::Callback {
                    on: on.value,
                    message: text,
                    webhook: webhook.as_ref().map(|w| w.value.clone()),
                    webhook_format: *webhook_format,
                    email: email.as_ref().map(|e| e.value.clone()),
                    dedupe: dedupe
                        .as_ref()
                        .map_or(on.value == CallbackOn::Failure, |d| d.value),
                };
                (webhook_ok && email_ok && sla_ok).then_some((op, None))
            }
            BlockKind::ExportSink(sink) => {
                input?;
                let connection_ok = self.connection(&sink.connection);
                let path = self.template(&sink.path, false);
                if sink.path.value.split('/').any(|part| part == "..") {
                    self.push(Diagnostic::error(
                        "E0003",
                        "the export path may not leave the store",
                        sink.path.span.clone(),
                        "contains `..`",
                    ));
                }
                let op = ir::BlockOp::ExportSink {
                    connection: sink.connection.value.clone(),
                    path: path?,
                    format: sink.format,
                };
                connection_ok.then_some((op, None))
            }
            BlockKind::LakeSink(sink) => {
                let input = input?;
                let connection_ok = self.connection(&sink.connection);
                for (index, column) in sink.partition_by.iter().enumerate() {
                    if sink.partition_by[..index]
                        .iter()
                        .any(|c| c.value == column.value)
                    {
                        self.push(Diagnostic::error(
                            "E0017",
                            format!("`{}` is listed twice in `partition_by`", column.value),
                            column.span.clone(),
                            "already a folder level",
                        ));
                    }
                    match find(input, &column.value) {
                        Some(ty) if matches!(ty.base, BaseType::Float64 | BaseType::Timestamp) => self.push(
                            Diagnostic::error("E0010", format!("cannot partition files by a {} column", ty.base.name()), column.span.clone(), "one folder per distinct value")
                                .with_help("partition by a date, string, integer or bool column, e.g. derive `date(...)` first"),
                        ),
                        Some(_) => {}
                        None => self.unknown_column(&column.value, column.span.clone(), input, "flowing into this sink"),
                    }
                }
                if sink.path.value.split('/').any(|part| part == "..") {
                    self.push(Diagnostic::error(
                        "E0003",
                        "the dataset path may not leave the lake",
                        sink.path.span.clone(),
                        "contains `..`",
                    ));
                }
                let path = self.template(&sink.path, false);
                let op = ir::BlockOp::LakeSink {
                    connection: sink.connection.value.clone(),
                    path: trim_slashes(path?),
                    partition_by: sink.partition_by.iter().map(|c| c.value.clone()).collect(),
                    max_rows_per_file: sink.max_rows_per_file.as_ref().map(|n| n.value),
                    format: sink.format,
                };
                connection_ok.then_some((op, None))
            }
        }
    }

    /// Every `{name}` in a callback message must be one the runtime fills in.
    fn callback_placeholders(&mut self, message: &Located<String>) {
        let text = &message.value;
        let mut rest = text.as_str();
        let mut offset = 0;
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else {
                break;
            };
            let name = &rest[open + 1..open + close];
            // Point into the string when it is written without escapes, else at all of it.
            let raw = &self.context.source[message.span.clone()];
            let located = |written: &str| match raw.find(written) {
                Some(at) if raw[1..raw.len().saturating_sub(1)] == *text => {
                    let start = message.span.start + at;
                    start..start + written.len()
                }
                _ => message.span.clone(),
            };
            let from_environment = offset + open > 0 && text.as_bytes()[offset + open - 1] == b'$';
            if from_environment {
                // Alerts are logged, posted and mailed: a value from the environment there is
                // how tokens leak into chat channels and log stores.
                self.push(
                    Diagnostic::error("E0013", format!("a callback message may not read the environment (`${{{name}}}`)"), located(&format!("${{{name}}}")), "messages are logged and sent as they are")
                        .with_note("an alert goes to logs, webhooks and mailboxes; a secret written there is a leaked secret")
                        .with_help("keep secrets in connection passwords (`password = { env = \"VAR\" }`); messages use only the run's placeholders, such as `{pipeline}` and `{error}`"),
                );
            } else if !CALLBACK_PLACEHOLDERS.contains(&name) {
                let span = located(&format!("{{{name}}}"));
                self.push(
                    Diagnostic::error(
                        "E0022",
                        format!("unknown placeholder `{{{name}}}` in a callback message"),
                        span,
                        "not filled in at run time",
                    )
                    .with_optional_help(
                        did_you_mean(name, CALLBACK_PLACEHOLDERS.iter().copied()).or_else(|| {
                            Some(format!(
                                "the placeholders are: {}",
                                CALLBACK_PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
                            ))
                        }),
                    ),
                );
            }
            offset += open + close + 1;
            rest = &text[offset..];
        }
    }

    fn unique_columns(&mut self, decls: &[ColumnDecl]) {
        // TOML itself rejects a repeated key, so only names that differ by case can collide.
        let mut seen: Vec<&Located<String>> = Vec::new();
        for decl in decls {
            if let Some(first) = seen
                .iter()
                .find(|s| s.value.eq_ignore_ascii_case(&decl.name.value))
            {
                self.push(
                    Diagnostic::error(
                        "E0017",
                        format!(
                            "columns `{}` and `{}` differ only by case",
                            first.value, decl.name.value
                        ),
                        decl.name.span.clone(),
                        "ambiguous column",
                    )
                    .with_label(first.span.clone(), "first declared here")
                    .with_note(
                        "Postgres folds unquoted names and many tools compare names without case",
                    ),
                );
            }
            seen.push(&decl.name);
        }
    }

    fn sink_columns(
        &mut self,
        block: &str,
        declared: &[ColumnDecl],
        input: &Schema,
        table: &Located<String>,
    ) {
        for decl in declared {
            match find(input, &decl.name.value) {
                None => {
                    let names = input.iter().map(|(n, _)| n.as_str());
                    self.push(
                        Diagnostic::error("E0010", format!("column `{}` of table `{}` is not produced by the input", decl.name.value, table.value), decl.name.span.clone(), "no such column flows into this sink")
                            .with_optional_help(did_you_mean(&decl.name.value, names)),
                    );
                }
                Some(actual) if actual.base != decl.ty.value.base => self.push(
                    Diagnostic::error("E0010", format!("column `{}` is {} but the table declares {}", decl.name.value, actual, decl.ty.value), decl.ty.span.clone(), format!("the input has {actual}"))
                        .with_help(format!("declare `{} = \"{}\"`, or add a `cast` step before the sink", decl.name.value, actual)),
                ),
                Some(actual) if actual.nullable && !decl.ty.value.nullable => self.push(
                    Diagnostic::error("E0010", format!("nullable column `{}` flows into NOT NULL column", decl.name.value), decl.ty.span.clone(), format!("the input is {actual}"))
                        .with_help(format!("declare `{} = \"{}\"`, or filter the nulls out (`{} is not null`) before the sink", decl.name.value, actual, decl.name.value)),
                ),
                Some(_) => {}
            }
        }
        for (name, ty) in input {
            if !declared.iter().any(|d| &d.name.value == name) {
                let span = declared
                    .last()
                    .map_or(table.span.clone(), |d| d.name.span.clone());
                self.push(
                    Diagnostic::error("E0010", format!("column `{name}` ({ty}) flows into sink `{block}` but the table does not declare it"), span, "declared columns end here")
                        .with_help(format!("declare `{name} = \"{ty}\"`, or drop the column before the sink")),
                );
            }
        }
    }

    fn rust_function(&mut self, function: &Located<String>) {
        let Some((path, text)) = self.context.rust_module else {
            let rows = ir::row_type_names(&function.value);
            self.push(
                Diagnostic::error("E0020", format!("no Rust module for function `{}`", function.value), function.span.clone(), "the pipeline has no hand-written Rust")
                    .with_help(format!("create `{}` next to the pipeline file with `use super::*;` and `pub fn {}(rows: {}) -> PolarsResult<{}>` (the row types are generated from this file)", self.rust_module_hint(), function.value, rows.0, rows.1)),
            );
            return;
        };
        let signatures: Vec<syn::Signature> = match syn::parse_file(text) {
            Ok(parsed) => parsed
                .items
                .into_iter()
                .filter_map(|item| match item {
                    syn::Item::Fn(f) if matches!(f.vis, syn::Visibility::Public(_)) => Some(f.sig),
                    _ => None,
                })
                .collect(),
            // A Rust syntax error is reported by rustc with its own location when the module is
            // compiled; here only names can be checked.
            Err(_) => return,
        };
        let functions: Vec<String> = signatures.iter().map(|s| s.ident.to_string()).collect();
        if let Some(signature) = signatures
            .iter()
            .find(|s| s.ident == function.value.as_str())
        {
            self.rust_signature(function, path, signature);
        } else {
            self.push(
                Diagnostic::error(
                    "E0020",
                    format!("no public function `{}` in `{path}`", function.value),
                    function.span.clone(),
                    "not found",
                )
                .with_optional_help(did_you_mean(
                    &function.value,
                    functions.iter().map(String::as_str),
                )),
            );
        }
    }

    /// A hand-written function takes the generated input rows and returns the output rows; an
    /// older or mistaken signature is reported here, at the block, with the one to write,
    /// rather than as a type mismatch inside the generated code.
    fn rust_signature(
        &mut self,
        function: &Located<String>,
        path: &str,
        signature: &syn::Signature,
    ) {
        let (rows_in, rows_out) = ir::row_type_names(&function.value);
        use quote::ToTokens as _;
        let written = |tokens: &syn::Type| {
            tokens
                .to_token_stream()
                .into_iter()
                .map(|t| t.to_string())
                .collect::<String>()
        };
        let takes_rows = match signature.inputs.iter().collect::<Vec<_>>()[..] {
            [syn::FnArg::Typed(argument)] => matches!(
                argument.ty.as_ref(),
                syn::Type::Path(path) if path.path.segments.last().is_some_and(|s| s.ident == rows_in)
            ),
            _ => false,
        };
        let returns_rows = match &signature.output {
            syn::ReturnType::Type(_, ty) => written(ty).contains(&rows_out),
            syn::ReturnType::Default => false,
        };
        if !(takes_rows && returns_rows) {
            // The signature as rustfmt would print it: an empty function, formatted.
            let item = syn::Item::Fn(syn::ItemFn {
                attrs: Vec::new(),
                vis: syn::Visibility::Inherited,
                sig: signature.clone(),
                block: Box::new(syn::parse_quote!({})),
            });
            let found = prettyplease::unparse(&syn::File {
                shebang: None,
                attrs: Vec::new(),
                items: vec![item],
            });
            let found = found.trim().trim_end_matches("{}").trim();
            self.push(
                Diagnostic::error("E0020", format!("`{}` in `{path}` does not take and return the block's rows", function.value), function.span.clone(), "its signature does not fit this block")
                    .with_note(format!("found: `{found}`"))
                    .with_help(format!("write `pub fn {}(rows: {rows_in}) -> PolarsResult<{rows_out}>`: both types are generated from this file's schemas", function.value)),
            );
        }
    }

    fn rust_module_hint(&self) -> String {
        self.context
            .source_path
            .trim_end_matches(".toml")
            .to_string()
            + ".rs"
    }

    /// A source's fan-out: items that fit the partitioning, a path that names the item, an
    /// item column that collides with no file column (it is appended to `schema`).
    fn fan_out(
        &mut self,
        source: &syntax::FileSource,
        path: Option<&[TemplatePart]>,
        schema: &mut Schema,
    ) -> Option<ir::FanOut> {
        let Some(for_each) = &source.for_each else {
            for (key, span) in [
                (
                    "item_column",
                    source.item_column.as_ref().map(|c| c.span.clone()),
                ),
                (
                    "concurrency",
                    source.concurrency.as_ref().map(|c| c.span.clone()),
                ),
            ] {
                if let Some(span) = span {
                    self.push(
                        Diagnostic::error("E0004", format!("`{key}` needs `for_each`"), span, "this source reads one file")
                            .with_help("add `for_each = \"partition.days\"` (or a list) and use `{item}` in `path`, or remove this key"),
                    );
                }
            }
            return None;
        };
        let needed = match for_each.value {
            ForEach::Days => Some((Granularity::Monthly, "partition.days", "monthly")),
            ForEach::Hours => Some((Granularity::Daily, "partition.hours", "daily")),
            ForEach::Values(ref values) => {
                if values.is_empty() {
                    self.push(
                        Diagnostic::error(
                            "E0003",
                            "`for_each` has no items",
                            for_each.span.clone(),
                            "empty list",
                        )
                        .with_help("list the items, e.g. `for_each = [\"green\", \"yellow\"]`"),
                    );
                }
                None
            }
        };
        if let Some((granularity, name, granularity_name)) = needed
            && self.granularity != Some(granularity)
        {
            self.push(
                Diagnostic::error("E0011", format!("`{name}` needs a {granularity_name} pipeline"), for_each.span.clone(), match self.granularity {
                    Some(g) => format!("this pipeline is {}", g.name()),
                    None => "this pipeline has no partitions".to_string(),
                })
                .with_help(format!("set `granularity = \"{granularity_name}\"` in `[pipeline.partitions]`, or list the items")),
            );
        }
        if let Some(parts) = path
            && !parts.contains(&TemplatePart::Item)
        {
            self.push(
                Diagnostic::error(
                    "E0011",
                    "a fanned-out source's path does not use `{item}`",
                    source.path.span.clone(),
                    "every item would read this same file",
                )
                .with_label(for_each.span.clone(), "items come from here")
                .with_help("put `{item}` where the item goes, e.g. `path = \"trips_{item}.csv\"`"),
            );
        }
        if let Some(column) = &source.item_column {
            if find(schema, &column.value).is_some() {
                self.push(
                    Diagnostic::error(
                        "E0017",
                        format!("the item column `{}` is also a file column", column.value),
                        column.span.clone(),
                        "two columns would get this name",
                    )
                    .with_help("choose another name for the item column"),
                );
            } else {
                schema.push((
                    column.value.clone(),
                    ColumnType {
                        base: BaseType::String,
                        nullable: false,
                    },
                ));
            }
        }
        Some(ir::FanOut {
            items: for_each.value.clone(),
            concurrency: source.concurrency.as_ref().map_or(4, |c| c.value),
            item_column: source.item_column.as_ref().map(|c| c.value.clone()),
        })
    }

    fn template(
        &mut self,
        path: &Located<String>,
        item_allowed: bool,
    ) -> Option<Vec<TemplatePart>> {
        let raw = &self.context.source[path.span.clone()];
        let offset = (raw.len() == path.value.len() + 2 && raw[1..raw.len() - 1] == path.value)
            .then_some(path.span.start + 1);
        let locate =
            |inner: Span| offset.map_or(path.span.clone(), |o| o + inner.start..o + inner.end);
        let mut parts = Vec::new();
        let mut ok = true;
        let mut rest = path.value.as_str();
        let mut position = 0;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(TemplatePart::Text(rest[..open].to_string()));
            }
            // `{{` is a literal `{`, as in Rust's format strings.
            if rest[open + 1..].starts_with('{') {
                parts.push(TemplatePart::Text("{".to_string()));
                position += open + 2;
                rest = &rest[open + 2..];
                continue;
            }
            let Some(close) = rest[open..].find('}') else {
                self.push(
                    Diagnostic::error(
                        "E0011",
                        "unclosed `{` in path template",
                        locate(position + open..position + open + 1),
                        "opened here",
                    )
                    .with_help("close it with `}`, or write `{{` for a literal `{`"),
                );
                return None;
            };
            let inner = &rest[open + 1..open + close];
            let span = locate(position + open..position + open + close + 1);
            if inner.trim() == "item" {
                if item_allowed {
                    parts.push(TemplatePart::Item);
                } else {
                    ok = false;
                    self.push(
                        Diagnostic::error("E0011", "`{item}` is used but nothing fills it in", span, "no item to fill in")
                            .with_help("`{item}` belongs to http and file sources with `for_each = \"partition.days\"` (or a list of strings), which read one file per item"),
                    );
                }
            } else {
                match self.template_variable(inner, span) {
                    Some(part) => parts.push(part),
                    None => ok = false,
                }
            }
            position += open + close + 1;
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(TemplatePart::Text(rest.to_string()));
        }
        // `}}` is a literal `}`.
        for part in &mut parts {
            if let TemplatePart::Text(text) = part {
                *text = text.replace("}}", "}");
            }
        }
        ok.then_some(parts)
    }

    /// A source path whose date format is finer than the partitions (`%d` in a monthly
    /// pipeline, `%H` in a daily one) names one file per day (or hour), but each run reads only
    /// the one of its first instant: the rest of the partition is silently never read.
    fn path_granularity(&mut self, path: &Located<String>, parts: &[TemplatePart]) {
        let Some(granularity) = self.granularity else {
            return;
        };
        let finer: &[&str] = match granularity {
            Granularity::Monthly => &[
                "%d", "%e", "%j", "%F", "%D", "%H", "%I", "%k", "%M", "%S", "%T", "%R", "%c", "%x",
                "%a", "%A", "%u", "%w",
            ],
            Granularity::Daily => &[
                "%H", "%I", "%k", "%l", "%M", "%S", "%T", "%R", "%c", "%X", "%p",
            ],
            Granularity::Hourly => &["%M", "%S", "%T", "%R", "%c", "%X"],
        };
        for part in parts {
            let TemplatePart::Date {
                field: PartitionField::Start,
                format,
            } = part
            else {
                continue;
            };
            if let Some(specifier) = finer.iter().find(|s| format.contains(**s)) {
                let (each, fan_out) = match granularity {
                    Granularity::Monthly => ("day", "partition.days"),
                    _ => ("hour", "partition.hours"),
                };
                self.push(
                    Diagnostic::error("E0011", format!("`{specifier}` names a file per {each}, but the pipeline runs {}", granularity.name()), path.span.clone(), format!("each run would read only the file of its first {each}"))
                        .with_help(format!("read every {each} of the partition with `for_each = \"{fan_out}\"` and `{{item}}` in the path, or make the partitions {}", if each == "day" { "daily" } else { "hourly" })),
                );
                return;
            }
        }
    }

    fn template_variable(&mut self, inner: &str, span: Span) -> Option<TemplatePart> {
        let (name, format) = match inner.split_once(':') {
            Some((name, format)) => (name.trim(), Some(format.trim())),
            None => (inner.trim(), None),
        };
        // `execution_date` is the partition's first instant, as Airflow's logical date is.
        let instant = match name {
            "execution_date" | "partition.start" => Some(PartitionField::Start),
            "partition.end" => Some(PartitionField::End),
            _ => None,
        };
        if let Some(field) = instant {
            let format = format.unwrap_or("%Y-%m-%d");
            let valid = !format.is_empty()
                && !chrono::format::StrftimeItems::new(format)
                    .any(|item| matches!(item, chrono::format::Item::Error));
            if !valid {
                self.push(
                    Diagnostic::error(
                        "E0011",
                        format!("invalid date format `{format}` for `{name}`"),
                        span,
                        "not a strftime pattern",
                    )
                    .with_help("use strftime fields such as `%Y/%m/%d` or `%Y-%m-%dT%H`"),
                );
                return None;
            }
            if !self.field_available(field, span) {
                return None;
            }
            return Some(TemplatePart::Date {
                field,
                format: format.to_string(),
            });
        }
        let (field, default_width) = match name {
            "YYYY" => (PartitionField::Year, 4),
            "MM" => (PartitionField::Month, 2),
            "DD" => (PartitionField::Day, 2),
            "HH" => (PartitionField::Hour, 2),
            _ => match name.strip_prefix("partition.").and_then(partition_field) {
                Some(PartitionField::Start | PartitionField::End) | None => {
                    let known = [
                        "execution_date",
                        "partition.start",
                        "partition.end",
                        "partition.year",
                        "partition.month",
                        "partition.day",
                        "partition.hour",
                        "partition.key",
                        "YYYY",
                        "MM",
                        "DD",
                        "HH",
                    ];
                    self.push(
                        Diagnostic::error("E0011", format!("unknown template variable `{name}`"), span, "not a partition field")
                            .with_optional_help(did_you_mean(name, known))
                            .with_note("path templates can use partition.year, partition.month, partition.day, partition.hour, partition.key (or YYYY, MM, DD, HH), and execution_date, partition.start, partition.end with a strftime format such as `{execution_date:%Y/%m/%d}`"),
                    );
                    return None;
                }
                Some(field) => (field, 0),
            },
        };
        let width = match format {
            None => default_width,
            Some(format) => match format.parse::<usize>() {
                Ok(width) if format.starts_with('0') && width <= 9 => width,
                _ => {
                    self.push(Diagnostic::error(
                        "E0011",
                        format!("invalid format `{format}` for `{name}`"),
                        span,
                        "expected a zero-padded width such as `02`",
                    ));
                    return None;
                }
            },
        };
        if !self.field_available(field, span) {
            return None;
        }
        Some(TemplatePart::Field { field, width })
    }

    /// Whether the partition field exists at the pipeline's granularity; reports it if not.
    fn field_available(&mut self, field: PartitionField, span: Span) -> bool {
        let name = field.name();
        match self.granularity {
            None => {
                self.push(
                    Diagnostic::error(
                        "E0011",
                        format!("`partition.{name}` is used but the pipeline has no partitions"),
                        span,
                        "no partition to read",
                    )
                    .with_help("add `[pipeline.partitions]` with `granularity` and `start`"),
                );
                false
            }
            Some(granularity) => {
                let always = matches!(
                    field,
                    PartitionField::Key | PartitionField::Start | PartitionField::End
                );
                if always || granularity.fields().contains(&name) {
                    return true;
                }
                self.push(
                    Diagnostic::error(
                        "E0011",
                        format!(
                            "`partition.{name}` does not exist in a {} pipeline",
                            granularity.name()
                        ),
                        span,
                        format!("a {} partition has no {name}", granularity.name()),
                    )
                    .with_note(format!(
                        "{} partitions have: {}",
                        granularity.name(),
                        granularity.fields().join(", ")
                    )),
                );
                false
            }
        }
    }

    /// The column type of a computed column; a bare `null` has none.
    fn column_type(
        &mut self,
        name: &Located<String>,
        source: &ExprSource,
        ty: ExprType,
    ) -> Option<ColumnType> {
        let Some(base) = ty.base else {
            self.push(
                Diagnostic::error(
                    "E0009",
                    format!("cannot tell the type of `{}`", name.value),
                    source.span.clone(),
                    "a bare `null` has no type",
                )
                .with_help("cast a typed value instead, e.g. `coalesce(x, 0)`"),
            );
            return None;
        };
        Some(ColumnType {
            base,
            nullable: ty.nullable,
        })
    }

    /// A join's output: the left columns, then the right ones without the right keys (their
    /// values equal the left keys'). Keys must have one type; a right column whose name the
    /// left input has needs `suffix`.
    fn join(
        &mut self,
        block: &syntax::Block,
        keys: &syntax::JoinKeys,
        how: &Located<JoinHow>,
        suffix: Option<&Located<String>>,
        left: &Schema,
        right: &Schema,
    ) -> Option<(ir::BlockOp, Option<Schema>)> {
        let left_name = &block.inputs[0].value;
        let right_name = &block.inputs[1].value;
        let mut ok = true;
        for (l, r) in &keys.pairs {
            let left_type = find(left, &l.value);
            let right_type = find(right, &r.value);
            if left_type.is_none() {
                self.unknown_column(
                    &l.value,
                    l.span.clone(),
                    left,
                    &format!("in the left input `{left_name}`"),
                );
                ok = false;
            }
            if right_type.is_none() {
                self.unknown_column(
                    &r.value,
                    r.span.clone(),
                    right,
                    &format!("in the right input `{right_name}`"),
                );
                ok = false;
            }
            if let (Some(lt), Some(rt)) = (left_type, right_type)
                && lt.base != rt.base
            {
                let mut diagnostic = if l.span == r.span {
                    Diagnostic::error(
                        "E0030",
                        format!(
                            "the join key `{}` has different types on the two sides",
                            l.value
                        ),
                        l.span.clone(),
                        format!(
                            "{} in `{left_name}`, {} in `{right_name}`",
                            lt.base.name(),
                            rt.base.name()
                        ),
                    )
                } else {
                    Diagnostic::error(
                        "E0030",
                        format!(
                            "join keys `{}` and `{}` have different types",
                            l.value, r.value
                        ),
                        l.span.clone(),
                        format!("{} in `{left_name}`", lt.base.name()),
                    )
                    .with_label(
                        r.span.clone(),
                        format!("{} in `{right_name}`", rt.base.name()),
                    )
                };
                diagnostic = diagnostic
                    .with_note(format!("{} values never equal {} values: the join would match no rows", lt.base.name(), rt.base.name()))
                    .with_help(format!("cast one side in a transform before the join, e.g. `cast = {{ {} = \"{}\" }}` on `{right_name}`'s side", r.value, lt.base.name()));
                self.push(diagnostic);
                ok = false;
            }
        }
        if !ok {
            return None;
        }
        let right_keys: Vec<&str> = keys.pairs.iter().map(|(_, r)| r.value.as_str()).collect();
        let left_keys: Vec<&str> = keys.pairs.iter().map(|(l, _)| l.value.as_str()).collect();
        let mut schema: Schema = left
            .iter()
            .map(|(name, ty)| {
                let mut ty = *ty;
                let key = keys.pairs.iter().find(|(l, _)| &l.value == name);
                match (how.value, key) {
                    // Null keys match nothing, so an inner or semi join's keys are never null.
                    (JoinHow::Inner | JoinHow::Semi, Some(_)) => ty.nullable = false,
                    // A full join's key is the left key or, for right rows without a match,
                    // the right key.
                    (JoinHow::Full, Some((_, r))) => {
                        ty.nullable |= find(right, &r.value).is_some_and(|t| t.nullable);
                    }
                    (JoinHow::Full, None) => ty.nullable = true,
                    _ => {}
                }
                (name.clone(), ty)
            })
            .collect();
        let right_span = block.inputs[1].span.clone();
        // A semi or anti join only filters the left rows: no right column is added.
        let added: &[(String, ColumnType)] = if how.value.filters_only() { &[] } else { right };
        for (name, ty) in added {
            if right_keys.contains(&name.as_str()) {
                continue;
            }
            let mut ty = *ty;
            ty.nullable |= how.value != JoinHow::Inner;
            let out = match (find(&schema, name).is_some(), suffix) {
                (false, _) => name.clone(),
                (true, Some(suffix)) => format!("{name}{}", suffix.value),
                (true, None) => {
                    let what = if left_keys.contains(&name.as_str()) {
                        "a key of the left input"
                    } else {
                        "a column of the left input too"
                    };
                    self.push(
                        Diagnostic::error("E0017", format!("both inputs of the join have a column `{name}`"), right_span.clone(), format!("`{right_name}` has `{name}`, {what}"))
                            .with_label(block.inputs[0].span.clone(), format!("`{left_name}` has `{name}`"))
                            .with_help(format!("drop or rename `{name}` on one side before the join, or set `suffix = \"_{right_name}\"` to rename the right input's columns that collide")),
                    );
                    ok = false;
                    continue;
                }
            };
            if find(&schema, &out).is_some() {
                let span = suffix.map_or(right_span.clone(), |s| s.span.clone());
                self.push(
                    Diagnostic::error(
                        "E0017",
                        format!("the join would make two columns `{out}`"),
                        span,
                        format!("`{right_name}.{name}` becomes `{out}`, which exists already"),
                    )
                    .with_help("choose another suffix, or rename the column before the join"),
                );
                ok = false;
                continue;
            }
            schema.push((out, ty));
        }
        let op = ir::BlockOp::Join {
            how: how.value,
            left_on: left_keys.iter().map(|k| k.to_string()).collect(),
            right_on: right_keys.iter().map(|k| k.to_string()).collect(),
            suffix: suffix.map(|s| s.value.clone()),
        };
        ok.then_some((op, Some(schema)))
    }

    /// A union's output has the first input's columns; every other input must have the same
    /// names and types, in any order. A column is nullable when it is in any input.
    fn union(
        &mut self,
        block: &syntax::Block,
        inputs: &[Schema],
    ) -> Option<(ir::BlockOp, Option<Schema>)> {
        let (first, others) = inputs.split_first()?;
        let first_name = &block.inputs[0].value;
        let mut schema = first.clone();
        let mut ok = true;
        for (position, other) in others.iter().enumerate() {
            let entry = &block.inputs[position + 1];
            let mut notes = Vec::new();
            let missing: Vec<&str> = first
                .iter()
                .filter(|(n, _)| find(other, n).is_none())
                .map(|(n, _)| n.as_str())
                .collect();
            if !missing.is_empty() {
                notes.push(format!("`{}` lacks {}", entry.value, quoted_list(&missing)));
            }
            let extra: Vec<&str> = other
                .iter()
                .filter(|(n, _)| find(first, n).is_none())
                .map(|(n, _)| n.as_str())
                .collect();
            if !extra.is_empty() {
                notes.push(format!(
                    "only `{}` has {}",
                    entry.value,
                    quoted_list(&extra)
                ));
            }
            for (name, ty) in other {
                if let Some(column) = schema.iter_mut().find(|(n, _)| n == name) {
                    if column.1.base != ty.base {
                        notes.push(format!(
                            "`{name}` is {} in `{first_name}` but {} in `{}`",
                            column.1.base.name(),
                            ty.base.name(),
                            entry.value
                        ));
                    }
                    column.1.nullable |= ty.nullable;
                }
            }
            if !notes.is_empty() {
                let mut diagnostic = Diagnostic::error(
                    "E0031",
                    format!(
                        "`{}` does not have the columns of `{first_name}`",
                        entry.value
                    ),
                    entry.span.clone(),
                    "its rows cannot be stacked under the first input's",
                )
                .with_label(
                    block.inputs[0].span.clone(),
                    "the union's columns come from here",
                );
                for note in notes {
                    diagnostic = diagnostic.with_note(note);
                }
                self.push(diagnostic.with_help("select, rename or cast in a transform before the union, so that every input has the same columns with the same types"));
                ok = false;
            }
        }
        ok.then_some((ir::BlockOp::Union, Some(schema)))
    }

    /// An aggregate block's output: its group keys with their types, then one column per
    /// aggregate expression.
    fn aggregate(
        &mut self,
        group_by: &[Located<String>],
        aggregates: &[(Located<String>, ExprSource)],
        input: &Schema,
    ) -> Option<(ir::BlockOp, Option<Schema>)> {
        let mut schema = Schema::new();
        let mut ok = true;
        for key in group_by {
            match find(input, &key.value) {
                Some(_) if find(&schema, &key.value).is_some() => {
                    self.push(Diagnostic::error(
                        "E0005",
                        format!("`{}` is listed twice in `group_by`", key.value),
                        key.span.clone(),
                        "already a group key",
                    ));
                    ok = false;
                }
                Some(ty) => schema.push((key.value.clone(), *ty)),
                None => {
                    self.unknown_column(&key.value, key.span.clone(), input, "to group by");
                    ok = false;
                }
            }
        }
        let mut computed = Vec::new();
        for (name, source) in aggregates {
            let typed = self.in_scope(
                AggregateScope::Groups {
                    whole_input: group_by.is_empty(),
                },
                |checker| checker.typed_expr(source, input),
            );
            let Some((expr, ty)) = typed else {
                ok = false;
                continue;
            };
            let Some(ty) = self.column_type(name, source, ty) else {
                ok = false;
                continue;
            };
            if find(&schema, &name.value).is_some() {
                self.push(
                    Diagnostic::error(
                        "E0017",
                        format!("`{}` is a group key and an aggregate", name.value),
                        name.span.clone(),
                        "a column of this name is in the output already",
                    )
                    .with_help("give the aggregate another name"),
                );
                ok = false;
                continue;
            }
            schema.push((name.value.clone(), ty));
            computed.push((name.value.clone(), expr));
        }
        let op = ir::BlockOp::Aggregate {
            group_by: group_by.iter().map(|k| k.value.clone()).collect(),
            aggregates: computed,
        };
        ok.then_some((op, Some(schema)))
    }

    fn step(&mut self, op: &StepOp, schema: &mut Schema) -> Option<ir::StepOp> {
        match op {
            StepOp::Filter(source) => {
                let (expr, ty) = self.typed_expr(source, schema)?;
                if ty.base.is_some_and(|b| b != BaseType::Bool) {
                    self.push(
                        Diagnostic::error(
                            "E0009",
                            "a filter must be a condition",
                            source.span.clone(),
                            format!(
                                "this is {}, not bool",
                                ty.base.map_or("null", BaseType::name)
                            ),
                        )
                        .with_help("compare it with something, e.g. `trip_distance > 0`"),
                    );
                    return None;
                }
                // Rows where the predicate is null are dropped, so a column compared in a
                // top-level conjunct is known not to be null after the filter.
                for column in proven_not_null(&expr) {
                    if let Some(entry) = schema.iter_mut().find(|(n, _)| *n == column) {
                        entry.1.nullable = false;
                    }
                }
                if constant_truth(&expr) == Some(false) {
                    self.push(
                        Diagnostic::warning(
                            "W0006",
                            "this filter drops every row",
                            source.span.clone(),
                            "always false",
                        )
                        .with_note("every block downstream receives no rows")
                        .with_help(
                            "remove the step, or compare a column (`fare > 0`) or a parameter",
                        ),
                    );
                }
                Some(ir::StepOp::Filter(expr))
            }
            StepOp::Derive(columns) => {
                let before = schema.clone();
                let mut derived = Vec::new();
                let mut failed = false;
                for (name, source) in columns {
                    match self.typed_expr(source, &before) {
                        Some((expr, ty)) => {
                            let Some(ty) = self.column_type(name, source, ty) else {
                                failed = true;
                                continue;
                            };
                            match schema.iter_mut().find(|(n, _)| n == &name.value) {
                                Some(entry) => entry.1 = ty,
                                None => schema.push((name.value.clone(), ty)),
                            }
                            derived.push((name.value.clone(), expr));
                        }
                        None => failed = true,
                    }
                }
                (!failed).then_some(ir::StepOp::Derive(derived))
            }
            StepOp::Rename(pairs) => {
                let mut renamed = Vec::new();
                let mut ok = true;
                for (from, to) in pairs {
                    if find(schema, &from.value).is_none() {
                        let snapshot = schema.clone();
                        self.unknown_column(
                            &from.value,
                            from.span.clone(),
                            &snapshot,
                            "at this step",
                        );
                        ok = false;
                    } else {
                        renamed.push((from.value.clone(), to.value.clone()));
                    }
                }
                ok &= self.apply_rename(
                    &renamed,
                    schema,
                    pairs
                        .first()
                        .map(|(_, to)| to.span.clone())
                        .unwrap_or_default(),
                );
                ok.then_some(ir::StepOp::Rename(renamed))
            }
            StepOp::RenameSnakeCase => {
                let renamed: Vec<(String, String)> = schema
                    .iter()
                    .map(|(n, _)| (n.clone(), snake_case(n)))
                    .filter(|(from, to)| from != to)
                    .collect();
                self.apply_rename(&renamed, schema, 0..0)
                    .then_some(ir::StepOp::Rename(renamed))
            }
            StepOp::Select(columns) | StepOp::Drop(columns) => {
                let mut ok = true;
                for column in columns {
                    if find(schema, &column.value).is_none() {
                        let snapshot = schema.clone();
                        self.unknown_column(
                            &column.value,
                            column.span.clone(),
                            &snapshot,
                            "at this step",
                        );
                        ok = false;
                    }
                }
                if !ok {
                    return None;
                }
                let names: Vec<String> = columns.iter().map(|c| c.value.clone()).collect();
                if matches!(op, StepOp::Select(_)) {
                    *schema = names
                        .iter()
                        .filter_map(|n| find(schema, n).map(|t| (n.clone(), *t)))
                        .collect();
                    Some(ir::StepOp::Select(names))
                } else {
                    schema.retain(|(n, _)| !names.contains(n));
                    Some(ir::StepOp::Drop(names))
                }
            }
            StepOp::Cast(decls) => {
                let mut casts = Vec::new();
                for decl in decls {
                    let snapshot = schema.clone();
                    let Some(entry) = schema.iter_mut().find(|(n, _)| n == &decl.name.value) else {
                        self.unknown_column(
                            &decl.name.value,
                            decl.name.span.clone(),
                            &snapshot,
                            "at this step",
                        );
                        continue;
                    };
                    let (from, to) = (entry.1.base, decl.ty.value.base);
                    let allowed = from == to
                        || (from.is_numeric() && to.is_numeric())
                        || to == BaseType::String
                        || (from == BaseType::String && to != BaseType::Bool)
                        || (from == BaseType::Timestamp && to == BaseType::Date)
                        || (from == BaseType::Date && to == BaseType::Timestamp)
                        || (from == BaseType::Bool && to == BaseType::Int64);
                    if !allowed {
                        self.push(Diagnostic::error(
                            "E0009",
                            format!(
                                "cannot cast `{}` from {} to {}",
                                decl.name.value,
                                from.name(),
                                to.name()
                            ),
                            decl.ty.span.clone(),
                            "unsupported cast",
                        ));
                        continue;
                    }
                    if entry.1.nullable && !decl.ty.value.nullable {
                        self.push(
                            Diagnostic::error(
                                "E0010",
                                format!(
                                    "cast makes nullable column `{}` NOT NULL",
                                    decl.name.value
                                ),
                                decl.ty.span.clone(),
                                format!("the column is {}", entry.1),
                            )
                            .with_help(format!(
                                "cast to `{}?`, or filter out the nulls first",
                                to.name()
                            )),
                        );
                        continue;
                    }
                    entry.1 = ColumnType {
                        base: to,
                        nullable: entry.1.nullable,
                    };
                    casts.push((decl.name.value.clone(), entry.1));
                }
                (casts.len() == decls.len()).then_some(ir::StepOp::Cast(casts))
            }
        }
    }

    /// Applies renames to the schema; reports names that would collide.
    fn apply_rename(
        &mut self,
        renamed: &[(String, String)],
        schema: &mut Schema,
        span: Span,
    ) -> bool {
        let mut result = schema.clone();
        for (name, _) in result.iter_mut() {
            if let Some((_, to)) = renamed.iter().find(|(from, _)| from == name) {
                name.clone_from(to);
            }
        }
        let mut seen = HashSet::new();
        for (name, _) in &result {
            if !seen.insert(name.as_str()) {
                self.push(
                    Diagnostic::error(
                        "E0017",
                        format!("rename produces two columns named `{name}`"),
                        span,
                        "duplicate column after this rename",
                    )
                    .with_help("rename or drop one of them first"),
                );
                return false;
            }
        }
        *schema = result;
        true
    }

    fn checks(&mut self, checks: &[syntax::Check], schema: &Schema) -> Vec<ir::Check> {
        let mut out = Vec::new();
        for check in checks {
            let line = self.line(&check.span);
            let severity = check.severity;
            match &check.kind {
                CheckKind::Assert(source) => {
                    let Some((predicate, ty)) = self.typed_expr(source, schema) else {
                        continue;
                    };
                    if ty.base.is_some_and(|b| b != BaseType::Bool) {
                        self.push(Diagnostic::error(
                            "E0009",
                            "a check must be a condition",
                            source.span.clone(),
                            "not bool",
                        ));
                        continue;
                    }
                    let name = check.name.clone().unwrap_or_else(|| source.text.clone());
                    out.push(ir::Check {
                        name,
                        line,
                        predicate,
                        severity,
                    });
                }
                CheckKind::InSet {
                    column,
                    values,
                    allow_null,
                } => {
                    let Some(ty) = find(schema, &column.value).copied() else {
                        self.unknown_column(
                            &column.value,
                            column.span.clone(),
                            schema,
                            "of this block's output",
                        );
                        continue;
                    };
                    let mut ok = true;
                    for value in values {
                        if !value.value.base_type().comparable_with(ty.base) {
                            self.push(Diagnostic::error(
                                "E0009",
                                format!(
                                    "`{}` is {}, but the value is {}",
                                    column.value,
                                    ty.base.name(),
                                    value.value.base_type().name()
                                ),
                                value.span.clone(),
                                "type mismatch",
                            ));
                            ok = false;
                        }
                    }
                    if !ok {
                        continue;
                    }
                    let listed = values
                        .iter()
                        .map(|v| v.value.to_string())
                        .collect::<Vec<_>>()
                        .join(", ");
                    let name = check
                        .name
                        .clone()
                        .unwrap_or_else(|| format!("{} in ({listed})", column.value));
                    let member = TypedExpr::InList(
                        Box::new(TypedExpr::Column(column.value.clone())),
                        values.iter().map(|v| v.value.clone()).collect(),
                        false,
                    );
                    let predicate = if *allow_null {
                        TypedExpr::Binary(
                            BinaryOp::Or,
                            Box::new(TypedExpr::IsNull(
                                Box::new(TypedExpr::Column(column.value.clone())),
                                false,
                            )),
                            Box::new(member),
                        )
                    } else {
                        member
                    };
                    out.push(ir::Check {
                        name,
                        line,
                        predicate,
                        severity: if severity == CheckSeverity::Warn {
                            CheckSeverity::Warn
                        } else {
                            CheckSeverity::Fail
                        },
                    });
                }
            }
        }
        out
    }

    fn typed_expr(
        &mut self,
        source: &ExprSource,
        schema: &Schema,
    ) -> Option<(TypedExpr, ExprType)> {
        let parsed = match expr::parse(&source.text) {
            Ok(parsed) => parsed,
            Err(error) => {
                self.push(Diagnostic::error(
                    "E0014",
                    "invalid expression",
                    source.file_span(error.span),
                    error.message,
                ));
                return None;
            }
        };
        let before = self.diagnostics.len();
        let typed = self.infer(&parsed, source, schema);
        if self.diagnostics.len() > before {
            None
        } else {
            typed
        }
    }

    fn type_error(&mut self, source: &ExprSource, span: &Span, message: String, label: String) {
        self.push(Diagnostic::error(
            "E0009",
            message,
            source.file_span(span.clone()),
            label,
        ));
    }

    fn infer(
        &mut self,
        e: &Expr,
        source: &ExprSource,
        schema: &Schema,
    ) -> Option<(TypedExpr, ExprType)> {
        let typed = |base: BaseType, nullable: bool| ExprType {
            base: Some(base),
            nullable,
        };
        match &e.kind {
            ExprKind::Column(name) if matches!(self.aggregates, AggregateScope::Groups { .. }) => {
                self.push(
                    Diagnostic::error("E0009", format!("`{name}` is neither a group key nor aggregated"), source.file_span(e.span.clone()), "a column outside an aggregate function")
                        .with_help(format!("aggregate it, e.g. `max({name})`, or add it to `group_by` (group keys are in the output already)")),
                );
                None
            }
            ExprKind::Column(name) => match find(schema, name) {
                Some(ty) => Some((TypedExpr::Column(name.clone()), typed(ty.base, ty.nullable))),
                None => {
                    self.unknown_column(
                        name,
                        source.file_span(e.span.clone()),
                        schema,
                        "at this point of the pipeline",
                    );
                    None
                }
            },
            ExprKind::Literal(literal) => Some((
                TypedExpr::Literal(literal.clone()),
                typed(literal.base_type(), false),
            )),
            ExprKind::Null => Some((
                TypedExpr::Null(None),
                ExprType {
                    base: None,
                    nullable: true,
                },
            )),
            ExprKind::Param(name) => {
                match self.file.params.iter().find(|p| &p.name.value == name) {
                    Some(param) => {
                        let base = param.default.value.base_type();
                        Some((TypedExpr::Param(name.clone(), base), typed(base, false)))
                    }
                    None => {
                        let names = self.file.params.iter().map(|p| p.name.value.as_str());
                        let help = did_you_mean(name, names)
                            .unwrap_or_else(|| "declare it in `[params]`".into());
                        self.push(
                            Diagnostic::error(
                                "E0019",
                                format!("unknown parameter `{name}`"),
                                source.file_span(e.span.clone()),
                                "not declared in `[params]`",
                            )
                            .with_help(help),
                        );
                        None
                    }
                }
            }
            ExprKind::Partition(name) => {
                let span = source.file_span(e.span.clone());
                let Some(field) = partition_field(name) else {
                    let known = ["year", "month", "day", "hour", "key", "start", "end"];
                    self.push(
                        Diagnostic::error(
                            "E0011",
                            format!("unknown partition field `{name}`"),
                            span,
                            "not a partition field",
                        )
                        .with_optional_help(did_you_mean(name, known)),
                    );
                    return None;
                };
                if !self.field_available(field, span) {
                    return None;
                }
                let base = match field {
                    PartitionField::Key => BaseType::String,
                    PartitionField::Start | PartitionField::End
                        if self.granularity == Some(Granularity::Hourly) =>
                    {
                        BaseType::Timestamp
                    }
                    PartitionField::Start | PartitionField::End => BaseType::Date,
                    _ => BaseType::Int64,
                };
                Some((TypedExpr::Partition(field), typed(base, false)))
            }
            ExprKind::Unary(op, inner) => {
                let (inner_typed, ty) = self.infer(inner, source, schema)?;
                match op {
                    UnaryOp::Not if ty.base.is_none_or(|b| b == BaseType::Bool) => Some((
                        TypedExpr::Not(Box::new(inner_typed)),
                        typed(BaseType::Bool, ty.nullable),
                    )),
                    UnaryOp::Neg if ty.base.is_none_or(BaseType::is_numeric) => {
                        Some((TypedExpr::Neg(Box::new(inner_typed)), ty))
                    }
                    _ => {
                        let (what, needs) = if *op == UnaryOp::Not {
                            ("`not`", "bool")
                        } else {
                            ("`-`", "a number")
                        };
                        self.type_error(
                            source,
                            &inner.span,
                            format!("{what} needs {needs}"),
                            format!("this is {}", ty.base.map_or("null", BaseType::name)),
                        );
                        None
                    }
                }
            }
            ExprKind::Binary(op, left, right) => {
                let (l, lt) = self.infer(left, source, schema)?;
                let (r, rt) = self.infer(right, source, schema)?;
                let nullable = lt.nullable || rt.nullable;
                let describe = |t: ExprType| t.base.map_or("null", BaseType::name);
                let result = match op {
                    BinaryOp::And | BinaryOp::Or => {
                        for (side, t) in [(left, lt), (right, rt)] {
                            if t.base.is_some_and(|b| b != BaseType::Bool) {
                                self.type_error(
                                    source,
                                    &side.span,
                                    format!("`{}` needs conditions on both sides", op.symbol()),
                                    format!("this is {}, not bool", describe(t)),
                                );
                                return None;
                            }
                        }
                        typed(BaseType::Bool, nullable)
                    }
                    op if op.is_comparison() => {
                        if let (Some(a), Some(b)) = (lt.base, rt.base)
                            && !a.comparable_with(b)
                        {
                            let help = if a == BaseType::Date || b == BaseType::Date {
                                " (write a date as `date('2021-01-31')`)"
                            } else {
                                ""
                            };
                            self.type_error(
                                source,
                                &e.span,
                                format!("cannot compare {} with {}{help}", a.name(), b.name()),
                                format!("{} {} {}", a.name(), op.symbol(), b.name()),
                            );
                            return None;
                        }
                        typed(BaseType::Bool, nullable)
                    }
                    _ => {
                        let base = match (lt.base, rt.base) {
                            (Some(a), Some(b)) if a.is_numeric() && b.is_numeric() => {
                                if a == BaseType::Float64
                                    || b == BaseType::Float64
                                    || *op == BinaryOp::Div
                                {
                                    BaseType::Float64
                                } else {
                                    BaseType::Int64
                                }
                            }
                            (Some(a), None) | (None, Some(a)) if a.is_numeric() => a,
                            _ => {
                                self.type_error(
                                    source,
                                    &e.span,
                                    format!("`{}` needs numbers on both sides", op.symbol()),
                                    format!("{} {} {}", describe(lt), op.symbol(), describe(rt)),
                                );
                                return None;
                            }
                        };
                        // Division by zero yields null, so a quotient is nullable.
                        typed(
                            base,
                            nullable || *op == BinaryOp::Div || *op == BinaryOp::Rem,
                        )
                    }
                };
                Some((TypedExpr::Binary(*op, Box::new(l), Box::new(r)), result))
            }
            ExprKind::IsNull { expr, negated } => {
                let (inner, _) = self.infer(expr, source, schema)?;
                Some((
                    TypedExpr::IsNull(Box::new(inner), *negated),
                    typed(BaseType::Bool, false),
                ))
            }
            ExprKind::InList {
                expr,
                list,
                negated,
            } => {
                let (inner, ty) = self.infer(expr, source, schema)?;
                let mut literals = Vec::new();
                for item in list {
                    let literal = match &item.kind {
                        ExprKind::Literal(literal) => literal.clone(),
                        ExprKind::Unary(UnaryOp::Neg, value) => match &value.kind {
                            ExprKind::Literal(Literal::Int(i)) => Literal::Int(-i),
                            ExprKind::Literal(Literal::Float(x)) => Literal::Float(-x),
                            _ => return self.not_constant(source, item),
                        },
                        _ => return self.not_constant(source, item),
                    };
                    if let Some(base) = ty.base
                        && !literal.base_type().comparable_with(base)
                    {
                        self.type_error(
                            source,
                            &item.span,
                            format!(
                                "the list holds {} but the value is {}",
                                literal.base_type().name(),
                                base.name()
                            ),
                            "type mismatch".into(),
                        );
                        return None;
                    }
                    literals.push(literal);
                }
                Some((
                    TypedExpr::InList(Box::new(inner), literals, *negated),
                    typed(BaseType::Bool, ty.nullable),
                ))
            }
            ExprKind::Call {
                name,
                name_span,
                args,
            } => match Aggregate::named(name) {
                Some(aggregate) => {
                    self.aggregate_call(aggregate, name, name_span, args, source, schema)
                }
                None => self.call(name, name_span, args, source, schema),
            },
            ExprKind::Window { call, partition_by } => {
                self.window(e, call, partition_by, source, schema)
            }
        }
    }

    /// Runs `check` with aggregates allowed as `scope` says, then restores the scope around it.
    fn in_scope<T>(&mut self, scope: AggregateScope, check: impl FnOnce(&mut Self) -> T) -> T {
        let saved = std::mem::replace(&mut self.aggregates, scope);
        let result = check(self);
        self.aggregates = saved;
        result
    }

    /// `AGGREGATE(x) over (a, b)`: allowed wherever rows are handled one by one.
    fn window(
        &mut self,
        e: &Expr,
        call: &Expr,
        partition_by: &[Expr],
        source: &ExprSource,
        schema: &Schema,
    ) -> Option<(TypedExpr, ExprType)> {
        if self.aggregates != AggregateScope::Rows {
            self.push(
                Diagnostic::error("E0009", "`over (...)` has no place here", source.file_span(e.span.clone()), "a window inside an aggregate")
                    .with_help("an aggregate block computes each aggregate per group of its `group_by`: remove `over (...)`"),
            );
            return None;
        }
        let is_aggregate =
            matches!(&call.kind, ExprKind::Call { name, .. } if Aggregate::named(name).is_some());
        if let ExprKind::Call {
            name,
            name_span,
            args,
        } = &call.kind
            && !is_aggregate
            && self.call(name, name_span, args, source, schema).is_none()
        {
            // An unknown function (`rank`) is reported as such, with the list.
            return None;
        }
        if !is_aggregate {
            let names: Vec<&str> = Aggregate::ALL.iter().map(|(n, _)| *n).collect();
            self.push(
                Diagnostic::error(
                    "E0009",
                    "`over (...)` follows an aggregate call",
                    source.file_span(call.span.clone()),
                    "not an aggregate",
                )
                .with_note(format!("aggregates: {}", names.join(", "))),
            );
            return None;
        }
        let mut columns = Vec::new();
        for column in partition_by {
            match &column.kind {
                ExprKind::Column(name) if find(schema, name).is_some() => {
                    columns.push(name.clone())
                }
                ExprKind::Column(name) => {
                    self.unknown_column(
                        name,
                        source.file_span(column.span.clone()),
                        schema,
                        "to partition the window by",
                    );
                    return None;
                }
                _ => {
                    self.type_error(
                        source,
                        &column.span,
                        "`over (...)` lists the columns that form the groups".into(),
                        "not a column".into(),
                    );
                    return None;
                }
            }
        }
        let (typed, ty) = self.in_scope(AggregateScope::Window, |checker| {
            checker.infer(call, source, schema)
        })?;
        Some((TypedExpr::Window(Box::new(typed), columns), ty))
    }

    /// `count()`, `sum(x)`, ...: in an aggregate block or a window only.
    fn aggregate_call(
        &mut self,
        aggregate: Aggregate,
        name: &str,
        name_span: &Span,
        args: &[Expr],
        source: &ExprSource,
        schema: &Schema,
    ) -> Option<(TypedExpr, ExprType)> {
        let span = source.file_span(name_span.clone());
        let whole_input = match self.aggregates {
            AggregateScope::Rows => {
                self.push(
                    Diagnostic::error("E0009", format!("`{name}` turns many rows into one value"), span, "an aggregate in a row-by-row expression")
                        .with_help(format!("make it a window, `{name}(...) over (vendor_id)` (computed per group of rows and repeated on each), or group the rows in a `kind = \"aggregate\"` block")),
                );
                return None;
            }
            AggregateScope::Argument => {
                self.push(
                    Diagnostic::error(
                        "E0009",
                        "an aggregate inside an aggregate",
                        span,
                        "nested aggregate",
                    )
                    .with_help(
                        "aggregate a column once; for two levels, chain two aggregate blocks",
                    ),
                );
                return None;
            }
            AggregateScope::Window => false,
            AggregateScope::Groups { whole_input } => whole_input,
        };
        let arity_ok = match aggregate {
            Aggregate::Count => args.len() <= 1,
            _ => args.len() == 1,
        };
        if !arity_ok {
            let expected = if aggregate == Aggregate::Count {
                "no argument (rows) or 1 (non-null values)"
            } else {
                "1 argument"
            };
            self.push(Diagnostic::error(
                "E0015",
                format!("`{name}` takes {expected}"),
                span,
                format!("called with {}", args.len()),
            ));
            return None;
        }
        let int64 = ExprType {
            base: Some(BaseType::Int64),
            nullable: false,
        };
        let Some(arg) = args.first() else {
            return Some((TypedExpr::Aggregate(Aggregate::Count, None), int64));
        };
        let (typed, ty) = self.in_scope(AggregateScope::Argument, |checker| {
            checker.infer(arg, source, schema)
        })?;
        let ordered = [
            BaseType::Int64,
            BaseType::Float64,
            BaseType::Date,
            BaseType::Timestamp,
            BaseType::String,
        ];
        let (result, needs) = match aggregate {
            Aggregate::Count | Aggregate::CountDistinct => (Some(int64), ""),
            Aggregate::Sum => (
                ty.base
                    .is_none_or(BaseType::is_numeric)
                    .then_some(ExprType {
                        base: ty.base,
                        nullable: false,
                    }),
                "numbers",
            ),
            Aggregate::Mean => (
                ty.base
                    .is_none_or(BaseType::is_numeric)
                    .then_some(ExprType {
                        base: Some(BaseType::Float64),
                        nullable: true,
                    }),
                "numbers",
            ),
            Aggregate::Min | Aggregate::Max => (
                ty.base
                    .is_none_or(|b| ordered.contains(&b))
                    .then_some(ExprType {
                        base: ty.base,
                        nullable: ty.nullable || whole_input,
                    }),
                "numbers, dates, timestamps or strings",
            ),
        };
        let Some(result) = result else {
            let what = match &arg.kind {
                ExprKind::Column(column) => {
                    format!("`{column}` is {}", ty.base.map_or("null", BaseType::name))
                }
                _ => format!("this is {}", ty.base.map_or("null", BaseType::name)),
            };
            let column = match &arg.kind {
                ExprKind::Column(column) => column.as_str(),
                _ => "x",
            };
            let help = if needs == "numbers" {
                format!(
                    "cast it to a number in a transform before (`cast = {{ {column} = \"float64\" }}`), or count its values with `count({column})` or `count_distinct({column})`"
                )
            } else {
                format!("count its values with `count({column})`, or derive a number from it first")
            };
            self.push(
                Diagnostic::error(
                    "E0009",
                    format!("`{name}` needs {needs}"),
                    source.file_span(arg.span.clone()),
                    what,
                )
                .with_help(help),
            );
            return None;
        };
        Some((
            TypedExpr::Aggregate(aggregate, Some(Box::new(typed))),
            result,
        ))
    }

    fn not_constant(&mut self, source: &ExprSource, item: &Expr) -> Option<(TypedExpr, ExprType)> {
        self.type_error(
            source,
            &item.span,
            "`in` lists hold constants only".into(),
            "not a constant".into(),
        );
        None
    }

    fn call(
        &mut self,
        name: &str,
        name_span: &Span,
        args: &[Expr],
        source: &ExprSource,
        schema: &Schema,
    ) -> Option<(TypedExpr, ExprType)> {
        const FUNCTIONS: [&str; 11] = [
            "date", "year", "month", "day", "hour", "abs", "lower", "upper", "length", "coalesce",
            "round",
        ];
        let function = match name {
            "date" => Function::Date,
            "year" => Function::Year,
            "month" => Function::Month,
            "day" => Function::Day,
            "hour" => Function::Hour,
            "abs" => Function::Abs,
            "lower" => Function::Lower,
            "upper" => Function::Upper,
            "length" => Function::Length,
            "coalesce" => Function::Coalesce,
            "round" => Function::Round,
            _ => {
                self.push(
                    Diagnostic::error(
                        "E0015",
                        format!("unknown function `{name}`"),
                        source.file_span(name_span.clone()),
                        "not a function of the expression language",
                    )
                    .with_optional_help(did_you_mean(
                        name,
                        FUNCTIONS.into_iter().chain(Aggregate::ALL.map(|(n, _)| n)),
                    ))
                    .with_note(format!(
                        "functions: {}; aggregates: {}",
                        FUNCTIONS.join(", "),
                        Aggregate::ALL.map(|(n, _)| n).join(", ")
                    )),
                );
                return None;
            }
        };
        let arity_ok = match function {
            Function::Coalesce => args.len() >= 2,
            Function::Round => args.len() == 2,
            _ => args.len() == 1,
        };
        if !arity_ok {
            let expected = match function {
                Function::Coalesce => "at least 2 arguments",
                Function::Round => "2 arguments (value, decimals)",
                _ => "1 argument",
            };
            self.push(Diagnostic::error(
                "E0015",
                format!("`{name}` takes {expected}"),
                source.file_span(name_span.clone()),
                format!("called with {}", args.len()),
            ));
            return None;
        }
        // `date('2021-01-31')` is a date constant, checked here rather than at run time.
        if let (
            Function::Date,
            Some(Expr {
                kind: ExprKind::Literal(Literal::String(text)),
                span,
            }),
        ) = (function, args.first())
        {
            return match parse_date(text) {
                Some((y, m, d)) => Some((
                    TypedExpr::DateLiteral(y, m, d),
                    ExprType {
                        base: Some(BaseType::Date),
                        nullable: false,
                    },
                )),
                None => {
                    self.type_error(
                        source,
                        span,
                        format!("`{text}` is not a date"),
                        "expected YYYY-MM-DD".into(),
                    );
                    None
                }
            };
        }
        let mut typed_args = Vec::new();
        let mut types = Vec::new();
        for arg in args {
            let (t, ty) = self.infer(arg, source, schema)?;
            typed_args.push(t);
            types.push(ty);
        }
        let first = types[0];
        if function == Function::Date && first.base == Some(BaseType::Date) {
            // The date of a date is itself.
            return Some((typed_args.remove(0), first));
        }
        let accepts = |allowed: &[BaseType]| first.base.is_none_or(|b| allowed.contains(&b));
        let (ok, result, needs) = match function {
            Function::Date => (
                accepts(&[BaseType::Timestamp, BaseType::Date]),
                Some(BaseType::Date),
                "a timestamp",
            ),
            Function::Year | Function::Month | Function::Day => (
                accepts(&[BaseType::Timestamp, BaseType::Date]),
                Some(BaseType::Int64),
                "a date or timestamp",
            ),
            Function::Hour => (
                accepts(&[BaseType::Timestamp]),
                Some(BaseType::Int64),
                "a timestamp",
            ),
            Function::Abs => (
                first.base.is_none_or(BaseType::is_numeric),
                first.base,
                "a number",
            ),
            Function::Lower | Function::Upper => (
                accepts(&[BaseType::String]),
                Some(BaseType::String),
                "a string",
            ),
            Function::Length => (
                accepts(&[BaseType::String]),
                Some(BaseType::Int64),
                "a string",
            ),
            Function::Round => (
                accepts(&[BaseType::Float64])
                    && matches!(args[1].kind, ExprKind::Literal(Literal::Int(0..=15))),
                Some(BaseType::Float64),
                "a float and a number of decimals from 0 to 15",
            ),
            Function::Coalesce => {
                let base = types.iter().find_map(|t| t.base);
                let same = types.iter().all(|t| match (t.base, base) {
                    (Some(a), Some(b)) => a.comparable_with(b),
                    _ => true,
                });
                let base = if types.iter().any(|t| t.base == Some(BaseType::Float64)) {
                    Some(BaseType::Float64)
                } else {
                    base
                };
                let nullable = types.iter().all(|t| t.nullable);
                if !same {
                    self.type_error(
                        source,
                        &(args[0].span.start..args[args.len() - 1].span.end),
                        "`coalesce` needs arguments of one type".into(),
                        "mixed types".into(),
                    );
                    return None;
                }
                return Some((
                    TypedExpr::Call(function, typed_args),
                    ExprType { base, nullable },
                ));
            }
        };
        if !ok {
            self.type_error(
                source,
                &args[0].span,
                format!("`{name}` needs {needs}"),
                format!("this is {}", first.base.map_or("null", BaseType::name)),
            );
            return None;
        }
        Some((
            TypedExpr::Call(function, typed_args),
            ExprType {
                base: result,
                nullable: types.iter().any(|t| t.nullable),
            },
        ))
    }
}

/// Columns that cannot be null in rows where `predicate` is true: operands of comparisons and
/// `in` tests joined by `and`, and `x is not null`. (`or`, `not` and functions prove nothing.)
fn proven_not_null(predicate: &TypedExpr) -> Vec<String> {
    match predicate {
        TypedExpr::Binary(BinaryOp::And, left, right) => {
            let mut columns = proven_not_null(left);
            columns.extend(proven_not_null(right));
            columns
        }
        TypedExpr::Binary(op, left, right) if op.is_comparison() => [left, right]
            .into_iter()
            .filter_map(|side| match side.as_ref() {
                TypedExpr::Column(name) => Some(name.clone()),
                _ => None,
            })
            .collect(),
        TypedExpr::IsNull(inner, true) | TypedExpr::InList(inner, _, _) => match inner.as_ref() {
            TypedExpr::Column(name) => vec![name.clone()],
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

fn partition_field(name: &str) -> Option<PartitionField> {
    Some(match name {
        "year" => PartitionField::Year,
        "month" => PartitionField::Month,
        "day" => PartitionField::Day,
        "hour" => PartitionField::Hour,
        "key" => PartitionField::Key,
        "start" => PartitionField::Start,
        "end" => PartitionField::End,
        _ => return None,
    })
}

fn parse_date(text: &str) -> Option<(i32, u32, u32)> {
    let mut parts = text.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, m, d): (i32, u32, u32) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    ((1..=12).contains(&m) && d >= 1 && d <= days[m as usize - 1]).then_some((y, m, d))
}

/// Checks `${VAR}` and `${VAR:-default}` references in a connection URL.
fn validate_env_template(url: &str) -> Result<(), String> {
    let mut rest = url;
    while let Some(open) = rest.find("${") {
        let Some(close) = rest[open..].find('}') else {
            return Err("`${` is never closed".into());
        };
        let inner = &rest[open + 2..open + close];
        let name = inner.split_once(":-").map_or(inner, |(name, _)| name);
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("`{name}` is not an environment variable name"));
        }
        rest = &rest[open + close + 1..];
    }
    Ok(())
}

/// True when a URL carries `user:password@` with a literal password (not a `${...}` reference).
/// The variable interpolated as the password of a URL (`postgres://u:${PGPASSWORD}@db/x`).
fn interpolated_password(url: &str) -> Option<String> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    let inner = password.strip_prefix("${")?.split('}').next()?;
    Some(inner.split(":-").next().unwrap_or(inner).to_string())
}

fn has_literal_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let Some((userinfo, _)) = authority.rsplit_once('@') else {
        return false;
    };
    match userinfo.split_once(':') {
        Some((_, password)) => !password.is_empty() && !password.starts_with("${"),
        None => false,
    }
}

/// `90s`, `15m`, `2h10m` for a number of milliseconds.
/// The value of a condition that depends on no row, parameter or partition: `false`,
/// `1 > 2`, `not true and x > 0` (`false and ...` is false whatever the rest is). `None` when
/// it depends on something known only at run time.
fn constant_truth(expr: &TypedExpr) -> Option<bool> {
    match expr {
        TypedExpr::Literal(Literal::Bool(b)) => Some(*b),
        TypedExpr::Not(inner) => constant_truth(inner).map(|b| !b),
        TypedExpr::Binary(BinaryOp::And, left, right) => {
            match (constant_truth(left), constant_truth(right)) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            }
        }
        TypedExpr::Binary(BinaryOp::Or, left, right) => {
            match (constant_truth(left), constant_truth(right)) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            }
        }
        TypedExpr::Binary(op, left, right) if op.is_comparison() => {
            let ordering = match (left.as_ref(), right.as_ref()) {
                (TypedExpr::Literal(a), TypedExpr::Literal(b)) => match (a, b) {
                    (Literal::String(a), Literal::String(b)) => Some(a.cmp(b)),
                    (Literal::Bool(a), Literal::Bool(b)) => Some(a.cmp(b)),
                    (a, b) => numeric(a)?.partial_cmp(&numeric(b)?),
                },
                _ => None,
            }?;
            Some(match op {
                BinaryOp::Eq => ordering.is_eq(),
                BinaryOp::NotEq => ordering.is_ne(),
                BinaryOp::Lt => ordering.is_lt(),
                BinaryOp::LtEq => ordering.is_le(),
                BinaryOp::Gt => ordering.is_gt(),
                _ => ordering.is_ge(),
            })
        }
        _ => None,
    }
}

/// A number literal as a float, for comparing constants.
fn numeric(literal: &Literal) -> Option<f64> {
    match literal {
        Literal::Int(i) => Some(*i as f64),
        Literal::Float(x) => Some(*x),
        _ => None,
    }
}

/// `a`, `b` and `c` as "`a`, `b`, `c`".
fn quoted_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn human_ms(ms: u64) -> String {
    let seconds = ms / 1000;
    match seconds {
        0 => format!("{ms}ms"),
        1..60 => format!("{seconds}s"),
        60..3600 if seconds.is_multiple_of(60) => format!("{}m", seconds / 60),
        60..3600 => format!("{}m{}s", seconds / 60, seconds % 60),
        _ if seconds.is_multiple_of(3600) => format!("{}h", seconds / 3600),
        _ => format!("{}h{}m", seconds / 3600, (seconds % 3600) / 60),
    }
}

/// One line describing a step for the comment above its generated code.
fn summarize(text: &str) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.chars().count() > 110 {
        collapsed.chars().take(107).collect::<String>() + "..."
    } else {
        collapsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_matches_the_course_renames() {
        assert_eq!(snake_case("VendorID"), "vendor_id");
        assert_eq!(snake_case("RatecodeID"), "ratecode_id");
        assert_eq!(snake_case("PULocationID"), "pu_location_id");
        assert_eq!(snake_case("DOLocationID"), "do_location_id");
        assert_eq!(snake_case("lpep_pickup_datetime"), "lpep_pickup_datetime");
        assert_eq!(snake_case("Trip Distance"), "trip_distance");
    }

    #[test]
    fn literal_passwords_are_found() {
        assert!(has_literal_password("postgres://baton:hunter2@db:5432/x"));
        assert!(!has_literal_password("postgres://baton@db:5432/x"));
        assert!(!has_literal_password("postgres://baton:${PGPASSWORD}@db/x"));
        assert_eq!(
            interpolated_password("postgres://baton:${PGPASSWORD:-x}@db/x").as_deref(),
            Some("PGPASSWORD")
        );
        assert_eq!(interpolated_password("${DATABASE_URL}"), None);
        assert_eq!(interpolated_password("postgres://baton@db/x"), None);
        assert!(!has_literal_password(
            "${DATABASE_URL:-sqlite://.baton/warehouse.db}"
        ));
    }

    #[test]
    fn dates_are_validated() {
        assert_eq!(parse_date("2021-02-28"), Some((2021, 2, 28)));
        assert_eq!(parse_date("2021-02-29"), None);
        assert_eq!(parse_date("2020-02-29"), Some((2020, 2, 29)));
        assert_eq!(parse_date("2021-1-01"), None);
    }
}
