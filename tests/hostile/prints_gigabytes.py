import sys


class Policy:
    def reset(self, seed):
        pass

    def act(self, obs, info):
        chunk = "x" * 2**20
        while True:
            sys.stdout.write(chunk)
