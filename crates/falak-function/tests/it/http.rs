//! The http runtime: any program serving HTTP on FALAK_SOCKET or PORT.

use std::time::Duration;

use falak_core::function::Runtime;
use falak_function::{StartError, StartKind, spawn};

use crate::support::{Fixture, call, request, text};

const SERVER: &str = r#"
import http.server, os, socketserver, sys

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        data = self.rfile.read(int(self.headers.get("content-length", "0")))
        body = ("%s %s %s %s" % (sys.argv[1], self.path, data.decode(), os.environ["FALAK_INSTANCE"])).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Unix(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    def get_request(self):
        conn, _ = self.socket.accept()
        return conn, ("unix", 0)

class Tcp(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

if sys.argv[1] == "unix":
    Unix(os.environ["FALAK_SOCKET"], Handler).serve_forever()
else:
    Tcp(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

#[tokio::test]
async fn an_http_program_serves_on_the_unix_socket_or_on_port() {
    let fixture = Fixture::new(&[("server.py", SERVER)]);
    for (mode, address) in [("unix", "unix:"), ("tcp", "tcp:127.0.0.1:")] {
        let prepared = fixture.command(Runtime::Http, &["python3", "server.py", mode]).await;
        let instance = spawn(&prepared, 4).await.unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert_eq!(instance.timings().kind, StartKind::Cold);
        assert!(instance.address().starts_with(address), "{mode}: {}", instance.address());
        for _ in 0..2 {
            let (status, _, body) = call(&instance, request("POST", "/x?y=1", "hi")).await;
            assert_eq!((status.as_u16(), text(&body)), (200, format!("{mode} /x?y=1 hi 4")));
        }
        instance.health().await.unwrap_or_else(|e| panic!("{mode}: health: {e}"));
        instance.stop(Duration::from_secs(2)).await;
        assert!(!instance.is_alive());
    }
}

#[tokio::test]
async fn an_http_program_that_never_listens_or_exits_fails_the_start() {
    let fixture = Fixture::new(&[]);
    let mut prepared = fixture.command(Runtime::Http, &["sleep", "30"]).await;
    prepared.set_start_timeout(Duration::from_secs(1));
    match spawn(&prepared, 1).await {
        Err(e @ StartError::Timeout { .. }) => {
            let text = e.to_string();
            assert!(text.contains("not ready within 1s") && text.contains("instances.log"), "{text}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    let prepared = fixture.command(Runtime::Http, &["sh", "-c", "echo no server here >&2; exit 4"]).await;
    match spawn(&prepared, 2).await {
        Err(e @ StartError::Exited { .. }) => assert!(e.to_string().contains("exit status: 4"), "{e}"),
        other => panic!("expected an exit, got {other:?}"),
    }
    assert!(fixture.log_text().contains("no server here"), "the program's output is in the log");
}
