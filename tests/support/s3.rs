//! A real S3-protocol server for the object-storage tests: moto's server mode (from PyPI, in the
//! venv that `.ci/run` creates) as a child process on 127.0.0.1, and a front in this process
//! that passes requests through to it, answers chosen uploads with a 500, and can go down and
//! come back on the same port, as a server restarting with its disks does (moto keeps objects
//! in memory only, so restarting moto itself would lose them).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A program of the test venv: beside `$BATCHFLOW_TEST_PYTHON` when it is set, else in the
/// venv `.venv` that `.ci/run` makes.
pub fn venv_bin(program: &str) -> PathBuf {
    let python = super::python_path();
    let bin = python.parent().unwrap_or(Path::new("."));
    let path = bin.join(program);
    assert!(
        path.exists(),
        "{} is missing: run .ci/run, which makes the venv .venv from tests/requirements.txt",
        path.display()
    );
    path
}

/// The binary pointed at the S3 endpoint `endpoint` with test credentials in the standard
/// variables, and `tmp` as its temporary directory (as on a host of its own).
pub fn on_store(endpoint: SocketAddr, tmp: &Path) -> Command {
    let mut command = super::batchflow();
    command
        .env("AWS_ENDPOINT_URL", format!("http://{endpoint}"))
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .env("HOME", env!("CARGO_MANIFEST_DIR"))
        .env("TMPDIR", tmp);
    command
}

/// moto's S3 server, killed on drop.
pub struct Moto {
    child: Child,
    pub address: SocketAddr,
}

impl Moto {
    pub fn start() -> Moto {
        let mut child = Command::new(venv_bin("moto_server"))
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("moto_server starts");
        let stderr = child.stderr.take().expect("piped");
        let mut lines = BufReader::new(stderr).lines();
        let address = loop {
            let line = lines
                .next()
                .expect("moto_server prints its address")
                .expect("readable");
            if let Some(rest) = line.split("http://").nth(1) {
                break rest.trim().parse().expect("an address");
            }
        };
        // Keep draining its log so that it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Moto { child, address }
    }

    pub fn create_bucket(&self, bucket: &str) {
        let response = request(self.address, &format!("PUT /{bucket} HTTP/1.1"), &[]);
        assert!(
            response.starts_with(b"HTTP/1.1 200"),
            "bucket {bucket} created"
        );
    }

    pub fn put(&self, key: &str, body: &[u8]) {
        let response = request(self.address, &format!("PUT /{key} HTTP/1.1"), body);
        assert!(response.starts_with(b"HTTP/1.1 200"), "{key} uploaded");
    }

    /// A signed S3 client of `bucket` (the object_store crate's), as any reader would use.
    fn client(&self, bucket: &str) -> object_store::aws::AmazonS3 {
        batchflow::tls::install_crypto_provider();
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(format!("http://{}", self.address))
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .build()
            .expect("an S3 client")
    }

    fn block_on<T>(work: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(work)
    }

    /// The objects under `prefix` in `bucket`.
    fn list(&self, bucket: &str, prefix: &str) -> Vec<object_store::ObjectMeta> {
        use futures::TryStreamExt;
        use object_store::ObjectStore;
        let client = self.client(bucket);
        let prefix = object_store::path::Path::from(prefix);
        Moto::block_on(client.list(Some(&prefix)).try_collect()).expect("listed")
    }

