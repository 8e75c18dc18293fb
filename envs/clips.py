"""Failure clips: a browser-playable H.264 mp4 and a PNG contact sheet of keyframes.

imageio-ffmpeg bundles an ffmpeg with libx264 (OpenCV's writer cannot write H.264 on
these machines). ``macro_block_size=1`` keeps frames at their size: the default of 16
would resize Atari's 210-pixel-high frames to 224.
"""

from __future__ import annotations

import os
import secrets
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


def _claim(out_dir: Path, name: str, suffix: str) -> Path:
    """A new, empty regular file in ``out_dir`` for one write of ``name``: never through a link left at its name,
    and a name of its own, so a write a kill cut short (its temp file left behind) or another write of the same
    clip at the same time (two side-by-side loops filming one scenario) cannot take it."""
    path = out_dir / f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{suffix}"
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
    return path


def write_clip(shots: list[tuple[int, np.ndarray]], out_dir: Path, stem: str, fps: float, label: str) -> dict:
    """Write ``stem.mp4`` and ``stem.png``; ``shots`` are (step, RGB frame) pairs in order.

    The temp files are created exclusively and renamed over the final names (a rename replaces a
    link, never writes through it); one that failed is removed. An mp4 is renamed into place only once it reads
    back whole: ffmpeg says nothing of a full disk, and a truncated clip went out under its final name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    mp4, png = out_dir / f"{stem}.mp4", out_dir / f"{stem}.png"
    tmp = _claim(out_dir, stem, ".mp4")
    try:
        with imageio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=1, quality=7,
                                pixelformat="yuv420p", ffmpeg_log_level="error") as writer:
            for _, frame in shots:
                writer.append_data(_even(np.ascontiguousarray(frame, dtype=np.uint8)))
        frames = _frames_in(tmp)
        if frames != len(shots):
            raise OSError(f"could not write clip {mp4}: it reads back with {frames} of its {len(shots)} frames "
                          f"(a full disk?)")
        tmp.replace(mp4)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    contact_sheet(shots, png, label)
    return {"mp4": str(mp4), "png": str(png), "frames": len(shots), "label": label}


def _frames_in(path: Path) -> int:
    """How many frames a video file holds, read from its container (0 where it cannot be opened)."""
    capture = cv2.VideoCapture(str(path))
    try:
        return int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
    finally:
        capture.release()


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
    tmp = _claim(path.parent, path.stem, ".png")
    try:
        if not cv2.imwrite(str(tmp), sheet):
            raise OSError(f"could not write contact sheet {path}")
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
