//! Resolve: block names to indices, the dependency graph, cycles and the run order.

use std::collections::HashMap;

use crate::diagnostic::{Diagnostic, did_you_mean};
use crate::syntax::{Block, BlockKind, PipelineFile};

/// The resolved graph: for each block (in file order) the indices of its inputs and of the
/// blocks it waits for, and a run order.
#[derive(Clone, Debug)]
pub struct Graph {
    /// `inputs[b]` are the file-order indices of block `b`'s inputs.
    pub inputs: Vec<Vec<usize>>,
    /// `after[b]` are the blocks `b` waits for without reading them. A callback without
    /// `after` waits for every block that is not a callback.
    pub after: Vec<Vec<usize>>,
    /// Blocks in dependency order; blocks on or after a cycle, or with unresolved inputs, are left out.
    pub order: Vec<usize>,
}

/// Resolves inputs and `after`, reports unknown names, wrong input counts and every dependency
/// cycle.
pub fn resolve(file: &PipelineFile, diagnostics: &mut Vec<Diagnostic>) -> Graph {
    let index: HashMap<&str, usize> = file
        .blocks
        .iter()
        .enumerate()
        .map(|(i, b)| (b.name.value.as_str(), i))
        .collect();
    let mut inputs = Vec::with_capacity(file.blocks.len());
    let mut broken = vec![false; file.blocks.len()];
    for (b, block) in file.blocks.iter().enumerate() {
        check_arity(block, diagnostics);
        let mut resolved = Vec::new();
        for input in &block.inputs {
            match index.get(input.value.as_str()) {
                Some(&i) if is_sink(&file.blocks[i]) => {
                    broken[b] = true;
                    diagnostics.push(
                        Diagnostic::error(
                            "E0018",
                            format!(
                                "block `{}` reads from sink `{}`",
                                block.name.value, input.value
                            ),
                            input.span.clone(),
                            "a sink has no output",
                        )
                        .with_label(file.blocks[i].name.span.clone(), "this block is a sink")
                        .with_help("read from the block that feeds the sink instead"),
                    );
                }
                Some(&i) => resolved.push(i),
                None => {
                    broken[b] = true;
                    let others = file
                        .blocks
                        .iter()
                        .filter(|o| !is_sink(o))
                        .map(|o| o.name.value.as_str());
                    diagnostics.push(
                        Diagnostic::error(
                            "E0006",
                            format!(
                                "unknown input `{}` of block `{}`",
                                input.value, block.name.value
                            ),
                            input.span.clone(),
                            "no block has this name",
                        )
                        .with_optional_help(did_you_mean(&input.value, others)),
                    );
                }
            }
        }
        inputs.push(resolved);
    }
    let mut after = Vec::with_capacity(file.blocks.len());
    for (b, block) in file.blocks.iter().enumerate() {
        let mut resolved = Vec::new();
        if block.after.is_empty() && is_callback(block) {
            resolved.extend((0..file.blocks.len()).filter(|&o| !is_callback(&file.blocks[o])));
        }
        for name in &block.after {
            match index.get(name.value.as_str()) {
                Some(&i) => resolved.push(i),
                None => {
                    broken[b] = true;
                    let others = file.blocks.iter().map(|o| o.name.value.as_str());
                    diagnostics.push(
                        Diagnostic::error(
                            "E0006",
                            format!(
                                "unknown block `{}` in `after` of block `{}`",
                                name.value, block.name.value
                            ),
                            name.span.clone(),
                            "no block has this name",
                        )
                        .with_optional_help(did_you_mean(&name.value, others)),
                    );
                }
            }
        }
        after.push(resolved);
    }
    // Cycles and the run order follow every dependency, read or waited for.
    let dependencies: Vec<Vec<usize>> = inputs
        .iter()
        .zip(&after)
        .map(|(i, a)| i.iter().chain(a).copied().collect())
        .collect();
    report_cycles(file, &dependencies, diagnostics);
    let order = run_order(&dependencies, &broken);
    Graph {
        inputs,
        after,
        order,
    }
}

fn is_callback(block: &Block) -> bool {
    matches!(block.kind, BlockKind::Callback { .. })
}

fn is_sink(block: &Block) -> bool {
    block.kind.is_sink()
}

fn check_arity(block: &Block, diagnostics: &mut Vec<Diagnostic>) {
    let is_source =
        block.kind.source().is_some() || matches!(block.kind, BlockKind::Callback { .. });
    let count = block.inputs.len();
    let (ok, expected) = if is_source {
        (count == 0, "no inputs")
    } else if matches!(block.kind, BlockKind::Join { .. }) {
        (count == 2, "exactly two inputs (left, right)")
    } else if matches!(block.kind, BlockKind::Union) {
        (count >= 2, "two inputs or more")
    } else {
        (count == 1, "exactly one input")
    };
    if !ok {
        let span = block
            .inputs
            .first()
            .map_or(block.name.span.clone(), |i| i.span.clone());
        let help = if is_callback(block) {
            "a callback reads no rows: list the blocks it reports on in `after` instead of `inputs`"
        } else if is_source {
            "a source reads from outside the pipeline; remove `inputs`"
        } else if matches!(block.kind, BlockKind::Join { .. }) {
            "name the left and the right block: `inputs = [\"trips\", \"zones\"]`"
        } else if matches!(block.kind, BlockKind::Union) {
            "name the blocks whose rows it stacks: `inputs = [\"green\", \"yellow\"]`"
        } else {
            "name the block it reads from: `inputs = [\"extract\"]`"
        };
        diagnostics.push(
            Diagnostic::error(
                "E0018",
                format!("block `{}` must have {expected}", block.name.value),
                span,
                format!("found {count}"),
            )
            .with_help(help),
        );
    }
}

