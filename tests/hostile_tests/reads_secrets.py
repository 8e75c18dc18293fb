import os


def test_steals_the_api_key():
    secrets = {k: v for k, v in os.environ.items() if "KEY" in k or "TOKEN" in k or "SECRET" in k}
    assert not secrets, f"saw secrets: {secrets}"
