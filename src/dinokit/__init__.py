"""dinokit: DINO self-supervised learning (Caron et al., 2021), fast on CPUs, ready for GPU clusters."""

from . import models
from .models import load_pretrained

__version__ = "0.1.0"
__all__ = ["models", "load_pretrained", "__version__"]
