class Policy:
    """Fails with an error full of Rich markup, terminal escape sequences, a bidirectional override and a lone
    surrogate (which no encoder can write)."""

    def reset(self, seed):
        pass

    def act(self, obs, info):
        raise ValueError("[/bold] [red]x[/red] [link=file:///etc/passwd]y[/link] \x1b[2J\x1b]0;owned\x07 \u202egnp.exe \ud800")
