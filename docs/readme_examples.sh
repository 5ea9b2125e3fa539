#!/usr/bin/env bash
# Regenerate the command outputs and pictures shown in the README, from a trained demo model.
#   make demo && bash docs/readme_examples.sh > docs/readme_examples.txt 2>&1
# Builds small example folders from ../shared/data/cifar10 (a copy-detection set and a DAVIS-style
# sequence, as the tests do), then runs every evaluation command on demo_output/checkpoint.pth.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DK=".venv/bin/dinokit"
W=${W:-demo_output/checkpoint.pth}
CIFAR=${DINOKIT_CIFAR10:-../shared/data/cifar10}
EX=${EX:-/tmp/dinokit_examples}
rm -rf "$EX" && mkdir -p "$EX"

"$PY" - "$CIFAR" "$EX" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from conftest import copy_subset
from test_eval_copydetect import make_copydays_like
from test_eval_videoseg import make_sequence
cifar, ex = Path(sys.argv[1]), Path(sys.argv[2])
make_copydays_like(cifar, ex / "copydays")
make_sequence(cifar, ex / "davis", frames=12, step=6)
copy_subset(cifar / "test", ex / "retrieval" / "query", 5, offset=100)
copy_subset(cifar / "test", ex / "retrieval" / "gallery", 50, offset=200)
EOF

# Progress bars and log times vary from run to run: drop them so the output reads like the README.
run() { echo "\$ $*" | sed "s#$EX#examples#g"; "$@" 2>&1 | grep -v '^\s*\[[# ]*\] ' |
    sed -E "s#$EX#examples#g; s#^[0-9]{2}:[0-9]{2}:[0-9]{2} ##"; echo; }

run $DK info "$W"
run $DK knn --pretrained_weights "$W" --data_path data/cifar10-demo --image_size 32 --nb_knn 10 20 100 200
run $DK extract --pretrained_weights "$W" --data_path data/cifar10-demo/test --image_size 32 --output "$EX/test_features.pth"
run $DK linear --pretrained_weights "$W" --data_path data/cifar10-demo --image_size 32 --n_last_blocks 4 --epochs 20 --output_dir "$EX/linear"
run $DK retrieve --pretrained_weights "$W" --query "$EX/retrieval/query" --gallery "$EX/retrieval/gallery" --imsize 32
run $DK copydetect --pretrained_weights "$W" --query "$EX/copydays/query" --database "$EX/copydays/database" \
    --distractors_path "$EX/copydays/distractors" --whitening_path "$EX/copydays/whitening" --imsize 32
run $DK videoseg --pretrained_weights "$W" --data_path "$EX/davis" --output_dir "$EX/davis_out" \
    --frame_size 96 --size_mask_neighborhood 3
run $DK attention --pretrained_weights "$W" --image_path data/cifar10-demo/test/bird/0000.jpg \
    --image_size 128 128 --threshold 0.6 --output_dir docs/attention_bird

# The README's picture: image, mean attention, its overlay, the heads' masks, side by side.
"$PY" - <<'EOF2'
from PIL import Image
names = ["img", "attn-mean", "attn-overlay", "mask-overlay"]
tiles = [Image.open(f"docs/attention_bird/{n}.png").convert("RGB") for n in names]
gap, w, h = 10, tiles[0].width, tiles[0].height
strip = Image.new("RGB", (len(tiles) * w + (len(tiles) - 1) * gap, h), "white")
for i, tile in enumerate(tiles):
    strip.paste(tile, (i * (w + gap), 0))
strip.save("docs/attention_bird_strip.png")
EOF2
