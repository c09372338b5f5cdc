"""benchsuite: a benchmark suite for backdoor attacks and defenses on SSL image encoders."""

from benchsuite.core.errors import BenchError

__version__ = "0.1.0"

__all__ = ["BenchError", "__version__"]
