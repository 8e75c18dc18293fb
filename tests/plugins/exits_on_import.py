"""A plug-in role module that calls sys.exit as it is imported (tests/test_graph_offline.py): before, `heurist run`
then printed nothing, made no run and exited 0, which a script reads as success."""

import sys

sys.exit(0)
