"""Search agents: AutoQ (hierarchical DDPG), HAQ (layer-wise DDPG) and the non-RL baselines."""
