"""The standalone gateway's own listening socket (serve_app/hosting.py)."""

from __future__ import annotations

import socket

import pytest

from serve_app.hosting import GatewayStartError, _listen


def test_accepted_connections_have_nagle_off():
    """uvloop leaves accepted connections as the listener made them; with Nagle on, a
    keep-alive client waited 40 ms for every answer's body."""
    listening = _listen("127.0.0.1", 0)
    listening.listen()
    with listening, socket.create_connection(listening.getsockname()) as client:
        accepted, _ = listening.accept()
        with accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            client.sendall(b"x")
            assert accepted.recv(1) == b"x"


def test_a_busy_port_is_a_one_line_error():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    with taken, pytest.raises(GatewayStartError, match=r"could not listen on 127\.0\.0\.1"):
        _listen("127.0.0.1", taken.getsockname()[1])
