"""Load, fault, overload and soak test of ``endorm serve`` on loopback: N concurrent clients x M requests,
every answer checked; clients that disconnect or time out; open-loop overload at ~3x capacity and a soak
at capacity; a SIGTERM under load. ``--phases`` picks them (default ``load,faults``).

1. Rows: N x M x rows-per-request DISTINCT rows from GSM8K test (shared data), of mixed lengths (without
   the load phase: ``--pool-rows``): a seeded ``--long-share`` of them are the whole question and worked
   solution, the rest a question's first sentence and "The answer is N.". Every ``--system-every``-th
   /score request carries a per-row system prompt (OpenRLHF's /get_reward has no system field, so its
   rows have none).
2. In-process baseline: the same rows (with their systems) scored by ``EndogenousRewardModel.score_examples``
   in this process (rows/s, and the reference every served reward is compared with).
3. ``endorm serve`` is started as a subprocess on 127.0.0.1 and an ephemeral port, with an API key
   (its stderr goes to ``<out>.server.log``, never to an undrained pipe).
4. Bad requests (no key, wrong key, malformed JSON, a body nested 100k deep, missing field, bad row, too
   many rows, oversize body, /openapi.json without the key) are sent and their status codes checked
   (401/401/422/422/422/422/413/413/401).
5. ``load``: N clients send M requests each (alternating /score and OpenRLHF /get_reward); every returned
   reward is compared with the in-process score of its own row (|diff| <= 1e-4, else "mismatched"); a row
   sent that got no reward back is "lost". Latency p50/p95/p99/max; the server's peak RSS (VmHWM).
6. ``faults``, each bounded in time and recorded with ``pass``: a client that closes the connection
   mid-body, one that closes it while waiting for the answer, one that closes it while its request is
   queued behind another (its rows must never be computed), one whose request times out on the client
   side (after each: the server is alive, /health's queued count returns to 0, and a probe request is
   answered correctly).
7. ``overload`` and ``soak``: requests sent open loop (at a fixed rate, whatever the answers do) at
   ``--overload-factor`` (3) x capacity for ``--overload-s`` (60) and ``--soak-factor`` (1) x capacity for
   ``--soak-s`` (600); capacity from ``--capacity``, the load phase, or a closed-loop calibration. Every
   request must be answered with correct rewards or refused with 503 + Retry-After, none lost; /health is
   probed every 100 ms from its own thread (p99 target 200 ms) and the server's RSS sampled.
8. With ``faults``, last: SIGTERM while a burst of requests is in flight (each must finish with correct
   rewards or fail cleanly with 503 or a connection error; the server must exit within ``--exit-bound-s``).

Everything is bounded: request count, a per-request timeout, a global deadline (no new requests after
it), a bounded wait for the server to come up, a time bound per fault phase, and a bounded drain after each
open-loop phase. Results are written to --out as JSON after each phase.

    OMP_NUM_THREADS=1 python benchmarks/serve_load.py --out records/serve/load_64x50.json   # records/README.md
    OMP_NUM_THREADS=1 python benchmarks/serve_load.py --phases overload,soak --out records/serve/overload_soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

TOL = 1e-4
SYSTEMS = [
    "You are a careful math tutor. Check every step.",
    "Answer briefly and precisely.",
    "You are a helpful assistant who explains arithmetic to children.",
    "Be honest: if you are unsure, say so.",
    "Reply as a strict grader would.",
]


def _gsm8k() -> list[dict]:
    from endorm.paths import shared_data_dir

    path = shared_data_dir() / "gsm8k" / "test.jsonl"
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def _row(data: list[dict], k: int, full: bool) -> dict:
    m = len(data)
    q = data[k % m]["question"]
    a = data[(k + (k // m) * 17) % m]["answer"]
    if full:
        return {"prompt": q, "response": a.split("####")[0].strip()}
    first = q.split(". ")[0].rstrip(".?") + ("." if k < m else f" (variant {k // m}).")
    return {"prompt": first, "response": f"The answer is {a.split('####')[-1].strip()}."}


def gsm8k_rows(n: int, full: bool = False) -> list[dict]:
    """n distinct rows from GSM8K test (shared data). Short by default: the question's first sentence and
    "The answer is N." (the load test measures serving overhead, not long-context speed); ``full`` uses the
    whole question and worked solution. Pairs are unique by construction."""
    data = _gsm8k()
    return [_row(data, k, full) for k in range(n)]


def mixed_rows(n: int, long_share: float, seed: int) -> tuple[list[dict], list[bool]]:
    """n distinct rows, a seeded ``long_share`` of them long (whole question + worked solution), spread at
    random positions; the rest short. Returns (rows, is_long)."""
    data = _gsm8k()
    n_long = min(n, max(0, round(n * long_share)))
    long_at = set(random.Random(seed).sample(range(n), n_long))
    is_long = [k in long_at for k in range(n)]
    return [_row(data, k, is_long[k]) for k in range(n)], is_long


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


def save(out: Path, result: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)


def proc_memory_mb(pid: int) -> dict:
    """VmRSS (now) and VmHWM (peak resident set since start) of a process, in MiB, from /proc (Linux)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, val = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(val.split()[0]) / 1024  # kB -> MiB
    except OSError:
        pass
    return {"rss_mb": out.get("VmRSS"), "peak_rss_mb": out.get("VmHWM")}


