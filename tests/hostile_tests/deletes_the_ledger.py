import os


def test_deletes_the_ledger():
    os.remove("{ledger}")
