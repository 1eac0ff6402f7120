#!/usr/bin/env bash
# Wheels of what the GPU machine's image lacks, for its Python 3.12: pyvi and its CRF, which
# `--scale gpu_vi` segments Vietnamese with (scikit-learn, tabulate and tqdm, their other needs, are
# there). Run here once, then name .whl in the device call's carry; gpu_compare.sh installs them there.
# Usage: bash benchmarks/gpu_wheels.sh   (WHL=folder PY=3.12 to change where and for which Python)
set -eu
WHL=${WHL:-.whl}
PY=${PY:-3.12}
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$WHL" pyvi==0.1.1 python-crfsuite==0.9.12 sklearn-crfsuite==0.5.0
ls "$WHL"
