/* Limit for case 3: the channel's wire format (4-byte big-endian length, then
 * the payload) with buffered I/O on both sides. The child packs small
 * messages into a 64 KiB buffer and sends a large one as writev(header,
 * payload); the parent reads 256 KiB at a time and copies each payload into a
 * reused message buffer (as recv_into does), reading a large payload straight
 * into it. Usage: framed COUNT SIZE */
#include <arpa/inet.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "common.h"

#define OUT_CAP (64 * 1024)
#define IN_CAP (256 * 1024)

static void writev_all(int fd, struct iovec *iov, int cnt) {
    while (cnt > 0) {
        ssize_t n = writev(fd, iov, cnt);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("writev");
        }
        while (cnt > 0 && (size_t)n >= iov->iov_len) {
            n -= (ssize_t)iov->iov_len;
            iov++;
            cnt--;
        }
        if (cnt > 0) {
            iov->iov_base = (char *)iov->iov_base + n;
            iov->iov_len -= (size_t)n;
        }
    }
}

static void sender(int fd, long count, size_t size) {
    char *payload = malloc(size + 1);
    char *out = malloc(OUT_CAP);
    if (payload == NULL || out == NULL) die("malloc");
    memset(payload, 'x', size + 1); /* real pages, not the shared zero page */
    uint32_t header = htonl((uint32_t)size);
    size_t used = 0;
    for (long i = 0; i < count; i++) {
        if (4 + size <= OUT_CAP) {
            if (used + 4 + size > OUT_CAP) {
                write_all(fd, out, used);
                used = 0;
            }
            memcpy(out + used, &header, 4);
            memcpy(out + used + 4, payload, size);
            used += 4 + size;
        } else {
            if (used > 0) {
                write_all(fd, out, used);
                used = 0;
            }
            struct iovec iov[2] = {{&header, 4}, {payload, size}};
            writev_all(fd, iov, 2);
        }
    }
    if (used > 0) write_all(fd, out, used);
}

static long receiver(int fd, size_t size) {
    char *in = malloc(IN_CAP);
    char *msg = malloc(size + 1);
    if (in == NULL || msg == NULL) die("malloc");
    size_t start = 0, end = 0;
    long messages = 0;
    for (;;) {
        while (end - start >= 4) {
            uint32_t len;
            memcpy(&len, in + start, 4);
            len = ntohl(len);
            if (len > size) {
                fprintf(stderr, "message of %u bytes, expected %zu\n", len, size);
                exit(1);
            }
            if (end - start >= 4 + (size_t)len) {
                memcpy(msg, in + start + 4, len);
                start += 4 + len;
                messages++;
            } else if (4 + (size_t)len > IN_CAP / 2) {
                size_t have = end - start - 4;
                memcpy(msg, in + start + 4, have);
                read_all(fd, msg + have, len - have);
                start = end = 0;
                messages++;
            } else {
                break;
            }
        }
        if (start > 0) {
            memmove(in, in + start, end - start);
            end -= start;
            start = 0;
        }
        ssize_t n = read(fd, in + end, IN_CAP - end);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("read");
        }
        if (n == 0) break;
        end += (size_t)n;
    }
    if (end != start) {
        fprintf(stderr, "end of file inside a message\n");
        exit(1);
    }
    return messages;
}

int main(int argc, char **argv) {
    long count = arg_long(argc, argv, 1);
    size_t size = (size_t)arg_long(argc, argv, 2);
    int sv[2], go[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) die("socketpair");
    if (pipe(go) < 0) die("pipe");

    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        close(sv[0]);
        close(go[1]);
        wait_go(go[0]);
        sender(sv[1], count, size);
        _exit(0);
    }
    close(sv[1]);
    close(go[0]);
    double start = now();
    write_all(go[1], "g", 1);
    long messages = receiver(sv[0], size);
    double elapsed = now() - start;
    reap(pid);
    if (messages != count) {
        fprintf(stderr, "received %ld messages of %ld\n", messages, count);
        return 1;
    }
    printf("%.9f %ld\n", elapsed, messages);
    return 0;
}
