class Policy:
    def reset(self, seed):
        pass

    def act(self, obs, info):
        return 7  # CartPole has actions 0 and 1
