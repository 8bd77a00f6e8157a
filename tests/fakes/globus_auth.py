"""A fake Globus Auth (and Groups) that speaks real HTTP.

Globus cannot be reached here. The real `globus_sdk` code path is kept whole by
pointing it at this server through the SDK's own settings,
`GLOBUS_SDK_SERVICE_URL_AUTH` and `GLOBUS_SDK_SERVICE_URL_GROUPS`: the SDK sends
the requests it would send to Globus, and gets the answers Globus gives. Besides
the client-credentials grant it serves what a gateway acting as a resource server
calls: introspection, the dependent-token grant for Groups, and my_groups.
`stop()` and `start()` simulate an outage on the same port.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GROUPS_RESOURCE_SERVER = "groups.api.globus.org"
GROUPS_SCOPE = "urn:globus:auth:scope:groups.api.globus.org:view_my_groups_and_memberships"
ISSUER = "https://auth.globus.org"
DEPENDENT_GRANT = "urn:globus:auth:grant_type:dependent_token"


@dataclass
class FakeIdentity:
    """A Globus identity; the IdP defaults to one uuid per username domain, as one IdP per org."""

    username: str
    identity_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    identity_provider: str = ""
    groups: list[str] = field(default_factory=list)
    name: str = ""
    email: str = ""

    def __post_init__(self) -> None:
        idp = uuid.uuid5(uuid.NAMESPACE_DNS, self.username.rpartition("@")[2])
        self.identity_provider = self.identity_provider or str(idp)
        self.name = self.name or self.username.partition("@")[0].title()
        self.email = self.email or self.username


@dataclass
class _Issued:
    identity: FakeIdentity
    active: bool
    iat: int
    exp: int
    scope: str
    audience: list[str]
    session_id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class FakeGlobusAuth:
    """Knows one confidential client (the gateway) and the user tokens `issue` registers.

    `resource_server` and `resource_scope` default to the gateway's own client id and
    `https://auth.globus.org/scopes/<client_id>/all`; `issue` uses them unless given
    `scope`/`audience`. Introspection answers whatever audience a token was issued
    with, so the gateway's own audience check can be tested. Counters count every call.
    """

    client_id: str
    client_secret: str
    url: str = ""
    token_requests: list[dict[str, str]] = field(default_factory=list)
    resource_server: str = ""
    resource_scope: str = ""
    user_client_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    introspect_delay_s: float = 0.0
    introspections: Counter[str] = field(default_factory=Counter)
    dependent_grants: int = 0
    group_lookups: int = 0

    def __post_init__(self) -> None:
        self.resource_server = self.resource_server or self.client_id
        self.resource_scope = (
            self.resource_scope or f"https://auth.globus.org/scopes/{self.resource_server}/all"
        )
        self._lock = threading.Lock()
        self._issued: dict[str, _Issued] = {}
        self._groups_tokens: dict[str, FakeIdentity] = {}
        self._server: ThreadingHTTPServer | None = None
        self._port = 0

    def issue(  # noqa: PLR0913 -- keyword options mirror the token's introspection fields
        self,
        token: str,
        identity: FakeIdentity,
        *,
        active: bool = True,
        expires_in_s: float = 3600,
        scope: str | None = None,
        audience: list[str] | None = None,
    ) -> None:
        """Register (or replace) a user access token; negative `expires_in_s` gives a past exp."""
        iat = int(time.time())
        scope = self.resource_scope if scope is None else scope
        aud = [self.resource_server] if audience is None else list(audience)
        issued = _Issued(identity, active, iat, int(iat + expires_in_s), scope, aud)
        with self._lock:
            self._issued[token] = issued

    def start(self) -> None:
        """Listen (again) on the same port, so a restart ends a simulated outage."""
        if self._server is not None:
            return
        server = _Server(("127.0.0.1", self._port), _handler(self))
        self._port = server.server_address[1]
        self.url = f"http://127.0.0.1:{self._port}/"
        self._server = server
        # A short poll keeps stop() quick: shutdown() waits for the loop to notice.
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        """Close the listening socket, so connections are refused; safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def _client_ok(self, authorization: str) -> bool:
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        return authorization == f"Basic {expected}"

    def _active(self, token: str) -> _Issued | None:
        with self._lock:
            issued = self._issued.get(token)
        return issued if issued is not None and issued.active else None

    def answer(self, authorization: str, form: dict[str, str]) -> tuple[int, object]:
        """POST /v2/oauth2/token: client-credentials and dependent-token grants."""
        self.token_requests.append(form)
        grant = form.get("grant_type")
        if grant == DEPENDENT_GRANT:
            with self._lock:
                self.dependent_grants += 1
        if not self._client_ok(authorization):
            return 401, {"error": "invalid_client", "errors": [{"code": "UNAUTHORIZED"}]}
        if grant == "client_credentials":
            return 200, _client_credentials(form.get("scope", "").split())
        if grant != DEPENDENT_GRANT:
            return 400, {"error": "unsupported_grant_type"}
        issued = self._active(form.get("token", ""))
        if issued is None:
            return 400, {"error": "invalid_grant"}
        if form.get("scope") and GROUPS_SCOPE not in form["scope"].split():
            return 200, []  # no dependent scope asked for that this fake knows
        groups_token = secrets.token_urlsafe(24)
        with self._lock:
            self._groups_tokens[groups_token] = issued.identity
        # Globus answers this grant with a JSON list, one token per resource server.
        return 200, [_token(groups_token, GROUPS_RESOURCE_SERVER, GROUPS_SCOPE)]

    def introspect(self, authorization: str, form: dict[str, str]) -> tuple[int, object]:
        """POST /v2/oauth2/token/introspect, with `include` of identity_set_detail/session_info."""
        token = form.get("token", "")
        with self._lock:
            self.introspections[token] += 1
        time.sleep(self.introspect_delay_s)
        if not self._client_ok(authorization):
            return 401, {"error": "invalid_client"}
        issued = self._active(token)
        if issued is None:
            return 200, {"active": False}
        who = issued.identity
        names = {"username": who.username, "name": who.name, "email": who.email}
        body: dict[str, object] = {
            "active": True,
            "token_type": "Bearer",
            "scope": issued.scope,
            "client_id": self.user_client_id,
            **names,
            "exp": issued.exp,
            "iat": issued.iat,
            "nbf": issued.iat,
            "sub": who.identity_id,
            "aud": issued.audience,
            "iss": ISSUER,
            "identity_set": [who.identity_id],
        }
        include = {part.strip() for part in form.get("include", "").split(",")}
        if "identity_set_detail" in include:
            body["identity_set_detail"] = [
                {
                    "sub": who.identity_id,
                    "id": who.identity_id,
                    **names,
                    "identity_provider": who.identity_provider,
                    "identity_provider_display_name": who.username.rpartition("@")[2],
                    "status": "used",
                }
            ]
        if "session_info" in include:
            auth = {who.identity_id: {"idp": who.identity_provider, "auth_time": issued.iat}}
            body["session_info"] = {"session_id": issued.session_id, "authentications": auth}
        return 200, body

    def my_groups(self, authorization: str) -> tuple[int, object]:
        """GET /v2/groups/my_groups for the identity behind a dependent Groups token."""
        with self._lock:
            self.group_lookups += 1
            who = self._groups_tokens.get(authorization.removeprefix("Bearer "))
        if who is None:
            return 401, {"code": "AUTHENTICATION_ERROR", "detail": "invalid token"}
        membership = {"identity_id": who.identity_id, "username": who.username}
        return 200, [
            {
                "id": gid,
                "name": f"group-{gid[:8]}",
                "group_type": "regular",
                "my_memberships": [
                    {"group_id": gid, **membership, "role": "member", "status": "active"}
                ],
            }
            for gid in who.groups
        ]


