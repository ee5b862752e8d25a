"""Replicas behind HAProxy on loopback ports, and paced or closed-loop HTTP load against them.

Used by the container tests (tests/container) and the balanced benchmark (benchmarks/balanced.py). A replica is
a container of the image (`docker run`) or, where no Docker engine runs, a `bentoml serve` process of the
source tree; HAProxy runs from Debian's package with deploy/haproxy/haproxy.cfg. Every address is on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import csv
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from nids.serving.workers import worker_pids

REPO = Path(__file__).resolve().parents[1]
HAPROXY_CONFIG = REPO / "deploy" / "haproxy" / "haproxy.cfg"
SERVICE = yaml.safe_load((REPO / "bentofile.yaml").read_text())["service"]
READY_SECONDS = 90
# a container runs in the `required` auth mode (nids.serving.auth): every read and scoring call needs a viewer
# token; every replica started here has this one, and every client here sends it. Bulk requests whose flows raise
# more than 1,000 healing events need a caller authorised to enforce: the sensor token.
VIEWER_TOKEN = "replicas-viewer-token"
SENSOR_TOKEN = "replicas-sensor-token"
VIEWER = {"authorization": f"Bearer {VIEWER_TOKEN}"}
TOKENS = {"NIDS_VIEWER_TOKEN": VIEWER_TOKEN, "NIDS_SENSOR_TOKEN": SENSOR_TOKEN}


class StartError(RuntimeError):
    """A container or HAProxy did not come up; the message carries the end of its log."""


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} exited {result.returncode}: {result.stderr[-2000:]}")
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Replica(ABC):
    """A served instance on a 127.0.0.1 port: a container of the image, or a `bentoml serve` process."""

    name: str
    url: str
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, headers=VIEWER)

    @abstractmethod
    def running(self) -> bool: ...

    @abstractmethod
    def logs(self) -> str: ...

    @abstractmethod
    def stop(self) -> int:
        """SIGTERM, then the exit code once it has drained and exited."""

    @abstractmethod
    def remove(self) -> None:
        """Gone at once (SIGKILL), whatever state it is in."""

    @abstractmethod
    def pid(self) -> int:
        """The host PID of the server (`bentoml serve`, the arbiter whose children are the workers)."""

    def workers(self) -> dict[int, int]:
        """{worker id: host PID} of the server's live workers (zombies, dead but not yet reaped, excepted)."""
        return worker_pids(self.pid())

    def wait_for(self, path: str = "/readyz", seconds: float = READY_SECONDS) -> None:
        """Until GET path answers 200 (/livez: the server is up, ready or not)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not self.running():
                raise StartError(f"{self.name} exited:\n{self.logs()[-3000:]}")
            try:
                if httpx.get(f"{self.url}{path}", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise StartError(f"{self.name}: no 200 on {path} within {seconds:.0f} s:\n{self.logs()[-3000:]}")

    def await_start(self, wait: str | None) -> None:
        """wait_for(wait) unless None; removed again when it does not come up."""
        if wait is None:
            return
        try:
            self.wait_for(wait)
        except StartError:
            self.remove()
            raise


@dataclass
class Container(Replica):
    name: str
    url: str
    port: int
    volume: str | None = None

    def logs(self) -> str:
        result = docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def exec(self, *command: str) -> str:
        return docker("exec", self.name, *command).stdout.strip()

    def running(self) -> bool:
        return docker("inspect", "-f", "{{.State.Running}}", self.name, check=False).stdout.strip() == "true"

    def pid(self) -> int:
        """The host PID of the container's first process (the server's process tree hangs below it)."""
        return int(docker("inspect", "-f", "{{.State.Pid}}", self.name).stdout)

    def stop(self) -> int:
        """docker stop (SIGTERM, SIGKILL after 30 s); the container's exit code."""
        docker("stop", "-t", "30", self.name, timeout=60)
        return int(docker("inspect", "-f", "{{.State.ExitCode}}", self.name).stdout)

    def remove(self) -> None:
        docker("rm", "-f", "-v", self.name, check=False)  # -v: with its anonymous state volume


