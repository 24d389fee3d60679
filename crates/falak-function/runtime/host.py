"""Falak's Python runtime host.

Shipped inside the falak binary and written to each deployment's work directory. It loads the
user's handler (`module.function`) and serves the runtime host protocol described in
docs/design/runtime-host.md: HTTP/1.1 over a Unix socket, one socket per instance.

    host.py serve  --bundle DIR --handler main.handle --socket PATH
    host.py zygote --bundle DIR --handler main.handle --control PATH

`serve` is a cold start: import the handler, bind the socket, serve. `zygote` imports the
handler once, then forks one pre-initialized instance per `fork` command on its control socket.

If FALAK_READY_FD is set, the host writes one JSON line to that descriptor once it is ready
(`{"ready": true, "pid": N}`) or failed to load (`{"error": "..."}`), then closes it.

Only the standard library is used, and as little of it as possible, so that a cold start
imports little besides the user's code.
"""

import json
import os
import signal
import socket
import sys
import threading
import time
import traceback

MAX_LINE = 65536
MAX_HEADERS = 256
HEALTH_PATH = "/.falak/health"
PR_SET_PDEATHSIG = 1
# pidfd_open(2), for Python 3.8, whose os module lacks it: the same number on every
# architecture but alpha and mips.
SYS_PIDFD_OPEN = 434
# Headers the host frames itself; a handler's values for them are dropped.
FRAMING_HEADERS = frozenset(("content-length", "transfer-encoding", "connection", "keep-alive"))
REASONS = {
    200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 301: "Moved Permanently",
    302: "Found", 304: "Not Modified", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large",
    422: "Unprocessable Entity", 429: "Too Many Requests", 500: "Internal Server Error",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
}


class Request:
    """What a handler gets: `handle(request)`."""

    __slots__ = ("method", "path", "query", "headers", "body")

    def __init__(self, method, path, query, headers, body):
        self.method = method  # "GET", "POST", ...
        self.path = path  # the path after /fn/{name}, e.g. "/items/7" (not percent-decoded)
        self.query = query  # the raw query string without "?", e.g. "a=1&b=2"
        self.headers = headers  # dict, lowercase names; repeated headers joined with ", "
        self.body = body  # bytes

    def json(self):
        """The body parsed as JSON (None for an empty body)."""
        if not self.body:
            return None
        return json.loads(self.body)

    @property
    def args(self):
        """The query parsed into a dict (the last value of a repeated name wins)."""
        from urllib.parse import parse_qsl

        return dict(parse_qsl(self.query, keep_blank_values=True))

    def __repr__(self):
        return "Request(%s %s%s, %d bytes)" % (
            self.method, self.path, "?" + self.query if self.query else "", len(self.body))


class BadRequest(Exception):
    pass


class Shutdown(BaseException):
    pass


class LoadError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Loading the handler


def load_handler(bundle, spec):
    """Import `module.function` from the bundle; LoadError with the Python error text if not."""
    # sys.path[0] is this script's directory (the work dir); the bundle replaces it.
    if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
        sys.path[0] = bundle
    else:
        sys.path.insert(0, bundle)
    module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise LoadError("handler %r is not `module.function`, e.g. `main.handle`" % spec)
    import importlib

    try:
        module = importlib.import_module(module_name)
    except BaseException:
        raise LoadError("importing module '%s' failed:\n%s" % (module_name, traceback.format_exc().rstrip()))
    try:
        handler = getattr(module, attr)
    except AttributeError:
        raise LoadError("module '%s' has no attribute '%s'" % (module_name, attr))
    if not callable(handler):
        raise LoadError("'%s' is a %s, not a function" % (spec, type(handler).__name__))
    return handler


def report(message):
    """Tell the node (through FALAK_READY_FD) that we are ready or failed; once."""
    fd = os.environ.pop("FALAK_READY_FD", None)
    if fd is None:
        return
    try:
        data = (json.dumps(message) + "\n").encode()
        os.write(int(fd), data)
        os.close(int(fd))
    except (OSError, ValueError):
        pass


