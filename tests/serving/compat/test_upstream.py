"""What each patch of nids.serving.compat works around, shown on BentoML's (and asyncio's) own unpatched code.

Each test asserts that upstream still misbehaves: when one fails, upstream changed: the patch may be dropped (or
must be rewritten). TimeoutMiddleware's timer: tests/serving/compat/test_timeout.py.
"""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace
from typing import Any

import pytest
from _bentoml_impl.serde import JSONSerde, Payload
from _bentoml_impl.server.app import ServiceAppFactory
from bentoml._internal.runner.container import DataContainerRegistry, DefaultContainer
from bentoml.exceptions import ServiceUnavailable
from pydantic import BaseModel
from starlette.background import BackgroundTasks
from starlette.requests import Request

from nids.serving.compat import accept, listen, respawn, serde

pytestmark = pytest.mark.filterwarnings("ignore:.*__get_pydantic_core_schema__:DeprecationWarning")  # BentoML's


class Body(BaseModel):
    src_bytes: int


def test_upstream_json_keeps_the_last_of_repeated_keys() -> None:
    upstream = serde.UPSTREAM[2][0]  # JSONSerde.deserialize_model as BentoML ships it
    assert upstream(JSONSerde(), Payload((b'{"src_bytes": 1, "src_bytes": -5}',)), Body).src_bytes == -5


def test_upstream_endpoint_hides_the_cause_of_a_503() -> None:
    async def failing(name: str, request: Request) -> Any:
        raise ServiceUnavailable("the audit log cannot be opened")

    context = SimpleNamespace(response=SimpleNamespace(background=BackgroundTasks()))
    factory = SimpleNamespace(
        api_endpoint=failing, _add_response_headers=lambda response: None, service=SimpleNamespace(context=context)
    )
    request = Request({"type": "http", "method": "POST", "path": "/x", "headers": [], "query_string": b""})
    response = asyncio.run(ServiceAppFactory.api_endpoint_wrapper(factory, "x", request))  # type: ignore[arg-type]
    assert response.status_code == 503
    assert b"audit log" not in response.body and b"An unexpected error has occurred" in response.body


def test_upstream_batching_treats_a_column_batch_as_one_item() -> None:
    unregistered = type("Unregistered", (), {"__len__": lambda self: 1000})
    container = DataContainerRegistry.find_by_batch_type(unregistered)
    assert container is DefaultContainer  # what a FlowBatch gets without nids.serving.compat.batching
    assert container.get_batch_size(unregistered(), 0) == 1  # a 1,000-flow batch counted as one item


def test_upstream_never_restarts_workers_in_a_container() -> None:
    import inspect

    assert respawn.RESPAWN_FLAG in inspect.getsource(respawn.UPSTREAM[0])


def test_upstream_hands_workers_their_socket_as_fd_only() -> None:
    options = {option for param in listen.UPSTREAM[0].__globals__["main"].params for option in param.opts}
    assert listen.FD_ARGUMENT in options and "--host" not in options and "--port" not in options


def test_upstream_asyncio_takes_every_waiting_connection_in_one_wake_up() -> None:
    async def main() -> int:
        loop = asyncio.get_running_loop()
        accepted = 0

        class Counting(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                nonlocal accepted
                accepted += 1

        with socket.create_server(("127.0.0.1", 0)) as listening:
            listening.setblocking(False)
            clients = [socket.create_connection(listening.getsockname()) for _ in range(3)]
            server = SimpleNamespace(_attach=lambda: None, _detach=lambda: None, is_serving=lambda: True)
            server._active_count = 0
            accept.UPSTREAM[0](loop, Counting, listening, None, server, 100)  # one wake-up's callback
            for _ in range(5):  # let the transports attach
                await asyncio.sleep(0)
            for client in clients:
                client.close()
        return accepted

    assert asyncio.run(main()) == 3