async def bad_requests(url: str, key: str, max_rows: int) -> list[dict]:
    import httpx

    auth = {"Authorization": f"Bearer {key}"}
    row = {"prompt": "hi", "response": "hello"}
    deep = b"[" * 100_000 + b"]" * 100_000
    cases = [
        ("no key", "POST", "/score", {"json": {"rows": [row]}}, {}, 401),
        ("wrong key", "POST", "/score", {"json": {"rows": [row]}}, {"Authorization": "Bearer nope"}, 401),
        ("malformed JSON", "POST", "/score", {"content": b"{oops", "headers": {"content-type": "application/json"}},
         auth, 422),
        ("nested 100k deep", "POST", "/score", {"content": deep, "headers": {"content-type": "application/json"}},
         auth, 422),
        ("missing field", "POST", "/get_reward", {"json": {"prompts": ["x"]}}, auth, 422),
        ("bad row", "POST", "/score", {"json": {"rows": [{"prompt": "x", "response": 5}]}}, auth, 422),
        ("too many rows", "POST", "/score", {"json": {"rows": [row] * (max_rows + 1)}}, auth, 413),
        ("oversize body", "POST", "/score", {"json": {"rows": [{"prompt": "x" * (2 * 1024 * 1024), "response": "y"}]}},
         auth, 413),
        ("docs without key", "GET", "/openapi.json", {}, {}, 401),
    ]
    out = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        for name, method, path, kw, headers, want in cases:
            kw = dict(kw)
            kw["headers"] = {**kw.get("headers", {}), **headers}
            r = await c.request(method, path, **kw)
            out.append({"case": name, "status": r.status_code, "expected": want, "ok": r.status_code == want,
                        "detail": r.json().get("detail") if r.headers.get("content-type", "").startswith("application/json") else r.text[:200]})
    return out


class Traffic:
    """What a request sends and how its answer is checked: /score rows (with their systems) or
    /get_reward queries (rows without a system, rendered with the model's chat template)."""

    def __init__(self, rows: list[dict], queries: list[str | None], ref: list[float]):
        self.rows, self.queries, self.ref = rows, queries, ref

    async def send(self, c, idx: list[int], get_reward: bool):
        if get_reward:
            return await c.post("/get_reward", json={"query": [self.queries[i] for i in idx]})
        return await c.post("/score", json={"rows": [self.rows[i] for i in idx]})

    def check(self, got: list, idx: list[int]) -> tuple[int, int, float]:
        """(rows answered, rows mismatched, max |diff|) for one answer."""
        n = bad = 0
        worst = 0.0
        for g, i in zip(got, idx, strict=False):
            n += 1
            d = abs(g - self.ref[i]) if isinstance(g, (int, float)) else float("inf")
            worst = max(worst, d)
            bad += d > TOL
        return n, bad, worst


async def load(url: str, key: str, requests: list[tuple[list[int], bool]], traffic: Traffic,
               clients: int, deadline: float, timeout: float) -> dict:
    import httpx

    lat: list[float] = []
    errors: list[str] = []
    c_ = {"answered": 0, "mismatched": 0, "not_sent": 0, "rows_sent": 0, "rows_answered": 0,
          "rows_mismatched": 0, "rows_not_sent": 0}
    worst = [0.0]
    queue = list(enumerate(requests))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits,
                                 headers={"Authorization": f"Bearer {key}"}) as c:
        async def client(cid: int) -> None:
            mine = queue[cid::clients]
            for j, (_rid, (idx, get_reward)) in enumerate(mine):
                if time.perf_counter() > deadline:
                    c_["not_sent"] += len(mine) - j
                    c_["rows_not_sent"] += sum(len(x[1][0]) for x in mine[j:])
                    return
                c_["rows_sent"] += len(idx)
                t0 = time.perf_counter()
                try:
                    r = await traffic.send(c, idx, get_reward)
                except Exception as e:  # noqa: BLE001 - counted, not raised
                    errors.append(f"{type(e).__name__}: {e}")
                    continue
                lat.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
                    continue
                got = r.json()["rewards"]
                c_["answered"] += 1
                n, bad, w = traffic.check(got, idx)
                c_["rows_answered"] += n
                c_["rows_mismatched"] += bad
                worst[0] = max(worst[0], w)
                if len(got) != len(idx) or bad:
                    c_["mismatched"] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "answered": c_["answered"], "errors": len(errors), "error_samples": errors[:5],
            "mismatched": c_["mismatched"], "lost": len(requests) - c_["answered"] - len(errors) - c_["not_sent"],
            "not_sent_deadline": c_["not_sent"],
            "rows_sent": c_["rows_sent"], "rows_answered": c_["rows_answered"],
            "rows_mismatched": c_["rows_mismatched"], "rows_lost": c_["rows_sent"] - c_["rows_answered"],
            "rows_not_sent_deadline": c_["rows_not_sent"], "max_abs_diff": worst[0],
            "latency_p50_ms": 1000 * percentile(lat, 50), "latency_p95_ms": 1000 * percentile(lat, 95),
            "latency_p99_ms": 1000 * percentile(lat, 99), "latency_max_ms": 1000 * max(lat, default=0)}


# ---- faults -------------------------------------------------------------------------------------------

def _raw_request(port: int, key: str, path: str, payload: dict) -> tuple[bytes, bytes]:
    body = json.dumps(payload).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return head, body


async def _disconnect(port: int, key: str, payload: dict, body_share: float, wait_s: float) -> dict:
    """Send the headers and ``body_share`` of the body, wait ``wait_s``, close the connection. Says whether
    an answer had already arrived (then the disconnect came too late to test anything)."""
    head, body = _raw_request(port, key, "/score", payload)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + body[: int(len(body) * body_share)])
    await writer.drain()
    await asyncio.sleep(wait_s)
    try:
        early = await asyncio.wait_for(reader.read(1), timeout=0.01)
    except asyncio.TimeoutError:
        early = b""
    writer.transport.abort()  # no FIN handshake politeness: the client is simply gone
    return {"body_bytes": len(body), "bytes_sent": int(len(body) * body_share), "waited_s": wait_s,
            "answer_arrived_before_close": bool(early)}


