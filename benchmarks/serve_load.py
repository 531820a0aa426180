"""Load test of ``endorm serve`` on loopback: N concurrent clients x M requests, every answer checked.

1. In-process baseline: the same rows scored by ``EndogenousRewardModel.score_examples`` in this process
   (rows/s, and the reference scores every served answer is compared with).
2. ``endorm serve`` is started as a subprocess on 127.0.0.1 and an ephemeral port, with an API key.
3. Bad requests (no key, wrong key, malformed JSON, missing field, bad row, too many rows, oversize body)
   are sent and their status codes checked (401/401/422/422/422/413/413).
4. N clients send M requests each (half /score, half OpenRLHF /get_reward), with distinct rows; each answer
   is compared with the in-process score of its own rows (|diff| <= 1e-4, else "mismatched").

Everything is bounded: request count, a per-request timeout and a global deadline (no new requests after
it). Results are written to --out as JSON after each phase.

    OMP_NUM_THREADS=1 python benchmarks/serve_load.py --clients 64 --requests 10 --out /tmp/serve_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

TOL = 1e-4


def gsm8k_rows(n: int, full: bool = False) -> list[dict]:
    """n distinct rows from GSM8K test (shared data). Short by default: the question's first sentence and
    "The answer is N." (the load test measures serving overhead, not long-context speed); ``full`` uses the
    whole question and worked solution. Pairs are unique by construction."""
    from endorm.paths import shared_data_dir

    path = shared_data_dir() / "gsm8k" / "test.jsonl"
    data = [json.loads(line) for line in open(path, encoding="utf-8")]
    m = len(data)
    rows = []
    for k in range(n):
        q = data[k % m]["question"]
        a = data[(k + (k // m) * 17) % m]["answer"]
        if full:
            rows.append({"prompt": q, "response": a.split("####")[0].strip()})
        else:
            first = q.split(". ")[0].rstrip(".?") + ("." if k < m else f" (variant {k // m}).")
            rows.append({"prompt": first, "response": f"The answer is {a.split('####')[-1].strip()}."})
    return rows


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
    out.write_text(json.dumps(result, indent=2))


async def bad_requests(url: str, key: str, max_rows: int) -> list[dict]:
    import httpx

    auth = {"Authorization": f"Bearer {key}"}
    row = {"prompt": "hi", "response": "hello"}
    cases = [
        ("no key", "/score", {"json": {"rows": [row]}}, {}, 401),
        ("wrong key", "/score", {"json": {"rows": [row]}}, {"Authorization": "Bearer nope"}, 401),
        ("malformed JSON", "/score", {"content": b"{oops", "headers": {"content-type": "application/json"}}, auth, 422),
        ("missing field", "/get_reward", {"json": {"prompts": ["x"]}}, auth, 422),
        ("bad row", "/score", {"json": {"rows": [{"prompt": "x", "response": 5}]}}, auth, 422),
        ("too many rows", "/score", {"json": {"rows": [row] * (max_rows + 1)}}, auth, 413),
        ("oversize body", "/score", {"json": {"rows": [{"prompt": "x" * (2 * 1024 * 1024), "response": "y"}]}}, auth, 413),
    ]
    out = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        for name, path, kw, headers, want in cases:
            kw = dict(kw)
            kw["headers"] = {**kw.get("headers", {}), **headers}
            r = await c.post(path, **kw)
            out.append({"case": name, "status": r.status_code, "expected": want, "ok": r.status_code == want,
                        "detail": r.json().get("detail") if r.headers.get("content-type", "").startswith("application/json") else r.text[:200]})
    return out


async def load(url: str, key: str, requests: list[list[int]], rows: list[dict], queries: list[str],
               ref: list[float], clients: int, deadline: float, timeout: float) -> dict:
    import httpx

    lat: list[float] = []
    errors: list[str] = []
    mismatched = answered = not_sent = 0
    queue = list(enumerate(requests))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits,
                                 headers={"Authorization": f"Bearer {key}"}) as c:
        async def client(cid: int) -> None:
            nonlocal mismatched, answered, not_sent
            mine = queue[cid::clients]
            for j, (rid, idx) in enumerate(mine):
                if time.perf_counter() > deadline:
                    not_sent += len(mine) - j
                    return
                t0 = time.perf_counter()
                try:
                    if rid % 2:
                        r = await c.post("/get_reward", json={"query": [queries[i] for i in idx]})
                    else:
                        r = await c.post("/score", json={"rows": [rows[i] for i in idx]})
                except Exception as e:  # noqa: BLE001 - counted, not raised
                    errors.append(f"{type(e).__name__}: {e}")
                    continue
                lat.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
                    continue
                got = r.json()["rewards"]
                answered += 1
                if len(got) != len(idx) or any(abs(g - ref[i]) > TOL for g, i in zip(got, idx, strict=False)):
                    mismatched += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "answered": answered, "errors": len(errors), "error_samples": errors[:5],
            "mismatched": mismatched, "lost": len(requests) - answered - len(errors) - not_sent,
            "not_sent_deadline": not_sent, "latency_p50_ms": 1000 * percentile(lat, 50),
            "latency_p99_ms": 1000 * percentile(lat, 99), "latency_max_ms": 1000 * max(lat, default=0)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests", type=int, default=50, help="requests per client")
    ap.add_argument("--rows-per-request", type=int, default=1)
    ap.add_argument("--full-rows", action="store_true", help="whole GSM8K questions and solutions (long rows)")
    ap.add_argument("--model", default=None, help="default: SmolLM2-135M-Instruct (from the endorm cache)")
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--max-batch-rows", type=int, default=64)
    ap.add_argument("--deadline-s", type=float, default=900, help="no new requests after this long")
    ap.add_argument("--timeout-s", type=float, default=300, help="per-request timeout")
    ap.add_argument("--out", default="/tmp/serve_load.json")
    args = ap.parse_args()
    out = Path(args.out)
    threads = int(os.environ.get("OMP_NUM_THREADS", "0")) or None

    import torch

    from endorm import EndogenousRewardModel
    from endorm.io import row_to_example

    if threads:
        torch.set_num_threads(threads)
    n_req = args.clients * args.requests
    rows = gsm8k_rows(n_req * args.rows_per_request, args.full_rows)
    requests = [list(range(k * args.rows_per_request, (k + 1) * args.rows_per_request)) for k in range(n_req)]
    result: dict = {"command": " ".join([sys.executable.split("/")[-1]] + sys.argv), "started_utc":
                    time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "machine": {
                        "cpu_count": os.cpu_count(), "platform": platform.platform(),
                        "torch_threads": torch.get_num_threads(), "python": platform.python_version()},
                    "clients": args.clients, "requests_per_client": args.requests,
                    "rows_per_request": args.rows_per_request, "rows": len(rows),
                    "full_rows": args.full_rows, "load_average_at_start": os.getloadavg()}

    # 1. in-process baseline and reference scores
    rm = EndogenousRewardModel.from_pretrained(args.model)
    queries = [rm.tokenizer.apply_chat_template(
        [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}], tokenize=False)
        for r in rows]
    tokens = sum(len(rm.encode(row_to_example(r)).input_ids) for r in rows)
    t0 = time.perf_counter()
    ref = rm.score_examples([row_to_example(r, where=i) for i, r in enumerate(rows)])
    base_s = time.perf_counter() - t0
    result["in_process"] = {"wall_s": base_s, "rows_per_s": len(rows) / base_s, "tokens": tokens,
                            "batch_size": rm.config.batch_size}
    print(f"in-process: {len(rows)} rows ({tokens} tokens) in {base_s:.1f}s = {len(rows) / base_s:.1f} rows/s",
          flush=True)
    save(out, result)
    del rm

    # 2. the server
    port, key = free_port(), secrets.token_hex(16)
    env = {**os.environ, "ENDORM_API_KEY": key}
    cmd = [sys.executable, "-m", "endorm", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--max-rows", "256", "--max-body-mb", "1", "--max-wait-ms", str(args.max_wait_ms),
           "--max-batch-rows", str(args.max_batch_rows), "--log-level", "warning"]
    if args.model:
        cmd += ["--model", args.model]
    result["server_command"] = " ".join(cmd[1:])
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        for _ in range(240):  # bounded wait for the model to load
            if server.poll() is not None:
                raise RuntimeError(f"server exited: {server.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError("server did not come up within 120 s")

        # 3. bad requests
        result["bad_requests"] = asyncio.run(bad_requests(url, key, 256))
        bad_ok = sum(b["ok"] for b in result["bad_requests"])
        print(f"bad requests answered as expected: {bad_ok}/{len(result['bad_requests'])}", flush=True)
        save(out, result)

        # 4. the load
        deadline = time.perf_counter() + args.deadline_s
        res = asyncio.run(load(url, key, requests, rows, queries, ref, args.clients, deadline, args.timeout_s))
        served_rows = res["answered"] * args.rows_per_request
        res["rows_per_s"] = served_rows / res["wall_s"]
        res["ratio_to_in_process"] = res["rows_per_s"] / result["in_process"]["rows_per_s"]
        res["health"] = httpx.get(url + "/health", timeout=10).json()
        result["served"] = res
        result["load_average_at_end"] = os.getloadavg()
        result["finished_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        save(out, result)
        print(json.dumps(res, indent=2), flush=True)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
