class Policy:
    def reset(self, seed):
        pass

    def act(self, obs, info):
        while True:
            pass
