mod pipeline {
    baton_macros::pipeline!("unknown_column.toml");
}

fn main() {}
