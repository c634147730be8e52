"""The lines `gpu_check.sh` ends with: what its JSON results say, read from its output folder
(a part that did not run is left out).

    python benchmarks/gpu_summary.py gpu-check/
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def read(folder: Path, name: str):
    path = folder / name
    return json.loads(path.read_text()) if path.exists() else None


def steady(values: list[float]) -> float:
    """The mean after the first (warm-up) value, as rl_vs_trl.py reports it."""
    values = values[1:] or values
    return sum(values) / len(values)


def summary(folder: Path) -> list[str]:
    lines = []
    for workload, row in (read(folder, "vs_trl.json") or {}).items():
        lines.append(f"train {workload}: {row['speedup']:.2f}x TRL's speed at "
                     f"{row['memory_ratio']:.2f}x its memory; MFU prefopt "
                     f"{row['prefopt']['mfu']:.1%}, TRL {row['trl']['mfu']:.1%}")  # fmt: skip
    for workload, row in (read(folder, "rl_vs_trl.json") or {"results": {}})["results"].items():
        ours, theirs = row["prefopt"], row["trl"]
        speed = steady(theirs["seconds_per_step"]) / steady(ours["seconds_per_step"])
        lines.append(f"rl {workload}: {speed:.2f}x TRL's speed a step at "
                     f"{ours['peak_rss_gb'] / theirs['peak_rss_gb']:.2f}x its peak RSS; last "
                     f"reward {ours['reward'][-1]:.3f} vs {theirs['reward'][-1]:.3f}")  # fmt: skip
    for row in (read(folder, "generate.json") or {}).get("results", []):
        vllm = row.get("vllm", {}).get("seconds")
        fastest = row[row["fastest_transformers"]]["seconds"]
        lines.append(f"generate {row['workload']}: prefopt {row['prefopt']['seconds']:.1f} s, "
                     f"transformers {fastest:.1f} s"
                     + (f", vLLM {vllm:.1f} s" if vllm else ""))  # fmt: skip
    return lines


if __name__ == "__main__":
    print("\n".join(summary(Path(sys.argv[1]))))