    /// The keys under `prefix` in `bucket`, sorted.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .list(bucket, prefix)
            .into_iter()
            .map(|object| object.location.to_string())
            .collect();
        keys.sort();
        keys
    }

    /// The bytes of the Parquet parts stored under `prefix` in `bucket` (a shard's lease and
    /// generation marker aside): a listing only, cheap to poll.
    pub fn stored_bytes(&self, bucket: &str, prefix: &str) -> u64 {
        self.list(bucket, prefix)
            .iter()
            .filter(|object| object.location.as_ref().ends_with(".parquet"))
            .map(|object| object.size)
            .sum()
    }

    /// The values of the text column `name` in every Parquet part under `prefix` (a shard's
    /// lease and generation marker beside them are the only other objects).
    pub fn column(&self, bucket: &str, prefix: &str, name: &str) -> Vec<Option<String>> {
        use arrow_array::cast::AsArray;
        let mut values = Vec::new();
        for key in self.keys(bucket, prefix) {
            if !key.ends_with(".parquet") {
                assert!(
                    key.ends_with(".lease") || key.ends_with(".generation"),
                    "only parts, the lease and the generation marker: {key}"
                );
                continue;
            }
            let bytes = bytes::Bytes::from(self.get(bucket, &key));
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
                    .expect("each part is a whole Parquet file")
                    .build()
                    .expect("a reader");
            for batch in reader {
                let batch = batch.expect("readable rows");
                let column = batch
                    .column_by_name(name)
                    .unwrap_or_else(|| panic!("a {name} column"))
                    .as_string::<i32>()
                    .clone();
                values.extend(column.iter().map(|value| value.map(str::to_owned)));
            }
        }
        values
    }

    /// custom_id → how many rows hold it, over every part under `prefix`.
    pub fn ids(&self, bucket: &str, prefix: &str) -> std::collections::HashMap<String, usize> {
        let mut ids = std::collections::HashMap::new();
        for id in self
            .column(bucket, prefix, "custom_id")
            .into_iter()
            .flatten()
        {
            *ids.entry(id).or_default() += 1;
        }
        ids
    }

    /// Deletes `key` from `bucket`, as an operator cleaning up would.
    pub fn delete(&self, bucket: &str, key: &str) {
        use object_store::ObjectStoreExt;
        let location = object_store::path::Path::from(key);
        Moto::block_on(self.client(bucket).delete(&location)).expect("deleted");
    }

    /// Stores `bytes` as `key` in `bucket`, replacing what is there.
    pub fn replace(&self, bucket: &str, key: &str, bytes: Vec<u8>) {
        use object_store::ObjectStoreExt;
        let location = object_store::path::Path::from(key);
        let payload = object_store::PutPayload::from(bytes);
        Moto::block_on(self.client(bucket).put(&location, payload)).expect("replaced");
    }

    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        use object_store::ObjectStoreExt;
        let client = self.client(bucket);
        let location = object_store::path::Path::from(key);
        Moto::block_on(async { client.get(&location).await?.bytes().await })
            .unwrap_or_else(|error| panic!("{bucket}/{key}: {error}"))
            .to_vec()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request on a connection of its own, answered in full.
