/* Limit for case 4: one byte back and forth between two processes over a
 * socketpair, COUNT round trips after a short warm-up. Usage: pingpong COUNT */
#include <sys/socket.h>

#include "common.h"

#define WARMUP 100

int main(int argc, char **argv) {
    long count = arg_long(argc, argv, 1);
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) die("socketpair");

    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        close(sv[0]);
        char c;
        for (;;) {
            ssize_t n = read(sv[1], &c, 1);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) die("read");
            if (n == 0) _exit(0);
            write_all(sv[1], &c, 1);
        }
    }
    close(sv[1]);
    char c = 'x';
    for (int i = 0; i < WARMUP; i++) {
        write_all(sv[0], &c, 1);
        read_all(sv[0], &c, 1);
    }
    double start = now();
    for (long i = 0; i < count; i++) {
        write_all(sv[0], &c, 1);
        read_all(sv[0], &c, 1);
    }
    double elapsed = now() - start;
    close(sv[0]);
    reap(pid);
    printf("%.9f %ld\n", elapsed, count);
    return 0;
}
