# The checkpoint record decoders' fuzz target (tests/fuzz/fuzz_checkpoint.c). Off by
# default; a bounded run (60 s):
#   CC=clang-14 cmake -S . -B build-fuzz -G Ninja -DLK_BUILD_FUZZ=ON -DLK_BUILD_BENCH=OFF
#   cmake --build build-fuzz -j2 --target fuzz_checkpoint
#   ctest --test-dir build-fuzz -L fuzz -R checkpoint --output-on-failure
# or by hand: build-fuzz/tests/fuzz_checkpoint -max_total_time=60 NEW_DIR \
#               tests/fuzz/corpus/checkpoint
# Whatever the option, the target is also built with replay.c's main(), which runs the seed
# corpus as a unit test: lk_fuzz() in fuzz.cmake.

set(LK_FUZZ_CHECKPOINT_SOURCES ${CMAKE_CURRENT_LIST_DIR}/fuzz_checkpoint.c
  ${PROJECT_SOURCE_DIR}/state/store.c ${PROJECT_SOURCE_DIR}/state/store_integrity.c
  ${PROJECT_SOURCE_DIR}/state/store_meta.c ${PROJECT_SOURCE_DIR}/state/store_batch.c
  ${PROJECT_SOURCE_DIR}/state/store_outbox.c ${PROJECT_SOURCE_DIR}/state/store_state.c
  ${PROJECT_SOURCE_DIR}/state/store_inspect.c ${PROJECT_SOURCE_DIR}/state/codec.c
  ${PROJECT_SOURCE_DIR}/core/crc32c.c ${PROJECT_SOURCE_DIR}/core/util.c
  ${PROJECT_SOURCE_DIR}/core/conf.c ${PROJECT_SOURCE_DIR}/core/conf_file.c
  ${PROJECT_SOURCE_DIR}/core/err.c
  ${PROJECT_SOURCE_DIR}/core/json.c)
set(LK_FUZZ_CHECKPOINT_LIBS PkgConfig::LMDB PkgConfig::MSGPACK PkgConfig::JANSSON
  PkgConfig::RDKAFKA Threads::Threads)

lk_fuzz(NAME fuzz_checkpoint SEEDS ${CMAKE_CURRENT_LIST_DIR}/corpus/checkpoint
  MAX_LEN 4096 LEAKS 0 SOURCES ${LK_FUZZ_CHECKPOINT_SOURCES} LIBS ${LK_FUZZ_CHECKPOINT_LIBS})
