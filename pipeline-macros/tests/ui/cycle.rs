mod pipeline {
    baton_macros::pipeline!("cycle.toml");
}

fn main() {}
