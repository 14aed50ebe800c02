/* Echoes every byte read from the SOCKETPAIR_FD socket back into it until EOF.
 *
 * Byte echo is message echo for the stream framing: the parent's channel frames
 * and checks. Small and cheap, so a thousand of them fit in memory at once.
 */
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

int main(void) {
    const char *env = getenv("SOCKETPAIR_FD");
    if (env == NULL) return 2;
    int sock = atoi(env);
    static char buf[65536];
    for (;;) {
        ssize_t n = read(sock, buf, sizeof buf);
        if (n == 0) return 0;
        if (n < 0) {
            if (errno == EINTR) continue;
            return 3;
        }
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(sock, buf + off, (size_t)(n - off));
            if (w < 0) {
                if (errno == EINTR) continue;
                return 4;
            }
            off += w;
        }
    }
}
