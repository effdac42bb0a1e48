#!/usr/bin/env bash
# Fill wheels/ with the packages that the GPU machine's image lacks for benchmarks/gpu_suite.sh.
# Run it here, where PyPI is reachable (the GPU machine reaches nothing): Python 3.12 x86-64 wheels,
# no dependency resolution (the list is complete for the 'cuda' image, which already holds torch,
# transformers, peft, lightning, torchmetrics, tokenizers, tensorboard and tqdm). About 51 MB, inside the
# device tool's 64 MiB carry: name `wheels` in `carry` (see benchmarks/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
mkdir -p wheels
PLATFORMS=()
for n in 17 24 28; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d wheels \
  bitsandbytes==0.50.2 gymnasium==1.4.0 farama-notifications==0.0.6 \
  jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0 \
  textworld==1.7.0 tatsu==5.8.3 hashids==1.3.1 mementos==1.3.1 termcolor==3.3.0 \
  prompt_toolkit==3.0.53 wcwidth==0.9.4 alfworld==0.4.2
# jericho (TextWorld's z-machine interpreter) ships no wheel: build one here. It is pure Python plus a
# libfrotz.so that links only libc, so the wheel is tagged py3-none-any and installs on the GPU's 3.12.
"$PYTHON" -m pip wheel -q --no-deps -w wheels jericho==3.3.1
# fast-downward-textworld (ALFWorld's PDDL planner, for the preset step) ships no wheel either. Its compiled
# part is libdownward.so, loaded with ctypes (no CPython ABI: the wheel is py3-none-any and serves 3.12);
# it needs glibc >= 2.32 and libstdc++ from GCC >= 11. Built here (about a minute; pip caches it), then
# stripped of its debug info (12 MB -> 0.6 MB; the plans it finds are unchanged).
"$PYTHON" -m pip wheel -q --no-deps -w wheels fast-downward-textworld==20.6.4
"$PYTHON" benchmarks/strip_wheel.py wheels/fast_downward_textworld-20.6.4-*.whl
du -sh wheels
