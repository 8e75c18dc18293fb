"""Fails a test, then writes to heurist's channel itself: a passing report for the failed test and the end of
a clean session, and exits 0 before pytest can say otherwise."""

import os

import heurist_testkit


def test_a_fails():
    assert False, "regressed"


def test_b_forges():
    heurist_testkit._ask({"op": "report", "kind": "test", "nodeid": "tests/test_forges_its_report.py::test_a_fails",
                          "when": "call", "outcome": "passed", "message": ""})
    heurist_testkit._ask({"op": "report", "kind": "finish", "exitstatus": 0})
    os._exit(0)
