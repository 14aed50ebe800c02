/* child_upper.c: a child that answers every message with the same message in upper case.
 *
 *   cc -O2 -o child_upper examples/child_upper.c
 *   then, in Python:  spawn(["./child_upper"], fd=3)   (README: "Spawning a child")
 *
 * spawn() put our end of the socketpair at a fixed descriptor and named it in the
 * environment: SOCKETPAIR_FD=3 (or "stdio": then we read stdin and write stdout).
 * The descriptor is blocking and ours alone; nothing else was inherited.
 *
 * Messages use the Channel's framing on a stream socket: a 4-byte big-endian length,
 * then that many bytes. We exit with status 0 when the parent closes its end.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_MESSAGE (16u << 20) /* refuse absurd lengths instead of allocating them */

/* Read exactly len bytes: 1 on success, 0 on a clean end-of-file before the first byte. */
static int read_exact(int fd, void *buf, size_t len) {
    size_t done = 0;
    while (done < len) {
        ssize_t n = read(fd, (char *)buf + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            perror("child_upper: read");
            exit(1);
        }
        if (n == 0) {
            if (done == 0)
                return 0;
            fprintf(stderr, "child_upper: end-of-file inside a message\n");
            exit(1);
        }
        done += (size_t)n;
    }
    return 1;
}

static void write_all(int fd, const void *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            perror("child_upper: write");
            exit(1);
        }
        buf = (const char *)buf + n;
        len -= (size_t)n;
    }
}

int main(void) {
    const char *where = getenv("SOCKETPAIR_FD");
    if (where == NULL) {
        fprintf(stderr, "child_upper: SOCKETPAIR_FD is not set; start me with spawn()\n");
        return 2;
    }
    int in = strcmp(where, "stdio") == 0 ? 0 : atoi(where);
    int out = strcmp(where, "stdio") == 0 ? 1 : in;

    uint32_t header;
    while (read_exact(in, &header, sizeof header)) {
        uint32_t len = ntohl(header);
        if (len > MAX_MESSAGE) {
            fprintf(stderr, "child_upper: message of %u bytes is too large\n", len);
            return 1;
        }
        unsigned char *message = malloc(len ? len : 1);
        if (message == NULL || (len > 0 && !read_exact(in, message, len))) {
            fprintf(stderr, "child_upper: cannot read a message of %u bytes\n", len);
            return 1;
        }
        for (uint32_t i = 0; i < len; i++)
            message[i] = (unsigned char)toupper(message[i]);
        write_all(out, &header, sizeof header);
        write_all(out, message, len);
        free(message);
    }
    return 0;
}
