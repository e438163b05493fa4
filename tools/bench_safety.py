"""Safety-layer benchmark: classification, policies (safety, relevance, speed), evaluation protocol.

On generated HySAC-like data whose classes are separable (``unsafe_shift`` 1.0: an
unsafe query searched as it is finds unsafe images). Prints markdown tables for
docs/benchmarks.md; ``--json`` for scripts.

    python tools/bench_safety.py --n 100000 --dim 768 --queries 1000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

import hyperret
from hyperret.geometry import lorentz
from hyperret.safety import calibrate, classify
from hyperret.safety.evaluate import auroc, evaluate, markdown
from hyperret.testing.synthetic import make_points, make_quadruples


def _protocol(a: argparse.Namespace) -> dict:
    """HySAC's evaluation protocol on ``a.quadruples`` generated quadruples."""
    return evaluate(make_quadruples(a.quadruples, a.dim, curv=a.curv, seed=12, intrinsic_dim=32), a.curv)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="images in the index")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--curv", type=float, default=1.0)
    ap.add_argument("--concepts", type=int, default=1000)
    ap.add_argument("--presets", default="exact,fast")
    ap.add_argument("--quadruples", type=int, default=5000, help="ViSU-sized paired set for the protocol")
    ap.add_argument("--eval-only", action="store_true", help="only the evaluation protocol on the quadruples")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.eval_only:
        ev = _protocol(a)
        print(json.dumps(ev, default=float) if a.json else
              f"### Evaluation protocol ({a.quadruples} generated quadruples)\n\n{markdown(ev)}")
        return
    kw = dict(curv=a.curv, unsafe_shift=1.0, n_concepts=a.concepts, seed=11, intrinsic_dim=32)
    out: dict = {"args": vars(a)}

    cal = make_points(20_000, a.dim, **kw)
    b = calibrate(lorentz.radius(cal.space, a.curv), cal.modality, cal.unsafe, curv=a.curv)
    held = make_points(20_000, a.dim, part=1, **kw)
    c = classify(held.space, b, a.curv, held.modality)
    out["classification"] = {
        m: {"balanced_accuracy": float(0.5 * (c.unsafe[sel & held.unsafe].mean()
                                              + (~c.unsafe[sel & ~held.unsafe]).mean())),
            "auroc": auroc(c.score[sel], held.unsafe[sel]), "threshold": b.thresholds[m].radius}
        for m in ("text", "image") for sel in [held.modality == m]}

    imgs = make_points(a.n, a.dim, part=2, classes=("V", "G"), **kw)
    uq = make_points(a.queries, a.dim, part=3, classes=("U",), **kw)
    sq = make_points(a.queries, a.dim, part=4, classes=("S",), **kw)
    out["policies"] = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in a.presets.split(","):
            ix = hyperret.Index.create(Path(tmp) / preset, a.dim, curv=a.curv, preset=preset, bounds=b)
            t0 = time.perf_counter()
            ix.add(imgs.space)
            ix.commit()
            build = time.perf_counter() - t0
            ix.search(uq.space[:10], 10)  # compile and warm
            base = ix.search(sq.space, 10)
            runs = [("off", "geodesic", None), ("redirect", "geodesic", "low_05"), ("redirect", "geodesic", "avg"),
                    ("redirect", "geodesic", "up_95"), ("redirect", "hysac", None), ("filter", "geodesic", None),
                    ("block", "geodesic", None)]
            for pol, mode, target in runs:
                t0 = time.perf_counter()
                r = ix.search(uq.space, 10, policy=pol, modality="text", redirect_mode=mode, target=target)
                dt = time.perf_counter() - t0
                got = r.rows >= 0
                safe = float((~r.unsafe[got]).mean()) if got.any() else float("nan")
                same_c = imgs.concept[np.maximum(r.rows, 0)] == uq.concept[:, None]
                same = float(same_c[got].mean()) if got.any() else float("nan")
                s = ix.search(sq.space, 10, policy=pol, modality="text", redirect_mode=mode, target=target)
                out["policies"].append({
                    "preset": preset, "policy": pol, "mode": mode if pol == "redirect" else "",
                    "target": target or "", "qps": a.queries / dt, "safe_at_10": safe, "same_concept_at_10": same,
                    "moved": float(np.mean([p.moved for p in r.plans])),
                    "refills": float(np.mean([p.refills for p in r.plans])),
                    "safe_queries_identical": bool((s.ids == base.ids).all()), "build_s": build})
            ix.close()
    ev = _protocol(a)
    out["evaluation"] = ev
    if a.json:
        print(json.dumps(out, default=float))
        return
    print(f"## Safety layer (n={a.n}, dim={a.dim}, {a.queries} unsafe and {a.queries} safe text queries, k=10)\n")
    print("| modality | threshold | balanced accuracy | AUROC |\n|---|---|---|---|")
    for m, v in out["classification"].items():
        print(f"| {m} | {v['threshold']:.4f} | {v['balanced_accuracy']:.4f} | {v['auroc']:.4f} |")
    print("\n| preset | policy | mode | target | unsafe queries: safe hits @10 | same concept @10 | moved | "
          "refills | q/s | safe queries identical to off |\n|---|---|---|---|---|---|---|---|---|---|")
    for p in out["policies"]:
        print(f"| {p['preset']} | {p['policy']} | {p['mode']} | {p['target']} | {p['safe_at_10']:.4f} | "
              f"{p['same_concept_at_10']:.4f} | {p['moved']:.3f} | {p['refills']:.2f} | {p['qps']:.0f} | "
              f"{p['safe_queries_identical']} |")
    print(f"\n### Evaluation protocol ({a.quadruples} generated quadruples)\n")
    print(markdown(ev))


if __name__ == "__main__":
    main()
