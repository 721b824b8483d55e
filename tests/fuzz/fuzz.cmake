# lk_fuzz(NAME target SEEDS dir MAX_LEN bytes LEAKS 0|1 SOURCES src... LIBS lib...)
# builds one fuzz target two ways:
#  - always: target_replay, linked with replay.c (tests/fuzz/replay.c), and the unit test
#    unit_<target>_seeds that replays the seed corpus SEEDS (so the target always
#    compiles and its seeds stay green under the ASan build);
#  - with LK_BUILD_FUZZ (clang): the libFuzzer target and its bounded run, test <target>
#    (label fuzz: 60 s, inputs up to MAX_LEN, leak checks as LEAKS says), new inputs kept
#    in the build tree (corpus-<target without fuzz_>).
option(LK_BUILD_FUZZ "Build the libFuzzer targets (needs clang)" OFF)
if(LK_BUILD_FUZZ AND NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
  message(FATAL_ERROR "LK_BUILD_FUZZ needs clang (libFuzzer): CC=clang-14 cmake ...")
endif()
set(LK_FUZZ_DIR ${CMAKE_CURRENT_LIST_DIR})

function(lk_fuzz)
  cmake_parse_arguments(F "" "NAME;SEEDS;MAX_LEN;LEAKS" "SOURCES;LIBS" ${ARGN})
  set(incs ${PROJECT_SOURCE_DIR}/include ${PROJECT_SOURCE_DIR})
  add_executable(${F_NAME}_replay ${F_SOURCES} ${LK_FUZZ_DIR}/replay.c)
  target_include_directories(${F_NAME}_replay PRIVATE ${incs})
  target_compile_options(${F_NAME}_replay PRIVATE ${LK_WARNINGS})
  target_link_libraries(${F_NAME}_replay PRIVATE ${F_LIBS})
  file(GLOB seeds ${F_SEEDS}/*)
  add_test(NAME unit_${F_NAME}_seeds COMMAND ${F_NAME}_replay ${seeds})
  set_tests_properties(unit_${F_NAME}_seeds PROPERTIES LABELS unit TIMEOUT 120)
  if(NOT LK_BUILD_FUZZ)
    return()
  endif()
  # the target's own sources are compiled into it, instrumented for coverage
  add_executable(${F_NAME} ${F_SOURCES})
  target_include_directories(${F_NAME} PRIVATE ${incs})
  target_compile_options(${F_NAME} PRIVATE -g -fsanitize=fuzzer,address,undefined
    -fno-sanitize-recover=undefined)
  target_link_options(${F_NAME} PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_libraries(${F_NAME} PRIVATE ${F_LIBS})
  string(REGEX REPLACE "^fuzz_" "" short ${F_NAME})
  set(corpus ${CMAKE_CURRENT_BINARY_DIR}/corpus-${short})
  file(MAKE_DIRECTORY ${corpus})
  add_test(NAME ${F_NAME}
    COMMAND ${CMAKE_COMMAND} -E env ASAN_OPTIONS=detect_leaks=${F_LEAKS}
            $<TARGET_FILE:${F_NAME}> -max_total_time=60 -max_len=${F_MAX_LEN} -timeout=10
            -rss_limit_mb=1024 ${corpus} ${F_SEEDS})
  set_tests_properties(${F_NAME} PROPERTIES LABELS fuzz TIMEOUT 300)
endfunction()
