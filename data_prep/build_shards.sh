#!/usr/bin/env bash
# Videos + transcripts (or text corpora) -> WebDataset shards.
#   bash data_prep/build_shards.sh INPUT OUTPUT [--frames 8 --size 224 --workers 4 ...]
#   bash data_prep/build_shards.sh merge OUTPUT     # after a --num-partitions job array
# All options: bash data_prep/build_shards.sh --help
set -euo pipefail
exec "${PYTHON:-python}" -m videomask.prep.build "$@"
