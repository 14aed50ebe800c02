/* echo_peer.c: echo every message back, with the file descriptors it came with.
 *
 *   cc -O2 -o echo_peer examples/echo_peer.c
 *   SOCKETPAIR_FD=3 ./echo_peer 3<&...     (or spawn(["./echo_peer"], fd=3) from Python)
 *
 * An independent implementation of the channel's wire format (docs/protocol.md)
 * on a SOCK_STREAM socket: each message is a 4-byte big-endian length, then that
 * many bytes. Descriptors travel as SCM_RIGHTS with the sendmsg() that carries
 * the start of their message. Reading each header and payload with exact-size
 * reads means a message's descriptors always arrive with the read of its
 * header: a read never reaches the start of a later message.
 *
 * Exits 0 when the peer closes its end at a message boundary.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_MESSAGE (64u << 20) /* refuse absurd lengths instead of allocating them */
#define MAX_FDS 253             /* SCM_MAX_FD on Linux */

static int sock;
static int fds[MAX_FDS];
static int nfds;

static void die(const char *what) {
    perror(what);
    exit(1);
}

/* Read exactly len bytes, collecting any descriptors that arrive; returns 0 on a
 * clean end-of-file before the first byte. */
static int read_exact(void *buf, size_t len) {
    size_t done = 0;
    while (done < len) {
        union {
            char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
            struct cmsghdr align;
        } control;
        struct iovec iov = {(char *)buf + done, len - done};
        struct msghdr msg = {0};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.buf;
        msg.msg_controllen = sizeof control.buf;
        ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("echo_peer: recvmsg");
        if (msg.msg_flags & MSG_CTRUNC) {
            fprintf(stderr, "echo_peer: descriptors truncated\n");
            exit(1);
        }
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
                if (nfds + count > MAX_FDS) {
                    fprintf(stderr, "echo_peer: too many descriptors\n");
                    exit(1);
                }
                memcpy(fds + nfds, CMSG_DATA(c), sizeof(int) * (size_t)count);
                nfds += count;
            }
        }
        if (n == 0) {
            if (done == 0)
                return 0;
            fprintf(stderr, "echo_peer: end-of-file inside a message\n");
            exit(1);
        }
        done += (size_t)n;
    }
    return 1;
}

/* Send header + payload; the descriptors go with the first sendmsg() only. */
static void send_message(const uint32_t *header, const char *payload, uint32_t len) {
    union {
        char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
        struct cmsghdr align;
    } control;
    struct iovec iov[2] = {{(void *)header, 4}, {(void *)payload, len}};
    struct iovec *next = iov;
    int count = 2;
    int attach = nfds > 0;
    while (count > 0) {
        struct msghdr msg = {0};
        msg.msg_iov = next;
        msg.msg_iovlen = (size_t)count;
        if (attach) {
            msg.msg_control = control.buf;
            msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
            struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
            memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
        }
        ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("echo_peer: sendmsg");
        attach = 0;
        while (count > 0 && (size_t)n >= next->iov_len) { /* drop what was sent */
            n -= (ssize_t)next->iov_len;
            next++;
            count--;
        }
        if (count > 0) {
            next->iov_base = (char *)next->iov_base + n;
            next->iov_len -= (size_t)n;
        }
    }
    for (int i = 0; i < nfds; i++) /* the peer has its own copies now */
        close(fds[i]);
    nfds = 0;
}

int main(void) {
    const char *where = getenv("SOCKETPAIR_FD");
    if (where == NULL) {
        fprintf(stderr, "echo_peer: SOCKETPAIR_FD is not set\n");
        return 2;
    }
    sock = strcmp(where, "stdio") == 0 ? 0 : atoi(where);

    uint32_t header;
    while (read_exact(&header, sizeof header)) {
        uint32_t len = ntohl(header);
        if (len > MAX_MESSAGE) {
            fprintf(stderr, "echo_peer: message of %u bytes is too large\n", len);
            return 1;
        }
        char *payload = malloc(len ? len : 1);
        if (payload == NULL)
            die("echo_peer: malloc");
        if (len > 0 && !read_exact(payload, len)) {
            fprintf(stderr, "echo_peer: end-of-file inside a message\n");
            return 1;
        }
        send_message(&header, payload, len);
        free(payload);
    }
    return 0;
}
