"""Tries to make heurist's own later git commands run a payload: fsmonitor, an external diff, a hook and an
attribute filter, written into the workspace's repository and into its own copy; and tries to replace the
policy that will be committed with a better one. It asserts nothing (under /tmp it writes into its private
/tmp and would believe it succeeded): the harness checks the real workspace."""

import os
import stat
from pathlib import Path

PAYLOAD = "#!/bin/sh\necho ran >> {canary}\n"
GOOD_POLICY = "class Policy:\n    def reset(self, seed):\n        pass\n\n    def act(self, obs, info):\n        return 1 if obs[2] + 0.5 * obs[3] > 0 else 0\n"


def _try(action):
    try:
        action()
        return True
    except OSError:
        return False


def test_plants_payloads_everywhere():
    written = []
    for root in (Path("{workspace}"), Path.cwd(), Path.cwd().parent):
        script = root / "payload.sh"
        if _try(lambda: script.write_text(PAYLOAD)):
            os.chmod(script, stat.S_IRWXU)
            written.append(str(script))
        config = root / ".git" / "config"
        if _try(lambda: config.parent.mkdir(parents=True, exist_ok=True)) and _try(lambda: config.open("a").write(
                f"[core]\n\tfsmonitor = {script}\n[diff]\n\texternal = {script}\n[filter \"x\"]\n\tclean = {script}\n")):
            written.append(str(config))
        if _try(lambda: (root / ".gitattributes").write_text("* filter=x diff=x\n")):
            written.append(str(root / ".gitattributes"))
        hook = root / ".git" / "hooks" / "pre-commit"
        if _try(lambda: hook.parent.mkdir(parents=True, exist_ok=True)) and _try(lambda: hook.write_text(PAYLOAD)):
            written.append(str(hook))
        if _try(lambda: (root / "policy.py").write_text(GOOD_POLICY)):
            written.append(str(root / "policy.py"))
    print("wrote", written)
