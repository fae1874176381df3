"""Collapsed stacks (py-spy's raw format) to a speedscope file and a static SVG flame graph.

py-spy writes one format per recording; recording once in the collapsed
format and converting here gives both files from the same samples, without
attaching a second sampler that would pause the service twice as often.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from html import escape
from typing import Any

SVG_WIDTH = 1200
ROW_HEIGHT = 16
# Frames narrower than this many pixels are left out of the SVG (still in speedscope).
MIN_PIXELS = 0.5
FONT_PX = 11
CHAR_PX = 6.5


def parse_collapsed(text: str) -> list[tuple[list[str], int]]:
    """[(frames root-first, sample count)] from lines ``root;child;leaf COUNT``."""
    stacks: list[tuple[list[str], int]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        frames_text, _, count_text = line.rpartition(" ")
        if not frames_text or not count_text.isdigit():
            continue
        stacks.append((frames_text.split(";"), int(count_text)))
    return stacks


def to_speedscope(stacks: list[tuple[list[str], int]], name: str) -> dict[str, Any]:
    """A speedscope "sampled" profile (https://www.speedscope.app/file-format-schema.json)."""
    frame_index: dict[str, int] = {}
    samples: list[list[int]] = []
    weights: list[int] = []
    for frames, count in stacks:
        samples.append([frame_index.setdefault(f, len(frame_index)) for f in frames])
        weights.append(count)
    return {
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "shared": {"frames": [{"name": f} for f in frame_index]},
        "profiles": [
            {
                "type": "sampled",
                "name": name,
                "unit": "none",
                "startValue": 0,
                "endValue": sum(weights),
                "samples": samples,
                "weights": weights,
            }
        ],
        "name": name,
        "exporter": "parley bench",
    }


@dataclass
class _Node:
    name: str
    count: int = 0
    children: dict[str, _Node] = field(default_factory=dict)


def _tree(stacks: list[tuple[list[str], int]]) -> _Node:
    root = _Node("all")
    for frames, count in stacks:
        root.count += count
        node = root
        for frame in frames:
            node = node.children.setdefault(frame, _Node(frame))
            node.count += count
    return root


def _depth(node: _Node) -> int:
    return 1 + max((_depth(c) for c in node.children.values()), default=0)


def _colour(name: str) -> str:
    # Stable per function, warm like classic flame graphs, so two runs compare by eye.
    digest = hashlib.blake2s(name.encode(), digest_size=3).digest()
    return f"rgb({205 + digest[0] % 50},{80 + digest[1] % 130},{digest[2] % 60})"


def to_svg(stacks: list[tuple[list[str], int]], title: str) -> str:
    """A static flame graph: root at the bottom, width proportional to samples, hover titles."""
    root = _tree(stacks)
    total = max(root.count, 1)
    rows = _depth(root)
    top = 2 * ROW_HEIGHT
    height = top + rows * ROW_HEIGHT + ROW_HEIGHT
    scale = SVG_WIDTH / total
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_WIDTH}" height="{height}" '
        f'font-family="monospace" font-size="{FONT_PX}">',
        '<rect width="100%" height="100%" fill="#fdfdf6"/>',
        f'<text x="{SVG_WIDTH / 2}" y="{ROW_HEIGHT}" text-anchor="middle" font-size="14">'
        f"{escape(title)} ({root.count} samples)</text>",
    ]

    def draw(node: _Node, x: float, depth: int) -> None:
        width = node.count * scale
        if width < MIN_PIXELS:
            return
        y = top + (rows - depth - 1) * ROW_HEIGHT
        share = 100.0 * node.count / total
        label = f"{node.name} ({node.count} samples, {share:.1f}%)"
        parts.append(
            f'<g><title>{escape(label)}</title><rect x="{x:.1f}" y="{y}" width="{width:.1f}" '
            f'height="{ROW_HEIGHT - 1}" fill="{_colour(node.name)}" rx="2"/>'
        )
        fits = int((width - 4) / CHAR_PX)
        if fits >= 3:
            text = node.name if len(node.name) <= fits else node.name[: fits - 2] + ".."
            parts.append(f'<text x="{x + 3:.1f}" y="{y + ROW_HEIGHT - 4}">{escape(text)}</text>')
        parts.append("</g>")
        child_x = x
        for child in sorted(node.children.values(), key=lambda c: c.name):
            draw(child, child_x, depth + 1)
            child_x += child.count * scale

    draw(root, 0.0, 0)
    parts.append("</svg>")
    return "\n".join(parts)
