#!/usr/bin/env bash
# Social-IQ 2.0 (siq2/qa/qa_*.json + siq2/video/*.mp4 + siq2/transcript/*.vtt) -> OUT/shards.
#   bash data_prep/social_iq.sh --root siq2 --out data/siq2 [--frames-per-clip 8 --size 224]
set -euo pipefail
exec "${PYTHON:-python}" -m videomask.prep.adapters siq2 "$@"
