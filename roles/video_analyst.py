"""The video analyst: watches the failure clips and says what went wrong visually, per failure event.

It also watches the saved failure scenarios the incumbent fails again (``AnalyseInput.scenarios``: an earlier
policy's failure, or an earlier run's recalled from memory, replayed from the moment before it and filmed), and
reports them as old failures.

Offline it measures rather than guesses: OpenCV separates what moves from the still
background (the clip's median frame), finds the moving objects as connected components,
and follows each one's centroid through the frames before the failure, so the report says
which objects moved, where, how fast, and what they were doing in the last frames. With a
model, the contact sheets go to a vision model together with those measurements, and the
model's reading is recorded beside them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field

from roles.base import Role, RoleContext
from roles.llm import image_part
from roles.stages import AnalyseInput, AnalyseOutput, RoleModel, Sighting

MAX_CLIPS = 4
MIN_AREA_FRACTION = 0.0005  # smaller blobs are noise or score digits flickering


class Track(RoleModel):
    object: int
    frames_seen: int
    start: tuple[float, float]
    end: tuple[float, float]
    velocity_end: tuple[float, float] = Field(..., description="Pixels per frame over the last frames (x right, y down).")
    area_px: float


class ClipMeasure(RoleModel):
    seed: int
    step: int
    label: str
    mp4: str
    png: str
    frames: int
    tracks: list[Track]


class OldFailure(RoleModel):
    """A saved failure scenario the incumbent failed again, replayed and filmed (``AnalyseInput.scenarios``)."""

    scenario: str
    seed: int
    step: int
    kind: str
    description: str
    tracks: list[Track] = Field(default_factory=list)


class VideoReport(AnalyseOutput):
    """The video analyst's report: the ``sightings`` fact, with the clips' measured tracks, and the old failures
    (saved scenarios) the incumbent has again."""

    clips: list[ClipMeasure] = Field(default_factory=list)
    sightings: list[Sighting] = Field(default_factory=list)
    old_failures: list[OldFailure] = Field(default_factory=list)


class ModelReading(RoleModel):
    """What the vision model is asked to return."""

    findings: list[Sighting]
    summary: str


def _read_frames(path: str) -> list[np.ndarray]:
    import cv2  # here: 0.33 s of imports that a heurist command watching no clip (eval, show, memory) need not pay

    capture = cv2.VideoCapture(path)
    frames = []
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
    finally:
        capture.release()
    return frames


def measure_clip(path: str, max_objects: int = 4) -> list[Track]:
    """Moving objects in a clip and their trajectories, largest first."""
    import cv2

    frames = _read_frames(path)
    if len(frames) < 2:
        return []
    background = np.median(np.stack(frames), axis=0).astype(np.uint8)
    min_area = MIN_AREA_FRACTION * frames[0].size
    kernel = np.ones((3, 3), np.uint8)
    tracks: list[dict] = []
    for index, frame in enumerate(frames):
        mask = (cv2.absdiff(frame, background) > 25).astype(np.uint8)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
        count, _, blob_stats, centroids = cv2.connectedComponentsWithStats(mask)
        blobs = [(tuple(centroids[i]), float(blob_stats[i, cv2.CC_STAT_AREA]))
                 for i in range(1, count) if blob_stats[i, cv2.CC_STAT_AREA] >= min_area]
        # Greedy nearest-centroid matching: these clips hold a handful of objects, so a
        # Hungarian assignment would buy nothing.
        unclaimed = list(blobs)
        for track in tracks:
            if track["last"] != index - 1 or not unclaimed:
                continue
            x, y = track["points"][-1]
            best = min(unclaimed, key=lambda b: (b[0][0] - x) ** 2 + (b[0][1] - y) ** 2)
            if (best[0][0] - x) ** 2 + (best[0][1] - y) ** 2 <= (0.15 * frame.shape[1]) ** 2:
                track["points"].append(best[0])
                track["areas"].append(best[1])
                track["last"] = index
                unclaimed.remove(best)
        for centre, area in unclaimed:
            tracks.append({"points": [centre], "areas": [area], "last": index})
    tracks = [t for t in tracks if len(t["points"]) >= 3]
    tracks.sort(key=lambda t: (-len(t["points"]), -float(np.mean(t["areas"]))))
    out = []
    for number, track in enumerate(tracks[:max_objects], start=1):
        points = np.asarray(track["points"])
        tail = points[-min(5, len(points)):]
        velocity = (tail[-1] - tail[0]) / max(1, len(tail) - 1)
        out.append(Track(object=number, frames_seen=len(points), start=(round(points[0][0], 1), round(points[0][1], 1)),
                         end=(round(points[-1][0], 1), round(points[-1][1], 1)),
                         velocity_end=(round(float(velocity[0]), 2), round(float(velocity[1]), 2)),
                         area_px=round(float(np.mean(track["areas"])), 1)))
    return out


def describe_track(track: Track) -> str:
    dx, dy = track.velocity_end
    moving = "still" if abs(dx) < 0.5 and abs(dy) < 0.5 else (
        ("right" if dx > 0 else "left") if abs(dx) >= abs(dy) else ("down" if dy > 0 else "up"))
    return (f"object {track.object} (~{track.area_px:.0f} px) went from {track.start} to {track.end}, "
            f"moving {moving} at ({dx:+.1f}, {dy:+.1f}) px/frame at the end")


class VideoAnalyst(Role[AnalyseInput, VideoReport]):
    name = "video_analyst"
    stage = "analyse"
    Input = AnalyseInput
    Output = VideoReport
    produces = frozenset({"sightings"})

    def run(self, data: AnalyseInput, ctx: RoleContext) -> VideoReport:
        clips = [c for c in data.evaluation.clips if Path(c.mp4).is_file()][:MAX_CLIPS]
        # Old failures' saved moments that the incumbent failed again, filmed from the saved state: a few hundred
        # steps each, however deep in an episode the moment was.
        again = [r for r in data.scenarios if r.failed_again][:MAX_CLIPS]
        old = [OldFailure(scenario=r.name, seed=r.seed, step=r.step, kind=r.kind, description=r.description,
                          tracks=measure_clip(r.mp4) if r.mp4 and Path(r.mp4).is_file() else [])
               for r in again]
        old_text = [f"scenario {o.scenario} ({o.kind} on seed {o.seed} at step {o.step}) happens again: "
                    + ("; ".join(describe_track(t) for t in o.tracks) or "not filmed or nothing moved") for o in old]
        if not clips and not old:
            unmade = data.evaluation.clip_errors
            report = VideoReport(summary="no failure clips were recorded for this evaluation, and no saved "
                                         "scenario failed again"
                                         + (f"; {len(unmade)} could not be made: {'; '.join(unmade)[:600]}"
                                            if unmade else ""))
            ctx.decide(report.summary)
            return report
        measures = [ClipMeasure(seed=c.seed, step=c.step, label=c.label, mp4=c.mp4, png=c.png, frames=c.frames,
                                tracks=measure_clip(c.mp4)) for c in clips]
        findings = [Sighting(seed=m.seed, step=m.step,
                                  what_went_wrong=m.label.split(": ", 1)[-1],
                                  evidence="; ".join(describe_track(t) for t in m.tracks) or "no moving object found")
                    for m in measures]
        parts = []
        if measures:
            parts.append(f"measured {len(measures)} clips: " + " | ".join(
                f"seed {f.seed} step {f.step}: {f.evidence.split(';')[0]}" for f in findings))
        if old:
            parts.append(f"{len(old)} old failures happen again: " + " | ".join(t.split(": ", 1)[0] for t in old_text))
        summary = " | ".join(parts)
        report = VideoReport(summary=summary, clips=measures, sightings=findings, old_failures=old)
        ctx.decide("measured failure clips with OpenCV", clips=[m.model_dump(mode="json") for m in measures],
                   old_failures=[o.model_dump(mode="json") for o in old])
        if ctx.offline:
            return report
        content: list[dict] = [{"type": "text", "text": (
            f"Task: {data.task_description}\nThe clips end at the failure event named in each label. Measured "
            f"motion of the moving objects (pixels, origin top-left):\n"
            + "\n".join(f"- seed {f.seed}, step {f.step}, {m.label}: {f.evidence}" for f, m in zip(findings, measures))
            + ("\nEarlier failures, replayed from their saved moments, that this policy has again (their frames "
               "follow the clips'):\n" + "\n".join(f"- {t}" for t in old_text) if old else ""))}]
        for png in [m.png for m in measures] + [r.png for r in again if r.png]:
            if Path(png).is_file():
                content.append({**image_part(Path(png)), "path": png})
        reading = ctx.llm.structured(ctx.transcript, [{"role": "system", "content": self.prompt()},
                                                      {"role": "user", "content": content}], ModelReading)
        return VideoReport(summary=reading.summary, clips=measures, sightings=reading.findings, old_failures=old)