async def _healthy_after(c, server: subprocess.Popen, traffic: Traffic, probe: list[int], bound_s: float) -> dict:
    """After a fault: /health's queued count returns to 0 (bounded), a probe /score is answered correctly,
    the server process is alive."""
    t0 = time.perf_counter()
    queued = None
    while time.perf_counter() - t0 < bound_s:
        try:
            queued = (await c.get("/health")).json()["queued"]
        except Exception:  # noqa: BLE001 - retried until the bound
            queued = None
        if queued == 0:
            break
        await asyncio.sleep(0.2)
    drained_s = time.perf_counter() - t0
    probe_ok, probe_detail = False, None
    try:
        r = await asyncio.wait_for(traffic.send(c, probe, False), timeout=max(1.0, bound_s - drained_s))
        if r.status_code == 200:
            n, bad, w = traffic.check(r.json()["rewards"], probe)
            probe_ok = n == len(probe) and bad == 0
            probe_detail = {"rows": n, "mismatched": bad, "max_abs_diff": w}
        else:
            probe_detail = f"{r.status_code}: {r.text[:200]}"
    except Exception as e:  # noqa: BLE001 - recorded
        probe_detail = f"{type(e).__name__}: {e}"
    try:
        queued_after = (await c.get("/health")).json()["queued"]
    except Exception:  # noqa: BLE001
        queued_after = None
    alive = server.poll() is None
    return {"queued_drained": queued == 0, "drain_s": round(drained_s, 3), "probe_ok": probe_ok,
            "probe": probe_detail, "queued_after_probe": queued_after, "server_alive": alive,
            "pass": queued == 0 and probe_ok and queued_after == 0 and alive}


async def fault_disconnect(url: str, port: int, key: str, server, traffic: Traffic, big: list[int],
                           probe: list[int], body_share: float, wait_s: float, bound_s: float) -> dict:
    import httpx

    sent = await _disconnect(port, key, {"rows": [traffic.rows[i] for i in big]}, body_share, wait_s)
    async with httpx.AsyncClient(base_url=url, timeout=bound_s, headers={"Authorization": f"Bearer {key}"}) as c:
        return {**sent, **await _healthy_after(c, server, traffic, probe, bound_s)}


async def fault_client_timeout(url: str, key: str, server, traffic: Traffic, big: list[int], probe: list[int],
                               client_timeout_s: float, bound_s: float) -> dict:
    import httpx

    timed_out, outcome = False, None
    async with httpx.AsyncClient(base_url=url, timeout=client_timeout_s,
                                 headers={"Authorization": f"Bearer {key}"}) as c:
        try:
            r = await traffic.send(c, big, False)
            outcome = f"answered {r.status_code} within the client timeout"
        except httpx.TimeoutException as e:
            timed_out, outcome = True, type(e).__name__
        except Exception as e:  # noqa: BLE001 - recorded
            outcome = f"{type(e).__name__}: {e}"
    async with httpx.AsyncClient(base_url=url, timeout=bound_s, headers={"Authorization": f"Bearer {key}"}) as c:
        res = await _healthy_after(c, server, traffic, probe, bound_s)
    return {"client_timeout_s": client_timeout_s, "rows": len(big), "timed_out": timed_out, "outcome": outcome, **res}


async def fault_sigterm(url: str, key: str, server: subprocess.Popen, traffic: Traffic,
                        burst: list[tuple[list[int], bool]], exit_bound_s: float, request_timeout_s: float) -> dict:
    """A burst of concurrent requests; SIGTERM once the server is working on them; then a few late requests
    on new connections. Every request must end as 200 with correct rewards, 503, or a connection error."""
    import httpx

    outcomes: list[str] = []
    limits = httpx.Limits(max_connections=len(burst), max_keepalive_connections=len(burst))

    def classify(r_or_e, idx) -> str:
        if isinstance(r_or_e, httpx.TransportError):  # connect refused/reset, closed mid-answer, timeout
            return "connection_error"
        if isinstance(r_or_e, BaseException):
            return f"other: {type(r_or_e).__name__}: {r_or_e}"
        if r_or_e.status_code == 503:
            return "503"
        if r_or_e.status_code != 200:
            return f"other: {r_or_e.status_code}: {r_or_e.text[:200]}"
        n, bad, _ = traffic.check(r_or_e.json()["rewards"], idx)
        return "ok" if n == len(idx) and bad == 0 else "WRONG"

    async with httpx.AsyncClient(base_url=url, timeout=request_timeout_s, limits=limits,
                                 headers={"Authorization": f"Bearer {key}"}) as c:
        base = (await c.get("/health")).json()

        async def one(idx, get_reward):
            try:
                r = await traffic.send(c, idx, get_reward)
            except Exception as e:  # noqa: BLE001 - classified
                r = e
            outcomes.append(classify(r, idx))

        tasks = [asyncio.create_task(one(idx, g)) for idx, g in burst]
        # SIGTERM once the server has the burst in hand: some of it queued or answered (bounded wait)
        in_hand = None
        async with httpx.AsyncClient(base_url=url, timeout=5) as probe:
            t_wait = time.perf_counter()
            while time.perf_counter() - t_wait < 20:
                try:
                    h = (await probe.get("/health")).json()
                    if h["queued"] > 0 or h["requests"] > base["requests"]:
                        in_hand = h
                        break
                except Exception:  # noqa: BLE001 - retried until the bound
                    pass
                await asyncio.sleep(0.01)
        t_term = time.perf_counter()
        server.send_signal(signal.SIGTERM)
        exit_wait = asyncio.create_task(asyncio.to_thread(_wait_exit, server, exit_bound_s))
        await asyncio.sleep(0.3)  # the listening socket is closed by now: late requests must fail cleanly
        late: list[str] = []
        async with httpx.AsyncClient(base_url=url, timeout=request_timeout_s,
                                     headers={"Authorization": f"Bearer {key}"}) as c2:
            for idx, g in burst[:4]:
                try:
                    r = await traffic.send(c2, idx, g)
                except Exception as e:  # noqa: BLE001 - classified
                    r = e
                late.append(classify(r, idx))
        done, pending = await asyncio.wait(tasks, timeout=exit_bound_s + request_timeout_s)
        for t in pending:
            t.cancel()
        exit_code = await exit_wait
        exit_s = time.perf_counter() - t_term
    counts: dict[str, int] = {}
    for o in outcomes + late:
        key_ = o if not o.startswith("other") else "other"
        counts[key_] = counts.get(key_, 0) + 1
    hung = len(pending)
    return {"burst_requests": len(burst), "burst_rows": sum(len(i) for i, _ in burst),
            "health_when_signalled": in_hand, "finished_ok": outcomes.count("ok"),
            "failed_503": outcomes.count("503"), "failed_connection": outcomes.count("connection_error"),
            "wrong": outcomes.count("WRONG"), "other": [o for o in outcomes if o.startswith("other")][:5],
            "client_hung": hung, "late_requests": late, "exit_code": exit_code,
            "exit_s": round(exit_s, 3), "exit_bound_s": exit_bound_s,
            "pass": (exit_code is not None and hung == 0 and outcomes.count("WRONG") == 0
                     and not any(o.startswith("other") for o in outcomes + late) and "WRONG" not in late)}