/// Kahn's algorithm, stable in file order. A block whose inputs are broken or cyclic is left
/// out, and so is everything downstream of it.
fn run_order(inputs: &[Vec<usize>], broken: &[bool]) -> Vec<usize> {
    let n = inputs.len();
    let mut done = vec![false; n];
    let mut order = Vec::with_capacity(n);
    loop {
        let ready = (0..n).find(|&b| !done[b] && !broken[b] && inputs[b].iter().all(|&i| done[i]));
        match ready {
            Some(b) => {
                done[b] = true;
                order.push(b);
            }
            None => break,
        }
    }
    order
}

/// Finds each strongly connected component with a cycle (Tarjan) and reports one cycle path per
/// component, with every edge located, so a user sees the whole loop at once.
fn report_cycles(file: &PipelineFile, inputs: &[Vec<usize>], diagnostics: &mut Vec<Diagnostic>) {
    for component in strongly_connected(inputs) {
        let start = *component.iter().min().expect("components are not empty");
        let self_loop = inputs[start].contains(&start);
        if component.len() == 1 && !self_loop {
            continue;
        }
        let path = cycle_path(start, inputs, &component);
        let names: Vec<&str> = path
            .iter()
            .map(|&b| file.blocks[b].name.value.as_str())
            .collect();
        let mut chain = names.join(" → ");
        chain.push_str(" → ");
        chain.push_str(names[0]);
        // Edge k goes from path[k] into path[k+1]; it is written in path[k+1]'s `inputs` or
        // `after`.
        let edge_span = |from: usize, to: usize| {
            let block = &file.blocks[to];
            block
                .inputs
                .iter()
                .chain(&block.after)
                .find(|i| i.value == file.blocks[from].name.value)
                .map(|i| i.span.clone())
                .unwrap_or(block.name.span.clone())
        };
        let verb = |from: usize, to: usize| {
            let reads = file.blocks[to]
                .inputs
                .iter()
                .any(|i| i.value == file.blocks[from].name.value);
            if reads { "reads" } else { "waits for" }
        };
        let first_to = path.get(1).copied().unwrap_or(start);
        let mut diagnostic = Diagnostic::error(
            "E0007",
            format!("dependency cycle: {chain}"),
            edge_span(path[0], first_to),
            format!(
                "`{}` {} `{}`",
                file.blocks[first_to].name.value,
                verb(path[0], first_to),
                names[0]
            ),
        );
        for k in 1..path.len() {
            let from = path[k];
            let to = path[(k + 1) % path.len()];
            diagnostic = diagnostic.with_label(
                edge_span(from, to),
                format!(
                    "`{}` {} `{}`",
                    file.blocks[to].name.value,
                    verb(from, to),
                    file.blocks[from].name.value
                ),
            );
        }
        diagnostics.push(diagnostic.with_help(
            "blocks must form a DAG: remove one of these dependencies to break the cycle",
        ));
    }
}

/// A cycle through `start` inside `component`, following data flow (input → consumer).
fn cycle_path(start: usize, inputs: &[Vec<usize>], component: &[usize]) -> Vec<usize> {
    let consumers = |b: usize| {
        (0..inputs.len()).filter(move |&c| inputs[c].contains(&b) && component.contains(&c))
    };
    // Breadth-first search for the shortest way back to `start`.
    let mut previous: HashMap<usize, usize> = HashMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(b) = queue.pop_front() {
        for c in consumers(b) {
            if c == start {
                let mut path = vec![b];
                let mut at = b;
                while at != start {
                    at = previous[&at];
                    path.push(at);
                }
                path.reverse();
                return path;
            }
            if let std::collections::hash_map::Entry::Vacant(entry) = previous.entry(c) {
                entry.insert(b);
                queue.push_back(c);
            }
        }
    }
    vec![start]
}

fn strongly_connected(inputs: &[Vec<usize>]) -> Vec<Vec<usize>> {
    struct Tarjan<'a> {
        inputs: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        components: Vec<Vec<usize>>,
    }
    impl Tarjan<'_> {
        fn visit(&mut self, v: usize) {
            self.index[v] = Some(self.next);
            self.low[v] = self.next;
            self.next += 1;
            self.stack.push(v);
            self.on_stack[v] = true;
            for &w in &self.inputs[v] {
                match self.index[w] {
                    None => {
                        self.visit(w);
                        self.low[v] = self.low[v].min(self.low[w]);
                    }
                    Some(index) if self.on_stack[w] => self.low[v] = self.low[v].min(index),
                    Some(_) => {}
                }
            }
            if Some(self.low[v]) == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack[w] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                self.components.push(component);
            }
        }
    }
    let n = inputs.len();
    let mut tarjan = Tarjan {
        inputs,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        components: Vec::new(),
    };
    for v in 0..n {
        if tarjan.index[v].is_none() {
            tarjan.visit(v);
        }
    }
    tarjan.components
}