def start_container(
    image: str,
    *,
    volume: str | None = None,
    host_network: bool = False,
    wait: str | None = "/readyz",
    mounts: Sequence[str] = (),
    read_only: bool = False,
    memory: str | None = None,
    **env: str,
) -> Container:
    """`docker run -d` the image, then wait until GET wait answers 200 (None: do not wait).

    The container publishes its port 3000 on a free 127.0.0.1 port or, with host_network, listens on a free
    loopback port itself (PORT): the way to reach services that listen on the host's loopback only. read_only:
    a read-only root filesystem with a tmpfs on /tmp (docs/deploy.md); memory: its memory limit (`--memory`).
    """
    name = f"nids-{uuid.uuid4().hex[:10]}"
    port = free_port()
    env = {**TOKENS, **env}
    args = ["run", "-d", "--name", name]
    if host_network:
        args += ["--network", "host"]
        env = {"PORT": str(port), **env}
    else:
        args += ["-p", f"127.0.0.1:{port}:3000"]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    if volume is not None:
        args += ["-v", f"{volume}:/var/lib/nids"]
    for mount in mounts:
        args += ["-v", mount]
    if read_only:
        args += ["--read-only", "--tmpfs", "/tmp"]
    if memory is not None:
        args += ["--memory", memory]
    docker(*args, image)
    container = Container(name=name, url=f"http://127.0.0.1:{port}", port=port, volume=volume)
    container.await_start(wait)
    return container


@dataclass
class ServeProcess(Replica):
    """`bentoml serve` of the source tree in a session of its own, for machines without a Docker engine."""

    name: str
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def running(self) -> bool:
        return self.process.poll() is None

    def pid(self) -> int:
        return self.process.pid

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.running():
            os.killpg(self.process.pid, signal.SIGTERM)
        return self.process.wait(timeout=40)

    def remove(self) -> None:
        if self.running():
            workers = self.workers()  # circus starts each worker in a process group of its own, not the server's:
            os.killpg(self.process.pid, signal.SIGKILL)  # killed with it, they outlived every SIGKILLed server
            for pid in workers.values():
                with suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)  # with its prediction-log writer
            self.process.wait(timeout=10)


def start_process(home: Path, workdir: Path, *, wait: str | None = "/readyz", **env: str) -> ServeProcess:
    """`bentoml serve SERVICE` on a free 127.0.0.1 port with the model store `home`, state in `workdir`."""
    port = free_port()
    log = workdir / "server.log"
    environment = {
        **os.environ,
        "BENTOML_HOME": str(home),
        "NIDS_DATA_DIR": str(workdir / "var"),
        "NIDS_HEALING_POLICY_FILE": str(REPO / "config" / "healing.yaml"),
        **TOKENS,
        **env,
    }
    bentoml = Path(sys.executable).parent / "bentoml"
    command = [str(bentoml), "serve", SERVICE, "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=REPO, env=environment, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    replica = ServeProcess(
        name=f"bentoml serve :{port}", url=f"http://127.0.0.1:{port}", port=port, process=process, log=log
    )
    replica.await_start(wait)
    return replica


@dataclass(frozen=True)
class ServerStat:
    """One row of HAProxy's `show stat` for a server."""

    name: str
    status: str  # UP, DOWN, MAINT, ...
    selected: int  # lbtot: times the balancer picked it (retries included)


