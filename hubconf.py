"""torch.hub entry points with the DINO release names.

    torch.hub.load("path/to/dinokit", "dino_vits16", source="local")
    torch.hub.load("path/to/dinokit", "dino_vits16", source="local", pretrained="/path/weights.pth")

``pretrained`` may be True (download into the hub cache, or use the file already there), False
(random weights) or a local file path.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

from dinokit.models import build_backbone, load_pretrained  # noqa: E402

dependencies = ["torch"]

_RELEASES = {"dino_vits16": ("vit_small", 16), "dino_vits8": ("vit_small", 8), "dino_vitb16": ("vit_base", 16),
             "dino_vitb8": ("vit_base", 8), "dino_resnet50": ("resnet50", None)}


def _entry(name):
    arch, patch = _RELEASES[name]

    def load(pretrained=True, **kwargs):
        if pretrained is False:
            return build_backbone(arch, patch or 16, **kwargs)
        source = name if pretrained is True else pretrained
        return load_pretrained(source, arch=arch, patch_size=patch, **kwargs)

    load.__name__ = name
    load.__doc__ = f"DINO {arch}" + (f" patch {patch}" if patch else "") + " backbone (teacher weights)."
    return load


dino_vits16 = _entry("dino_vits16")
dino_vits8 = _entry("dino_vits8")
dino_vitb16 = _entry("dino_vitb16")
dino_vitb8 = _entry("dino_vitb8")
dino_resnet50 = _entry("dino_resnet50")
