# The checkpoint record decoders' fuzz target (tests/fuzz/fuzz_checkpoint.c). Off by
# default; a bounded run (60 s):
#   CC=clang-14 cmake -S . -B build-fuzz -G Ninja -DLK_BUILD_FUZZ=ON -DLK_BUILD_BENCH=OFF
#   cmake --build build-fuzz -j2 --target fuzz_checkpoint
#   ctest --test-dir build-fuzz -L fuzz -R checkpoint --output-on-failure
# or by hand: build-fuzz/tests/fuzz_checkpoint -max_total_time=60 NEW_DIR \
#               tests/fuzz/corpus/checkpoint
# Whatever the option, the target is also built with replay.c's main(), which runs the seed
# corpus as a unit test, so it always compiles and the seeds stay green under ASan.
option(LK_BUILD_FUZZ "Build the libFuzzer targets (needs clang)" OFF)

set(LK_FUZZ_CHECKPOINT_SOURCES ${CMAKE_CURRENT_LIST_DIR}/fuzz_checkpoint.c
  ${PROJECT_SOURCE_DIR}/state/store.c ${PROJECT_SOURCE_DIR}/state/store_integrity.c
  ${PROJECT_SOURCE_DIR}/state/store_meta.c ${PROJECT_SOURCE_DIR}/state/store_batch.c
  ${PROJECT_SOURCE_DIR}/state/store_outbox.c ${PROJECT_SOURCE_DIR}/state/store_state.c
  ${PROJECT_SOURCE_DIR}/state/store_inspect.c ${PROJECT_SOURCE_DIR}/state/codec.c
  ${PROJECT_SOURCE_DIR}/core/crc32c.c ${PROJECT_SOURCE_DIR}/core/util.c
  ${PROJECT_SOURCE_DIR}/core/conf.c ${PROJECT_SOURCE_DIR}/core/err.c
  ${PROJECT_SOURCE_DIR}/core/json.c)
set(LK_FUZZ_CHECKPOINT_LIBS PkgConfig::LMDB PkgConfig::MSGPACK PkgConfig::JANSSON
  PkgConfig::RDKAFKA Threads::Threads)

add_executable(fuzz_checkpoint_replay ${LK_FUZZ_CHECKPOINT_SOURCES}
  ${CMAKE_CURRENT_LIST_DIR}/replay.c)
target_include_directories(fuzz_checkpoint_replay PRIVATE ${PROJECT_SOURCE_DIR}/include
  ${PROJECT_SOURCE_DIR})
target_compile_options(fuzz_checkpoint_replay PRIVATE ${LK_WARNINGS})
target_link_libraries(fuzz_checkpoint_replay PRIVATE ${LK_FUZZ_CHECKPOINT_LIBS})
file(GLOB LK_FUZZ_CHECKPOINT_SEEDS ${CMAKE_CURRENT_LIST_DIR}/corpus/checkpoint/*)
add_test(NAME unit_fuzz_checkpoint_seeds
  COMMAND fuzz_checkpoint_replay ${LK_FUZZ_CHECKPOINT_SEEDS})
set_tests_properties(unit_fuzz_checkpoint_seeds PROPERTIES LABELS unit TIMEOUT 120)

if(LK_BUILD_FUZZ)
  if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "LK_BUILD_FUZZ needs clang (libFuzzer): CC=clang-14 cmake ...")
  endif()
  add_executable(fuzz_checkpoint ${LK_FUZZ_CHECKPOINT_SOURCES})
  target_include_directories(fuzz_checkpoint PRIVATE ${PROJECT_SOURCE_DIR}/include
    ${PROJECT_SOURCE_DIR})
  target_compile_options(fuzz_checkpoint PRIVATE -g -fsanitize=fuzzer,address,undefined
    -fno-sanitize-recover=undefined)
  target_link_options(fuzz_checkpoint PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_libraries(fuzz_checkpoint PRIVATE ${LK_FUZZ_CHECKPOINT_LIBS})
  file(MAKE_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR}/corpus-checkpoint)
  add_test(NAME fuzz_checkpoint
    COMMAND ${CMAKE_COMMAND} -E env ASAN_OPTIONS=detect_leaks=0
            $<TARGET_FILE:fuzz_checkpoint> -max_total_time=60 -max_len=4096 -timeout=10
            -rss_limit_mb=1024 ${CMAKE_CURRENT_BINARY_DIR}/corpus-checkpoint
            ${CMAKE_CURRENT_LIST_DIR}/corpus/checkpoint)
  set_tests_properties(fuzz_checkpoint PROPERTIES LABELS fuzz TIMEOUT 300)
endif()
