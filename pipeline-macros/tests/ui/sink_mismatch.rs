mod pipeline {
    baton_macros::pipeline!("sink_mismatch.toml");
}

fn main() {}
