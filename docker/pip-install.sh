#!/bin/sh
# Runs inside the image build (docker/Dockerfile, docker/Dockerfile.worker), offline: pip sees
# only the wheelhouse that docker/build.sh serves at $WHEELS (PIP_NO_INDEX, PIP_FIND_LINKS).
#
#   pip-install.sh wheels LOCK SOURCE OUT   build stage: hash-checked build tools, then wheels of
#                                           the lock's source distributions and of the project
#   pip-install.sh venv LOCK BUILT          final stage: /opt/pacsnode with every locked wheel
#                                           (hash-checked) and the wheels built in the build stage
set -eu
: "${WHEELS:?the wheelhouse URL (docker/build.sh passes --build-arg WHEELS)}"
export PIP_NO_INDEX=1 PIP_FIND_LINKS="$WHEELS" PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
       PIP_ROOT_USER_ACTION=ignore
mode=$1 lock=$2
tmp=$(mktemp -d)
grep -E -- '--hash=' "$lock" | grep -v -- '# sdist' > "$tmp/wheels.txt" || true
grep -E -- '# sdist$' "$lock" > "$tmp/sdists.txt" || true

case "$mode" in
  wheels)
    source=$3 out=$4
    python3 -m venv /opt/build
    # setuptools/wheel build the project; numpy and versioneer are pyradiomics' build requirements
    grep -E '^(setuptools|wheel|numpy|versioneer)==' "$lock" > "$tmp/tools.txt"
    /opt/build/bin/pip install --quiet --require-hashes --no-deps -r "$tmp/tools.txt"
    mkdir -p "$out"
    if [ -s "$tmp/sdists.txt" ]; then
      /opt/build/bin/pip wheel --quiet --require-hashes --no-deps --no-build-isolation \
        -r "$tmp/sdists.txt" -w "$out"
    fi
    /opt/build/bin/pip wheel --quiet --no-deps --no-build-isolation "$source" -w "$out"
    ls -l "$out"
    ;;
  venv)
    built=$3
    python3 -m venv /opt/pacsnode
    /opt/pacsnode/bin/pip install --quiet --require-hashes --no-deps -r "$tmp/wheels.txt"
    /opt/pacsnode/bin/pip install --quiet --no-deps "$built"/*.whl
    rm -rf /root/.cache  # no pip cache in the image (PIP_NO_CACHE_DIR should leave none)
    ;;
  *)
    echo "unknown mode $mode" >&2
    exit 2
    ;;
esac
rm -rf "$tmp"
