"""The quantization search: environment, rewards, agents, runner and checkpoints."""
