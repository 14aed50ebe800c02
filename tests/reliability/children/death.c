/* A child that dies (SIGKILL) at a chosen point of a conversation.
 *
 * The socket is SOCKETPAIR_FD; progress notes go to stdout, one byte each, so the
 * parent knows when the chosen point is reached without sleeping.
 *
 *   death pause                 wait to be killed before reading anything
 *   death sendpart DECL SENT    send a header declaring DECL bytes, SENT of them, die
 *   death recvpart N            read N bytes, write "R" to stdout, wait to be killed
 *   death recvframe             read one whole frame, write "R" to stdout, wait to be killed
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int read_exactly(int fd, char *buf, size_t n, size_t cap) {
    size_t got = 0;
    while (got < n) {
        size_t want = n - got < cap ? n - got : cap;
        ssize_t r = read(fd, buf, want);
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

static void note_and_wait(void) {
    if (write(1, "R", 1) != 1) exit(6);
    for (;;) pause();
}

int main(int argc, char **argv) {
    const char *env = getenv("SOCKETPAIR_FD");
    if (env == NULL || argc < 2) return 2;
    int sock = atoi(env);
    static char buf[65536];
    if (strcmp(argv[1], "pause") == 0) {
        if (write(1, "P", 1) != 1) return 6;
        for (;;) pause();
    }
    if (strcmp(argv[1], "sendpart") == 0 && argc == 4) {
        unsigned long declared = strtoul(argv[2], NULL, 10);
        unsigned long sent = strtoul(argv[3], NULL, 10);
        unsigned char header[4] = {(unsigned char)(declared >> 24), (unsigned char)(declared >> 16),
                                   (unsigned char)(declared >> 8), (unsigned char)declared};
        if (write(sock, header, 4) != 4) return 3;
        memset(buf, 'x', sizeof buf);
        while (sent > 0) {
            size_t chunk = sent < sizeof buf ? sent : sizeof buf;
            ssize_t w = write(sock, buf, chunk);
            if (w <= 0) return 4;
            sent -= (unsigned long)w;
        }
        kill(getpid(), SIGKILL);
        return 5;
    }
    if (strcmp(argv[1], "recvpart") == 0 && argc == 3) {
        if (read_exactly(sock, buf, strtoul(argv[2], NULL, 10), sizeof buf) != 0) return 3;
        note_and_wait();
    }
    if (strcmp(argv[1], "recvframe") == 0) {
        unsigned char h[4];
        if (read_exactly(sock, (char *)h, 4, 4) != 0) return 3;
        size_t len = ((size_t)h[0] << 24) | ((size_t)h[1] << 16) | ((size_t)h[2] << 8) | h[3];
        if (read_exactly(sock, buf, len, sizeof buf) != 0) return 4;
        note_and_wait();
    }
    return 2;
}
