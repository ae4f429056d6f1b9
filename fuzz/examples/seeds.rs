//! Writes the seed corpus: `cargo run --manifest-path fuzz/Cargo.toml --example seeds -- fuzz/seeds`.

fn main() -> std::io::Result<()> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "seeds".into()));
    for (target, name, bytes) in wegweiser_fuzz::seeds() {
        let d = dir.join(target);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(name), bytes)?;
    }
    Ok(())
}
