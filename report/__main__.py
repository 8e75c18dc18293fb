"""``python -m report RUN_DIR [--secrets-fd N]``: write the run's report and print its path.

``runner/report_child.py`` runs this in a child process after every iteration, so that what building
the page allocates (it reads the whole run, and grows with it) is returned to the system
each time and heurist's own memory stays flat over a long run (``benchmarks/soak.py``). It is
forked from a fork server that must never hold a secret, so heurist's secret variables (the page
redacts their values; a Chroma server's credentials are among them) come as JSON on descriptor N.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from common.errors import HeuristError
from common.safe_text import take_secrets
from report.render import write_report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m report", description="write a run's report")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--secrets-fd", type=int, help="a descriptor to read heurist's secret variables from")
    args = parser.parse_args()
    if args.secrets_fd is not None:
        with os.fdopen(args.secrets_fd, "rb") as pipe:
            text = pipe.read()
        if not text:  # heurist ended before sending them: a page written now could not redact them
            sys.exit("the report's secrets did not come (heurist ended?); the page was not written")
        take_secrets(json.loads(text))
    try:
        print(write_report(args.run_dir))
    except HeuristError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
