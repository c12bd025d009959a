"""Clients that hold connections without finishing requests, and ordinary requests beside them.

`hold(url, ...)` keeps `idle` connections that send nothing, `slow_headers` connections that send
a request's headers one byte at a time and `slow_bodies` connections that send full headers
(Content-Length 100000) and then the body one byte at a time. A connection the server closes is
opened again at once, as an attacker would, and the time the server took to cut it off is
kept. Meanwhile `ordinary` single-row v2 requests are sent one after another, each on a new
connection, and timed. Bounded in time and count; loopback addresses only.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

ROW = [19.99, 4.5, 2000.0, 7.0]
BODY = json.dumps({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": ROW}]})
SLOW_HEADER = b"POST /v2/models/demand/infer HTTP/1.1\r\nHost: localhost\r\nX-Padding: " + b"a" * 200


@dataclass
class Report:
    latencies_ms: list[float] = field(default_factory=list)
    answers: list[float] = field(default_factory=list)  # the demand probability of each answer
    failures: list[str] = field(default_factory=list)
    cut_after_s: dict[str, list[float]] = field(
        default_factory=lambda: {"idle": [], "header": [], "body": []})
    held_at_end: dict[str, int] = field(default_factory=dict)

    def p99_ms(self) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]

    def summary(self) -> str:
        cuts = {kind: (f"{len(times)} cut, median {statistics.median(times):.1f} s" if times else "none cut")
                for kind, times in self.cut_after_s.items()}
        return (f"{len(self.latencies_ms)} ordinary requests, {len(self.failures)} failed, "
                f"p50 {statistics.median(self.latencies_ms):.1f} ms, p99 {self.p99_ms():.1f} ms, "
                f"max {max(self.latencies_ms):.1f} ms; slow clients: {cuts}")


async def _slow(kind: str, host: str, port: int, until: float, gap: float, report: Report,
                stop: asyncio.Event):
    while time.monotonic() < until and not stop.is_set():
        opened = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.2)
            continue
        try:
            if kind == "body":
                writer.write(b"POST /v2/models/demand/infer HTTP/1.1\r\nHost: localhost\r\n"
                             b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
            trickle = b"" if kind == "idle" else (SLOW_HEADER if kind == "header" else b" " * 100000)
            position = 0
            while time.monotonic() < until and not stop.is_set():
                if trickle and position < len(trickle):
                    writer.write(trickle[position:position + 1])
                    position += 1
                await writer.drain()
                try:
                    await asyncio.wait_for(reader.read(1024), timeout=gap)
                except TimeoutError:
                    continue
                raise ConnectionResetError  # the server answered (a 408) or closed: cut off
        except (OSError, ConnectionError):
            report.cut_after_s[kind].append(time.monotonic() - opened)
            continue
        finally:
            writer.close()
        report.held_at_end[kind] = report.held_at_end.get(kind, 0) + 1


async def _ordinary(host: str, port: int, count: int, pause: float, report: Report):
    request = (f"POST /v2/models/demand/infer HTTP/1.1\r\nHost: localhost\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n"
               f"Connection: close\r\n\r\n{BODY}").encode()
    for _ in range(count):
        started = time.perf_counter()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=30)
            writer.write(request)
            answer = await asyncio.wait_for(reader.read(), timeout=30)
            writer.close()
            head, _, body = answer.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                report.failures.append(head.split(b"\r\n")[0].decode(errors="replace"))
            else:
                report.answers.append(json.loads(body)["outputs"][0]["data"][0])
        except (OSError, TimeoutError, ValueError) as error:
            report.failures.append(f"{type(error).__name__}: {error}")
        report.latencies_ms.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(pause)


async def _hold(url: str, idle: int, slow_headers: int, slow_bodies: int, seconds: float,
                ordinary: int, gap: float) -> Report:
    address = urlsplit(url)
    host, port = address.hostname, address.port
    report = Report()
    stop = asyncio.Event()
    until = time.monotonic() + seconds
    holders = [asyncio.create_task(_slow(kind, host, port, until, gap, report, stop))
               for kind, count in (("idle", idle), ("header", slow_headers), ("body", slow_bodies))
               for _ in range(count)]
    await asyncio.sleep(1.0)  # every slow connection is open before the ordinary requests start
    await _ordinary(host, port, ordinary, max(0.0, (seconds - 2.0) / max(ordinary, 1)), report)
    stop.set()
    await asyncio.gather(*holders)
    return report


def hold(url: str, idle: int = 64, slow_headers: int = 64, slow_bodies: int = 16, seconds: float = 12,
         ordinary: int = 200, gap: float = 1.0) -> Report:
    return asyncio.run(_hold(url, idle, slow_headers, slow_bodies, seconds, ordinary, gap))