def set_pdeathsig():
    """Die with SIGKILL when the parent (the node, or the zygote) dies."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def bind(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(512)
    return listener


# ---------------------------------------------------------------------------------------------
# HTTP/1.1


def read_line(rfile):
    line = rfile.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise BadRequest("line longer than %d bytes" % MAX_LINE)
    return line


def read_request(rfile):
    """One request from the connection, or None when the peer closed it between requests."""
    line = rfile.readline(MAX_LINE + 1)
    while line in (b"\r\n", b"\n"):
        line = rfile.readline(MAX_LINE + 1)
    if not line:
        return None, False
    if len(line) > MAX_LINE:
        raise BadRequest("request line longer than %d bytes" % MAX_LINE)
    parts = line.decode("latin-1").rstrip("\r\n").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest("malformed request line")
    method, target, version = parts
    headers = {}
    for _ in range(MAX_HEADERS + 1):
        raw = read_line(rfile)
        if raw in (b"\r\n", b"\n"):
            break
        if not raw:
            raise ConnectionError("connection closed inside the request headers")
        name, sep, value = raw.decode("latin-1").partition(":")
        if not sep:
            raise BadRequest("malformed header line")
        name = name.strip().lower()
        value = value.strip()
        headers[name] = headers[name] + ", " + value if name in headers else value
    else:
        raise BadRequest("more than %d headers" % MAX_HEADERS)
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = read_chunked(rfile)
    else:
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise BadRequest("malformed content-length")
        body = rfile.read(length) if length > 0 else b""
        if len(body) != max(length, 0):
            raise ConnectionError("connection closed inside the request body")
    connection = headers.get("connection", "").lower()
    if version == "HTTP/1.0":
        keep_alive = "keep-alive" in connection
    else:
        keep_alive = "close" not in connection
    path, _, query = target.partition("?")
    return Request(method, path, query, headers, body), keep_alive


def read_chunked(rfile):
    parts = []
    while True:
        line = read_line(rfile)
        if not line:
            raise ConnectionError("connection closed inside a chunked body")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise BadRequest("malformed chunk size")
        if size == 0:
            while read_line(rfile) not in (b"\r\n", b"\n", b""):
                pass  # trailers are dropped
            return b"".join(parts)
        data = rfile.read(size)
        if len(data) != size:
            raise ConnectionError("connection closed inside a chunk")
        parts.append(data)
        read_line(rfile)


def encode_body(body):
    """(bytes or an iterator of chunks, default content type)."""
    if body is None:
        return b"", None
    if isinstance(body, str):
        return body.encode("utf-8"), "text/plain; charset=utf-8"
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body), "application/octet-stream"
    if isinstance(body, (dict, list, int, float, bool)):
        return json.dumps(body).encode("utf-8"), "application/json"
    if hasattr(body, "__iter__") or hasattr(body, "__next__"):
        return iter(body), "application/octet-stream"
    raise TypeError(
        "the handler returned a %s; return str, bytes, a dict or list (JSON), a tuple (status, body) or "
        "(status, headers, body), or a dict {\"status\": int, \"headers\": ..., \"body\": ...}" % type(body).__name__)


def to_response(result):
    """Turn what a handler returned into (status, [(name, value)], body)."""
    status, headers, body = 200, (), result
    if isinstance(result, tuple):
        if len(result) == 2:
            status, body = result
        elif len(result) == 3:
            status, headers, body = result
        else:
            raise TypeError("a response tuple is (status, body) or (status, headers, body), not %d items" % len(result))
    elif (isinstance(result, dict) and isinstance(result.get("status"), int)
          and set(result) <= {"status", "headers", "body"}):
        status, headers, body = result["status"], result.get("headers") or (), result.get("body")
    status = int(status)
    if not 100 <= status <= 599:
        raise ValueError("response status %d is not between 100 and 599" % status)
    pairs = list(headers.items()) if isinstance(headers, dict) else [tuple(h) for h in headers]
    body, content_type = encode_body(body)
    out = [(str(k), str(v)) for k, v in pairs if str(k).lower() not in FRAMING_HEADERS]
    if content_type and not any(k.lower() == "content-type" for k, _ in out):
        out.append(("content-type", content_type))
    return status, out, body


def error_response(kind):
    exc_type, exc, _ = sys.exc_info()
    text = traceback.format_exc()
    sys.stderr.write("falak: %s error: %s" % (kind, text))
    summary = "%s: %s" % (exc_type.__name__ if exc_type else "Error", exc)
    body = ("%s\n\n%s" % (summary, text)).encode("utf-8", "replace")
    return 500, [("content-type", "text/plain; charset=utf-8"), ("falak-error", kind)], body


def write_response(conn, status, headers, body, keep_alive, head):
    lines = ["HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, "Status"))]
    for name, value in headers:
        lines.append("%s: %s\r\n" % (name, value))
    streaming = not isinstance(body, bytes)
    no_body = head or status in (204, 304) or status < 200
    if streaming and not no_body:
        lines.append("transfer-encoding: chunked\r\n")
    elif not streaming and status not in (204, 304) and status >= 200:
        lines.append("content-length: %d\r\n" % len(body))
    if not keep_alive:
        lines.append("connection: close\r\n")
    lines.append("\r\n")
    head_bytes = "".join(lines).encode("latin-1", "replace")
    if no_body:
        conn.sendall(head_bytes)
    elif not streaming:
        if len(body) <= 65536:
            conn.sendall(head_bytes + body)
        else:
            conn.sendall(head_bytes)
            conn.sendall(body)
    else:
        conn.sendall(head_bytes)
        for chunk in body:
            if isinstance(chunk, str):
                chunk = chunk.encode("utf-8")
            if chunk:
                conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        conn.sendall(b"0\r\n\r\n")


class InFlight:
    """Counts requests being handled, so a graceful stop can wait for them."""

    def __init__(self):
        self.count = 0
        self.cond = threading.Condition()

    def begin(self):
        with self.cond:
            self.count += 1

    def end(self):
        with self.cond:
            self.count -= 1
            if self.count == 0:
                self.cond.notify_all()

    def wait_idle(self):
        with self.cond:
            while self.count:
                self.cond.wait()


def serve_connection(conn, handler, inflight):
    rfile = conn.makefile("rb", buffering=65536)
    try:
        while True:
            try:
                request, keep_alive = read_request(rfile)
            except BadRequest as e:
                write_response(conn, 400, [("content-type", "text/plain")], str(e).encode(), False, False)
                return
            if request is None:
                return
            inflight.begin()
            try:
                if request.path == HEALTH_PATH:
                    status, headers, body = 200, [("content-type", "text/plain")], b"ok"
                else:
                    try:
                        status, headers, body = to_response(handler(request))
                    except Exception:
                        status, headers, body = error_response("handler")
                try:
                    write_response(conn, status, headers, body, keep_alive, request.method == "HEAD")
                except (OSError, ValueError):
                    raise
                except Exception:
                    # A streaming body failed half-way: the status is sent, so cut the connection.
                    error_response("handler")
                    return
            finally:
                inflight.end()
            if not keep_alive:
                return
    except (OSError, ValueError):
        pass
    finally:
        try:
            rfile.close()
            conn.close()
        except OSError:
            pass


def serve(listener, handler):
    """Accept connections, one thread each, until SIGTERM; then finish in-flight requests."""
    inflight = InFlight()

    def on_term(signum, frame):
        raise Shutdown()

    signal.signal(signal.SIGTERM, on_term)
    try:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError as e:
                # Out of descriptors or memory for a moment: keep the instance, retry shortly.
                sys.stderr.write("falak: accepting a connection failed: %s\n" % e)
                time.sleep(0.05)
                continue
            threading.Thread(target=serve_connection, args=(conn, handler, inflight), daemon=True).start()
    except Shutdown:
        listener.close()
        inflight.wait_idle()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


# ---------------------------------------------------------------------------------------------
# Modes


def serve_main(args):
    try:
        handler = load_handler(args["--bundle"], args["--handler"])
    except LoadError as e:
        fail(str(e))
    listener = bind(args["--socket"])
    report({"ready": True, "pid": os.getpid()})
    serve(listener, handler)


def zygote_main(args):
    import selectors

    try:
        handler = load_handler(args["--bundle"], args["--handler"])
    except LoadError as e:
        fail(str(e))
    import ctypes  # noqa: F401  (imported once here so forked children do not pay for it)
    import gc

    control = bind(args["--control"])
    zygote_pid = os.getpid()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ, "accept")
    selector.register(wake_r, selectors.EVENT_READ, "wake")
    buffers = {}
    # Objects imported so far are never collected: children share their pages with the zygote.
    gc.freeze()
    report({"ready": True, "pid": zygote_pid})

    def close_in_child():
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        selector.close()
        for fd in (wake_r, wake_w):
            os.close(fd)
        control.close()
        for conn in buffers:
            conn.close()

    while True:
        for key, _ in selector.select():
            if key.data == "accept":
                conn, _ = control.accept()
                buffers[conn] = b""
                selector.register(conn, selectors.EVENT_READ, "command")
            elif key.data == "wake":
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            else:
                conn = key.fileobj
                data = conn.recv(65536)
                if not data:
                    selector.unregister(conn)
                    del buffers[conn]
                    conn.close()
                    continue
                buffers[conn] += data
                while b"\n" in buffers[conn]:
                    line, buffers[conn] = buffers[conn].split(b"\n", 1)
                    reply, pidfd = command(line, handler, zygote_pid, close_in_child)
                    send_reply(conn, reply, pidfd)
        reap()


def command(line, handler, zygote_pid, close_in_child):
    """The reply to one command, and the pidfd to send with it (or None)."""
    try:
        cmd = json.loads(line)
        if cmd.get("op") != "fork":
            return {"error": "unknown command %r" % cmd.get("op")}, None
        return fork_instance(cmd, handler, zygote_pid, close_in_child)
    except Exception as e:
        return {"error": "%s: %s" % (type(e).__name__, e)}, None


def send_reply(conn, reply, pidfd):
    """One JSON line, with `pidfd` (closed here) attached to its first byte."""
    data = (json.dumps(reply) + "\n").encode()
    if pidfd is None:
        conn.sendall(data)
        return
    try:
        import array

        fds = array.array("i", [pidfd])
        sent = conn.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        conn.sendall(data[sent:])
    finally:
        os.close(pidfd)


def pidfd_open(pid):
    if hasattr(os, "pidfd_open"):
        return os.pidfd_open(pid)
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(SYS_PIDFD_OPEN, pid, 0)
    if fd < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return fd


def fork_instance(cmd, handler, zygote_pid, close_in_child):
    # The socket listens before the fork, so the instance accepts connections (they wait in the
    # backlog) as soon as the node reads the reply; no round trip from the child is needed.
    listener = bind(cmd["socket"])
    pid = os.fork()
    if pid:
        listener.close()
        # The pid means something only in this pid namespace (the node's differs): the node
        # learns which process it is from a pidfd, which is also safe from pid reuse.
        try:
            pidfd = pidfd_open(pid)
        except OSError:
            os.kill(pid, signal.SIGKILL)
            raise
        return {"pid": pid}, pidfd
    try:
        os.setsid()
        set_pdeathsig()
        if os.getppid() != zygote_pid:
            os._exit(1)  # the zygote died before PR_SET_PDEATHSIG took effect
        close_in_child()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for name, value in cmd.get("env", {}).items():
            os.environ[name] = value
        serve(listener, handler)
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(1)


def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def fail(text):
    sys.stderr.write("falak: %s\n" % text)
    sys.stderr.flush()
    report({"error": text})
    sys.exit(1)


def parse_args(argv):
    if not argv or argv[0] not in ("serve", "zygote"):
        sys.exit("usage: host.py serve|zygote --bundle DIR --handler MODULE.FUNCTION (--socket|--control) PATH")
    args = {"mode": argv[0]}
    rest = argv[1:]
    for i in range(0, len(rest) - 1, 2):
        args[rest[i]] = rest[i + 1]
    needed = ["--bundle", "--handler", "--socket" if argv[0] == "serve" else "--control"]
    missing = [n for n in needed if n not in args]
    if missing:
        sys.exit("host.py %s: missing %s" % (argv[0], ", ".join(missing)))
    return args


def main():
    args = parse_args(sys.argv[1:])
    if args["mode"] == "serve":
        serve_main(args)
    else:
        zygote_main(args)


if __name__ == "__main__":
    main()
