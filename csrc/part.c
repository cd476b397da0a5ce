#define _POSIX_C_SOURCE 200809L /* pread, ftruncate, O_NOFOLLOW, O_CLOEXEC */
/* Part files (part.h): written with write(2), not stdio, whose buffer
 * would be written twice by a process forked in a progress callback. */
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include "part.h"

static int hash_prefix(dp_part *p)
{
    unsigned char buf[65536];
    ssize_t n;

    p->size = 0;
    while ((n = pread(p->fd, buf, sizeof buf, (off_t)p->size)) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 || EVP_DigestUpdate(p->md5, buf, (size_t)n) != 1)
            return 0;
        p->size += n;
    }
    return 1;
}

const char *dp_part_open(dp_part *p, const char *path, int resume)
{
    /* read too: a resumed part's bytes are hashed */
    int flags = O_RDWR | O_APPEND | O_NOFOLLOW | O_CLOEXEC;

    p->size = 0;
    p->md5 = NULL;
    p->fd = path == NULL ? -1 : open(path, resume ? flags : flags | O_CREAT | O_EXCL, 0600);
    if (p->fd < 0 && path != NULL)
        return errno == ELOOP ? "refused to write through a symbolic link"
             : errno == EEXIST ? "the file exists already, and is not ours"
             : "cannot open the file for writing";
    p->md5 = EVP_MD_CTX_new();
    if (p->md5 == NULL || EVP_DigestInit_ex(p->md5, EVP_md5(), NULL) != 1 || (path != NULL && !hash_prefix(p))) {
        (void)dp_part_close(p);
        return "cannot read the file";
    }
    return NULL;
}

int dp_part_write(dp_part *p, const char *data, size_t n)
{
    if (EVP_DigestUpdate(p->md5, data, n) != 1)
        return 0;
    p->size += (long long)n;
    while (n > 0 && p->fd >= 0) {
        ssize_t k = write(p->fd, data, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return 0;
        data += k;
        n -= (size_t)k;
    }
    return 1;
}

int dp_part_truncate(dp_part *p)
{
    p->size = 0;
    return (p->fd < 0 || ftruncate(p->fd, 0) == 0) && EVP_DigestInit_ex(p->md5, EVP_md5(), NULL) == 1;
}

int dp_part_digest(const dp_part *p, char out[25])
{
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_MD_CTX *copy = EVP_MD_CTX_new();
    int ok = copy != NULL && EVP_MD_CTX_copy_ex(copy, p->md5) == 1 &&
             EVP_DigestFinal_ex(copy, digest, &len) == 1 && len == 16;

    EVP_MD_CTX_free(copy);
    if (ok)
        EVP_EncodeBlock((unsigned char *)out, digest, 16); /* 24 characters and a NUL */
    return ok;
}

int dp_part_close(dp_part *p)
{
    int ok = p->fd < 0 || close(p->fd) == 0;

    p->fd = -1;
    EVP_MD_CTX_free(p->md5);
    p->md5 = NULL;
    return ok;
}
