"""Failure clips: a browser-playable H.264 mp4 and a PNG contact sheet of keyframes.

imageio-ffmpeg bundles an ffmpeg with libx264 (OpenCV's writer cannot write H.264 on
these machines). ``macro_block_size=1`` keeps frames at their size: the default of 16
would resize Atari's 210-pixel-high frames to 224.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import imageio.v2 as imageio
import numpy as np

SHEET_FRAMES = 8


def fps_for(env, spec, protocol: str) -> float:
    """Real-time playback rate: ALE renders every step, and a step spans ``frameskip`` frames."""
    fps = float(env.metadata.get("render_fps") or 30)
    if spec.family == "atari":
        kwargs = {**spec.make_kwargs, **spec.protocol(protocol).make_kwargs}
        skip = kwargs.get("frameskip", 4)
        fps = fps / (skip if isinstance(skip, int) else 1)
    return max(fps, 1.0)


def _even(frame: np.ndarray) -> np.ndarray:
    """yuv420p needs even width and height; pad by one pixel rather than rescale."""
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") if h % 2 or w % 2 else frame


def _claim(path: Path) -> Path:
    """Create ``path`` as a new, empty regular file, never through a link left at that name."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
    return path


def write_clip(shots: list[tuple[int, np.ndarray]], out_dir: Path, stem: str, fps: float, label: str) -> dict:
    """Write ``stem.mp4`` and ``stem.png``; ``shots`` are (step, RGB frame) pairs in order.

    The temp files are created exclusively and renamed over the final names (a rename replaces a
    link, never writes through it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    mp4, png = out_dir / f"{stem}.mp4", out_dir / f"{stem}.png"
    tmp = _claim(out_dir / f".{stem}.tmp.mp4")
    with imageio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=1, quality=7,
                            pixelformat="yuv420p", ffmpeg_log_level="error") as writer:
        for _, frame in shots:
            writer.append_data(_even(np.ascontiguousarray(frame, dtype=np.uint8)))
    tmp.replace(mp4)
    contact_sheet(shots, png, label)
    return {"mp4": str(mp4), "png": str(png), "frames": len(shots), "label": label}


def contact_sheet(shots: list[tuple[int, np.ndarray]], path: Path, label: str) -> None:
    """Up to eight evenly spaced keyframes in a 4-wide grid, each stamped with its step; the last is the failure."""
    picks = np.unique(np.linspace(0, len(shots) - 1, min(SHEET_FRAMES, len(shots))).round().astype(int))
    tiles = []
    for i in picks:
        step, frame = shots[i]
        tile = cv2.cvtColor(np.ascontiguousarray(frame, dtype=np.uint8), cv2.COLOR_RGB2BGR)
        scale = max(1, 160 // tile.shape[0]) if tile.shape[0] < 160 else 1
        tile = cv2.resize(tile, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST) if scale > 1 else tile
        cv2.putText(tile, f"t={step}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(tile, f"t={step}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(tile)
    h, w = tiles[0].shape[:2]
    cols = min(4, len(tiles))
    rows = -(-len(tiles) // cols)
    sheet = np.full((rows * h + 22, cols * w, 3), 32, dtype=np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        sheet[22 + r * h: 22 + (r + 1) * h, c * w: (c + 1) * w] = tile[:h, :w]
    cv2.putText(sheet, label[:90], (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    tmp = _claim(path.with_name(f".{path.name}.tmp.png"))
    if not cv2.imwrite(str(tmp), sheet):
        raise OSError(f"could not write contact sheet {path}")
    tmp.replace(path)
