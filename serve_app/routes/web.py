"""GET /chat: the web chat page, one self-contained HTML file (serve_app/web/chat.html).

The page is a client of the gateway's own API, from the browser: the user's
API key stays in the tab's sessionStorage and goes out only as a bearer
token. It loads nothing from anywhere else, which its Content-Security-Policy
enforces.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

# Read once: the file ships as package data (pyproject's [tool.setuptools.package-data]).
CHAT_PAGE = files("serve_app").joinpath("web", "chat.html").read_text(encoding="utf-8")

# Inline script and style only; requests to this gateway only; no frames, forms or
# referrers. Nothing the page needs comes from another origin.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

router = APIRouter(tags=["web"])


@router.get("/chat", response_class=HTMLResponse, include_in_schema=False)
async def chat_page() -> HTMLResponse:
    """The chat page: models, collections, a streamed conversation."""
    return HTMLResponse(CHAT_PAGE, headers=_HEADERS)
