"""How fast a layer's PyPI closure resolves as of a date (planner/pyclosure.py), three ways in one
run against the configured index, on the same requirements:

  pip-downloads  the dated view as before: no PEP 658 metadata served, so pip downloads every
                 candidate wheel to read its METADATA, and every resolved wheel again at the end
  cold           the dated view serves METADATA (PEP 658 file, else HTTP ranges) and fetches ahead
                 of pip, into an empty metadata cache
  warm           the same, with the cache the cold run filled

    python bench/pyclosure.py [--platform linux/amd64] [--python 3.10.12] [--as-of 2026-03-05] REQ...

Prints wall seconds, CPU seconds (this process + pip) and bytes received per way, and the ratios
to pip-downloads. Every way must give the same closure (exit 1 if not). Needs the index.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from planner.fetch import simple_index  # noqa: E402
from planner.pyclosure import BaseView, resolve_layer  # noqa: E402

DEFAULT = ["datasets", "accelerate", "transformers<5", "ray[default]", "wandb", "mlflow>=3.5.0"]


def _cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _rx() -> int:
    total = 0
    for line in Path("/proc/net/dev").read_text().splitlines()[2:]:
        name, _, rest = line.partition(":")
        if name.strip() != "lo":
            total += int(rest.split()[0])
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("requirements", nargs="*", default=DEFAULT)
    ap.add_argument("--platform", default="linux/amd64")
    ap.add_argument("--python", default="3.10.12")
    ap.add_argument("--as-of", default="2026-03-05")
    args = ap.parse_args()
    as_of = simple_index.parse_as_of(args.as_of)
    real_init = simple_index.DatedIndex.__init__

    def plain_init(self, cutoff, indexes=None, **_ignored):
        real_init(self, cutoff, indexes)

    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-pyclosure-") as tmp:
        for way in ("pip-downloads", "cold", "warm"):
            simple_index._PAGES.clear()  # every way fetches the pages itself
            simple_index.DatedIndex.__init__ = plain_init if way == "pip-downloads" else real_init
            t0, c0, r0 = time.perf_counter(), _cpu(), _rx()
            got = resolve_layer(list(args.requirements), BaseView((), "none"), platform=args.platform,
                                python=args.python, as_of=as_of, metadata_cache=Path(tmp) / "cache")
            results[way] = {"wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(_cpu() - c0, 1),
                            "rx_mb": round((_rx() - r0) / 1e6, 1),
                            "closure": sorted(f"{r.name}=={r.version}" for r in got)}
            print(f"{way:14} {results[way]['wall_s']:7.1f} s wall {results[way]['cpu_s']:6.1f} s cpu "
                  f"{results[way]['rx_mb']:8.1f} MB received  {len(got)} distributions", flush=True)
        simple_index.DatedIndex.__init__ = real_init
    base = results["pip-downloads"]
    for way in ("cold", "warm"):
        r = results[way]
        print(f"{way}/pip-downloads: wall {r['wall_s'] / base['wall_s']:.2f}, cpu {r['cpu_s'] / base['cpu_s']:.2f}, "
              f"received {r['rx_mb'] / max(base['rx_mb'], 0.1):.3f}")
    same = len({json.dumps(r["closure"]) for r in results.values()}) == 1
    print("same closure every way" if same else "CLOSURES DIFFER")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
