//! `batchflow serve` on a disk that fills up: the batch stalls instead of failing, keeps what
//! it has, and completes once space is freed, with each line exactly once. The data directory
//! is a small tmpfs, so the test needs the right to mount one (CI runs as root); without it
//! the test says why and passes over.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use batchflow::mock::MockConfig;
use serde_json::json;

use crate::serve::{Server, openai_lines};
use crate::support::{self, Mock};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as mount's `-o size=` reads it) at `path`; `Err` with the
    /// reason when this process may not.
    fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|error| error.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|error| format!("mount cannot run: {error}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_owned());
        }
        Ok(Tmpfs {
            path: path.to_owned(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy, so that a server still holding files there cannot keep it mounted.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Writes zeros to `path` until the disk is full; the bytes written.
fn fill(path: &Path) -> u64 {
    let mut file = File::create(path).expect("the filler is created");
    let block = vec![0u8; 64 << 10];
    let mut written = 0u64;
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(bytes) => written += bytes as u64,
            Err(error) => {
                assert_eq!(error.raw_os_error(), Some(libc::ENOSPC), "{error}");
                break;
            }
        }
    }
    written
}

#[test]
fn a_full_disk_stalls_the_batch_and_it_completes_once_space_is_freed() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let data = match Tmpfs::mount(&dir.path().join("data"), "16m") {
        Ok(data) => data,
        Err(reason) => {
            eprintln!("Passed over: cannot mount a tmpfs ({reason}).");
            return;
        }
    };
    let mock = Mock::start(MockConfig {
        latency: Duration::from_millis(20),
        ..MockConfig::default()
    });
    let server = Server::start(
        &data.path,
        &mock,
        &["--workers", "4", "--checkpoint-rows", "20"],
    );
    let started = server.python(
        "f = client.files.create(file=('r.jsonl', args['content'].encode()), purpose='batch')\n\
         batch = client.batches.create(input_file_id=f.id, endpoint='/v1/chat/completions', completion_window='24h')\n\
         wait(batch.id, lambda b: b.request_counts.completed >= 100)\n\
         print(json.dumps({'id': batch.id}))",
        json!({"content": openai_lines(1500)}),
    );
    let filler = data.path.join("filler");
    let filled = fill(&filler);
    assert!(filled > 0);
    support::wait_until("the batch stalls", || {
        server.log().contains("Batch stalled")
    });
    let stalled = server.python(
        "print(json.dumps(client.batches.retrieve(args['id']).model_dump()))",
        json!({"id": started["id"]}),
    );
    assert_eq!(
        stalled["status"],
        "in_progress",
        "{stalled}\n{}",
        server.log()
    );

    std::fs::remove_file(&filler).expect("space is freed");
    let out = server.python(
        "batch = wait(args['id'], lambda b: b.status in ('completed', 'failed'))\n\
         lines = client.files.content(batch.output_file_id).text.splitlines() if batch.output_file_id else []\n\
         print(json.dumps({'batch': batch.model_dump(), 'ids': [json.loads(l)['custom_id'] for l in lines]}))",
        json!({"id": started["id"]}),
    );
    let batch = &out["batch"];
    assert_eq!(batch["status"], "completed", "{batch}\n{}", server.log());
    assert_eq!(
        batch["request_counts"],
        json!({"total": 1500, "completed": 1500, "failed": 0})
    );
    let ids: Vec<&str> = out["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .filter_map(|id| id.as_str())
        .collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(
        (ids.len(), unique.len()),
        (1500, 1500),
        "each line exactly once"
    );
    assert!(batch["error_file_id"].is_null(), "{batch}");
}
