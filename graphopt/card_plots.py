"""The model card's pictures as small self-contained SVG files (no plotting library needed): line plots
(a waveform over the reference, a spectrum with the heart rate marked) and a bar chart with the spread
(FPS per artifact, the bar at the median round and a whisker from the slowest to the fastest round)."""
from __future__ import annotations

import re
from html import escape as _html_escape

import numpy as np

# characters XML 1.0 does not allow in a document at all, escaped or not (C0 controls, lone surrogates, U+FFFE/F)
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def escape(text) -> str:
    """Text for an SVG element or attribute: markup characters escaped, characters XML cannot hold shown as
    \\xNN / \\uNNNN (names come from untrusted files: model outputs, baseline file names)."""
    return _html_escape(_NOT_XML.sub(lambda m: m.group().encode("unicode_escape", "backslashreplace").decode("ascii"),
                                     str(text)))

W, H, PAD = 640, 220, 44
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _frame(title: str, w: int = W, h: int = H) -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
            'font-family="sans-serif" font-size="11">', f'<rect width="{w}" height="{h}" fill="white"/>',
            f'<text x="{w / 2:.0f}" y="16" text-anchor="middle" font-size="13">{escape(title)}</text>']


def _scale(v, lo, hi, a, b):
    span = hi - lo if hi > lo else 1.0
    return a + (np.asarray(v, np.float64) - lo) / span * (b - a)


def line_plot(title: str, x, series: list[tuple[str, np.ndarray]], xlabel: str, ylabel: str = "",
              marks: list[tuple[float, str]] = ()) -> str:
    """series: (label, y) drawn over the same x; marks: vertical lines (x, label)."""
    x = np.asarray(x, np.float64)
    ys = [np.asarray(y, np.float64) for _, y in series]
    lo = min(float(np.min(y)) for y in ys)
    hi = max(float(np.max(y)) for y in ys)
    px = _scale(x, x[0], x[-1], PAD, W - 12)
    out = _frame(title)
    out.append(f'<line x1="{PAD}" y1="{H - PAD + 8}" x2="{W - 12}" y2="{H - PAD + 8}" stroke="#888"/>')
    out.append(f'<text x="{W / 2:.0f}" y="{H - 8}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text x="{PAD - 4}" y="{H - PAD + 20}" text-anchor="end">{x[0]:g}</text>')
    out.append(f'<text x="{W - 12}" y="{H - PAD + 20}" text-anchor="end">{x[-1]:g}</text>')
    if ylabel:
        out.append(f'<text x="12" y="{H / 2:.0f}" transform="rotate(-90 12 {H / 2:.0f})" '
                   f'text-anchor="middle">{escape(ylabel)}</text>')
    for xm, label in marks:
        xx = float(_scale(xm, x[0], x[-1], PAD, W - 12))
        out.append(f'<line x1="{xx:.1f}" y1="24" x2="{xx:.1f}" y2="{H - PAD + 8}" stroke="#999" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{xx + 4:.1f}" y="34">{escape(label)}</text>')
    for k, ((label, _), y) in enumerate(zip(series, ys)):
        py = _scale(y, lo, hi, H - PAD, 30)
        pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(px, py))
        dash = ' stroke-dasharray="5 3"' if k == 0 and len(series) > 1 else ""
        out.append(f'<polyline fill="none" stroke="{COLORS[k % len(COLORS)]}" stroke-width="1.4"{dash} points="{pts}"/>')
        out.append(f'<text x="{W - 14}" y="{34 + 14 * k}" text-anchor="end" fill="{COLORS[k % len(COLORS)]}">'
                   f'{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def bar_chart(title: str, rows: list[tuple[str, float, float, float]], xlabel: str) -> str:
    """rows: (label, median, low, high): a bar at the median and a whisker from low to high."""
    h = 40 + 24 * len(rows) + 30
    left = 260
    top = max([hi for _, _, _, hi in rows] + [1e-9])
    out = _frame(title, W, h)
    for i, (label, mid, lo, hi) in enumerate(rows):
        y = 32 + 24 * i
        bw = float(_scale(mid, 0, top, 0, W - left - 20))
        out.append(f'<text x="{left - 6}" y="{y + 13}" text-anchor="end">{escape(label)}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{bw:.1f}" height="16" fill="{COLORS[0]}" opacity="0.75"/>')
        a, b = (float(_scale(v, 0, top, left, W - 20)) for v in (lo, hi))
        out.append(f'<line x1="{a:.1f}" y1="{y + 8}" x2="{b:.1f}" y2="{y + 8}" stroke="black"/>')
        for v in (a, b):
            out.append(f'<line x1="{v:.1f}" y1="{y + 3}" x2="{v:.1f}" y2="{y + 13}" stroke="black"/>')
        out.append(f'<text x="{b + 4:.1f}" y="{y + 12}">{mid:.0f}</text>')
    out.append(f'<text x="{(left + W) / 2:.0f}" y="{h - 8}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
