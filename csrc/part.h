/* A part file: a download's bytes, appended, with a running MD5 of the
 * whole file, so that the check after a download (resumed or not) never
 * reads the file back. No Lua here. */
#ifndef DP_PART_H
#define DP_PART_H

#include <stddef.h>

#include <openssl/evp.h>

typedef struct {
    int fd;           /* -1: no file (a stream's running MD5 only), or closed */
    EVP_MD_CTX *md5;  /* of every byte in the file, a resumed prefix first; NULL: closed */
    long long size;
} dp_part;

/* Opens path, never through a symbolic link: to resume, the existing file
 * (its bytes hashed); else a new one, 0600, that must not exist yet.
 * path NULL: no file, the bytes are only hashed. Returns NULL, or a
 * sentence saying why not. */
const char *dp_part_open(dp_part *p, const char *path, int resume);
/* Appends n bytes; 0 when writing failed. */
int dp_part_write(dp_part *p, const char *data, size_t n);
/* Empties the file (a server that ignored the Range sends it whole). */
int dp_part_truncate(dp_part *p);
/* The base64 MD5 of the file so far into out (25 bytes, NUL included). */
int dp_part_digest(const dp_part *p, char out[25]);
/* Closes; 0 when the close reported a write error. Idempotent. */
int dp_part_close(dp_part *p);

#endif
