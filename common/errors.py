"""Error types that cross module boundaries; each message names the problem."""


class AutoQError(Exception):
    """Base class of every error the toolkit raises on purpose."""


class SpecError(AutoQError, ValueError):
    """A network description is malformed or cannot be extracted."""


class PlanError(AutoQError, ValueError):
    """A quantization plan is malformed or does not fit its network."""


class BackendError(AutoQError, RuntimeError):
    """A cost backend could not be opened or could not measure."""
