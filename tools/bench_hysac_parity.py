"""How closely hyperret reproduces HySAC's reference code: embeddings and the ``hysac`` redirect.

    python tools/bench_hysac_parity.py [--queries 3000] [--dim 768]

1. Embeddings of the pinned-version fixture (``tests/fixtures/hysac_pinned``: a tiny
   HySAC written by transformers 4.31 + peft 0.4.0, with the embeddings HySAC's own
   forward computed): max absolute difference, text and image, and the image
   difference when the patch-embedding bias is dropped (hyperret before the fold).
2. The ``hysac`` redirect against the reference's ``traverse_to_safe_*`` (torch,
   float32, one query at a time, as in ``tests/hysac_reference.py``), per curvature:
   queries spread over radii and queries within 3e-6 (relative) of the target. For
   each: decisions that differ, moved points that are bit-identical, the largest
   difference in float32 ulps; beside it, the float64 rescale hyperret used before.
3. The gate, on generated HySAC-like data at several curvatures: how many of the
   unsafe queries the reference moves, hyperret's ``hysac`` mode moves, and the
   classifier-gated rule (hyperret before) moved.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from hysac_reference import points_at_radii, ref_move, ulps  # noqa: E402

from hyperret.geometry import lorentz  # noqa: E402
from hyperret.safety import Bounds, calibrate  # noqa: E402
from hyperret.safety.planner import make_plan  # noqa: E402
from hyperret.safety.traversal import hysac_target  # noqa: E402
from hyperret.testing.synthetic import make_points  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "hysac_pinned"
BIAS = "visual.base_model.model.vision_model.embeddings.patch_embedding.bias"


def embeddings() -> dict[str, float]:
    import tempfile

    import torch

    from hyperret.embed.encoder import HySACEncoder

    ref = np.load(FIXTURE / "reference.npz")
    arch = json.loads((FIXTURE / "arch.json").read_text())
    enc = HySACEncoder.from_checkpoint(FIXTURE / "hysac_model.pth", arch=arch)
    pixels = torch.from_numpy(ref["pixels"])
    out = {"text_max_abs": float(np.abs(enc.encode_text(list(ref["texts"])) - ref["text"]).max()),
           "image_max_abs": float(np.abs(enc.encode_pixels(pixels) - ref["image"]).max()),
           "image_abs_max_value": float(np.abs(ref["image"]).max())}
    sd = {k: v for k, v in torch.load(FIXTURE / "hysac_model.pth", weights_only=True).items() if k != BIAS}
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(sd, Path(tmp) / "no_bias.pth")
        dropped = HySACEncoder.from_checkpoint(Path(tmp) / "no_bias.pth", arch=arch).encode_pixels(pixels)
    out["image_max_abs_bias_dropped"] = float(np.abs(dropped - ref["image"]).max())
    return out


def _float64_rescale(q: np.ndarray, b: float, curv: float) -> tuple[np.ndarray, np.ndarray]:
    """hyperret's arithmetic before this change: float64 radius and target, float64 rescale."""
    t = b + (math.tanh((b - 0.8) / curv) + 1)
    x = q.astype(np.float64)
    n = np.linalg.norm(x, axis=1)
    moved = np.arcsinh(math.sqrt(curv) * n) / math.sqrt(curv) > t
    return np.where(moved[:, None], (t * x / n[:, None]).astype(np.float32), q), moved


def redirect(n: int, dim: int) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    rows = []
    rng = np.random.default_rng(1)
    for c0, b in ((0.1, 1.3), (0.7, 2.0), (1.0, 0.6), (3.0, 0.9)):
        log_c = float(np.float32(math.log(c0)))
        c = math.exp(log_c)
        t = hysac_target(b, c)
        bounds = Bounds.from_dict({"V": {"up_95": b}, "S": {"up_95": b}})
        for kind in ("spread", "near target"):
            radii = rng.uniform(0.2, 3 * t, n) if kind == "spread" else t * (1 + rng.uniform(-3e-6, 3e-6, n))
            q = points_at_radii(radii, dim, c, rng)
            ref = [ref_move(torch.from_numpy(x), b, log_c) for x in q]
            ref_m = np.array([m for _, m in ref])
            ref_q = np.stack([o.numpy() for o, _ in ref])
            plan = make_plan(q, curv=c, policy="redirect", modality="text", index_modality="image", bounds=bounds,
                             redirect_mode="hysac")
            ours = (plan.queries, np.array([p.moved for p in plan.plans]))
            for name, (out, m) in (("hyperret hysac (float32)", ours),
                                   ("float64 rescale (before)", _float64_rescale(q, b, c))):
                both = m & ref_m
                rows.append({"curv": c0, "queries": kind, "arithmetic": name, "n": n,
                             "moved_reference": int(ref_m.sum()), "decisions_differ": int((m != ref_m).sum()),
                             "bit_identical_moved": float((out[both] == ref_q[both]).all(axis=1).mean()),
                             "max_ulps": ulps(out[both], ref_q[both])})
    return rows