class Haproxy:
    """HAProxy (foreground, its own session) on deploy/haproxy/haproxy.cfg with the given replicas."""

    def __init__(self, replicas: Sequence[str], workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.socket = workdir / "haproxy.sock"
        self.log = workdir / "haproxy.log"
        env = {
            **os.environ,
            "NIDS_LB_BIND": f"127.0.0.1:{self.port}",
            "NIDS_REPLICA_1": replicas[0],
            "NIDS_REPLICA_2": replicas[1],
            "NIDS_LB_STATS_SOCKET": str(self.socket),
        }
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen(
                ["haproxy", "-db", "-f", str(HAPROXY_CONFIG)],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 20
        while not self._answers():  # the socket's file appears before HAProxy listens on it
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise StartError(f"haproxy did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def _answers(self) -> bool:
        try:
            return bool(self.command("show info"))
        except OSError:  # not there yet, or not listening yet
            return False

    def command(self, line: str) -> str:
        """One command on the runtime API socket."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.socket))
            sock.sendall(f"{line}\n".encode())
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def add_server(self, name: str, address: str) -> None:
        """A replica added at run time, health-checked like the configured ones (`add server`, HAProxy >= 2.6)."""
        for line in (f"add server replicas/{name} {address} check", f"enable health replicas/{name}"):
            self.command(line)
        self.command(f"enable server replicas/{name}")

    def stats(self) -> dict[str, ServerStat]:
        rows = csv.DictReader(self.command("show stat").lstrip("# ").splitlines())
        return {
            row["svname"]: ServerStat(row["svname"], row["status"], int(row["lbtot"] or 0))
            for row in rows
            if row["pxname"] == "replicas" and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def wait_status(self, server: str, status: str, seconds: float = 30) -> float:
        """Until the server's health state is status; the monotonic time it was seen."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if (stat := self.stats().get(server)) is not None and stat.status.startswith(status):
                return time.monotonic()
            time.sleep(0.05)
        raise TimeoutError(f"{server} not {status} within {seconds:.0f} s: {self.stats().get(server)}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)


@contextmanager
def haproxy(replicas: Sequence[str]) -> Iterator[Haproxy]:
    with tempfile.TemporaryDirectory(prefix="nids-haproxy-") as workdir:
        balancer = Haproxy(replicas, Path(workdir))
        try:
            yield balancer
        finally:
            balancer.stop()


# --- load -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """One request: when it was sent and answered (monotonic s), its status (0: no answer) and which replica."""

    sent: float
    done: float
    status: int
    replica: str | None
    error: str | None = None


async def _send(client: httpx.AsyncClient, path: str, body: bytes, outcomes: list[Outcome]) -> None:
    sent = time.monotonic()
    try:
        response = await client.post(path, content=body, headers={"content-type": "application/json"})
    except httpx.HTTPError as error:
        outcomes.append(Outcome(sent, time.monotonic(), 0, None, f"{type(error).__name__}: {error}"))
        return
    outcomes.append(Outcome(sent, time.monotonic(), response.status_code, response.headers.get("x-nids-replica")))


async def paced(
    url: str,
    path: str,
    body: bytes,
    rate: float,
    seconds: float,
    outcomes: list[Outcome] | None = None,
    token: str = VIEWER_TOKEN,
) -> list[Outcome]:
    """Open loop: one request every 1/rate s for `seconds`, whatever the answers; every outcome, by send time.
    `outcomes`, when given, receives each outcome as it comes (another thread may watch the load progress);
    `token`: the bearer token sent (another than the replicas' viewer token: a Compose deployment's)."""
    outcomes = [] if outcomes is None else outcomes
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    headers = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits, headers=headers) as client:
        start = time.monotonic()
        tasks = []
        for n in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
            tasks.append(asyncio.create_task(_send(client, path, body, outcomes)))
        await asyncio.gather(*tasks)
    return sorted(outcomes, key=lambda outcome: outcome.sent)


async def closed(url: str, path: str, body: bytes, users: int, seconds: float) -> list[Outcome]:
    """Closed loop: `users` clients each sending the next request as soon as the last one was answered."""
    outcomes: list[Outcome] = []
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=users)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits, headers=VIEWER) as client:

        async def user() -> None:
            while time.monotonic() < deadline:
                await _send(client, path, body, outcomes)

        await asyncio.gather(*(user() for _ in range(users)))
    return outcomes
