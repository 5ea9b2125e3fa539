"""The training configuration: every flag of the official ``main_dino.py`` (same names, same
defaults) plus dinokit's own, as one typed dataclass, with presets and YAML files."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from ..errors import ConfigError
from ..models.pretrained import training_image_size
from ..runtime import PRECISIONS
from .loss import CENTERINGS

__all__ = ["TrainConfig", "PRESETS", "load_config", "parse_duration"]


@dataclass
class TrainConfig:
    # --- model (official names and defaults) ---
    arch: str = "vit_small"
    patch_size: int = 16
    out_dim: int = 65536
    norm_last_layer: bool = True
    momentum_teacher: float = 0.996
    momentum_teacher_end: float = 1.0  # where the cosine takes it (DINOv2: final_momentum_teacher)
    use_bn_in_head: bool = False
    # --- temperature ---
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    # --- optimisation ---
    use_fp16: bool = True
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0
    batch_size_per_gpu: int = 64
    epochs: int = 100
    freeze_last_layer: int = 1
    lr: float = 0.0005
    warmup_epochs: int = 10
    min_lr: float = 1e-6
    optimizer: str = "adamw"
    drop_path_rate: float = 0.1
    # --- multi-crop ---
    global_crops_scale: tuple[float, float] = (0.4, 1.0)
    local_crops_number: int = 8
    local_crops_scale: tuple[float, float] = (0.05, 0.4)
    # --- misc ---
    data_path: str = "/path/to/imagenet/train/"
    output_dir: str = "."
    saveckp_freq: int = 20
    seed: int = 0
    num_workers: int = 10
    dist_url: str = "env://"
    local_rank: int = 0
    # --- dinokit ---
    global_crops_size: int = 224
    local_crops_size: int = 96
    global_crops_size_start: int = 0  # progressive resizing: globals grow from this to global_crops_size (0: off)
    global_crops_scale_start: float = 0.0  # curriculum: least global area, moves to global_crops_scale[0] (0: off)
    precision: str = "auto"          # auto: bf16 on a CPU with bf16 units (else fp32); CUDA: fp16 if use_fp16 else fp32
    center_momentum: float = 0.9     # EMA of the teacher center (1.0: no centering)
    centering: str = "center"        # center (DINO) | sinkhorn_knopp (DINOv2)
    koleo_loss_weight: float = 0.0   # DINOv2's KoLeo spreading term on the student's global-crop features
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_nlayers: int = 3
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    color_jitter: float = 1.0        # scales the jitter strengths (0.4, 0.4, 0.2, 0.1)
    p_color_jitter: float = 0.8
    p_grayscale: float = 0.2
    p_solarize: float = 0.2          # on the second global crop
    p_blur: tuple[float, float, float] = (1.0, 0.1, 0.5)  # first global, second global, local crops
    canvas_size: int = 0             # side of the decoded image canvas; 0: from global_crops_size
    cache: str = "auto"              # decode the dataset once into memory: auto | yes | no
    time_budget: str = ""            # e.g. 30m, 1h30m: fit the whole schedule into this wall-clock time
    knn_every: int = 0               # run online k-NN every N epochs (0: never)
    knn_train_path: str = ""
    knn_val_path: str = ""
    knn_k: int = 20
    log_every: int = 10              # iterations between metrics.jsonl rows
    compile: bool = False            # torch.compile the student and teacher
    device: str = "auto"
    dist_timeout_s: int = 600        # a dead rank makes the others fail after this long
    report: bool = True              # write report.html at the end
    preset: str = ""
    max_steps: int = 0               # stop after this many iterations (smoke tests, profiling)
    pretrained_weights: str = ""     # start both backbones from these weights (release name or file)

    def __post_init__(self):
        # Values from code may be strings or lists (TrainConfig(lr="1e-3")): the field types, or ConfigError.
        hints = get_type_hints(type(self))
        for f in fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        if _budget_off(self.time_budget):  # `--time_budget 0` switches a preset's budget off
            self.time_budget = ""
        if self.arch.startswith("deit_"):  # the release's old names, which its main_dino.py maps too
            self.arch = "vit_" + self.arch[len("deit_"):]

    def validate(self) -> "TrainConfig":
        """Raise ``ConfigError`` for values that are out of range or inconsistent."""
        problems = (self._choice_problems() + self._size_problems() + self._range_problems()
                    + self._schedule_problems())
        if self.time_budget:
            parse_duration(self.time_budget)
        if problems:
            raise ConfigError("invalid configuration: " + "; ".join(problems))  # one line for the CLI
        return self

    def _choice_problems(self) -> list[str]:
        """Flags that name one of a fixed set of choices."""
        from ..models import ARCHS
        choices = {"arch": ARCHS, "optimizer": ("adamw", "sgd", "lars"),
                   "precision": PRECISIONS, "centering": CENTERINGS,
                   "cache": ("auto", "yes", "no")}
        return [f"--{name} {getattr(self, name)!r} is not one of {', '.join(allowed)}"
                for name, allowed in choices.items() if getattr(self, name) not in allowed]

    def _size_problems(self) -> list[str]:
        """Crop sizes against the patch size and each other."""
        problems = []
        if self.arch.startswith("vit") and self.patch_size > 0:  # a patch size of 0 is a range problem
            for name in ("global_crops_size", "local_crops_size", "global_crops_size_start"):
                size = getattr(self, name)
                if size % self.patch_size:
                    problems.append(f"--{name} {size} is not a multiple of --patch_size {self.patch_size}")
        if not 0 <= self.global_crops_size_start <= self.global_crops_size:
            problems.append(f"--global_crops_size_start {self.global_crops_size_start}: use 0 (off) or a size "
                            f"up to --global_crops_size {self.global_crops_size}")
        return problems

    def _range_problems(self) -> list[str]:
        """Numbers outside the range where they mean something."""
        problems = [f"--{name} must be positive, got {getattr(self, name)}" for name in _POSITIVE
                    if getattr(self, name) <= 0]
        problems += [f"--{name} cannot be negative, got {getattr(self, name)}" for name in _NON_NEGATIVE
                     if getattr(self, name) < 0]
        if self.out_dim == 1:  # a softmax over one prototype is 1 whatever the input: nothing to learn
            problems.append("--out_dim 1 makes the loss 0 for any image: use 2 or more (65536 in the paper)")
        if not 0 <= self.drop_path_rate < 1:
            problems.append(f"--drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if not 0 <= self.center_momentum <= 1:
            problems.append(f"--center_momentum must be in [0, 1], got {self.center_momentum}")
        for name in ("p_color_jitter", "p_grayscale", "p_solarize", "p_blur"):
            values = getattr(self, name)
            values = values if isinstance(values, tuple) else (values,)
            if not all(0 <= p <= 1 for p in values):
                problems.append(f"--{name} {' '.join(map(str, values))}: a probability must lie in [0, 1]")
        if not 0 <= self.color_jitter <= 2.5:
            problems.append(f"--color_jitter {self.color_jitter}: use a strength in [0, 2.5] (1: the paper's)")
        for name in ("global_crops_scale", "local_crops_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                problems.append(f"--{name} {lo} {hi}: need 0 < min <= max <= 1")
        if not 0 <= self.global_crops_scale_start <= self.global_crops_scale[1]:
            problems.append(f"--global_crops_scale_start {self.global_crops_scale_start}: use 0 (off) or an area "
                            f"up to the max of --global_crops_scale ({self.global_crops_scale[1]})")
        return problems

    def _schedule_problems(self) -> list[str]:
        """Epochs, warm-ups, the teacher's momentum and the online k-NN's folders."""
        problems = []
        if self.epochs <= 0 and not self.time_budget:
            problems.append("--epochs must be positive (or give --time_budget)")
        if not 0 <= self.momentum_teacher <= self.momentum_teacher_end <= 1:
            problems.append(f"--momentum_teacher {self.momentum_teacher} and --momentum_teacher_end "
                            f"{self.momentum_teacher_end}: need 0 <= start <= end <= 1")
        if not self.time_budget:
            for name in ("warmup_epochs", "warmup_teacher_temp_epochs"):
                if getattr(self, name) > max(self.epochs, 0):
                    problems.append(f"--{name} {getattr(self, name)} exceeds --epochs {self.epochs}: "
                                    f"lower it or train for more epochs")
        if self.knn_every and not (self.knn_train_path and self.knn_val_path):
            problems.append(f"--knn_every {self.knn_every} needs --knn_train_path and --knn_val_path "
                            f"(labelled image folders)")
        return problems

    @property
    def knn_image_size(self) -> int:
        """The side k-NN evaluates at: where `dinokit knn` evaluates this run's checkpoints (a small-image
        run's whole canvas), else the global crops' size."""
        return training_image_size({"args": self.to_dict()}) or self.global_crops_size

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


# Range checks of TrainConfig.validate: flags that must be > 0, and flags that must be >= 0.
_POSITIVE = ("batch_size_per_gpu", "out_dim", "patch_size", "global_crops_size", "local_crops_size",
             "head_hidden_dim", "head_bottleneck_dim", "head_nlayers", "log_every", "knn_k", "dist_timeout_s",
             "teacher_temp", "warmup_teacher_temp")
_NON_NEGATIVE = ("lr", "min_lr", "weight_decay", "weight_decay_end", "clip_grad", "num_workers", "freeze_last_layer",
                 "warmup_epochs", "warmup_teacher_temp_epochs", "saveckp_freq", "knn_every", "max_steps",
                 "local_crops_number", "koleo_loss_weight")

# Named recipes: "vits16" is the paper's ViT-S/16 run; "cifar" is sized for 32 px images (ViT-tiny/4).
PRESETS: dict[str, dict[str, Any]] = {
    "vits16": dict(arch="vit_small", patch_size=16, out_dim=65536, norm_last_layer=False, epochs=100,
                   warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=30,
                   batch_size_per_gpu=64, lr=0.0005, min_lr=1e-5, local_crops_number=10,
                   global_crops_size=224, local_crops_size=96, drop_path_rate=0.1, momentum_teacher=0.996),
    "cifar": dict(arch="vit_tiny", patch_size=4, out_dim=65536, global_crops_size=32, local_crops_size=16,
                  local_crops_number=6, batch_size_per_gpu=64, drop_path_rate=0.0, canvas_size=32,
                  global_crops_scale=(0.4, 1.0), local_crops_scale=(0.1, 0.4), blur_sigma=(0.1, 0.5),
                  num_workers=2),
    # The demo: a few CPU minutes on a few thousand images (benchmarks/demo_recipe.py measured the
    # choices, see the README). Patch 8 makes a step 3.5x cheaper than patch 4, so 5 minutes hold
    # ~900 steps; batch norm in the head spreads the nearly identical outputs of a random ViT apart,
    # so the teacher gives distinct targets from the first steps instead of a uniform distribution.
    # No local crops: a 16 px crop is 2x2 patches of 8 px, too little to learn from, and the two
    # global crops alone make a step faster (k-NN +5.6 over random instead of +2 to +4).
    # lr 0.004 and a teacher momentum held constant (not raised to 1) let the teacher follow the
    # student's late gains at low learning rate: +6.3 over random on three seeds instead of +5.5.
    # 0.98 rather than 0.99 halves the teacher's lag (about 50 steps, not 100), which counts most
    # where 5 minutes hold few steps: +1.25 k-NN on four paired seeds on an fp32-only CPU (650-730 steps),
    # +1.4 at 1,010 steps, +1.7 and -0.4 at 1,900 (the step counts of faster machines).
    "demo": dict(arch="vit_tiny", patch_size=8, out_dim=1024, use_bn_in_head=True, norm_last_layer=False,
                 global_crops_size=32, local_crops_size=16, local_crops_number=0, batch_size_per_gpu=32,
                 drop_path_rate=0.0, canvas_size=32, global_crops_scale=(0.5, 1.0), local_crops_scale=(0.2, 0.5),
                 blur_sigma=(0.1, 0.5), num_workers=2, lr=0.004, warmup_epochs=10, min_lr=1e-5,
                 momentum_teacher=0.98, momentum_teacher_end=0.98, teacher_temp=0.04, weight_decay=0.04,
                 weight_decay_end=0.1, freeze_last_layer=0, time_budget="5m", epochs=100),
}
# The demo's recipe on a convolutional backbone for 32 px images: for the same CPU time it learns
# faster than ViT-tiny/8 (benchmarks/knn_budget.py, see the README), but has no attention maps.
# Its teacher momentum stays that of its measured hour-long runs; 24 px global
# crops (of the 32 px canvas) make a step 1.5x cheaper, and the extra epochs gave k-NN 61.2 for 57.6.
# A 512-wide head runs 1.1x faster for the same k-NN; the crop curriculum (areas 0.5-1 at first,
# 0.2-1 at the end) gave 62.75 in an hour, where 0.5-1 throughout gave 61.0 and 0.2-1 gave 53.0.
# torch.compile (eager where it cannot compile) made the hour 64.69, with batch 64 66.32, and the
# paper's teacher temperatures (0.04 warmed up to 0.07 over the first 30% of the run) 68.03, and
# lr 0.012 (0.008 before) 68.60 (68.23 on seed 1); lr 0.016 gave 67.35.
# On AMD EPYC without AMX (half the epochs) 20 px global crops gave 1.25 points more over three seeds (ahead on each),
# 1.96 with k-NN at 28 px, where objects look as large as in 20 px crops (32 px does that for 24 px crops);
# 16 px crops with k-NN at 24 px gave 3.7 more over three seeds (2.8 at 32 px); AMX hours unmeasured.
# There, holding the teacher momentum at 0.99 (momentum_teacher_end=0.99) added 0.9 on two seeds at 16 px.
PRESETS["cifar_resnet"] = dict(PRESETS["demo"], arch="resnet18_cifar", time_budget="", lr=0.012,
                               momentum_teacher=0.99, momentum_teacher_end=1.0, global_crops_size=24,
                               head_hidden_dim=512, global_crops_scale=(0.2, 1.0), global_crops_scale_start=0.5,
                               batch_size_per_gpu=64, compile=True, warmup_teacher_temp=0.04, teacher_temp=0.07,
                               warmup_teacher_temp_epochs=30)
# For CPUs without AMX, where a step costs its arithmetic: 16 px global crops give ~31 epochs an hour
# where 24 px give ~16, and a teacher momentum held at 0.98 keeps up with the student's late gains.
# On an AMD EPYC with bf16: 64.16 / 64.65 on seeds 0 / 1 (k-NN at 24 px), cifar_resnet 57.47 / 59.86.
PRESETS["cifar_resnet16"] = dict(PRESETS["cifar_resnet"], global_crops_size=16, momentum_teacher=0.98,
                                 momentum_teacher_end=0.98)


def parse_duration(text: str) -> float:
    """Seconds in ``"90s"``, ``"30m"``, ``"1h30m"``, ``"2h"`` or a bare number of minutes."""
    seconds = _seconds(text)
    if seconds <= 0:
        raise ConfigError("--time_budget must be positive")
    return seconds


def _seconds(text: str) -> float:
    """``parse_duration`` without the check that the duration is positive."""
    text = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text) * 60
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise ConfigError(f"--time_budget {text!r}: use a duration such as 90s, 30m, 1h30m (0: no budget)")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def _budget_off(text: str) -> bool:
    """Whether a ``--time_budget`` value means none: empty, off, none, or a duration of zero."""
    text = str(text).strip().lower()
    if text in ("", "off", "none"):
        return True
    try:
        return _seconds(text) == 0
    except ConfigError:  # not a duration: validate() reports it
        return False


def _coerce(name: str, value: Any, typ: Any) -> Any:
    """A YAML/flag value converted to the field's type, or ``ConfigError``."""
    convert = _to_tuple if get_origin(typ) is tuple else _CONVERTERS.get(typ)
    if convert is None:
        return value
    try:
        return convert(value, typ)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {value!r} is not a valid {_type_name(typ)}") from None


