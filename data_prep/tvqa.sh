#!/usr/bin/env bash
# TVQA (QA JSONL + subtitles + frames_hq or videos) -> OUT/manifest.jsonl -> OUT/shards.
#   bash data_prep/tvqa.sh --qa tvqa_qa_release/tvqa_train.jsonl tvqa_qa_release/tvqa_val.jsonl \
#       --subtitles tvqa_subtitles --frames frames_hq --out data/tvqa [--frames-per-clip 8 --size 224]
set -euo pipefail
exec "${PYTHON:-python}" -m videomask.prep.adapters tvqa "$@"
