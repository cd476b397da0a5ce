/* libFuzzer target: dp_token_problem and dp_wipe (csrc/token.c).
 *
 * The input is the token, as the Lua string the core receives (any bytes,
 * NUL included). Invariants:
 *   - accepted: 1 to DP_TOKEN_MAX bytes of the b64token alphabet (letters,
 *     digits, -._~+/) followed only by '=' padding, at least one
 *     non-padding byte first;
 *   - and the converse: every such input is accepted;
 *   - refused: one of token.c's static sentences (so it cannot quote the
 *     token), non-empty, one line;
 *   - dp_wipe leaves only zero bytes. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "token.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int in_alphabet(uint8_t c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           strchr("-._~+/", c) != NULL;
}

/* The grammar, written independently of token.c:
 * b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=" */
static int is_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;

    if (n < 1 || n > DP_TOKEN_MAX)
        return 0;
    while (i < n && s[i] != '\0' && in_alphabet(s[i]))
        i++;
    if (i == 0)
        return 0;
    while (i < n && s[i] == '=')
        i++;
    return i == n;
}

/* libFuzzer writes the input to crash-<sha1> on abort. */
static void fail(const char *what, size_t size)
{
    fprintf(stderr, "token_fuzz: %s (input of %zu bytes)\n", what, size);
    abort();
}

/* The sentences token.c can give, one per kind of problem. A refusal must
 * be one of them, the very same static string: then it cannot quote the
 * token. */
static const char *reasons[4];

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static char long_token[DP_TOKEN_MAX + 1];

    (void)argc;
    (void)argv;
    memset(long_token, 'a', sizeof long_token);
    reasons[0] = dp_token_problem("", 0);
    reasons[1] = dp_token_problem(long_token, sizeof long_token);
    reasons[2] = dp_token_problem("=", 1);
    reasons[3] = dp_token_problem("a\n", 2);
    return 0;
}

static int known_reason(const char *problem)
{
    size_t i;

    for (i = 0; i < sizeof reasons / sizeof reasons[0]; i++)
        if (reasons[i] != NULL && problem == reasons[i])
            return 1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An exact-size copy: ASan sees any read past the end. */
    char *token = malloc(size ? size : 1);
    const char *problem;
    size_t i;

    if (token == NULL)
        return 0;
    if (size > 0)
        memcpy(token, data, size);
    problem = dp_token_problem(token, size);

    if (problem == NULL) {
        if (size < 1 || size > DP_TOKEN_MAX)
            fail("accepted a token of a bad length", size);
        for (i = 0; i < size && in_alphabet((uint8_t)token[i]); i++)
            ;
        if (i == 0)
            fail("accepted a token that does not start in the alphabet", size);
        for (; i < size && token[i] == '='; i++)
            ;
        if (i != size)
            fail("accepted a byte outside the alphabet, or one after the '=' padding", size);
    } else {
        if (is_valid(data, size))
            fail("refused a valid b64token", size);
        if (!known_reason(problem))
            fail("the reason is not one of the static sentences", size);
        if (problem[0] == '\0' || strchr(problem, '\n') != NULL)
            fail("the reason is empty or not one line", size);
    }

    dp_wipe(token, size);
    for (i = 0; i < size; i++)
        if (token[i] != 0)
            fail("dp_wipe left a non-zero byte", size);
    free(token);
    return 0;
}