def _to_bool(value: Any, typ: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    raise TypeError


def _to_number(value: Any, typ: Any) -> int | float:
    if isinstance(value, bool) or (typ is int and isinstance(value, float) and value != int(value)):
        raise TypeError  # True is not 1 epoch, and 2.5 is not an int
    return typ(value)


def _to_str(value: Any, typ: Any) -> str:
    if value is None:
        raise TypeError
    return str(value)


def _to_tuple(value: Any, typ: Any) -> tuple[float, ...]:
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    out = tuple(float(v) for v in value)
    if len(out) != len(get_args(typ)):
        raise ValueError
    return out


_CONVERTERS = {bool: _to_bool, int: _to_number, float: _to_number, str: _to_str}


def _type_name(typ: Any) -> str:
    """How an error message names a field's type."""
    if get_origin(typ) is not tuple:
        return getattr(typ, "__name__", str(typ))
    n = len(get_args(typ))
    return "pair of numbers (min, max), e.g. [0.4, 1.0]" if n == 2 else f"list of {n} numbers"


def load_config(overrides: dict[str, Any] | None = None, config_file: str | None = None,
                preset: str | None = None) -> TrainConfig:
    """Defaults < preset < YAML file < explicit overrides (flags given on the command line). The
    preset may also be named by the YAML file or the overrides (``preset: demo``)."""
    from_file = _read_yaml(config_file) if config_file else {}
    preset = preset or (overrides or {}).get("preset") or from_file.get("preset")
    values: dict[str, Any] = {}
    if preset:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; available: {', '.join(PRESETS)}")
        values.update(PRESETS[preset], preset=preset)
    values.update(from_file)
    values.update(overrides or {})
    if preset:
        values["preset"] = preset  # the one applied, when the command line and the file name two
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown configuration key(s): {', '.join(_with_guess(k, known) for k in unknown)}")
    return TrainConfig(**values).validate()  # __post_init__ converts the values to the field types


def _with_guess(key: str, known: set[str]) -> str:
    """``key (did you mean batch_size_per_gpu?)`` when a known key is close (dashes read as underscores)."""
    import difflib
    guess = difflib.get_close_matches(str(key).replace("-", "_"), sorted(known), n=1, cutoff=0.6)
    return f"{key} (did you mean {guess[0]}?)" if guess else str(key)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """``line L, column C: problem`` of a YAML error on one line (PyYAML's own text spans several)."""
    mark, problem = getattr(error, "problem_mark", None), getattr(error, "problem", None)
    if mark is None or not problem:
        return " ".join(str(error).split())
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _read_yaml(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path!r} is not valid YAML: {_yaml_problem(e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping of flag: value")
    return data


def config_fields() -> list[dataclasses.Field]:
    return list(fields(TrainConfig))

