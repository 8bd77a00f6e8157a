"""The one base of every error an operator sees: a bad config, a channel, a store, a start.

Each such error's message is one line that says what is wrong and how to fix
it, so the `first` command line catches `FirstError` alone and prints it.
Errors a client of the API sees are another family: the OpenAI envelope
(deployments/openai_errors.py, serve_app/errors.py).
"""

from __future__ import annotations


class FirstError(Exception):
    """Something an operator must fix; `str()` is one line saying what and how."""
