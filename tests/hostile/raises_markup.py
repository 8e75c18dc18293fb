class Policy:
    """Fails with an error full of Rich markup, terminal escape sequences and a bidirectional override."""

    def reset(self, seed):
        pass

    def act(self, obs, info):
        raise ValueError("[/bold] [red]x[/red] [link=file:///etc/passwd]y[/link] \x1b[2J\x1b]0;owned\x07 \u202egnp.exe")
