"""A loopback JSON API for Baton's REST source tests: the NYC taxi zone lookup, paginated.

    python3 zones_api.py --port P --zones taxi+_zone_lookup.csv --token T [--log FILE]

GET /v1/zones?page=N&per_page=M answers {"data": [...], "page": N} with records shaped like
{"location_id": 1, "borough": "EWR", "zone": "Newark Airport", "service": {"zone": "EWR"}}.
Requests without `Authorization: Bearer T` get 401. The very first request gets 429 with
`Retry-After: 1`, like a rate-limited API. Every request is logged as `GET /path STATUS`.
"""

import argparse
import csv
import http.server
import json
import threading
import urllib.parse

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--zones", required=True)
parser.add_argument("--token", required=True)
parser.add_argument("--log", default=None)
args = parser.parse_args()

with open(args.zones, newline="", encoding="utf-8") as f:
    ZONES = [
        {
            "location_id": int(row["LocationID"]),
            "borough": row["Borough"],
            "zone": row["Zone"],
            "service": {"zone": row["service_zone"] or None},
        }
        for row in csv.DictReader(f)
    ]

lock = threading.Lock()
requests = 0


def log(line):
    if args.log:
        with lock, open(args.log, "a", encoding="utf-8") as f:
            f.write(line + "\n")


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def answer(self, status, body, headers=()):
        data = json.dumps(body).encode()
        log(f"GET {self.path} {status}")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        global requests
        with lock:
            requests += 1
            first = requests == 1
        if first:
            return self.answer(429, {"error": "rate limited"}, [("Retry-After", "1")])
        if self.headers.get("Authorization") != f"Bearer {args.token}":
            return self.answer(401, {"error": "missing or wrong bearer token"})
        url = urllib.parse.urlparse(self.path)
        if url.path != "/v1/zones":
            return self.answer(404, {"error": "no such endpoint"})
        query = urllib.parse.parse_qs(url.query)
        page = int(query.get("page", ["1"])[0])
        size = int(query.get("per_page", ["100"])[0])
        start = (page - 1) * size
        self.answer(200, {"data": ZONES[start : start + size], "page": page})


server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
server.daemon_threads = True
server.serve_forever()
