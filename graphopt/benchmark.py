"""Benchmark protocol (DESIGN.md): batch 1, state carried, warm-up, then repeats; per-step latency
measured end to end through Stream.step; median FPS and p50/p99 latency. A chunk model's step
handles frames_per_step frames, so its FPS is frames_per_step over the median step latency.

Runs are interleaved: every round steps each stream in turn, so slow phases of a shared machine hit
all rows alike and the ratios between rows stay meaningful.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass
class Row:
    name: str
    latencies_s: np.ndarray
    frames_per_step: int = 1
    round_p50_s: tuple = ()  # the median step latency of each round (the spread between rounds)

    @property
    def fps_spread(self) -> tuple[float, float]:
        """(slowest, fastest) round's FPS; the median's FPS twice when rounds were not recorded."""
        if not self.round_p50_s:
            return self.fps, self.fps
        fps = [self.frames_per_step / t for t in self.round_p50_s]
        return min(fps), max(fps)

    @property
    def p50_ms(self) -> float:
        return float(np.percentile(self.latencies_s, 50) * 1e3)

    @property
    def p99_ms(self) -> float:
        return float(np.percentile(self.latencies_s, 99) * 1e3)

    @property
    def fps(self) -> float:
        return self.frames_per_step * 1e3 / self.p50_ms


def plan(frames_per_step: int, steps_per_round: int = 100, warmup: int = 30) -> dict:
    """Steps per round and warm-up steps for a model: a chunk model gets as many frames, not steps,
    as a step model (at least 5 timed steps per round and 2 warm-up steps)."""
    return {"steps_per_round": max(5, steps_per_round // frames_per_step),
            "warmup": max(2, warmup // frames_per_step)}


def measure(steps: dict[str, callable], frames: np.ndarray, *, rounds: int = 5, steps_per_round: int = 100,
            warmup: int = 30, frames_per_step: int = 1, round_budget_s: float | None = None) -> list[Row]:
    """Time each `step(frame)` callable; returns one Row per name (order kept).

    round_budget_s: a step slower than round_budget_s / steps_per_round (timed on its last warm-up
    step) gets fewer steps per round, at least one, so that a slow runtime's round takes about the
    budget (a heavy model on a slow runtime would otherwise take many minutes per round)."""
    lat = {name: [] for name in steps}
    count = {}
    for name, step in steps.items():
        for i in range(warmup):
            t0 = time.perf_counter()
            step(frames[i % len(frames)])
            last = time.perf_counter() - t0
        count[name] = steps_per_round if round_budget_s is None or warmup == 0 else \
            max(1, min(steps_per_round, int(round_budget_s / max(last, 1e-9))))
    from .console import progress
    per_round = {name: [] for name in steps}
    for r in progress(range(rounds), desc="benchmark rounds", unit="round"):
        for name, step in steps.items():
            out = lat[name]
            for i in range(count[name]):
                frame = frames[(r * steps_per_round + i) % len(frames)]
                t0 = time.perf_counter()
                step(frame)
                out.append(time.perf_counter() - t0)
            per_round[name].append(float(np.median(out[-count[name]:])))
    return [Row(name, np.asarray(v), frames_per_step, tuple(per_round[name])) for name, v in lat.items()]


def markdown_table(rows: list[Row], baseline: str | None = None, extra: dict[str, dict] | None = None) -> str:
    """Runtime | FPS | p50 ms | p99 ms | x baseline [| extra columns]."""
    extra = extra or {}
    cols = sorted({k for v in extra.values() for k in v})
    base = next((r for r in rows if r.name == baseline), None)
    head = ["Runtime", "FPS", "p50 ms", "p99 ms"] + ([f"x {baseline}"] if base else []) + cols
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.name, f"{r.fps:.0f}", f"{r.p50_ms:.3f}", f"{r.p99_ms:.3f}"]
        if base:
            cells.append(f"{base.p50_ms / r.p50_ms:.2f}")
        cells += [str(extra.get(r.name, {}).get(c, "")) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
