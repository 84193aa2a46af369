#!/usr/bin/env bash
# The GPU check of issue 23, as one prepared run on a lent GPU machine (device tool), from the repository root:
#
#   bash benchmarks/gpu_check.sh
#
# That machine has torch but not all of this project's dependencies, and no network: the missing pure
# wheels travel in .whl/ (ignored by git) and are installed into /tmp/site; the project itself runs from
# the checkout (PYTHONPATH), since its torch pin does not match the machine's torch. pyarrow and fsspec
# in .whl/hedge/ are installed only when the machine's own do not let `datasets` import.
#
# Logs go to $OUT (the device tool's folder that comes back; default a new temporary folder). Sizes, the python,
# the wheels' folder and where they go can be overridden, which is how the script is dry-run on a CPU first:
#
#   PYTHON=.venv/bin/python WHEELS=none FEATURES_ARGS="--model protocol-tiny --n 32 --batch_size 8" \
#     PNG_ARGS="--model protocol-tiny --n 300 --batch_size 8" TRAIN_ARGS="--steps 20 --threads 1 \
#     --backbone-repeats 1" bash benchmarks/gpu_check.sh
set -uo pipefail

OUT=${OUT:-$(mktemp -d)}
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/site}
# JPEGs of product-photo size, decoded on the device: the route real catalogs take on a GPU.
FEATURES_ARGS=${FEATURES_ARGS:---n 16384 --batch_size 256 --image_format jpeg --image_size 800}
# PNGs like the embedded synthetic catalog: decoded with PIL in the DataLoader workers.
PNG_ARGS=${PNG_ARGS:---n 8192 --batch_size 256 --image_format png --image_size 256}
TRAIN_ARGS=${TRAIN_ARGS:---steps 300 --threads 1 4 --backbone-repeats 5}
mkdir -p "$OUT"
echo "logs in $OUT"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1

if compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
        || { echo "installing the carried wheels failed"; exit 1; }
    export PYTHONPATH=$SITE
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
if ! "$PY" -c "import datasets" 2>"$OUT/datasets_import.txt" && compgen -G "$WHEELS/hedge/*.whl" >/dev/null; then
    echo "datasets does not import with this machine's packages ($(tail -1 "$OUT/datasets_import.txt")):" \
         "installing $WHEELS/hedge/"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$WHEELS"/hedge/*.whl || exit 1
fi

{
    nvidia-smi 2>&1 || echo "no nvidia-smi"
    nproc
    "$PY" - <<'EOF'
import importlib.metadata as md
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
for name in ("torchvision", "timm", "open_clip_torch", "datasets", "pyarrow", "fsspec", "huggingface_hub", "numpy",
             "pandas", "pillow"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "missing")
import datasets, open_clip  # noqa: E401,F401 - fail here, not in the middle of a benchmark
import protocol.model.features  # noqa: F401
import protocol.training.train  # noqa: F401
EOF
} 2>&1 | tee "$OUT/env.txt" || { echo "the environment check failed: see above"; exit 1; }

status=0
run() {  # name, seconds, command...: one benchmark, its log in $OUT; a failure does not stop the others
    local name=$1 limit=$2
    shift 2
    echo "=== $name: $*"
    local started=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - started)) s"
    [ "$rc" -eq 0 ] || status=1
}
# shellcheck disable=SC2086 # the *_ARGS are word lists
run features_jpeg 120 "$PY" benchmarks/bench_features.py $FEATURES_ARGS
# On the H200 (issue 23) 4 workers beat the default 15 (one per core but one): keep both in view.
# shellcheck disable=SC2086
run features_jpeg_w4 90 "$PY" benchmarks/bench_features.py $FEATURES_ARGS --num_workers 4
# shellcheck disable=SC2086
run train 110 "$PY" benchmarks/bench_train.py $TRAIN_ARGS
# shellcheck disable=SC2086
run features_png 70 "$PY" benchmarks/bench_features.py $PNG_ARGS
exit $status
