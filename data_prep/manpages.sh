#!/usr/bin/env bash
# Debian manual pages -> a labelled technical text task (a paragraph's section) and an unlabelled corpus:
#   bash data_prep/manpages.sh data/manpages            (OUT/task/{train,dev,test}.jsonl, OUT/corpus/)
set -euo pipefail
exec "${PYTHON:-python}" -m videomask.prep.manpages "$@"
