/* A socket-activated child: asks the real libsystemd what it was given
 * (sd_listen_fds_with_names), checks it against argv, and answers one framed
 * message on fd 3 with "<n> <name> <name> ..." (or "error ...").
 *
 * usage: sd_listen EXPECTED_N [EXPECTED_NAME...]
 * Linked against libsystemd.so.0; the prototype is declared here so that no
 * development headers are needed. */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int sd_listen_fds_with_names(int unset_environment, char ***names);

static void send_frame(const char *text) {
    uint32_t len = htonl((uint32_t)strlen(text));
    if (write(3, &len, 4) != 4 || write(3, text, strlen(text)) != (ssize_t)strlen(text))
        exit(3);
}

int main(int argc, char **argv) {
    char **names = NULL;
    char reply[4096];
    int n = sd_listen_fds_with_names(1, &names);
    if (n < 0) {
        snprintf(reply, sizeof reply, "error %d", n);
        send_frame(reply);
        return 1;
    }
    size_t at = (size_t)snprintf(reply, sizeof reply, "%d", n);
    for (int i = 0; i < n && names && names[i]; i++)
        at += (size_t)snprintf(reply + at, sizeof reply - at, " %s", names[i]);
    /* sd_listen_fds(1) unsets the variables: they must have been there, and for us. */
    if (getenv("LISTEN_PID") || getenv("LISTEN_FDS"))
        at += (size_t)snprintf(reply + at, sizeof reply - at, " not-unset");
    send_frame(reply);
    int ok = n == atoi(argv[1]) && argc - 2 <= n;
    for (int i = 2; ok && i < argc; i++)
        ok = strcmp(names[i - 2], argv[i]) == 0;
    return ok ? 0 : 2;
}
