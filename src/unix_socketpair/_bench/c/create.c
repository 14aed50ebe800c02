/* Limit for case 1: socketpair(2) with the library's default flags, then two
 * close(2) calls, COUNT times. Usage: create COUNT */
#include <sys/socket.h>

#include "common.h"

int main(int argc, char **argv) {
    long count = arg_long(argc, argv, 1);
    double start = now();
    for (long i = 0; i < count; i++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) < 0)
            die("socketpair");
        close(sv[0]);
        close(sv[1]);
    }
    printf("%.9f %ld\n", now() - start, count);
    return 0;
}
