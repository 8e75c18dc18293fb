import numpy.this_module_does_not_exist


class Policy:
    def reset(self, seed):
        pass

    def act(self, obs, info):
        return 0
