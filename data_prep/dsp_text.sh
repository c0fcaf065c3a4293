#!/usr/bin/env bash
# "Don't Stop Pretraining" text classification (ChemProt, ACL-ARC: train/dev/test.jsonl) -> OUT/shards.
#   bash data_prep/dsp_text.sh --root chemprot --out data/chemprot
set -euo pipefail
exec "${PYTHON:-python}" -m videomask.prep.adapters dsp "$@"
