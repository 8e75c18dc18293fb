class Policy:
    def reset(self, seed):
        pass

    def act(self, obs, info):
        hoard = []
        while True:
            hoard.append(bytearray(256 * 2**20))
