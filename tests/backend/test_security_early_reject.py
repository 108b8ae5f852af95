"""Early rejection, measured on a real `dualseg api` process over loopback: a 50 MB upload without a
token (or with a viewer's) is answered before the server reads the body; an oversized one is a 413
from its Content-Length alone, or as soon as a chunked body passes the cap. Request IDs appear in
every line of the API's log."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import LiveStack

BODY = 50 * 1024 * 1024
SENT_FIRST = 64 * 1024


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    tmp = tmp_path_factory.mktemp("early")
    s = LiveStack(tmp / "var", extra_env={"DUALSEG_MAX_UPLOAD_BYTES": str(10 * 1024 * 1024)})
    s.token("viewer"), s.token("annotator")  # through the real CLI (runs the migrations)
    s.start("api")
    yield s
    s.stop()


def _head(port: int, length: int | None, token: str | None, chunked: bool = False) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    lines = [
        "POST /api/v1/cases HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: multipart/form-data; boundary=xyz",
        "X-Request-ID: early-reject-test",
    ]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def _response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        block = sock.recv(65536)
        if not block:
            break
        data += block
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1") else 0
    return status, data


def _bytes_accepted_after(sock: socket.socket, budget: int) -> int:
    """Keep sending the rest of the body; count what the kernel accepts before the server's close."""
    sent = 0
    sock.settimeout(3)
    block = b"\0" * 65536
    try:
        while sent < budget:
            sent += sock.send(block)
    except OSError:
        pass
    return sent


@pytest.mark.parametrize("who", [None, "viewer"])
def test_50mb_upload_refused_before_the_body_is_read(stack: LiveStack, who: str | None) -> None:
    token = stack.token(who) if who else None
    sock = _head(stack.port, BODY, token)
    t0 = time.perf_counter()
    sock.sendall(b"--xyz\r\n" + b"\0" * (SENT_FIRST - 7))
    status, head = _response(sock)
    elapsed = time.perf_counter() - t0
    assert status == (401 if who is None else 403), head
    assert b"connection: close" in head.lower()
    assert elapsed < 2.0, f"the answer took {elapsed:.2f} s"
    accepted = _bytes_accepted_after(sock, BODY - SENT_FIRST)
    sock.close()
    # the server closed the connection: far less than the 50 MB went anywhere (socket buffers only)
    assert accepted < BODY // 4, accepted
    print(
        f"\n{who or 'anonymous'}: {status} after {elapsed * 1000:.1f} ms having sent {SENT_FIRST} of {BODY} "
        f"bytes; the rest was refused after {accepted} more bytes (socket buffers)"
    )


def test_content_length_over_the_cap_is_413_before_reading(stack: LiveStack) -> None:
    sock = _head(stack.port, BODY, stack.token("annotator"))
    status, head = _response(sock)  # nothing of the body was sent at all
    sock.close()
    assert status == 413, head


def test_chunked_body_over_the_cap_is_cut_off(stack: LiveStack) -> None:
    sock = _head(stack.port, None, stack.token("annotator"), chunked=True)
    part = (
        b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="big.bin"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n"
    )
    sock.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
    sent = 0
    chunk = b"\0" * 65536
    sock.settimeout(0.05)
    status, head = 0, b""
    try:
        while sent < BODY:
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sent += len(chunk)
            try:
                head = sock.recv(65536)
                if head:
                    break
            except TimeoutError:
                continue
    except OSError:
        pass
    sock.settimeout(5)
    if not head:
        status, head = _response(sock)
    sock.close()
    status = int(head.split(b" ", 2)[1])
    assert status == 413, head
    assert sent < 12 * 1024 * 1024 + 8 * 65536 + 4 * 1024 * 1024, sent  # the cap (10 MiB + 1 MiB) + buffers


def test_api_log_lines_carry_request_ids(stack: LiveStack) -> None:
    import httpx

    with stack.client("viewer") as c:
        assert c.get("/api/v1/cases", headers={"X-Request-ID": "log-line-test-1"}).status_code == 200
    time.sleep(0.3)
    lines = [line for line in (Path(stack.logs) / "api.log").read_text().splitlines() if line.strip()]
    assert any("log-line-test-1" in line and "/api/v1/cases" in line for line in lines), lines[-5:]
    assert any("request_id=early-reject-test" in line for line in lines)
    missing = [line for line in lines if "request_id=" not in line]
    assert not missing, missing[:5]
    del httpx


def test_burst_of_concurrent_requests_is_served_not_deadlocked(stack: LiveStack) -> None:
    """100 requests at once (more than the thread pool of 40 and the database pool of 15): before the
    request slots, threads waiting for a connection starved the dependency teardowns that would free
    one, and requests failed after the pool's 30 s timeout."""
    import asyncio

    import httpx

    token = stack.token("viewer")

    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(
            base_url=stack.base, timeout=90, limits=limits, headers={"Authorization": f"Bearer {token}"}
        ) as c:
            rs = await asyncio.gather(*(c.get("/api/v1/cases", params={"limit": 1}) for _ in range(100)))
        return [r.status_code for r in rs]

    t0 = time.perf_counter()
    statuses = asyncio.run(burst())
    elapsed = time.perf_counter() - t0
    assert statuses == [200] * 100, sorted(set(statuses))
    assert elapsed < 25, elapsed


def test_a_write_is_committed_before_its_answer(stack: LiveStack) -> None:
    """A client that acts on an answer sees the change: the session commits before the response is
    sent (FastAPI's default dependency scope committed after it, so a fresh token could be refused)."""
    stack.token("admin")
    with stack.client("admin") as admin:
        for n in range(25):
            r = admin.post("/api/v1/tokens", json={"name": f"race-{n}", "role": "viewer"})
            assert r.status_code == 201
            new = {"Authorization": f"Bearer {r.json()['token']}"}
            assert admin.get("/api/v1/cases", headers=new).status_code == 200, n
            assert admin.delete(f"/api/v1/tokens/{r.json()['id']}").status_code == 200
            assert admin.get("/api/v1/cases", headers=new).status_code == 401, n