def gate(curv: float, *, constructed: bool, dim: int = 64, n: int = 400) -> dict:
    """Unsafe text queries redirected to images: the reference's moves, the ``hysac`` mode's, the gated rule's.

    Generated data (``make_points``, bounds calibrated on it), or a constructed case: radii
    spread over ``[0.2 t, 2 t + 2]`` and a text threshold 1.0 above the target ``t``.
    """
    import torch

    if constructed:
        b = 1.1
        t = hysac_target(b, curv)
        thr = {"radius": t + 1.0, "criterion": "constructed", "slope": 4.0, "center": t + 1.0}
        bounds = Bounds.from_dict({"S": {"up_95": b}, "V": {"up_95": b}, "thresholds": {"text": thr}})
        rng = np.random.default_rng(4)
        q = points_at_radii(rng.uniform(0.2 * t, 2 * t + 2, n), dim, curv, rng)
    else:
        cal = make_points(8000, dim, curv=curv, seed=3, unsafe_shift=1.0, n_concepts=100)
        bounds = calibrate(lorentz.radius(cal.space, curv), cal.modality, cal.unsafe, curv=curv)
        q = make_points(n, dim, curv=curv, seed=3, part=2, unsafe_shift=1.0, n_concepts=100, classes=("U",)).space
        b = bounds.stat("V", "up_95")
    log_c = math.log(curv)
    ref_m = np.array([ref_move(torch.from_numpy(x), b, log_c)[1] for x in q])
    plan = make_plan(q, curv=curv, policy="redirect", modality="text", index_modality="image", bounds=bounds,
                     redirect_mode="hysac")
    moved = np.array([p.moved for p in plan.plans])
    unsafe = np.array([bool(p.unsafe) for p in plan.plans])
    return {"data": "constructed" if constructed else "generated", "curv": curv, "queries": n,
            "target": hysac_target(b, curv), "text_threshold": bounds.threshold("text").radius,
            "reference_moves": int(ref_m.sum()), "hysac_mode_moves": int(moved.sum()),
            "classifier_gated_moved": int((moved & unsafe).sum()),
            "same_set_as_reference": bool((moved == ref_m).all())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=3000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = {"embeddings": embeddings(), "redirect": redirect(args.queries, args.dim),
           "gate": [gate(c, constructed=False) for c in (0.1, 1.0)]
           + [gate(c, constructed=True) for c in (0.1, 1.0, 3.0)]}
    if args.json:
        print(json.dumps(res, indent=1))
        return
    e = res["embeddings"]
    print(f"embeddings vs HySAC's forward (pinned versions): text {e['text_max_abs']:.2e}, image "
          f"{e['image_max_abs']:.2e} (values up to {e['image_abs_max_value']:.1f}); bias dropped: "
          f"image {e['image_max_abs_bias_dropped']:.2e}\n")
    print("| curv | queries | arithmetic | moved (reference) | decisions differ | moved bit-identical | max ulps |")
    print("|---|---|---|---|---|---|---|")
    for r in res["redirect"]:
        print(f"| {r['curv']:g} | {r['n']} {r['queries']} | {r['arithmetic']} | {r['moved_reference']} | "
              f"{r['decisions_differ']} | {100 * r['bit_identical_moved']:.1f}% | {r['max_ulps']} |")
    print("\n| data | curv | text queries | hysac target (norm) | text threshold (radius) | reference moves | "
          "hysac mode moves | classifier-gated (before) | same set as the reference |")
    print("|---|---|---|---|---|---|---|---|---|")
    for g in res["gate"]:
        print(f"| {g['data']} | {g['curv']:g} | {g['queries']} | {g['target']:.4g} | {g['text_threshold']:.4g} | "
              f"{g['reference_moves']} | {g['hysac_mode_moves']} | {g['classifier_gated_moved']} | "
              f"{g['same_set_as_reference']} |")

if __name__ == "__main__":
    main()
