/*
 * fuzz_properties.c — libFuzzer target for the .properties loader (lk_conf_load_file):
 * any bytes must give LK_CONF_OK, LK_CONF_INVALID or LK_CONF_UNKNOWN with a message,
 * never a crash, a hang, unbounded memory or a value holding a NUL. The input reaches
 * the loader as a file (a memfd named through /proc/self/fd), the loader's only source.
 *
 * Built with clang only (CMake: CC=clang-14 -DLK_BUILD_FUZZ=ON, see tests/fuzz/
 * CMakeLists.txt). Linked with replay.c instead of libFuzzer it replays the files named
 * on its command line, so the seed corpus also runs as a regular test.
 */
#define _GNU_SOURCE
#include "lockstep.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_value(const char *key, const char *value, void *opaque) {
    (void)opaque;
    /* every key and value is a whole C string (ASan checks the reads) */
    volatile size_t n = strlen(key) + strlen(value);
    (void)n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("fuzz.properties", MFD_CLOEXEC);
        if (fd < 0)
            abort();
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != (ssize_t)size)
        abort();
    lk_conf_t *conf = lk_conf_new();
    if (!conf)
        abort();
    char err[1024] = "";
    lk_conf_res_t r = lk_conf_load_file(conf, path, err, sizeof err);
    if (r != LK_CONF_OK && r != LK_CONF_INVALID && r != LK_CONF_UNKNOWN)
        abort();
    if (r != LK_CONF_OK && !err[0])
        abort(); /* every refusal says why */
    lk_conf_foreach(conf, 1, check_value, NULL);
    lk_conf_destroy(conf);
    return 0;
}
