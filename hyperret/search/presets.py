"""Index presets: small TOML files in the repository's ``indexes/`` folder.

One parser, one frozen dataclass. A preset names the candidate space (proxy), the
FAISS structure built over it, how many candidates the exact rerank sees and the
search-time knobs. ``hyperret.search.presets.list_presets()`` lists what is available.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ..errors import PresetError

DEFAULT_PRESET = "fast"
_ENV_PATH = "HYPERRET_PRESET_PATH"


@dataclass(frozen=True)
class Preset:
    """A resolved preset; its dict form travels in every manifest."""

    name: str
    description: str = ""
    proxy: str = "ip"  # candidate space: "ip", "mips_l2" or "tangent" (hyperret.search.proxies)
    factory: str = "Flat"  # FAISS index_factory string; may use {nlist}, {d}, {pq_m}
    k_factor: float = 2.0  # the rerank sees max(ceil(k * k_factor), k + k_extra) candidates
    k_extra: int = 16
    search: dict[str, int] = field(default_factory=dict)  # efSearch, nprobe, ...
    build: dict[str, int] = field(default_factory=dict)  # efConstruction, ...
    min_rows: int = 0  # below this many rows, a flat structure over the same proxy
    train_rows: int = 100_000  # most rows sampled to train IVF / PQ / SQ structures
    rebuild_growth: float = 4.0  # retrain once rows exceed this factor of the trained rows
    pad_to: int = 1  # proxy dimension rounded up to a multiple of this (PQ needs d % m == 0)
    pq_sub: int = 4  # dimensions per PQ sub-quantiser, for {pq_m}
    nlist: int = 0  # IVF lists; 0: about 4 sqrt(rows), at most rows / 39
    navigate: str = "proxy"  # HNSW only: "lorentz" walks the graph with the exact inner product
    #: HNSW walked in Lorentz order only: "proxy" lets FAISS build the graph over the proxy
    #: (fast); "lorentz" builds it in the exact metric (hyperret.search.hnsw; slower to build,
    #: keeps far-out points reachable)
    graph_metric: str = "proxy"
    #: Lorentz-walked graphs: "sq8" keeps 8-bit navigation codes of the rows beside the links
    #: (hyperret.search.codes; a quarter of the raw vectors' bytes), read by the walk instead
    #: of the float32 rows; "": the walk reads the rows
    codes: str = ""
    #: the recall@10 the search aims for when a call names neither ``recall`` nor ``ef``/``nprobe``
    #: (picked from the index's measured recall curve; 0: the preset's fixed ``search`` knobs)
    default_recall: float = 0.0

    def candidates_for(self, k: int) -> int:
        """Candidates the rerank sees for ``k`` results."""
        return max(int(math.ceil(k * self.k_factor)), k + self.k_extra)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "preset") -> Preset:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise PresetError(f"{where}: unknown preset keys {sorted(unknown)}")
        if "name" not in d:
            raise PresetError(f"{where}: preset has no name")
        try:
            p = cls(**d)
        except TypeError as e:
            raise PresetError(f"{where}: {e}") from e
        from .proxies import PROXIES  # local: keeps this module dependency-free

        if p.proxy not in PROXIES:
            raise PresetError(f"{where}: unknown proxy {p.proxy!r}; known: {sorted(PROXIES)}")
        if p.navigate not in ("proxy", "lorentz"):
            raise PresetError(f"{where}: navigate must be 'proxy' or 'lorentz', got {p.navigate!r}")
        if p.graph_metric not in ("proxy", "lorentz"):
            raise PresetError(f"{where}: graph_metric must be 'proxy' or 'lorentz', got {p.graph_metric!r}")
        if p.codes not in ("", "sq8"):
            raise PresetError(f"{where}: codes must be 'sq8' or '', got {p.codes!r}")
        if not 0.0 <= p.default_recall <= 1.0:
            raise PresetError(f"{where}: default_recall must be in [0, 1], got {p.default_recall!r}")
        if p.k_factor < 1 or p.k_extra < 0:
            raise PresetError(f"{where}: k_factor must be >= 1 and k_extra >= 0")
        return p


def _search_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get(_ENV_PATH, "").split(os.pathsep) if p]
    try:  # installed: indexes/ ships as the (namespace) package hyperret._indexes
        import hyperret._indexes as shipped

        dirs.extend(Path(p) for p in shipped.__path__)
    except ImportError:
        pass
    dirs.append(Path(__file__).resolve().parents[2] / "indexes")  # source checkout: hyperret/search/ -> root
    return dirs


def list_presets() -> dict[str, Path]:
    """Available preset names -> their TOML files (first found wins)."""
    out: dict[str, Path] = {}
    for d in _search_dirs():
        if d.is_dir():
            for f in sorted(d.glob("*.toml")):
                out.setdefault(f.stem, f)
    return out


def load_preset(name_or_path: str | None) -> Preset:
    """A preset by name (``exact``, ``fast``, ``compact`` …) or by path to a TOML file."""
    name_or_path = name_or_path or DEFAULT_PRESET
    path = Path(name_or_path)
    if path.suffix != ".toml":
        available = list_presets()
        if name_or_path not in available:
            raise PresetError(
                f"unknown preset {name_or_path!r}; available: {', '.join(sorted(available)) or 'none'}"
            )
        path = available[name_or_path]
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise PresetError(f"preset file {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise PresetError(f"preset file {path} is unreadable: {e}") from e
    data.setdefault("name", path.stem)
    return Preset.from_dict(data, where=str(path))