def _wait_exit(server: subprocess.Popen, bound_s: float) -> int | None:
    try:
        return server.wait(timeout=bound_s)
    except subprocess.TimeoutExpired:
        return None


async def fault_disconnect_queued(url: str, port: int, key: str, server, traffic: Traffic, blocker: list[int],
                                  gone: list[int], probe: list[int], bound_s: float) -> dict:
    """A blocker request occupies the model; a second request is queued behind it and its client closes the
    connection. The server must drop the gone request's rows before they reach the model (``/health``:
    ``client_gone`` +1, ``dropped_rows`` + its rows, ``rows`` + the blocker's only) and answer the blocker."""
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=bound_s, headers={"Authorization": f"Bearer {key}"}) as c:
        before = (await c.get("/health")).json()
        blocking = asyncio.create_task(traffic.send(c, blocker, False))
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < bound_s:  # the model is computing the blocker
            if (await c.get("/health")).json()["computing_rows"] >= len(blocker):
                break
            await asyncio.sleep(0.02)
        head, body = _raw_request(port, key, "/score", {"rows": [traffic.rows[i] for i in gone]})
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head + body)
        await writer.drain()
        queued_behind = False
        while time.perf_counter() - t0 < bound_s and not blocking.done():
            h = (await c.get("/health")).json()
            if h["queued"] >= 1:
                queued_behind = True
                break
            await asyncio.sleep(0.02)
        writer.transport.abort()  # gone while waiting behind the blocker
        try:
            r = await asyncio.wait_for(blocking, bound_s)
            n, bad, _ = traffic.check(r.json()["rewards"], blocker) if r.status_code == 200 else (0, 0, 0)
            blocker_ok = r.status_code == 200 and n == len(blocker) and bad == 0
        except Exception:  # noqa: BLE001 - recorded
            blocker_ok = False
        await asyncio.sleep(0.2)
        after = (await c.get("/health")).json()
        res = await _healthy_after(c, server, traffic, probe, bound_s)
    delta = {k: after[k] - before[k] for k in ("client_gone", "dropped_rows", "rows")}
    dropped = delta["client_gone"] == 1 and delta["dropped_rows"] == len(gone) and delta["rows"] == len(blocker)
    return {"blocker_rows": len(blocker), "gone_rows": len(gone), "gone_was_queued": queued_behind,
            "blocker_answered_correctly": blocker_ok, "health_delta": delta, "gone_rows_never_computed": dropped,
            **res, "pass": res["pass"] and queued_behind and blocker_ok and dropped}


# ---- overload and soak ----------------------------------------------------------------------------------

class Sampler(threading.Thread):
    """Probes /health every ``health_every_s`` (latency, on its own connection and thread, so the load's
    event loop does not delay it) and samples the server's RSS every ``rss_every_s``, until stopped."""

    def __init__(self, url: str, pid: int, health_every_s: float = 0.1, rss_every_s: float = 1.0):
        super().__init__(daemon=True)
        self.url, self.pid, self.every, self.rss_every = url, pid, health_every_s, rss_every_s
        self.health_ms: list[float] = []
        self.health_failures: list[str] = []
        self.rss: list[tuple[float, float]] = []  # (s since start, MiB)
        self.stop = threading.Event()

    def run(self) -> None:
        import httpx

        t0 = last_rss = time.perf_counter()
        self.rss.append((0.0, proc_memory_mb(self.pid)["rss_mb"] or float("nan")))
        with httpx.Client(base_url=self.url, timeout=10) as c:
            while not self.stop.is_set():
                t = time.perf_counter()
                try:
                    r = c.get("/health")
                    if r.status_code == 200:
                        self.health_ms.append(1000 * (time.perf_counter() - t))
                    else:
                        self.health_failures.append(str(r.status_code))
                except Exception as e:  # noqa: BLE001 - counted
                    self.health_failures.append(type(e).__name__)
                if time.perf_counter() - last_rss >= self.rss_every:
                    last_rss = time.perf_counter()
                    self.rss.append((round(last_rss - t0, 2), proc_memory_mb(self.pid)["rss_mb"] or float("nan")))
                self.stop.wait(max(0.0, self.every - (time.perf_counter() - t)))
        self.rss.append((round(time.perf_counter() - t0, 2), proc_memory_mb(self.pid)["rss_mb"] or float("nan")))

    def summary(self) -> dict:
        h, rss = self.health_ms, [m for _, m in self.rss]
        half = len(rss) // 2
        return {"health_probes": len(h), "health_failures": len(self.health_failures),
                "health_failure_samples": self.health_failures[:5],
                "health_p50_ms": percentile(h, 50), "health_p99_ms": percentile(h, 99),
                "health_max_ms": max(h, default=float("nan")),
                "rss_start_mb": rss[0], "rss_end_mb": rss[-1], "rss_max_mb": max(rss),
                "rss_max_first_half_mb": max(rss[: max(1, half)]), "rss_max_second_half_mb": max(rss[half:]),
                "rss_samples": self.rss}


