"""`gatgan serve` as a user runs it: the real CLI in its own process, behind a real socket. Many
concurrent clients all get their images (and the process does not grow), hundreds of malformed
bodies each get a 4xx JSON answer without hurting the server, and Ctrl-C stops it cleanly."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 60
REQUEST_TIMEOUT_S = 30  # a hung request fails the test instead of hanging it
TOTAL, WARMUP, CLIENTS = 200, 40, 8
MAX_RSS_GROWTH_KIB = 50 * 1024
MAX_BODY_BYTES = 64 * 1024  # the CLI's default limit
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VALID = {"class": "grey", "seeds": [11, 12, 13], "truncation": 0.7}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    """One `gatgan serve` process, its output in files (a pipe nobody reads could fill and block it)."""

    process: subprocess.Popen
    url: str
    log: Path

    @classmethod
    def start(cls, run: Path, folder: Path) -> Server:
        port, log = free_port(), folder / "serve.log"
        command = [sys.executable, "-m", "gatgan.cli", "serve", "--run", str(run), "--port", str(port),
                   "--log-level", "warning"]
        with log.open("wb") as output:
            process = subprocess.Popen(command, env=os.environ | {"OMP_NUM_THREADS": "1"}, stdout=output,
                                       stderr=subprocess.STDOUT)
        server = cls(process, f"http://127.0.0.1:{port}", log)
        server._wait_until_healthy()
        return server

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"gatgan serve exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)  # not up yet: poll again
        self.kill()
        pytest.fail(f"gatgan serve did not answer /health within {START_TIMEOUT_S} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS line")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=REQUEST_TIMEOUT_S)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    server = Server.start(tiny_run, tmp_path_factory.mktemp("serve"))
    yield server
    server.kill()


# ---------------------------------------------------------------------------------- load
def random_requests(count: int, seed: int = 0) -> list[dict]:
    """/generate bodies of 1-4 images, every class by name or index, both formats."""
    rng = random.Random(seed)
    return [{"class": rng.choice([0, 1, 2, "dark", "grey", "bright"]),
             "seeds": [rng.randrange(2**32) for _ in range(rng.randint(1, 4))],
             "truncation": rng.choice([1.0, 0.7]), "format": rng.choice(["json", "png"])} for _ in range(count)]


class Clients:
    """CLIENTS threads, each with its own connection, sending /generate bodies; a 503 (busy) is
    retried after its Retry-After, and counted."""

    def __init__(self, server: Server) -> None:
        self.server, self.local, self.busy = server, threading.local(), Counter()

    def send(self, request: dict) -> httpx.Response:
        if not hasattr(self.local, "client"):
            self.local.client = self.server.client()
        for _ in range(20):
            response = self.local.client.post("/generate", json=request)
            if response.status_code != 503:
                return response
            self.busy["503"] += 1
            time.sleep(float(response.headers["retry-after"]))
        raise AssertionError(f"still busy after 20 tries: {request}")

    def send_all(self, requests: list[dict]) -> list[httpx.Response]:
        with ThreadPoolExecutor(CLIENTS) as pool:
            return list(pool.map(self.send, requests))


def check_answer(request: dict, response: httpx.Response) -> None:
    assert response.status_code == 200, (request, response.text)
    if request["format"] == "png":
        assert response.content.startswith(PNG_SIGNATURE)
    else:
        assert [image["seed"] for image in response.json()["images"]] == request["seeds"]


def test_concurrent_clients_all_get_their_images_and_memory_stays_flat(server):
    requests, clients = random_requests(TOTAL), Clients(server)
    start = time.monotonic()
    answers = clients.send_all(requests[:WARMUP])
    rss_warm = server.rss_kib()
    answers += clients.send_all(requests[WARMUP:])
    rss_end, seconds = server.rss_kib(), time.monotonic() - start
    print(f"\n{TOTAL} requests from {CLIENTS} clients in {seconds:.1f} s; 503 retries: {clients.busy['503']}; "
          f"RSS after {WARMUP}: {rss_warm / 1024:.1f} MiB, after {TOTAL}: {rss_end / 1024:.1f} MiB "
          f"(+{(rss_end - rss_warm) / 1024:.1f} MiB)")
    for request, response in zip(requests, answers):
        check_answer(request, response)
    assert clients.busy["503"] == 0, "8 clients cannot fill a queue of 16"
    assert rss_end - rss_warm < MAX_RSS_GROWTH_KIB
    with server.client() as client:  # under load each client got its own images, as it would alone
        for request, response in zip(requests[::10], answers[::10]):
            assert client.post("/generate", json=request).content == response.content


# ---------------------------------------------------------------------------------- fuzz
WRONG_VALUES = [None, True, "x", [], {}, [[1]], {"a": 1}, -1, 1.5e300, "\x00", 2**64]
ODD_TEXT = ["\x00", "\u00e9", "\u2028", "\U0001f600", "\n", "\"", "\\", "\ud800", "\ufeff", "grey\x00"]
CONTENT_TYPES = ["text/plain", "application/xml", "multipart/form-data", "application/x-www-form-urlencoded",
                 "application/jsonx", "garbage", ""]  # none of them JSON: a valid body is still refused


def base_body(rng: random.Random) -> dict:
    """A valid body of either route with every field present, for the generators to spoil (sent to
    either route: a field of the other one is an unknown key there)."""
    if rng.random() < 0.5:
        return {"class": 1, "seeds": [1, 2], "truncation": 0.5, "guidance": 1.0, "format": "json", "columns": 2}
    return {"class": 1, "seeds": [1, 2], "steps": 3, "truncation": 0.5, "space": "z", "format": "json"}


def _random_bytes(rng):
    return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 2000)))


def _truncated_json(rng):
    text = json.dumps(base_body(rng))
    return text[:rng.randrange(len(text) - 1)]


def _deep_nesting(rng):
    depth = rng.choice([1_000, 10_000, 12_000])
    opening, closing = rng.choice([("[", "]"), ('{"a":', "}")])
    inner = opening * depth + "1" + closing * depth
    return inner if rng.random() < 0.5 else '{"class": ' + inner + ', "seeds": [1, 2]}'


def _huge_number(rng):
    body = base_body(rng)
    # (not 1e-400: it parses as 0.0, a valid truncation)
    literal = rng.choice(["1" + "0" * 400, "-1" + "0" * 400, "1e400", "-1e400", "9" * 5000])
    field = rng.choice(["class", "seeds", "truncation", "guidance", "columns", "steps"])
    text = json.dumps(body | {field: "@"}) if field != "seeds" else json.dumps(body | {"seeds": ["@", 1]})
    return text.replace('"@"', literal)


def _wrong_type(rng):
    body = base_body(rng)
    field = rng.choice(sorted(body))
    value = rng.choice([v for v in WRONG_VALUES if not (field == "columns" and v is None)])
    return json.dumps(body | {field: value})


def _odd_class_name(rng):
    name = "".join(rng.choice(ODD_TEXT) for _ in range(rng.randint(1, 8)))
    return json.dumps(base_body(rng) | {"class": name}, ensure_ascii=rng.random() < 0.5)  # escaped or raw


def _odd_key(rng):
    key = "".join(rng.choice(ODD_TEXT + ["k"]) for _ in range(rng.randint(1, 4)))
    return json.dumps(base_body(rng) | {key: 1}, ensure_ascii=rng.random() < 0.5)


def _long_string(rng):
    size = MAX_BODY_BYTES + rng.randint(-200, 200)
    return json.dumps(base_body(rng) | {"class": "a" * size})[:MAX_BODY_BYTES + 300]


def _invalid_utf8(rng):
    text = json.dumps(base_body(rng) | {"class": "@"}).encode()
    return text.replace(b"@", rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xe9t\xe9"]))


def _too_many(rng):
    body = base_body(rng)
    return json.dumps(body | {"seeds": list(range(rng.choice([65, 1000, 9000])))})


GENERATORS = [_random_bytes, _truncated_json, _deep_nesting, _huge_number, _wrong_type, _odd_class_name,
              _odd_key, _long_string, _invalid_utf8, _too_many]


def malformed_bodies(count: int, seed: int = 1) -> list[tuple[str, bytes, str]]:
    """(route, body, content type): each generator in turn with a JSON type, and every 11th a valid
    body under a type that is not JSON. A raw lone surrogate is sent as its (invalid) UTF-8 bytes."""
    rng = random.Random(seed)
    cases = []
    for i in range(count):
        route = rng.choice(["/generate", "/interpolate"])
        if i % 11 == 10:
            body, content_type = json.dumps(VALID), rng.choice(CONTENT_TYPES)
        else:
            body, content_type = GENERATORS[i % len(GENERATORS)](rng), "application/json"
        cases.append((route, body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body, content_type))
    return cases


def chunked(data: bytes, size: int = 8192):
    for start in range(0, len(data), size):
        yield data[start:start + size]


def test_malformed_bodies_get_a_4xx_json_error_and_leave_the_server_healthy(server):
    cases = malformed_bodies(300)
    with server.client() as client:
        before = client.post("/generate", json=VALID | {"format": "png"})
        assert before.status_code == 200
        statuses = Counter()
        for i, (route, body, content_type) in enumerate(cases):
            content = chunked(body) if i % 7 == 3 else body  # some without Content-Length
            try:
                response = client.post(route, content=content, headers={"content-type": content_type})
            except httpx.TransportError as error:
                pytest.fail(f"connection failed ({error!r}) for {route} {content_type!r} {body[:200]!r}")
            case = f"{route} {content_type!r} {body[:200]!r} -> {response.status_code} {response.text[:200]}"
            assert 400 <= response.status_code < 500, case
            assert response.headers["content-type"] == "application/json", case
            assert isinstance(response.json()["error"], str) and response.json()["error"], case
            statuses[response.status_code] += 1
        print(f"\n{len(cases)} malformed bodies: {dict(statuses)}")
        assert client.get("/health").json()["status"] == "ok"
        after = client.post("/generate", json=VALID | {"format": "png"})
        assert after.status_code == 200 and after.content == before.content


# ---------------------------------------------------------------------------------- stopping
def test_ctrl_c_stops_the_server_cleanly(tiny_run, tmp_path):
    """Its own server, so that the others' tests do not depend on running before this one."""
    server = Server.start(tiny_run, tmp_path)
    try:
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(10) == 0, server.output()
        assert "Traceback" not in server.output()
        with pytest.raises(httpx.TransportError):
            httpx.get(server.url + "/health", timeout=1)
    finally:
        server.kill()
