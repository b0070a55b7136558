//! MCP against REST (placeholder: being written).
fn main() {
    println!("mcp: a benchmark; run it with `cargo bench --bench mcp`");
}
