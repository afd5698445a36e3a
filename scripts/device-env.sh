# Source this on a lent GPU machine (no network) from the repo root, after carrying .whl/
# (see docs/gpu-runs/README.md): installs the carried wheels into /tmp/site.
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl || return 1
python3 -c "import numpy" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/opt/numpy-*.whl || return 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# FAESM 0.1.1 needs transformers<5 (the image has 5.x for the HF adapter): its own site, used by
# `python -m core.bench --peers --faesm-site /tmp/site-faesm` in a child process (core/bench_peers.py).
if [ -d .whl/faesm ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site-faesm .whl/faesm/*.whl || return 1
fi
