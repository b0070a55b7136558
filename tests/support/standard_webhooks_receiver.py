"""A webhook receiver that verifies every push exactly as Standard Webhooks' reference code
does: the `standardwebhooks` package from PyPI (pinned in scripts/requirements-test.txt).

    python standard_webhooks_receiver.py SECRET [FAIL_FIRST]

SECRET is the contextd `sync.factory.secret`: a `whsec_...` secret goes to the library as is;
any other is the key's UTF-8 bytes (contextd's rule), given to the library as bytes. The
first FAIL_FIRST verified pushes are answered 500, so the sender retries them.

Prints `port N` once listening, then one JSON line per request: the Standard Webhooks
headers, whether the library verified it, and the changes' seqs. Answers 204 when verified,
401 when not.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

secret = sys.argv[1]
fail_first = int(sys.argv[2]) if len(sys.argv) > 2 else 0
webhook = Webhook(secret if secret.startswith("whsec_") else secret.encode())
verified_so_far = 0


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        global verified_so_far
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k: v for k, v in self.headers.items()}
        record = {
            "id": self.headers.get("webhook-id"),
            "timestamp": self.headers.get("webhook-timestamp"),
            "signature": self.headers.get("webhook-signature"),
        }
        try:
            payload = webhook.verify(body, headers)
            record["verified"] = True
            record["seqs"] = [c["seq"] for c in payload["changes"]]
        except WebhookVerificationError as e:
            record["verified"] = False
            record["error"] = str(e)
        status = 401
        if record["verified"]:
            verified_so_far += 1
            status = 500 if verified_so_far <= fail_first else 204
        record["status"] = status
        print(json.dumps(record), flush=True)
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"port {server.server_address[1]}", flush=True)
server.serve_forever()
