/* Reports this process's descriptor table to the parent, then exits.
 *
 * The socket is the descriptor named by SOCKETPAIR_FD. One framed message
 * (4-byte big-endian length, then the payload) carries one line per open
 * descriptor: "<fd> <what /proc/self/fd/<fd> points at>\n".
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int main(void) {
    const char *env = getenv("SOCKETPAIR_FD");
    if (env == NULL) return 2;
    int sock = atoi(env);
    static char report[65536];
    size_t used = 4;
    DIR *dir = opendir("/proc/self/fd");
    if (dir == NULL) return 3;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (entry->d_name[0] == '.') continue;
        int fd = atoi(entry->d_name);
        if (fd == dirfd(dir)) continue;
        char path[64], target[512];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        ssize_t len = readlink(path, target, sizeof target - 1);
        if (len < 0) len = 0;
        target[len] = '\0';
        int wrote = snprintf(report + used, sizeof report - used, "%d %s\n", fd, target);
        if (wrote < 0 || (size_t)wrote >= sizeof report - used) return 4;
        used += (size_t)wrote;
    }
    closedir(dir);
    size_t body = used - 4;
    report[0] = (char)(body >> 24);
    report[1] = (char)(body >> 16);
    report[2] = (char)(body >> 8);
    report[3] = (char)body;
    return write_all(sock, report, used) == 0 ? 0 : 5;
}
