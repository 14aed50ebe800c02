/* Limit for case 2: a child write(2)s COUNT chunks of SIZE bytes into a
 * socketpair; the parent read(2)s them into one reused buffer until end of
 * file. Usage: stream COUNT SIZE */
#include <sys/socket.h>

#include "common.h"

int main(int argc, char **argv) {
    long count = arg_long(argc, argv, 1);
    size_t size = (size_t)arg_long(argc, argv, 2);
    int sv[2], go[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) die("socketpair");
    if (pipe(go) < 0) die("pipe");
    char *buf = malloc(size);
    if (buf == NULL) die("malloc");
    memset(buf, 'x', size); /* real pages, not the shared zero page */

    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        close(sv[0]);
        close(go[1]);
        wait_go(go[0]);
        for (long i = 0; i < count; i++) write_all(sv[1], buf, size);
        _exit(0);
    }
    close(sv[1]);
    close(go[0]);
    double start = now();
    write_all(go[1], "g", 1);
    long long total = 0;
    for (;;) {
        ssize_t n = read(sv[0], buf, size);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("read");
        }
        if (n == 0) break;
        total += n;
    }
    double elapsed = now() - start;
    reap(pid);
    if (total != (long long)count * (long long)size) {
        fprintf(stderr, "short stream: %lld bytes\n", total);
        return 1;
    }
    printf("%.9f %lld\n", elapsed, total);
    return 0;
}