fn request(address: SocketAddr, request_line: &str, body: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(address).expect("moto accepts");
    let head = format!(
        "{request_line}\r\nHost: {address}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("sent");
    stream.write_all(body).expect("sent");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("answered");
    response
}

fn split_response(response: &[u8]) -> (String, &[u8]) {
    let end = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .expect("a whole response head");
    (
        String::from_utf8_lossy(&response[..end]).into_owned(),
        &response[end + 4..],
    )
}

/// A front for moto on a port of its own: every request is passed through on a fresh upstream
/// connection, except that every `fail_every`-th upload is answered 500 without reaching moto,
/// and that while down it accepts nothing (connections are refused, as by a restarting server).
pub struct Front {
    pub address: SocketAddr,
    state: Arc<FrontState>,
}

struct FrontState {
    upstream: SocketAddr,
    fail_every: u64,
    puts: AtomicU64,
    failed: AtomicU64,
    passed: AtomicU64,
    down: AtomicBool,
    listener: Mutex<Option<TcpListener>>,
}

impl Front {
    pub fn start(upstream: SocketAddr, fail_every: u64) -> Front {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port");
        let address = listener.local_addr().expect("bound");
        let state = Arc::new(FrontState {
            upstream,
            fail_every,
            puts: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            passed: AtomicU64::new(0),
            down: AtomicBool::new(false),
            listener: Mutex::new(None),
        });
        Front::serve(listener, Arc::clone(&state));
        Front { address, state }
    }

    fn serve(listener: TcpListener, state: Arc<FrontState>) {
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if state.down.load(Ordering::SeqCst) {
                    // Hand the socket back so that `up` can listen again on the same port.
                    *state.listener.lock().expect("not poisoned") = Some(listener);
                    return;
                }
                let Ok(stream) = stream else { continue };
                let state = Arc::clone(&state);
                std::thread::spawn(move || relay(stream, &state));
            }
        });
    }

    /// Uploads answered 500 so far.
    pub fn failed_uploads(&self) -> u64 {
        self.state.failed.load(Ordering::SeqCst)
    }

    /// Uploads passed through to moto so far.
    pub fn passed_uploads(&self) -> u64 {
        self.state.passed.load(Ordering::SeqCst)
    }

    /// Stops accepting: the listening socket is closed, so a connection is refused.
    pub fn down(&self) {
        self.state.down.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag and returns the socket.
        let _ = TcpStream::connect(self.address);
        super::wait_until("the front to stop listening", || {
            self.state.listener.lock().expect("not poisoned").is_some()
        });
        // Dropping the listener closes the port: connecting now is refused.
        self.state.listener.lock().expect("not poisoned").take();
    }

    /// Listens again on the same port.
    pub fn up(&self) {
        self.state.down.store(false, Ordering::SeqCst);
        let listener = TcpListener::bind(self.address).expect("the same port again");
        Front::serve(listener, Arc::clone(&self.state));
    }
}

/// Passes the requests of one client connection through, one upstream connection each.
fn relay(client: TcpStream, state: &FrontState) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(match client.try_clone() {
        Ok(clone) => clone,
        Err(_) => return,
    });
    let mut client = client;
    loop {
        let Some((head, body)) = read_request(&mut reader) else {
            return;
        };
        if state.down.load(Ordering::SeqCst) {
            return;
        }
        let is_upload = head.starts_with("PUT ");
        if is_upload {
            let count = state.puts.fetch_add(1, Ordering::SeqCst) + 1;
            if count.is_multiple_of(state.fail_every) {
                state.failed.fetch_add(1, Ordering::SeqCst);
                let body = "<?xml version=\"1.0\"?><Error><Code>InternalError</Code><Message>injected</Message></Error>";
                let response = format!(
                    "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if client.write_all(response.as_bytes()).is_err() {
                    return;
                }
                continue;
            }
        }
        let Some(response) = forward(state.upstream, &head, &body) else {
            return;
        };
        if is_upload && response.starts_with(b"HTTP/1.1 200") {
            state.passed.fetch_add(1, Ordering::SeqCst);
        }
        if client.write_all(&response).is_err() {
            return;
        }
    }
}

/// One request: its head (with `Connection: close` for the upstream) and its body.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<(String, Vec<u8>)> {
    let mut head = String::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(value) = lower.strip_prefix("content-length:") {
            length = value.trim().parse().ok()?;
        }
        if lower.starts_with("connection:") {
            continue;
        }
        head.push_str(&line);
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((head, body))
}

/// Sends one request upstream and reads the whole answer (the upstream closes after it), then
/// marks it to keep the client's connection open.
fn forward(upstream: SocketAddr, head: &str, body: &[u8]) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).ok()?;
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let (response_head, response_body) = split_response(&response);
    let mut rebuilt = String::new();
    for line in response_head.split("\r\n") {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("connection:") || lower.starts_with("content-length:") {
            continue;
        }
        rebuilt.push_str(line);
        rebuilt.push_str("\r\n");
    }
    rebuilt.push_str(&format!("Content-Length: {}\r\n\r\n", response_body.len()));
    let mut whole = rebuilt.into_bytes();
    whole.extend_from_slice(response_body);
    Some(whole)
}
