"""Service benchmark: ``hyperret serve`` on the loopback interface against the library in-process.

    python tools/bench_serve.py --n 100000 --dim 768 --seconds 10 --soak 60 --json serve.json

Builds (once, cached under --data) a ``fast`` index of HySAC-like points with safety
bounds, starts ``hyperret serve`` in its own process, then for each policy (``off``,
``filter``) and each number of concurrent clients (1, 8, 32; threads with keep-alive
connections, one vector query per request, k = 10) measures requests/s and the p50 /
p99 latency for --seconds. The in-process baseline is ``Index.search`` on one query at a
time in this process; the overhead is the server's p50 at one client minus it. Then a
soak: --soak seconds at 8 clients, counting errors and the server's resident memory at
the start and the end.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--soak", type=float, default=60.0)
    ap.add_argument("--data", default="/tmp/bench_serve")
    ap.add_argument("--search-slots", type=int, default=1, help="the server's --search-slots")
    ap.add_argument("--index", default=None, help="serve this index instead of the generated one")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    import httpx

    import hyperret
    from hyperret.testing.synthetic import make_queries

    path, pts = build(a)
    if a.index:  # another index of the same dimension (queries still from the generated points)
        path = Path(a.index)
    slots = ["--search-slots", str(a.search_slots)]
    queries = make_queries(pts, 2000, seed=5)
    ix = hyperret.Index.open(path)
    out: dict[str, Any] = {"args": vars(a), "runs": []}
    base = {}
    for policy in ("off", "filter"):
        for q in queries[:50]:
            ix.search(q[None], 10, policy=policy)  # warm
        lat = []
        for q in queries[:1000]:
            t = time.perf_counter()
            ix.search(q[None], 10, policy=policy)
            lat.append(time.perf_counter() - t)
        base[policy] = float(np.median(lat))
        print(f"in-process {policy}: p50 {base[policy] * 1e3:.3f} ms", flush=True)
    out["in_process_p50_ms"] = {k: v * 1e3 for k, v in base.items()}
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "hyperret.cli", "serve", str(path), "--port", str(port), *slots],
                              stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(url)
        for policy in ("off", "filter"):
            for c in (int(x) for x in a.clients.split(",")):
                r = load(url, queries, policy, c, a.seconds, httpx)
                r["overhead_p50_ms"] = r["p50_ms"] - base[policy] * 1e3 if c == 1 else None
                out["runs"].append(r)
                extra = f", overhead p50 {r['overhead_p50_ms']:.3f} ms" if c == 1 else ""
                print(f"{policy} x{c}: {r['rps']:,.0f} req/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
                      f"errors {r['errors']}{extra}", flush=True)
        rss0 = rss_mb(server.pid)
        soak = load(url, queries, "off", 8, a.soak, httpx)
        soak["rss_start_mb"], soak["rss_end_mb"] = rss0, rss_mb(server.pid)
        out["soak"] = soak
        print(f"soak {a.soak:g} s x8: {soak['requests']:,} requests, errors {soak['errors']}, server RSS "
              f"{soak['rss_start_mb']:.0f} -> {soak['rss_end_mb']:.0f} MB", flush=True)
    finally:
        server.terminate()
        server.wait(10)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


def build(a: argparse.Namespace) -> tuple[Path, Any]:
    """The cached index (with bounds) and its points."""
    import hyperret
    from hyperret.geometry import lorentz
    from hyperret.safety import calibrate
    from hyperret.testing.synthetic import make_points

    # the distribution of bench_search.py's "synthetic" (its graph reaches the default recall)
    pts = make_points(a.n, a.dim, curv=1.0, n_concepts=max(32, a.n // 1000), intrinsic_dim=32, seed=11)
    path = Path(a.data) / f"serve-synthetic-{a.n}-{a.dim}"
    if not (path / "manifest.json").exists():
        cal = make_points(20_000, a.dim, curv=1.0, seed=2)
        b = calibrate(lorentz.radius(cal.space, 1.0), cal.modality, cal.unsafe, curv=1.0)
        t = time.perf_counter()
        with hyperret.Index.create(path, dim=a.dim, curv=1.0, preset="fast", bounds=b, modality="mixed") as ix:
            ix.add(pts.space, metadata={"modality": pts.modality, "caption": [f"row {i}" for i in range(a.n)]})
            ix.commit()
        print(f"built {path} in {time.perf_counter() - t:.1f} s", flush=True)
    return path, pts


def load(url: str, queries: np.ndarray, policy: str, clients: int, seconds: float, httpx: Any) -> dict[str, Any]:
    """``clients`` threads sending one query per request for ``seconds``: rate, latency, errors."""
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    stop = time.monotonic() + seconds
    bodies = [json.dumps({"vectors": [q.tolist()], "k": 10, "policy": policy, "modality": "text"})
              for q in queries[:500]]

    def client(i: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            j = i
            while time.monotonic() < stop:
                t = time.perf_counter()
                r = c.post("/search", content=bodies[j % len(bodies)], headers={"Content-Type": "application/json"})
                lat[i].append(time.perf_counter() - t)
                errors[i] += r.status_code != 200
                j += clients

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    every = np.concatenate([np.asarray(x) for x in lat]) * 1e3
    return {"policy": policy, "clients": clients, "requests": int(len(every)), "rps": len(every) / wall,
            "p50_ms": float(np.percentile(every, 50)), "p99_ms": float(np.percentile(every, 99)),
            "errors": int(sum(errors))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str, seconds: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("the server did not come up")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


if __name__ == "__main__":
    sys.exit(main())
