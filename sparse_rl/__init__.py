"""sparse_rl: truly sparse reinforcement-learning agents.

Dynamic sparse training (static, SET, RigL, constant fan-in SRigL, gradual magnitude pruning) on layers that store
only their nonzero weights, with Stable-Baselines3 policies in :mod:`sparse_rl.sb3`.
"""

__version__ = "0.1.0"
