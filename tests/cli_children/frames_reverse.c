/* A test child for `unix-socketpair exec --frames`: reads messages in the stream framing
 * (4-byte big-endian length, then the payload) from the socket named by SOCKETPAIR_FD and
 * answers each with its bytes reversed. Exits 0 at end-of-file between messages, 1 on a
 * short message or an error. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static int read_full(int fd, unsigned char *buf, size_t len) {
    size_t done = 0;
    while (done < len) {
        ssize_t n = read(fd, buf + done, len - done);
        if (n < 0) return -1;
        if (n == 0) return done == 0 ? 0 : -1; /* EOF: clean only before the first byte */
        done += (size_t)n;
    }
    return 1;
}

static int write_full(int fd, const unsigned char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

int main(void) {
    const char *where = getenv("SOCKETPAIR_FD");
    int sock = where ? atoi(where) : 3;
    for (;;) {
        unsigned char header[4];
        int got = read_full(sock, header, 4);
        if (got == 0) return 0;
        if (got < 0) return 1;
        uint32_t len = (uint32_t)header[0] << 24 | (uint32_t)header[1] << 16 |
                       (uint32_t)header[2] << 8 | header[3];
        unsigned char *payload = malloc(len ? len : 1);
        if (payload == NULL || (len && read_full(sock, payload, len) != 1)) return 1;
        for (uint32_t i = 0; i < len / 2; i++) {
            unsigned char c = payload[i];
            payload[i] = payload[len - 1 - i];
            payload[len - 1 - i] = c;
        }
        if (write_full(sock, header, 4) || write_full(sock, payload, len)) return 1;
        free(payload);
    }
}
