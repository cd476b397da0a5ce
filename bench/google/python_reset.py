#!/usr/bin/python3
"""Benchmark contender: Google's Python client (Debian's python3-googleapi)
calling dataportability authorization.reset once per token.

    bench/google/python_reset.py --endpoint https://localhost:18443 \
        --ca /path/ca.pem --count 500 [--discovery PATH] [--auth credentials|header]

Prints one JSON line on stdout:
    {"client":"googleapiclient-python","calls":N,"ok":K,"seconds":S,"setup_seconds":T,...}

"seconds" is the wall time of the call loop only; "setup_seconds" is the time
to import the libraries and build the service (interpreter start excluded).

How it is written (what a competent user of this client would do):
  * The service is built once, offline, with build_from_document() from the
    discovery document, its rootUrl pointed at --endpoint. Debian's
    googleapiclient is 1.7.12, whose build_from_document() has no
    client_options, so the document's rootUrl is edited instead.
  * One httplib2.Http(ca_certs=CA) is shared by every call, so the TLS
    connection is kept alive and reused.
  * Per token (default, --auth credentials), the documented way:
    google.oauth2.credentials.Credentials(token) wrapped around the one shared
    Http by google_auth_httplib2.AuthorizedHttp, passed as
    request.execute(http=...). The service is not rebuilt per token.
    --auth header is the shortcut some users take instead: set the
    Authorization header on the HttpRequest and execute it on the shared Http.
  * The request body is empty (reset() without body=), as in the API.
  * The client has no concurrent mode: calls are sequential.

A non-2xx answer is counted as not ok and the loop goes on; the exit status
is then 1. A transport error (server down, TLS verification failure, ...)
stops the run at once with a message on stderr and exit status 2.
"""
import time

_T0 = time.perf_counter()  # before the library imports: setup_seconds starts here

import argparse
import json
import os
import sys


def parse_args(argv):
    here = os.path.dirname(os.path.abspath(__file__))
    default_discovery = os.path.normpath(os.path.join(
        here, "..", "..", "..", "shared", "reference",
        "google-discovery-dataportability-v1.json"))
    p = argparse.ArgumentParser(
        description="Call dataportability authorization.reset with Google's Python client.")
    p.add_argument("--endpoint", required=True,
                   help="base URL of the server, e.g. https://localhost:18443")
    p.add_argument("--ca", required=True, help="PEM file of the CA that signed the server's cert")
    p.add_argument("--count", required=True, type=int, help="number of calls (tokens bench-token-1..N)")
    p.add_argument("--discovery", default=default_discovery,
                   help="discovery document (default: %(default)s)")
    p.add_argument("--auth", choices=("credentials", "header"), default="credentials",
                   help="per-call auth: Credentials+AuthorizedHttp (default) or a raw header")
    p.add_argument("--concurrency", type=int, default=1,
                   help="accepted for a uniform command line; only 1 is supported")
    a = p.parse_args(argv)
    if a.count < 1:
        p.error("--count must be at least 1")
    if a.concurrency != 1:
        p.error("the Python client has no concurrent mode: --concurrency must be 1")
    if not a.endpoint.startswith(("https://", "http://")):
        p.error("--endpoint must be an http(s) URL")
    if not os.path.isfile(a.ca):
        p.error("CA file not found: %s" % a.ca)
    if not os.path.isfile(a.discovery):
        p.error("discovery document not found: %s" % a.discovery)
    return a


def die(code, msg):
    sys.stderr.write("python_reset: %s\n" % msg)
    sys.exit(code)


def main(argv):
    args = parse_args(argv)

    try:
        import httplib2
        import google.oauth2.credentials
        import google_auth_httplib2
        from googleapiclient import discovery, errors
    except ImportError as e:
        die(3, "cannot import Google's client under %s (%s): run bench/google/install; Debian's python3-googleapi is for /usr/bin/python3" % (sys.executable, e))

    with open(args.discovery, encoding="utf-8") as f:
        doc = json.load(f)
    doc["rootUrl"] = args.endpoint.rstrip("/") + "/"
    # build_from_document() uses rootUrl+servicePath; keep baseUrl consistent too.
    doc["baseUrl"] = doc["rootUrl"] + doc.get("servicePath", "")

    http = httplib2.Http(ca_certs=args.ca)  # shared: one kept-alive connection
    service = discovery.build_from_document(doc, http=http)
    authorization = service.authorization()
    setup_seconds = time.perf_counter() - _T0

    Credentials = google.oauth2.credentials.Credentials
    AuthorizedHttp = google_auth_httplib2.AuthorizedHttp
    HttpError = errors.HttpError
    use_header = args.auth == "header"
    n = args.count
    ok = 0
    statuses = {}

    t0 = time.perf_counter()
    for i in range(1, n + 1):
        token = "bench-token-%d" % i
        try:
            if use_header:
                req = authorization.reset()
                req.headers["authorization"] = "Bearer " + token
                req.execute()
            else:
                authed = AuthorizedHttp(Credentials(token), http=http)
                authorization.reset().execute(http=authed)
            ok += 1
        except HttpError as e:
            st = getattr(e.resp, "status", 0)
            statuses[st] = statuses.get(st, 0) + 1
        except Exception as e:  # transport: refused, TLS, timeout, ...
            die(2, "call %d of %d failed: %s: %s" % (i, n, type(e).__name__, e))
    seconds = time.perf_counter() - t0

    print(json.dumps({
        "client": "googleapiclient-python",
        "calls": n,
        "ok": ok,
        "seconds": round(seconds, 6),
        "setup_seconds": round(setup_seconds, 6),
        "concurrency": 1,
        "auth": args.auth,
    }, separators=(",", ":")))
    sys.stdout.flush()
    if ok != n:
        die(1, "%d of %d calls were not 2xx (statuses: %s)" % (
            n - ok, n, ", ".join("%s x%d" % kv for kv in sorted(statuses.items()))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
