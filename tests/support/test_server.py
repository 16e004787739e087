"""A loopback HTTP peer for Baton's tests: serves files from a folder, can fail or stall on
purpose, and receives webhooks.

    python3 test_server.py --port P --dir D [--fail-first N] [--stall NAME] [--log FILE]

--fail-first N  the first N GETs of each file answer 503, like an overloaded server.
--fail-only S   ... but only for files whose name contains S.
--stall NAME    GETs of files whose name contains NAME wait 120 s before answering, so a test
                can kill the client in the middle of a run.
--log FILE      one line per request: `GET /path STATUS`, `HEAD /path` or `POST /path <json body>`.
--always-fail   every request answers 500 with a JSON error body, like a broken cloud API.
--fail-status N the status --always-fail answers with (default 500).

Every POST is accepted with 204 and logged: that is the webhook receiver.
"""

import argparse
import collections
import http.server
import json

import threading
import time

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--dir", required=True)
parser.add_argument("--fail-first", type=int, default=0)
parser.add_argument("--fail-only", default=None)
parser.add_argument("--stall", default=None)
parser.add_argument("--log", default=None)
parser.add_argument("--always-fail", action="store_true")
parser.add_argument("--fail-status", type=int, default=500)
args = parser.parse_args()

lock = threading.Lock()
gets = collections.Counter()


def log(line):
    if args.log:
        with lock, open(args.log, "a", encoding="utf-8") as f:
            f.write(line + "\n")


class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **kw):
        super().__init__(*a, directory=args.dir, **kw)

    def log_message(self, *a):
        pass

    def fail(self):
        """Answers --fail-status with an error body shaped like Google's JSON errors."""
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        status = args.fail_status
        log(f"{self.command} {self.path} {status}")
        message = "backend unavailable (test peer)" if status >= 500 else "refused (test peer)"
        body = json.dumps({"error": {"code": status, "message": message}}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if args.always_fail:
            return self.fail()
        with lock:
            gets[self.path] += 1
            count = gets[self.path]
        targeted = args.fail_only is None or args.fail_only in self.path
        if targeted and count <= args.fail_first:
            log(f"GET {self.path} 503")
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if args.stall and args.stall in self.path:
            log(f"GET {self.path} stalled")
            time.sleep(120)
        log(f"GET {self.path} 200")
        super().do_GET()

    def do_HEAD(self):
        if args.always_fail:
            return self.fail()
        log(f"HEAD {self.path}")
        super().do_HEAD()

    def do_PUT(self):
        self.fail()

    def do_DELETE(self):
        self.fail()

    def do_POST(self):
        if args.always_fail:
            return self.fail()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace")
        log(f"POST {self.path} {body}")
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()


server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
server.daemon_threads = True
server.serve_forever()
