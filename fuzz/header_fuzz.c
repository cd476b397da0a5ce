/* libFuzzer target: dp_keep_header (csrc/transfer.c), which reads the
 * headers libcurl hands over, as a hostile server wrote them.
 *
 * Input: byte 0 picks the header name and the output size, as the core's
 * callers use them (content-type 128, retry-after 64, content-range 96,
 * x-goog-hash 256), or an odd size from 1 to 64; the rest is the header
 * line, not NUL-terminated (libcurl's are not either), in an exact-size
 * buffer so that ASan sees any read past its end. Invariants:
 *   - a line that is not `name:` (any case) leaves the output untouched;
 *   - otherwise the output is NUL-terminated within cap, printable ASCII
 *     (0x20-0x7e), without leading or trailing spaces, and a copy of the
 *     value's first bytes;
 *   - nothing is written past cap (the buffer is exactly cap bytes). */
#define _POSIX_C_SOURCE 200809L /* strnlen, strncasecmp */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "transfer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const struct {
    const char *name;
    size_t cap;
} callers[] = {
    {"content-type", 128}, /* transfer.c on_header */
    {"retry-after", 64},   /* transfer.c on_header */
    {"content-range", 96}, /* transfer.c on_header, downloads */
    {"x-goog-hash", 256},  /* transfer.c on_header, downloads */
};

#define NCALLERS (sizeof callers / sizeof callers[0])
#define SENTINEL 0xA5

static void fail(const char *what)
{
    fprintf(stderr, "header_fuzz: %s\n", what);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *name;
    size_t cap, name_len, len, start, n, i;
    char *line, *out;

    if (size < 1)
        return 0;
    name = callers[data[0] % NCALLERS].name;
    cap = data[0] < 128 ? callers[data[0] % NCALLERS].cap : 1 + (size_t)(data[0] & 63);
    len = size - 1;
    line = malloc(len ? len : 1);
    out = malloc(cap);
    if (line == NULL || out == NULL) {
        free(line);
        free(out);
        return 0;
    }
    if (len > 0)
        memcpy(line, data + 1, len);
    memset(out, SENTINEL, cap);

    dp_keep_header(line, len, name, out, cap);

    name_len = strlen(name);
    if (len <= name_len || strncasecmp(line, name, name_len) != 0 || line[name_len] != ':') {
        for (i = 0; i < cap; i++)
            if ((uint8_t)out[i] != SENTINEL)
                fail("wrote the output for another header");
    } else {
        n = strnlen(out, cap);
        if (n >= cap)
            fail("the output is not NUL-terminated within cap");
        for (i = 0; i < n; i++)
            if ((uint8_t)out[i] < 0x20 || (uint8_t)out[i] > 0x7e)
                fail("the output has a byte that is not printable ASCII");
        if (n > 0 && (out[0] == ' ' || out[n - 1] == ' '))
            fail("the output has a leading or trailing space");
        for (start = name_len + 1; start < len && line[start] == ' '; start++)
            ;
        if (n > len - start || memcmp(out, line + start, n) != 0)
            fail("the output is not the start of the value");
    }
    free(line);
    free(out);
    return 0;
}
