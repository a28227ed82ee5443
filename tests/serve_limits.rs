//! `batchflow serve` bounds what clients can make it hold: connections that send nothing
//! cannot starve the others, and long bodies, form fields and input lines are refused or
//! skipped without being held (the server's peak memory is read from /proc, not assumed).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use batchflow::mock::MockConfig;
use serde_json::{Value, json};

use crate::serve::{Server, openai_lines};
use crate::serve_owner::stored_files;
use crate::support::{self, Mock};

/// Sends `head` and then `body` on a new connection (`body` written from its own thread, so a
/// server that answers before reading it all is not blocked on); the answer's status and
/// body.
fn exchange(
    server: &Server,
    head: String,
    body: impl Iterator<Item = Vec<u8>> + Send + 'static,
) -> (u16, String) {
    let mut stream = TcpStream::connect(server.address()).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("a read timeout");
    let mut writer = stream.try_clone().expect("a second handle");
    let sending = std::thread::spawn(move || {
        // A server that refuses the body closes the connection under it: not this test's
        // failure, the answer says what happened.
        if writer.write_all(head.as_bytes()).is_err() {
            return;
        }
        for chunk in body {
            if writer.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    // A reset after the answer arrived leaves what was read in `answer`.
    let _ = stream.read_to_end(&mut answer);
    let _ = sending.join();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {answer:?}\n{}", server.log()));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The error object of an OpenAI-style error body.
fn error_of(body: &str) -> Value {
    let value: Value =
        serde_json::from_str(body).unwrap_or_else(|error| panic!("{body:?}: {error}"));
    value["error"].clone()
}

/// The most memory the process has held, in MiB (VmHWM).
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .expect("a VmHWM line");
    kib / 1024
}

#[test]
fn connections_that_send_nothing_do_not_starve_a_client() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mock = Mock::start(MockConfig::default());
    let mut command = support::batchflow();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--backend", &mock.url()])
        .args(["--header-timeout", "1s", "--data-dir"])
        .arg(dir.path().join("data"));
    // 256 descriptors: fewer than the silent connections below, as 1024 is fewer than the
    // thousands an attacker opens.
    // SAFETY: setrlimit is async-signal-safe and touches only the child's own limits.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            let limit = libc::rlimit {
                rlim_cur: 256,
                rlim_max: 256,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let server = Server::spawn(command);
    assert!(
        server.log().contains("max_connections=128"),
        "{}",
        server.log()
    );
    let silent: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(server.address()).expect("connects"))
        .collect();
    let out = server.python(
        "client = client.with_options(timeout=30)\n\
         print(json.dumps({'files': len(client.files.list().data)}))",
        json!({}),
    );
    assert_eq!(out["files"], 0);
    // The first silent ones were closed by the header timeout.
    let mut first = &silent[0];
    first
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("a read timeout");
    let mut byte = [0u8; 1];
    assert!(matches!(first.read(&mut byte), Ok(0) | Err(_)));
    assert!(!server.log().contains("Cannot accept"), "{}", server.log());
}

#[test]
fn a_json_body_over_the_limit_gets_413() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mock = Mock::start(MockConfig::default());
    let server = Server::start(&dir.path().join("data"), &mock, &[]);
    let body = json!({"input_file_id": "file-x", "endpoint": "/v1/chat/completions",
        "completion_window": "24h", "metadata": {"padding": "x".repeat(3 << 20)}})
    .to_string();
    let head = format!(
        "POST /v1/batches HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let (status, answer) = exchange(&server, head, std::iter::once(body.into_bytes()));
    assert_eq!(status, 413, "{answer}");
    let error = error_of(&answer);
    assert_eq!(error["type"], "invalid_request_error");
    assert_eq!(error["code"], "request_too_large");
}

#[test]
fn a_long_form_field_gets_413_without_being_held() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let data = dir.path().join("data");
    let mock = Mock::start(MockConfig::default());
    let server = Server::start(&data, &mock, &[]);
    // Chunked, so no declared length gives the size away: 256 MiB of `purpose`.
    let head = "POST /v1/files HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
                Content-Type: multipart/form-data; boundary=XyZ\r\nTransfer-Encoding: chunked\r\n\r\n"
        .to_owned();
    let chunk = |bytes: &[u8]| {
        let mut framed = format!("{:x}\r\n", bytes.len()).into_bytes();
        framed.extend_from_slice(bytes);
        framed.extend_from_slice(b"\r\n");
        framed
    };
    let start = chunk(b"--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n");
    let filler = chunk(&vec![b'b'; 1 << 20]);
    let end = [chunk(b"\r\n--XyZ--\r\n"), b"0\r\n\r\n".to_vec()];
    let body = std::iter::once(start)
        .chain(std::iter::repeat_n(filler, 256))
        .chain(end);
    let (status, answer) = exchange(&server, head, body);
    let peak = peak_rss_mib(server.child.id());
    eprintln!("The server peaked at {peak} MiB.");
    assert!(peak < 64, "the server peaked at {peak} MiB");
    assert_eq!(status, 413, "{answer}");
    let error = error_of(&answer);
    assert_eq!(error["param"], "purpose");
    // The staged upload was removed.
    support::wait_until("the upload is discarded", || stored_files(&data).is_empty());
}

#[test]
fn a_long_input_line_is_reported_without_being_held() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mock = Mock::start(MockConfig::default());
    let server = Server::start(&dir.path().join("data"), &mock, &[]);
    let out = server.python(
        "content = args['good'].encode() + b'{\"custom_id\": \"long\", \"x\": \"' + b'y' * (120 << 20) + b'\"}\\n'\n\
         f = client.files.create(file=('long.jsonl', content), purpose='batch')\n\
         del content\n\
         batch = client.batches.create(input_file_id=f.id, endpoint='/v1/chat/completions', completion_window='24h')\n\
         batch = wait(batch.id, lambda b: b.status in ('failed', 'completed'))\n\
         print(json.dumps(batch.model_dump()))",
        json!({"good": openai_lines(2)}),
    );
    assert_eq!(out["status"], "failed", "{out}");
    let errors = out["errors"]["data"].as_array().expect("errors.data");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["line"], 3);
    assert_eq!(errors[0]["code"], "line_too_long");
    // The line limit is 16 MiB: the line is skipped, never held whole.
    let peak = peak_rss_mib(server.child.id());
    eprintln!("The server peaked at {peak} MiB.");
    assert!(peak < 64, "the server peaked at {peak} MiB");
}