def _token(access_token: str, resource_server: str, scope: str) -> dict[str, object]:
    """One token's document, as in every Globus Auth token response."""
    return {
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": 172800,
        "resource_server": resource_server,
        "scope": scope,
    }


def _client_credentials(scopes: list[str]) -> dict[str, object]:
    """One token per resource server, as Globus Auth answers a multi-scope request."""
    tokens = [_token(f"token-{i}", _resource_server(sc), sc) for i, sc in enumerate(scopes)]
    first, *others = tokens
    return {**first, "other_tokens": others, "expires_at": int(time.time()) + 172800}


def _resource_server(scope: str) -> str:
    """`https://auth.globus.org/scopes/<server>/all` -> `<server>`; openid and friends are Auth's."""
    return scope.rsplit("/", 2)[-2] if "/" in scope else "auth.globus.org"


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True  # rebind the same port right after stop(), past TIME_WAIT
    daemon_threads = True


def _handler(auth: FakeGlobusAuth) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", 0))
            form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
            authorization = self.headers.get("authorization", "")
            path = urllib.parse.urlsplit(self.path).path.rstrip("/")
            if path == "/v2/oauth2/token":
                self._reply(*auth.answer(authorization, form))
            elif path == "/v2/oauth2/token/introspect":
                self._reply(*auth.introspect(authorization, form))
            else:
                self._reply(404, {"error": "not_found"})

        def do_GET(self) -> None:
            if urllib.parse.urlsplit(self.path).path.rstrip("/") == "/v2/groups/my_groups":
                self._reply(*auth.my_groups(self.headers.get("authorization", "")))
            else:
                self._reply(404, {"error": "not_found"})

        def _reply(self, status: int, body: object) -> None:
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
    """Serve a fake for the `with` block; it is stopped even if the block fails."""
    auth = FakeGlobusAuth(client_id, client_secret)
    auth.start()
    try:
        yield auth
    finally:
        auth.stop()
