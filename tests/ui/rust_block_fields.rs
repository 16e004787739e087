mod pipeline {
    baton_macros::pipeline!("blocks/rust_typo.toml");
}

fn main() {}
