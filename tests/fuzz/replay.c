/*
 * replay.c — the main() of every fuzz target built without libFuzzer: each argument is
 * an input file (a seed of the corpus, or a crash to reproduce), read whole and handed
 * to the target's LLVMFuzzerTestOneInput once. So the targets always compile, and their
 * seed corpora run as unit tests (also under the ASan build). A target aborts on a
 * finding; this exits 1 only when an input cannot be read. DESIGN.md, Testing.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The whole of file path, in a buffer the caller frees; NULL (with a message) on error. */
static uint8_t *read_all(const char *path, size_t *len) {
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        perror(path);
        return NULL;
    }
    size_t cap = 1 << 16, n = 0, got;
    uint8_t *buf = malloc(cap);
    while (buf && (got = fread(buf + n, 1, cap - n, fp)) > 0) {
        if ((n += got) < cap)
            continue;
        uint8_t *nb = cap <= SIZE_MAX / 2 ? realloc(buf, cap * 2) : NULL;
        if (!nb)
            free(buf);
        buf = nb;
        cap *= 2;
    }
    int bad = ferror(fp);
    fclose(fp);
    if (!buf || bad) {
        fprintf(stderr, "%s: cannot read it%s\n", path, buf ? "" : " (out of memory)");
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        size_t n;
        uint8_t *buf = read_all(argv[i], &n);
        if (!buf)
            return 1;
        LLVMFuzzerTestOneInput(buf, n);
        free(buf);
        printf("%s: ok\n", argv[i]);
    }
    printf("%d inputs replayed\n", argc - 1);
    return 0;
}
