#!/usr/bin/env bash
# The pipeline and the ablation on a real catalog of product photos, into a work folder outside the repo;
# prints the scoreboard and the ablation table. Defaults: the hm-dev photos beside the repo (H&M format).
#
#   benchmarks/real_catalog.sh [WORK_DIR] [DATA_DIR]
#   SEEDS=0 VARIANTS=plain,full benchmarks/real_catalog.sh /tmp/hm-dev     # a quicker ablation
#   ABLATION=false benchmarks/real_catalog.sh /tmp/hm-dev                   # the pipeline alone
#
# DATA_DIR holds articles.csv and images/<article_id>.jpg (mapping=hm). The work folder gets its own
# tracking store (sqlite, artifacts beside it) and the stage outputs; a second call reuses every
# unchanged step. Never part of `make test`: it reads photos that are not in the repo.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(realpath -m "${1:-/tmp/protocol-hm-dev}")"
DATA="$(realpath -m "${2:-$ROOT/../shared/data/hm-dev}")"
case "$WORK/" in "$ROOT"/*) echo "work folder $WORK is inside the repo: pass one outside $ROOT" >&2; exit 2;; esac
for f in "$DATA/articles.csv" "$DATA/images"; do
  [ -e "$f" ] || { echo "$f is missing: pass the folder that holds articles.csv and images/" >&2; exit 2; }
done
[ -x "$ROOT/.venv/bin/mlflow" ] || { echo "no $ROOT/.venv: run 'make setup' first" >&2; exit 2; }
mkdir -p "$WORK"
export MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db"
export MLFLOW_EXPERIMENT_NAME=fashion-retrieval
"$ROOT/.venv/bin/python" -m protocol.tracking.store --experiment "$MLFLOW_EXPERIMENT_NAME"
"$ROOT/.venv/bin/mlflow" run "$ROOT" -e pipeline --env-manager local --experiment-name "$MLFLOW_EXPERIMENT_NAME" \
  -P source=table -P input="$DATA/articles.csv" -P image_dir="$DATA/images" -P mapping=hm \
  -P work_dir="$WORK/outputs" -P ablation="${ABLATION:-true}" -P ablation_seeds="${SEEDS:-0,1,2}" \
  ${VARIANTS:+-P ablation_variants="$VARIANTS"}
echo; echo "== scoreboard ($WORK/outputs/scoreboard)"
cat "$(ls -t "$WORK"/outputs/scoreboard/*/scoreboard.txt | head -1)"
if [ -f "$WORK/outputs/ablation/ablation.md" ]; then
  echo; echo "== ablation ($WORK/outputs/ablation/ablation.md)"; cat "$WORK/outputs/ablation/ablation.md"
fi
echo; echo "MLflow UI on this store: .venv/bin/mlflow ui --backend-store-uri $MLFLOW_TRACKING_URI --port 5000"
