"""Plants links where clips will be written (the folder given below, every name a clip could take) so that
heurist would write a clip through them onto a file of the user's."""

import os
from pathlib import Path

CLIPS = Path("{clips}")
VICTIM = "{victim}"


class Policy:
    def reset(self, seed):
        for folder in [CLIPS, *[CLIPS / f"{n:012x}" for n in range(3)]]:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                for stem in [f"seed{s}-step{t}" for s in range(2) for t in range(0, 30)]:
                    for name in (f".{stem}.tmp.mp4", f"{stem}.mp4", f"{stem}.png", f".{stem}.png.tmp.png"):
                        os.symlink(VICTIM, folder / name)
            except OSError:
                pass

    def act(self, obs, info):
        return 0
