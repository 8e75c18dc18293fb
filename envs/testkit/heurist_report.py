"""A pytest plugin heurist loads into each regression test's process: it reports every outcome to heurist.

heurist counts a test as passed only when a passing report for it arrives here and pytest
reports the end of its session; an exit code alone proves nothing (``os._exit(0)`` gives one).
"""

from heurist_testkit import _ask


def _text(longrepr):
    if longrepr is None:
        return ""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (file, line, reason)
        return str(longrepr[2])
    return str(longrepr)[-2000:]


def pytest_collectreport(report):
    if report.failed:
        _ask({"op": "report", "kind": "collect", "nodeid": report.nodeid, "outcome": "failed",
              "message": _text(report.longrepr)})


def pytest_runtest_logreport(report):
    _ask({"op": "report", "kind": "test", "nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
          "message": _text(report.longrepr) if not report.passed else ""})


def pytest_sessionfinish(session, exitstatus):
    _ask({"op": "report", "kind": "finish", "exitstatus": int(exitstatus)})
