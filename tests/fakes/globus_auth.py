"""A fake Globus Auth that speaks real HTTP: the token endpoint of the client-credentials grant.

Globus Auth cannot be reached here. The real `globus_sdk` code path is kept
whole by pointing it at this server through the SDK's own setting,
`GLOBUS_SDK_SERVICE_URL_AUTH`: the SDK builds and sends the same request it
would send to auth.globus.org, and gets the answers Globus Auth gives.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class FakeGlobusAuth:
    """Knows one confidential client; records every token request it gets."""

    client_id: str
    client_secret: str
    url: str = ""
    token_requests: list[dict[str, str]] = field(default_factory=list)

    def answer(self, authorization: str, form: dict[str, str]) -> tuple[int, dict]:
        self.token_requests.append(form)
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if authorization != f"Basic {expected}":
            return 401, {"error": "invalid_client", "errors": [{"code": "UNAUTHORIZED"}]}
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        # One token per resource server, as Globus Auth answers a multi-scope request.
        scopes = form.get("scope", "").split()
        tokens = [
            {
                "access_token": f"token-{index}",
                "token_type": "Bearer",
                "expires_in": 172800,
                "resource_server": _resource_server(scope),
                "scope": scope,
            }
            for index, scope in enumerate(scopes)
        ]
        first, *others = tokens
        return 200, {**first, "other_tokens": others, "expires_at": int(time.time()) + 172800}


def _resource_server(scope: str) -> str:
    """`https://auth.globus.org/scopes/<server>/all` -> `<server>`; openid and friends are Auth's."""
    return scope.rsplit("/", 2)[-2] if "/" in scope else "auth.globus.org"


def _handler(auth: FakeGlobusAuth) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", 0))
            form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
            if self.path.rstrip("/") != "/v2/oauth2/token":
                status, body = 404, {"error": "not_found"}
            else:
                status, body = auth.answer(self.headers.get("authorization", ""), form)
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args) -> None:
            pass

    return Handler


@contextmanager
def running_fake_globus_auth(client_id: str, client_secret: str) -> Iterator[FakeGlobusAuth]:
    auth = FakeGlobusAuth(client_id, client_secret)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(auth))
    auth.url = f"http://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield auth
    finally:
        server.shutdown()
        server.server_close()
