//! Batch inputs for the benchmarks: OpenAI Batch request lines for `/api/chat`, the same
//! body that the load generator posts.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

/// The prompt of request `index`.
fn prompt(index: u64) -> String {
    format!("Summarise candidate {index} in one sentence.")
}

/// The body batchflow sends for request `index` (it adds `"stream": false` itself).
pub fn chat_body(index: u64) -> serde_json::Value {
    serde_json::json!({
        "model": "llama3.2",
        "messages": [{"role": "user", "content": prompt(index)}],
    })
}

/// The exact body on the wire, `"stream": false` included: what the load generator posts.
pub fn wire_body(index: u64) -> String {
    let mut body = chat_body(index);
    body["stream"] = serde_json::Value::Bool(false);
    body.to_string()
}

/// Writes `count` request lines with ids `req-0…` to `path`.
pub fn write_requests(path: &Path, count: u64) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    for index in 0..count {
        let line = serde_json::json!({
            "custom_id": format!("req-{index}"),
            "method": "POST",
            "url": "/api/chat",
            "body": chat_body(index),
        });
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}
