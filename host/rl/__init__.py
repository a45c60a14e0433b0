"""Deterministic-policy actor-critics (DDPG/TD3), replay buffer and exploration noise for the search agents."""
