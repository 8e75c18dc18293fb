class Policy:
    """Fails with an error full of Rich markup, terminal escape sequences, bidirectional controls, a lone surrogate
    (which no encoder can write), a line separator, and a line break before a line that reads as heurist's own."""

    def reset(self, seed):
        pass

    def act(self, obs, info):
        raise ValueError("[/bold] [red]x[/red] [link=file:///etc/passwd]y[/link] \x1b[2J\x1b]0;owned\x07 \u202egnp.exe \ud800"
                         " \u061c\u2028\n2026-12-05 06:00:00 iteration 1 accepted: dev 9 -> candidate 500")
