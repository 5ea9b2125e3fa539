"""``--compile``: the training networks through ``torch.compile``, eager where compiling fails.

Compiling happens at the first call, not at ``torch.compile``: on a machine without a C++ compiler
(inductor's CPU code generator needs one) or without triton on a GPU, it fails inside the first
training step. A run should not be lost to a speed-up, so the network runs eagerly instead.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..errors import first_line

log = logging.getLogger("dinokit.train")


class CompiledOrEager:
    """Calls ``torch.compile(module)``; once that fails, logs why and calls ``module`` itself.

    An error of the module itself still raises: the eager call that follows a failed compiled one
    repeats it. ``eager`` is the module, e.g. to count its FLOPs (a compiled module first called
    under ``FlopCounterMode`` stays uncompiled)."""

    def __init__(self, module: nn.Module, name: str):
        self.eager = module
        self.name = name
        self.compiled: Any = torch.compile(module)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is None:
            return self.eager(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - torch raises many kinds; the eager call tells which are real
            failure = e
        # Outside the handler: a genuine error raises alone, not chained to the compiler's pages.
        out = self.eager(*args, **kwargs)
        self.compiled = None
        log.warning("--compile: compiling the %s failed, it runs eagerly (%s: %s)", self.name,
                    type(failure).__name__, first_line(failure))
        return out
