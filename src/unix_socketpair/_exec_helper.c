/*
 * The exec helper of unix_socketpair.spawn: the step between fork and exec that
 * subprocess.Popen cannot take, done without starting an interpreter.
 *
 * Popen starts this program (close_fds, cwd, env and stdio are already done) with
 *
 *   _exec_helper usp1 REPORT_FD PARENT_PID DEATHSIG LISTEN MOVES PROGRAM [ARG...]
 *
 * REPORT_FD  the write end of the parent's report pipe
 * PARENT_PID, DEATHSIG  when DEATHSIG > 0 (Linux only): prctl(PR_SET_PDEATHSIG), and
 *            exit at once if the parent (PARENT_PID) is already gone
 * LISTEN     "1": set LISTEN_PID to our own pid (systemd socket activation)
 * MOVES      "src:tgt,src:tgt,..." (or "-"): put descriptor src at number tgt
 * PROGRAM    the program, then its whole argv (ARG... starts with argv[0])
 *
 * It moves every source above all numbers in play, closes the originals, dup2()s each
 * onto its target (dup2 clears close-on-exec, even where source and target coincide),
 * then execve()s PROGRAM over the same candidates as Popen: the name itself if it has a
 * "/", else each PATH entry (PATH of the child's environment, default /bin:/usr/bin),
 * the first error other than ENOENT/ENOTDIR winning. A failure is written to REPORT_FD
 * (close-on-exec, so a successful exec closes it and the parent reads end-of-file) as
 * "E:<errno>" (exec failed) or "F:<errno>" (setup failed) and the helper exits 255.
 * It never runs a file as a shell script (no execvp ENOEXEC fallback).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

extern char **environ;

#define MAX_MOVES 1024

static int report = -1;

static void fail(char kind, int number) {
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%c:%d", kind, number);
    if (report >= 0 && n > 0) {
        ssize_t ignored = write(report, buf, (size_t)n);
        (void)ignored;
    }
    _exit(255);
}

static int parse_int(const char *text, long min, long max) {
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno || end == text || *end || value < min || value > max)
        fail('F', EINVAL);
    return (int)value;
}

int main(int argc, char **argv) {
    static int sources[MAX_MOVES], targets[MAX_MOVES], moved[MAX_MOVES];
    int count = 0;

    if (argc < 8 || strcmp(argv[1], "usp1") != 0) {
        fputs("_exec_helper: an internal helper of unix_socketpair.spawn\n", stderr);
        return 2;
    }
    report = parse_int(argv[2], 0, INT_MAX);
    if (fcntl(report, F_SETFD, FD_CLOEXEC) < 0)
        _exit(255);

    int parent = parse_int(argv[3], 0, INT_MAX);
    int deathsig = parse_int(argv[4], 0, 64);
    if (deathsig > 0) {
#ifdef __linux__
        if (prctl(PR_SET_PDEATHSIG, deathsig) < 0)
            fail('F', errno);
        if (getppid() != parent) /* the parent died before prctl: nobody will tell us */
            _exit(128 + deathsig);
#else
        fail('F', ENOSYS);
#endif
    }
    if (strcmp(argv[5], "1") == 0) {
        char pid[32];
        snprintf(pid, sizeof pid, "%ld", (long)getpid());
        if (setenv("LISTEN_PID", pid, 1) < 0)
            fail('F', errno);
    }

    if (strcmp(argv[6], "-") != 0) {
        int high = report;
        for (char *p = argv[6]; *p;) {
            if (count == MAX_MOVES)
                fail('F', E2BIG);
            char *end;
            long s = strtol(p, &end, 10);
            if (*end != ':')
                fail('F', EINVAL);
            long t = strtol(end + 1, &end, 10);
            if (s < 0 || t < 0 || s > INT_MAX || t > INT_MAX || (*end && *end != ','))
                fail('F', EINVAL);
            sources[count] = (int)s;
            targets[count] = (int)t;
            if (s > high)
                high = (int)s;
            if (t > high)
                high = (int)t;
            count++;
            p = *end ? end + 1 : end;
        }
        for (int i = 0; i < count; i++) {
            moved[i] = fcntl(sources[i], F_DUPFD_CLOEXEC, high + 1);
            if (moved[i] < 0)
                fail('F', errno);
        }
        /* The report pipe may sit on a target number: move it out of the way too. */
        int new_report = fcntl(report, F_DUPFD_CLOEXEC, high + 1);
        if (new_report < 0)
            fail('F', errno);
        close(report);
        report = new_report;
        for (int i = 0; i < count; i++) {
            int is_target = 0;
            for (int j = 0; j < count; j++)
                is_target |= targets[j] == sources[i];
            if (!is_target)
                close(sources[i]);
        }
        for (int i = 0; i < count; i++)
            if (dup2(moved[i], targets[i]) < 0)
                fail('F', errno);
        for (int i = 0; i < count; i++)
            close(moved[i]);
    }

    const char *program = argv[7];
    char **args = argv + 8;
    char *fallback[] = {(char *)program, NULL};
    if (!args[0])
        args = fallback;
    if (strchr(program, '/')) {
        execve(program, args, environ);
        fail('E', errno);
    }
    const char *path = getenv("PATH");
    if (!path)
        path = "/bin:/usr/bin";
    int first = 0, last = ENOENT;
    size_t plen = strlen(program);
    for (const char *dir = path;; dir++) {
        const char *end = strchr(dir, ':');
        if (!end)
            end = dir + strlen(dir);
        size_t dlen = (size_t)(end - dir);
        char candidate[PATH_MAX];
        if (dlen + 1 + plen + 1 <= sizeof candidate) {
            memcpy(candidate, dir, dlen);
            size_t at = dlen;
            if (dlen && dir[dlen - 1] != '/')
                candidate[at++] = '/';
            else if (!dlen) /* an empty entry is the current directory, as in Popen */
                at = 0;
            memcpy(candidate + at, program, plen + 1);
            execve(candidate, args, environ);
            last = errno;
        } else {
            last = ENAMETOOLONG;
        }
        if (!first && last != ENOENT && last != ENOTDIR)
            first = last;
        if (!*end)
            break;
        dir = end;
    }
    fail('E', first ? first : last);
    return 255;
}
