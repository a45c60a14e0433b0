"""Cost backends opened by URI through ``autoq.common.backend.open_backend``."""