async def open_loop(url: str, key: str, traffic: Traffic, pool: list[int], rows_per_request: int, rate_rps: float,
                    duration_s: float, timeout_s: float, seed: int) -> dict:
    """Requests sent at a fixed rate (open loop: a slow answer does not slow the sender) for ``duration_s``,
    each ``rows_per_request`` random rows of ``pool`` through /score or (rows without a system) /get_reward.
    Every request ends as: ok (200, every reward equal to direct scoring), wrong (200, some reward differs),
    refused (503 with Retry-After), other (any other status, or 503 without Retry-After) or lost (no answer:
    a transport error or the client timeout). Then it waits (bounded) for the answers still due."""
    import httpx

    rng = random.Random(seed)
    counts = {"ok": 0, "wrong": 0, "refused": 0, "other": 0, "lost": 0}
    samples: dict[str, list[str]] = {"other": [], "lost": []}
    lat_ok: list[float] = []
    refused_detail: dict[str, int] = {}
    rows_ok = [0]
    limits = httpx.Limits(max_connections=4096, max_keepalive_connections=512)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits,
                                 headers={"Authorization": f"Bearer {key}"}) as c:
        async def one(idx: list[int], get_reward: bool) -> None:
            t = time.perf_counter()
            try:
                r = await traffic.send(c, idx, get_reward)
            except Exception as e:  # noqa: BLE001 - counted
                counts["lost"] += 1
                samples["lost"].append(f"{type(e).__name__}: {e}"[:200])
                return
            if r.status_code == 200:
                got = r.json()["rewards"]
                n, bad, _ = traffic.check(got, idx)
                ok = n == len(idx) == len(got) and bad == 0
                counts["ok" if ok else "wrong"] += 1
                if ok:
                    lat_ok.append(time.perf_counter() - t)
                    rows_ok[0] += n
            elif r.status_code == 503 and r.headers.get("retry-after", "").isdigit():
                counts["refused"] += 1
                why = r.json().get("detail", "").split(" (")[0].split(";")[0]
                refused_detail[why] = refused_detail.get(why, 0) + 1
            else:
                counts["other"] += 1
                samples["other"].append(f"{r.status_code}: {r.text[:200]}")

        tasks = []
        t0 = time.perf_counter()
        k = 0
        while (due := t0 + k / rate_rps) < t0 + duration_s:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            idx = rng.sample(pool, rows_per_request)
            get_reward = bool(k % 2) and all(traffic.queries[i] is not None for i in idx)
            tasks.append(asyncio.create_task(one(idx, get_reward)))
            k += 1
        send_s = time.perf_counter() - t0
        done, pending = await asyncio.wait(tasks, timeout=timeout_s + 30) if tasks else (set(), set())
        for t in pending:
            t.cancel()
        wall = time.perf_counter() - t0
    counts["lost"] += len(pending)
    return {"target_rate_rps": rate_rps, "sent": k, "sent_rate_rps": k / send_s, "send_window_s": round(send_s, 2),
            "wall_s": round(wall, 2), **counts, "refused_why": refused_detail,
            "rows_answered_ok": rows_ok[0], "goodput_rows_per_s": rows_ok[0] / wall,
            "latency_ok_p50_ms": 1000 * percentile(lat_ok, 50), "latency_ok_p99_ms": 1000 * percentile(lat_ok, 99),
            "latency_ok_max_ms": 1000 * max(lat_ok, default=float("nan")),
            "other_samples": samples["other"][:5], "lost_samples": samples["lost"][:5]}


def pressure_phase(url: str, key: str, server: subprocess.Popen, traffic: Traffic, pool: list[int], rpr: int,
                   capacity_rows_s: float, factor: float, duration_s: float, timeout_s: float, seed: int,
                   rss_every_s: float) -> dict:
    """``open_loop`` at ``factor`` x capacity with the /health and RSS sampler running; the server's counters
    before and after."""
    import httpx

    before = httpx.get(url + "/health", timeout=10).json()
    sampler = Sampler(url, server.pid, rss_every_s=rss_every_s)
    sampler.start()
    try:
        res = asyncio.run(open_loop(url, key, traffic, pool, rpr, factor * capacity_rows_s / rpr, duration_s,
                                    timeout_s, seed))
    finally:
        sampler.stop.set()
        sampler.join(30)
    after = httpx.get(url + "/health", timeout=10).json()
    keys = ("rows", "batches", "refused_queue_full", "expired", "client_gone", "dropped_rows", "internal_errors")
    return {"capacity_rows_per_s": capacity_rows_s, "factor": factor, "rows_per_request": rpr,
            "duration_s": duration_s, **res, **sampler.summary(),
            "server_delta": {k: after[k] - before[k] for k in keys}, "server_alive": server.poll() is None,
            "health_after": after}


def overload_targets(r: dict, health_p99_ms: float, rss_tolerance: float) -> dict:
    """The issue's overload targets: every request answered correctly or refused with 503, none lost, /health
    p99 under the bound, RSS bounded (the second half's peak no more than ``rss_tolerance`` above the first's)."""
    return {"none_wrong": r["wrong"] == 0, "none_lost_or_other": r["lost"] == 0 and r["other"] == 0,
            "all_accounted": r["ok"] + r["refused"] + r["wrong"] + r["other"] + r["lost"] == r["sent"],
            "some_refused": r["refused"] > 0, f"health_p99_under_{health_p99_ms:g}ms": r["health_p99_ms"] < health_p99_ms,
            "health_never_failed": r["health_failures"] == 0,
            "rss_bounded": r["rss_max_second_half_mb"] <= r["rss_max_first_half_mb"] * (1 + rss_tolerance),
            "offered_rate_reached": r["sent_rate_rps"] >= 0.9 * r["target_rate_rps"],
            "server_alive": r["server_alive"]}


