#!/usr/bin/env bash
# lockstep.sh — one entry point for a new machine: installs the Debian packages that are
# missing (.ci/packages), configures and builds, then runs what was asked for.
#
#   ./lockstep.sh demo       build, then run the demo
#   ./lockstep.sh test       build with -Werror, run the test suite (ctest: the tiers unit,
#                            mock, chaos and kafka; the kafka tier starts a real Apache
#                            Kafka fetched from Maven Central; ctest arguments pass on,
#                            e.g. ./lockstep.sh test -L kafka)
#   ./lockstep.sh asan       build with ASan+UBSan, run the test suite
#   ./lockstep.sh valgrind   run the unit tests under valgrind (leaks are errors)
#   ./lockstep.sh build      only build (into ./build)
#   ./lockstep.sh docs       regenerate README.md's configuration and metrics references
#   ./lockstep.sh bench      build, run bench/run (end to end, against baselines)
#   ./lockstep.sh bench-store  build, run bench_store (checkpoint store vs raw LMDB)
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"

JOBS=$(nproc 2>/dev/null || echo 2)

need_packages() { # [LIST...]: .ci/packages and the lists named
  local missing=() list
  for list in .ci/packages "$@"; do
    while read -r pkg; do
      [[ -z "$pkg" || "$pkg" == \#* ]] && continue
      dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
        missing+=("$pkg")
    done < "$list"
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  echo "lockstep.sh: installing missing packages: ${missing[*]}" >&2
  local sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null; then sudo=(sudo); else
      echo "lockstep.sh: run as root or install: apt-get install -y ${missing[*]}" >&2
      exit 1
    fi
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

build() { # build DIR [cmake args...]
  local dir=$1; shift
  cmake -S . -B "$dir" -G Ninja -DLK_WERROR=ON "$@" >/dev/null
  cmake --build "$dir" -j "$JOBS"
}

cmd=${1:-help}
[[ $# -gt 0 ]] && shift
case "$cmd" in
  demo)
    need_packages
    build build
    ./build/lockstep demo "$@"
    ;;
  test)
    need_packages .ci/packages-kafka
    build build
    ./build/lockstep config --markdown > build/config-reference.md
    if ! awk '/<!-- config-reference:begin -->/{f=1;next}/<!-- config-reference:end -->/{f=0}f' README.md |
        diff -u - build/config-reference.md; then
      echo "lockstep.sh: README.md's configuration reference is stale; run ./lockstep.sh docs" >&2
      exit 1
    fi
    ./build/lockstep metrics --markdown > build/metrics-reference.md
    if ! awk '/<!-- metrics-reference:begin -->/{f=1;next}/<!-- metrics-reference:end -->/{f=0}f' README.md |
        diff -u - build/metrics-reference.md; then
      echo "lockstep.sh: README.md's metrics reference is stale; run ./lockstep.sh docs" >&2
      exit 1
    fi
    ctest --test-dir build --output-on-failure -j "$JOBS" "$@"
    ;;
  asan)
    need_packages .ci/packages-kafka
    build build-asan -DLK_SANITIZE=ON -DLK_BUILD_BENCH=OFF
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
      ctest --test-dir build-asan --output-on-failure -j "$JOBS" "$@"
    ;;
  valgrind)
    need_packages
    build build
    # Criterion runs each test in a worker process and does not pass valgrind's exit
    # code on, so every process writes its own log and each must report 0 errors.
    logs=build/valgrind
    rm -rf "$logs"; mkdir -p "$logs"
    # what ctest would set for the tests (tests/CMakeLists.txt)
    export LK_CLI=$PWD/build/lockstep logs
    status=0
    # one test executable per core at a time (each runs its tests one by one)
    vg_one() {
      local t=$1 name
      name=$(basename "$t")
      echo "valgrind: $name"
      LK_TEST_KILLS=20 valgrind --trace-children=yes --child-silent-after-fork=yes \
        --leak-check=full --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect \
        --log-file="$logs/$name.%p.log" "$t" --jobs 1 >"$logs/$name.out" 2>&1 ||
        { echo "valgrind: $name failed:"; tail -30 "$logs/$name.out"; return 1; }
    }
    export -f vg_one
    find build/tests -maxdepth 1 -name 'unit_*' -type f -perm -u+x -print0 | sort -z |
      xargs -0 -r -n 1 -P "$JOBS" bash -c 'vg_one "$1"' _ || status=1
    bad=$(grep -L "ERROR SUMMARY: 0 errors" "$logs"/*.log || true)
    if [[ -n "$bad" ]]; then
      for f in $bad; do echo "== $f"; cat "$f"; done
      status=1
    fi
    echo "valgrind: $(ls "$logs" | wc -l) processes checked"
    exit $status
    ;;
  build)
    need_packages
    build build
    ;;
  docs)
    need_packages
    build build
    ./build/lockstep config --markdown > build/config-reference.md
    awk -v ref=build/config-reference.md '
      /<!-- config-reference:begin -->/ { print; while ((getline l < ref) > 0) print l; skip=1; next }
      /<!-- config-reference:end -->/ { skip=0 }
      !skip' README.md > build/README.md.new
    mv build/README.md.new README.md
    ./build/lockstep metrics --markdown > build/metrics-reference.md
    awk -v ref=build/metrics-reference.md '
      /<!-- metrics-reference:begin -->/ { print; while ((getline l < ref) > 0) print l; skip=1; next }
      /<!-- metrics-reference:end -->/ { skip=0 }
      !skip' README.md > build/README.md.new
    mv build/README.md.new README.md
    echo "README.md: configuration and metrics references regenerated"
    ;;
  bench)
    need_packages
    build build
    /usr/bin/python3 bench/run "$@"
    ;;
  bench-store)
    need_packages
    build build
    ./build/bench_store "$@"
    ;;
  *)
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    [[ "$cmd" == help || "$cmd" == --help || "$cmd" == -h ]] || exit 2
    ;;
esac
