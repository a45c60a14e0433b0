"""Workstation side: network extraction, quantizer, tasks, cost backends, search, CLI. Needs the ``[host]`` extra."""