async def calibrate(url: str, key: str, traffic: Traffic, pool: list[int], rpr: int, clients: int,
                    duration_s: float, timeout_s: float, seed: int) -> dict:
    """Capacity in rows/s: ``clients`` closed-loop clients (each sends its next request when answered) for
    ``duration_s``; rows answered correctly per second."""
    import httpx

    rng = random.Random(seed)
    rows_ok, statuses = [0], {}
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, headers={"Authorization": f"Bearer {key}"},
                                 limits=httpx.Limits(max_connections=clients)) as c:
        stop = time.perf_counter() + duration_s

        async def client() -> None:
            while time.perf_counter() < stop:
                idx = rng.sample(pool, rpr)
                r = await traffic.send(c, idx, False)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    n, bad, _ = traffic.check(r.json()["rewards"], idx)
                    rows_ok[0] += n if not bad else 0

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {"clients": clients, "wall_s": round(wall, 2), "rows_answered_ok": rows_ok[0],
            "rows_per_s": rows_ok[0] / wall, "statuses": statuses}


# ---- main ---------------------------------------------------------------------------------------------

PHASES = ("load", "faults", "overload", "soak")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phases", default="load,faults",
                    help=f"comma-separated, run in this order: {', '.join(PHASES)} (SIGTERM, the last fault, "
                         "always runs last)")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests", type=int, default=50, help="requests per client")
    ap.add_argument("--rows-per-request", type=int, default=1)
    ap.add_argument("--pool-rows", type=int, default=256,
                    help="distinct rows (scored in process as the reference) when the load phase does not run; "
                         "with it, the load's clients x requests x rows-per-request rows. Overload and soak draw "
                         "their requests at random from these rows")
    ap.add_argument("--long-share", type=float, default=0.1,
                    help="share of rows that are a whole GSM8K question and worked solution (the rest short)")
    ap.add_argument("--full-rows", action="store_true", help="every row long (same as --long-share 1)")
    ap.add_argument("--system-every", type=int, default=5,
                    help="every N-th /score request carries a per-row system prompt (0: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None, help="default: SmolLM2-135M-Instruct (from the endorm cache)")
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--max-batch-rows", type=int, default=64)
    ap.add_argument("--max-queue-rows", type=int, default=256, help="the server's --max-queue-rows")
    ap.add_argument("--request-timeout-s", type=float, default=120, help="the server's --request-timeout-s")
    ap.add_argument("--deadline-s", type=float, default=1800, help="no new load requests after this long")
    ap.add_argument("--timeout-s", type=float, default=300, help="per-request timeout")
    ap.add_argument("--fault-rows", type=int, default=32,
                    help="rows in the big request of the fault phases (the longest rows of the set)")
    ap.add_argument("--fault-bound-s", type=float, default=120, help="time bound of each fault phase's checks")
    ap.add_argument("--client-timeout-s", type=float, default=0.05, help="client timeout of the timeout fault")
    ap.add_argument("--shutdown-burst", type=int, default=32, help="concurrent requests in flight at SIGTERM")
    ap.add_argument("--graceful-timeout-s", type=float, default=20,
                    help="the server's --graceful-timeout-s (in-flight work allowed after SIGTERM)")
    ap.add_argument("--exit-bound-s", type=float, default=30, help="the server must exit this soon after SIGTERM")
    ap.add_argument("--capacity", type=float, default=None,
                    help="the server's capacity in rows/s for overload and soak (default: the load phase's served "
                         "rows/s, or a --calibrate-s closed-loop run with --clients clients)")
    ap.add_argument("--calibrate-s", type=float, default=30)
    ap.add_argument("--overload-factor", type=float, default=3.0, help="overload sends this many x capacity")
    ap.add_argument("--overload-s", type=float, default=60)
    ap.add_argument("--soak-factor", type=float, default=1.0, help="soak sends this many x capacity")
    ap.add_argument("--soak-s", type=float, default=600)
    ap.add_argument("--health-p99-ms", type=float, default=200, help="overload target for /health's p99")
    ap.add_argument("--rss-tolerance", type=float, default=0.1,
                    help="RSS is bounded if the later peak is at most this share above the earlier one")
    ap.add_argument("--no-faults", action="store_true", help="skip the fault phases (same as leaving them out)")
    ap.add_argument("--out", default="/tmp/serve_load.json")
    args = ap.parse_args()
    phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    if unknown := [x for x in phases if x not in PHASES]:
        ap.error(f"unknown phase(s) {', '.join(unknown)}; choose from {', '.join(PHASES)}")
    if args.no_faults and "faults" in phases:
        phases.remove("faults")
    out = Path(args.out)
    log_path = out.with_name(out.stem + ".server.log")
    threads = int(os.environ.get("OMP_NUM_THREADS", "0")) or None
    long_share = 1.0 if args.full_rows else args.long_share
    t_start = time.perf_counter()

    import torch

    from endorm import EndogenousRewardModel
    from endorm.io import row_to_example

    if threads:
        torch.set_num_threads(threads)
    rng = random.Random(args.seed)
    rpr = args.rows_per_request
    n_req = args.clients * args.requests if "load" in phases else -(-args.pool_rows // rpr)
    rows, is_long = mixed_rows(n_req * rpr, long_share, args.seed)
    requests: list[tuple[list[int], bool]] = []  # (row indices, via /get_reward)
    n_system = 0
    for k in range(n_req):
        idx, get_reward = list(range(k * rpr, (k + 1) * rpr)), bool(k % 2)
        if not get_reward and args.system_every and (k // 2) % args.system_every == 0:
            n_system += 1
            for i in idx:
                rows[i]["system"] = rng.choice(SYSTEMS)
        requests.append((idx, get_reward))
    keys = {(r.get("system"), r["prompt"], r["response"]) for r in rows}
    if len(keys) != len(rows):
        raise RuntimeError(f"rows are not distinct: {len(rows) - len(keys)} repeats")
    result: dict = {"command": " ".join([sys.executable.split("/")[-1]] + sys.argv), "started_utc":
                    time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "machine": {
                        "cpu_count": os.cpu_count(), "platform": platform.platform(),
                        "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                        "torch": torch.__version__},
                    "phases": phases, "clients": args.clients, "requests_per_client": args.requests,
                    "rows_per_request": rpr, "rows": len(rows), "distinct_rows": len(keys),
                    "full_rows": args.full_rows, "long_share": long_share, "rows_long": sum(is_long),
                    "requests_score": sum(not g for _, g in requests),
                    "requests_get_reward": sum(g for _, g in requests),
                    "requests_with_system": n_system, "rows_with_system": sum("system" in r for r in rows),
                    "seed": args.seed, "load_average_at_start": os.getloadavg()}

    # 1. in-process baseline and reference scores
    rm = EndogenousRewardModel.from_pretrained(args.model)
    # every row without a system can also go through /get_reward (its query rendered with the chat template)
    queries: list[str | None] = [None if "system" in r else rm.tokenizer.apply_chat_template(
        [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}], tokenize=False)
        for r in rows]
    examples = [row_to_example(r, where=i) for i, r in enumerate(rows)]
    lengths = [len(rm.encode(e).input_ids) for e in examples]
    t0 = time.perf_counter()
    ref = rm.score_examples(examples)
    base_s = time.perf_counter() - t0
    result["in_process"] = {"wall_s": base_s, "rows_per_s": len(rows) / base_s, "tokens": sum(lengths),
                            "tokens_short_mean": sum(n for n, lg in zip(lengths, is_long, strict=True) if not lg)
                            / max(1, len(rows) - sum(is_long)),
                            "tokens_long_mean": sum(n for n, lg in zip(lengths, is_long, strict=True) if lg)
                            / max(1, sum(is_long)),
                            "batch_size": rm.config.batch_size}
    print(f"in-process: {len(rows)} rows ({sum(lengths)} tokens, {sum(is_long)} long, "
          f"{result['rows_with_system']} with a system) in {base_s:.1f}s = {len(rows) / base_s:.1f} rows/s",
          flush=True)
    save(out, result)
    del rm
    traffic = Traffic(rows, queries, ref)

    # 2. the server
    port, key = free_port(), secrets.token_hex(16)
    env = {**os.environ, "ENDORM_API_KEY": key}
    max_rows = min(256, args.max_queue_rows)  # the server needs --max-queue-rows >= --max-rows
    cmd = [sys.executable, "-m", "endorm", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--max-rows", str(max_rows), "--max-body-mb", "1", "--max-wait-ms", str(args.max_wait_ms),
           "--max-batch-rows", str(args.max_batch_rows), "--max-queue-rows", str(args.max_queue_rows),
           "--request-timeout-s", str(args.request_timeout_s), "--graceful-timeout-s", str(args.graceful_timeout_s),
           "--log-level", "warning"]
    if args.model:
        cmd += ["--model", args.model]
    result["server_command"] = " ".join(cmd[1:])
    result["server_log"] = str(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = open(log_path, "wb")  # a file, not a pipe: a chatty server can never block on a full pipe
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log_file)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        for _ in range(240):  # bounded wait for the model to load
            if server.poll() is not None:
                raise RuntimeError(f"server exited: {log_path.read_text()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError("server did not come up within 120 s")
        result["server_memory_after_start"] = proc_memory_mb(server.pid)

        # 3. bad requests
        result["bad_requests"] = asyncio.run(bad_requests(url, key, max_rows))
        bad_ok = sum(b["ok"] for b in result["bad_requests"])
        print(f"bad requests answered as expected: {bad_ok}/{len(result['bad_requests'])}", flush=True)
        save(out, result)

        # 4. the load
        if "load" in phases:
            deadline = time.perf_counter() + args.deadline_s
            res = asyncio.run(load(url, key, requests, traffic, args.clients, deadline, args.timeout_s))
            served_rows = res["rows_answered"]
            res["rows_per_s"] = served_rows / res["wall_s"]
            res["ratio_to_in_process"] = res["rows_per_s"] / result["in_process"]["rows_per_s"]
            res["health"] = httpx.get(url + "/health", timeout=10).json()
            res.update({f"server_{k}": v for k, v in proc_memory_mb(server.pid).items()})
            result["served"] = res
            result["load_average_at_end"] = os.getloadavg()
            save(out, result)
            print(json.dumps(res, indent=2), flush=True)

        # 5. faults, but SIGTERM (it ends the server: last)
        longest = sorted(range(len(rows)), key=lambda i: -lengths[i])
        big = longest[: min(args.fault_rows, max_rows)]
        probe = [i for i in range(len(rows)) if "system" in rows[i]][:1] + [i for i in range(len(rows))
                                                                             if not is_long[i]][:2]
        if "faults" in phases:
            b = args.fault_bound_s
            gone = [i for i in range(len(rows)) if not is_long[i] and i not in probe][:3]
            faults: dict = {}
            result["faults"] = faults
            fault_phases = [
                ("disconnect_mid_body", lambda: fault_disconnect(url, port, key, server, traffic, big, probe,
                                                                 0.5, 0.3, b)),
                ("disconnect_waiting_for_answer", lambda: fault_disconnect(url, port, key, server, traffic, big,
                                                                           probe, 1.0, 0.3, b)),
                ("disconnect_while_queued", lambda: fault_disconnect_queued(url, port, key, server, traffic, big,
                                                                            gone, probe, b)),
                ("client_timeout", lambda: fault_client_timeout(url, key, server, traffic, big, probe,
                                                                args.client_timeout_s, b)),
            ]
            for name, phase in fault_phases:
                t0 = time.perf_counter()
                try:
                    faults[name] = asyncio.run(asyncio.wait_for(phase(), timeout=3 * b))
                except Exception as e:  # noqa: BLE001 - recorded as a failed phase
                    faults[name] = {"pass": False, "error": f"{type(e).__name__}: {e}"}
                faults[name]["wall_s"] = round(time.perf_counter() - t0, 3)
                print(f"fault {name}: {'pass' if faults[name]['pass'] else 'FAIL'}", flush=True)
                save(out, result)

        # 6. overload and soak: open-loop load at a multiple of the measured capacity
        if "overload" in phases or "soak" in phases:
            if args.capacity:
                capacity, source = args.capacity, "--capacity"
            elif "served" in result:
                capacity, source = result["served"]["rows_per_s"], "load phase"
            else:
                cal = asyncio.run(calibrate(url, key, traffic, list(range(len(rows))), rpr, args.clients,
                                            args.calibrate_s, args.timeout_s, args.seed + 2))
                result["calibration"] = cal
                capacity, source = cal["rows_per_s"], "calibration"
            result["capacity"] = {"rows_per_s": capacity, "source": source}
            print(f"capacity: {capacity:.2f} rows/s ({source})", flush=True)
            save(out, result)
            pool = list(range(len(rows)))
            client_timeout = args.request_timeout_s + 60  # the server's deadline answers first
            for name, factor, dur, rss_every in (("overload", args.overload_factor, args.overload_s, 1.0),
                                                 ("soak", args.soak_factor, args.soak_s, 5.0)):
                if name not in phases:
                    continue
                t0 = time.perf_counter()
                res = pressure_phase(url, key, server, traffic, pool, rpr, capacity, factor, dur, client_timeout,
                                     args.seed + 3, rss_every)
                res["targets"] = overload_targets(res, args.health_p99_ms, args.rss_tolerance)
                if name == "soak":
                    res["targets"].pop("some_refused")
                    res["targets"]["rss_end_within_tolerance_of_start"] = (
                        res["rss_end_mb"] <= res["rss_start_mb"] * (1 + args.rss_tolerance))
                res["pass"] = all(res["targets"].values())
                res["phase_wall_s"] = round(time.perf_counter() - t0, 2)
                result[name] = res
                save(out, result)
                print(f"{name}: sent {res['sent']} ({res['sent_rate_rps']:.1f}/s of {res['target_rate_rps']:.1f}/s), "
                      f"ok {res['ok']}, refused {res['refused']}, wrong {res['wrong']}, lost {res['lost']}, "
                      f"other {res['other']}; /health p99 {res['health_p99_ms']:.1f} ms; RSS "
                      f"{res['rss_start_mb']:.0f} -> {res['rss_end_mb']:.0f} MiB (max {res['rss_max_mb']:.0f}); "
                      f"{'pass' if res['pass'] else 'FAIL'}", flush=True)

        # 7. SIGTERM under load (ends the server)
        if "faults" in phases:
            frng = random.Random(args.seed + 1)
            faults = result["faults"]
            result["server_memory_before_sigterm"] = proc_memory_mb(server.pid)
            burst = [([i], bool(k % 2) and queries[i] is not None)
                     for k, i in enumerate(frng.sample(range(len(rows)), min(args.shutdown_burst, len(rows))))]
            t0 = time.perf_counter()
            try:
                faults["sigterm_under_load"] = asyncio.run(asyncio.wait_for(
                    fault_sigterm(url, key, server, traffic, burst, args.exit_bound_s, args.timeout_s),
                    timeout=args.exit_bound_s + args.timeout_s + 60))
            except Exception as e:  # noqa: BLE001 - recorded as a failed phase
                faults["sigterm_under_load"] = {"pass": False, "error": f"{type(e).__name__}: {e}"}
            faults["sigterm_under_load"]["wall_s"] = round(time.perf_counter() - t0, 3)
            print(f"fault sigterm_under_load: {'pass' if faults['sigterm_under_load']['pass'] else 'FAIL'}",
                  flush=True)
            save(out, result)
    finally:
        if server.poll() is None:
            result.setdefault("server_memory_at_end", proc_memory_mb(server.pid))
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=30)
        log_file.close()
        log = log_path.read_text(errors="replace") if log_path.exists() else ""
        result["server_log_tracebacks"] = log.count("Traceback")
        s = result.get("served", {})
        peaks = [m.get("peak_rss_mb") for m in (result.get("server_memory_after_start", {}), s and {
            "peak_rss_mb": s.get("server_peak_rss_mb")}, result.get("server_memory_before_sigterm", {}),
            result.get("server_memory_at_end", {})) if m and m.get("peak_rss_mb") is not None]
        result["server_peak_rss_mb"] = max(peaks, default=None)
        f = result.get("faults", {})
        targets: dict = {"bad_requests_as_expected": (all(b["ok"] for b in result["bad_requests"])
                                                      if "bad_requests" in result else None)}
        if "load" in phases:
            targets.update({
                "errors_0": s.get("errors") == 0, "rows_mismatched_0": s.get("rows_mismatched") == 0,
                "rows_lost_0": s.get("rows_lost") == 0 and s.get("rows_not_sent_deadline") == 0,
                "ratio_at_least_0.8": (s.get("ratio_to_in_process") or 0) >= 0.8})
        targets.update({f"fault_{k}": v.get("pass") for k, v in f.items()})
        targets.update({k: result[k]["pass"] if k in result else None for k in ("overload", "soak") if k in phases})
        result["targets"] = targets
        result["finished_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        result["total_wall_s"] = round(time.perf_counter() - t_start, 1)
        save(out, result)
        print(json.dumps({"targets": result["targets"], "server_peak_rss_mb": result["server_peak_rss_mb"],
                          "total_wall_s": result["total_wall_s"]}, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
