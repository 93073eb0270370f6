"""Pure-PyTorch references: exact, readable, slow. The kernels are tested against these."""

# Everything the module exports (its __all__), without repeating the list here.
from .dynamic_sample_attention import *  # noqa: F403
from .dynamic_sample_attention import __all__  # noqa: F401
