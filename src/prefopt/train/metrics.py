"""Metrics of a run: means over lists of every per-example metric, and metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from prefopt.data import read_jsonl
from prefopt.files import write_atomic
from prefopt.losses import LossOutput


class MetricMeans:
    """Means over examples of the loss and every per-example metric, skipping NaN (a metric
    undefined for an example, e.g. accuracy of an all-tied list)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, out: LossOutput) -> None:
        per_example = {key: v for key, v in out.metrics.items() if v.dim() == 1} | {
            "loss": out.loss.detach()
        }
        for key, value in per_example.items():
            defined = value[~torch.isnan(value)].float()
            self.sums[key] = self.sums.get(key, 0.0) + float(defined.sum())
            self.counts[key] = self.counts.get(key, 0) + defined.numel()

    def means(self) -> dict[str, float]:
        return {key: self.sums[key] / self.counts[key] for key in self.sums if self.counts[key]}


class MetricsLog:
    """metrics.jsonl; on resume, lines after the checkpoint's step are dropped so the file reads as
    if the run had never stopped."""

    def __init__(self, path: Path, keep_until: int, enabled: bool = True, sink=None):
        # `sink(record)` also receives every line (the experiment trackers)
        self.path, self.enabled, self.sink = path, enabled, sink
        if not enabled:
            return
        if keep_until >= 0 and path.exists():
            lines = [
                line
                for line in path.read_text().splitlines()
                if json.loads(line)["step"] <= keep_until
            ]
            write_atomic(path, "".join(line + "\n" for line in lines))
        elif keep_until < 0:
            path.unlink(missing_ok=True)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.sink is not None:
            self.sink(record)


def read_metrics(path: Path) -> list[dict]:
    return read_jsonl(path)


HEADLINE_METRICS = (
    "loss",
    "reward_accuracy",
    "ranking_accuracy",
    "reward_margin",
    "kendall_tau",
    "logps/chosen",
)


def headline(metrics: dict, key: str) -> float | None:
    """A metric by its plain name; in a loss mixture, the first loss's (`dpo/reward_accuracy`)."""
    if key in metrics:
        return metrics[key]
    return next((value for name, value in metrics.items() if name.endswith("/" + key)), None)


def brief(metrics: dict) -> str:
    """The headline metrics on one line (the progress bar's status)."""
    values = {key: headline(metrics, key) for key in HEADLINE_METRICS}
    return "  ".join(f"{key} {value:.4g}" for key, value in values.items() if value is not None)
