"""What the commands that call a gateway share: where it is, the key, one client.

`first batch`, `first bulk` and `first rag` are clients of the gateway's
HTTP API like any other, so they work against any FIRST gateway: `--url`
(or $FIRST_URL) and `--api-key` (or $FIRST_API_KEY).
"""

from __future__ import annotations

from typing import Any

import click
import httpx

URL_OPTION = click.option(
    "--url",
    envvar="FIRST_URL",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="The gateway (also $FIRST_URL).",
)
API_KEY_OPTION = click.option(
    "--api-key", envvar="FIRST_API_KEY", help="Your API key or Globus token ($FIRST_API_KEY)."
)


class GatewayClient:
    """The gateway's routes; every failure becomes a one-line ClickException."""

    def __init__(self, url: str, api_key: str | None, timeout_s: float = 120):
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise click.ClickException(f"cannot reach {self.http.base_url}: {exc}") from None
        self.raise_for(response)
        return response

    @staticmethod
    def raise_for(response: httpx.Response) -> None:
        """A refusal as a one-line error: its status and the error's message."""
        if response.status_code < 400:
            return
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        raise click.ClickException(f"{response.status_code}: {message}")

    def get_json(self, path: str) -> dict:
        return self.call("GET", path).json()

    def post_json(self, path: str, body: dict) -> dict:
        return self.call("POST", path, json=body).json()
