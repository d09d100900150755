# Source this on a lent H200 (see the device tool's README): our dependencies from the carried
# wheels in .whl/, the project itself editable, the test model folder kept under /tmp/models.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || return 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 AGENT_TEST_MODEL_DIR=/tmp/models
# Byte-compile what was installed (--no-compile): a user's install has .pyc files, and without
# them every `agent` process here spent ~2 s compiling sources (seen in py-spy).
python3 -m compileall -q -j 0 /tmp/site >/dev/null 2>&1
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null || return 1
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader
