"""Fails with a message full of Rich markup, terminal escape sequences and bidirectional overrides."""


def test_fails_loudly():
    raise AssertionError("[/bold] [red]x[/red] [link=file:///etc/passwd]y[/link] \x1b[2J\x1b]0;owned\x07 \u202eexe.gnp")
