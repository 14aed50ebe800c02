/* Shared helpers for the limit programs: full writes, a monotonic clock, the
 * go-signal handshake, and the one output line the harness parses:
 * "<elapsed seconds> <units of work done>". */
#ifndef LIMITS_COMMON_H
#define LIMITS_COMMON_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static inline void die(const char *what) {
    perror(what);
    exit(1);
}

static inline double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline void write_all(int fd, const void *data, size_t len) {
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("write");
        }
        p += n;
        len -= (size_t)n;
    }
}

static inline void read_all(int fd, void *data, size_t len) {
    char *p = data;
    while (len > 0) {
        ssize_t n = read(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("read");
        }
        if (n == 0) {
            fprintf(stderr, "unexpected end of file\n");
            exit(1);
        }
        p += n;
        len -= (size_t)n;
    }
}

static inline long arg_long(int argc, char **argv, int i) {
    if (i >= argc) {
        fprintf(stderr, "usage: %s COUNT [SIZE]\n", argv[0]);
        exit(2);
    }
    return atol(argv[i]);
}

/* The child's start is not timed: it blocks on this pipe until the parent
 * has taken its first clock reading. */
static inline void wait_go(int go_fd) {
    char c;
    read_all(go_fd, &c, 1);
    close(go_fd);
}

static inline void reap(pid_t pid) {
    int status;
    if (waitpid(pid, &status, 0) < 0) die("waitpid");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "child failed\n");
        exit(1);
    }
}

#endif
