/* Test child: report every open descriptor over the socket, then echo until EOF.
 *
 * The socket is found through SOCKETPAIR_FD (a number, or "stdio" for stdin/stdout).
 * The report is one line per descriptor, "fd inode so_type nonblocking cloexec"
 * (so_type 0 if it is not a socket), then a line "end". After that every read on the
 * socket is written back unchanged (one datagram per read on SOCK_DGRAM/SEQPACKET),
 * until end-of-file. Exit status 0, or 2 when SOCKETPAIR_FD is missing.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static int write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

int main(void) {
    const char *where = getenv("SOCKETPAIR_FD");
    if (where == NULL)
        return 2;
    int in = strcmp(where, "stdio") == 0 ? 0 : atoi(where);
    int out = strcmp(where, "stdio") == 0 ? 1 : in;

    static char report[16384];
    size_t used = 0;
    DIR *dir = opendir("/proc/self/fd");
    if (dir == NULL)
        return 3;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (entry->d_name[0] == '.')
            continue;
        int fd = atoi(entry->d_name);
        struct stat st;
        if (fd == dirfd(dir) || fstat(fd, &st) != 0)
            continue;
        int type = 0;
        socklen_t len = sizeof type;
        if (S_ISSOCK(st.st_mode))
            getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len);
        used += (size_t)snprintf(report + used, sizeof report - used, "%d %lu %d %d %d\n", fd,
                                 (unsigned long)st.st_ino, type,
                                 (fcntl(fd, F_GETFL) & O_NONBLOCK) != 0,
                                 (fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
    }
    closedir(dir);
    used += (size_t)snprintf(report + used, sizeof report - used, "end\n");
    if (write_all(out, report, used) != 0)
        return 4;

    static char buf[65536];
    for (;;) {
        ssize_t n = read(in, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        if (write_all(out, buf, (size_t)n) != 0)
            break;
    }
    return 0;
}
