"""The simulator's listening socket: answers go out without waiting for a delayed ACK."""

from __future__ import annotations

import socket

import httpx

from meterline.listen import bind
from meterline.simulator import SimulatorServer


def test_answers_go_out_without_waiting_for_the_clients_delayed_ack(
    sim: SimulatorServer,
) -> None:
    """TCP_NODELAY on accepted connections; without it every SDK call took ~50 ms (Nagle)."""
    with httpx.Client() as http:
        http.get(sim.url + "/v1/models")
        connections = list(sim._server.server_state.connections)
        assert connections
        for connection in connections:
            sock = connection.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_every_listener_meterline_binds_says_it_is_tcp() -> None:
    """asyncio turns on TCP_NODELAY only for sockets created with proto=IPPROTO_TCP."""
    sock = bind("127.0.0.1", 0, flag="--port")
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
