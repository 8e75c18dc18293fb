"""``python -m report RUN_DIR``: write the run's report and print its path.

``runner/lifecycle.py`` runs this in a child process after every iteration, so that what building
the page allocates (it reads the whole run, and grows with it) is returned to the system
each time and heurist's own memory stays flat over a long run (``benchmarks/soak.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from common.errors import HeuristError
from report.render import write_report


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m report RUN_DIR")
    try:
        print(write_report(Path(sys.argv[1])))
    except HeuristError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
