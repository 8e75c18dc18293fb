class Policy:
    def reset(self, seed):
        pass

    def act(self, obs, info):
        raise ValueError("boom from the policy")
