//! `batchflow serve` bounds what clients can make it hold: connections that send nothing
//! cannot starve the others.

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use batchflow::mock::MockConfig;
use serde_json::json;

use crate::serve::Server;
use crate::support::{self, Mock};

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
