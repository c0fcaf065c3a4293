#!/usr/bin/env bash
# General English (WordNet's glosses) and the computing domain (FOLDOC's subject task + unlabelled corpus,
# with the Jargon File) from Debian's dictionary packages, for the text ablation (configs/ablation_text.yaml):
#   bash data_prep/dictionaries.sh OUT [--corpus-max N]
# -> OUT/general/{train,test}/wordnet.txt, OUT/foldoc/task/{train,dev,test}.jsonl, OUT/foldoc/corpus/corpus.jsonl
# Uses the installed packages (wordnet-base, dict-foldoc, dict-jargon); where they are not installed, fetches
# them with `apt-get download` (no root needed) and unpacks them under OUT/debs.
set -euo pipefail
out=${1:?usage: bash data_prep/dictionaries.sh OUT [--corpus-max N]}
shift
py=${PYTHON:-python}
wordnet=/usr/share/wordnet dictd=/usr/share/dictd debs=()
if [ ! -f "$wordnet/data.noun" ] || [ ! -f "$dictd/foldoc.index" ]; then
  mkdir -p "$out/debs" && (cd "$out/debs" && apt-get download wordnet-base dict-foldoc dict-jargon)
  for deb in "$out"/debs/*.deb; do dpkg-deb -x "$deb" "$out/debs/root"; done
  wordnet=$out/debs/root/usr/share/wordnet dictd=$out/debs/root/usr/share/dictd debs=(--debs "$out/debs")
fi
"$py" -m videomask.prep.dictionaries "${debs[@]}" wordnet "$out/general" --wordnet "$wordnet"
"$py" -m videomask.prep.dictionaries "${debs[@]}" foldoc "$out/foldoc" --dictd "$dictd" "$@"
