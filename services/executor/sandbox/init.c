/*
 * pid 1 of every sandbox: starts the command, waits for it, and exits with its status.
 *
 * Usage: init REPORT_FD COMMAND [ARG...]
 *
 * bwrap runs this with --as-pid-1, so bwrap itself keeps no process inside the sandbox, and
 * the status bwrap reports (from outside, by waitpid) is this process's exit status. That
 * verdict must be out of the program's reach, which is why this process:
 *   - is not dumpable: a process of the same uid without CAP_SYS_PTRACE can then neither
 *     ptrace it, nor open /proc/1/mem, nor take its descriptors with pidfd_getfd();
 *   - installs no signal handler: a pid namespace's init gets no signal from inside it
 *     unless it handles that signal;
 *   - holds no descriptor the program could use: REPORT_FD is close-on-exec.
 * It exits with the command's exit code, or 128 + N when signal N killed it (as a shell
 * does). When the command cannot be executed at all, the reason goes to REPORT_FD (a pipe
 * the host reads) and it exits 127.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fputs("usage: init REPORT_FD COMMAND [ARG...]\n", stderr);
        return 125;
    }
    int report = atoi(argv[1]);
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 || fcntl(report, F_SETFD, FD_CLOEXEC) != 0) {
        perror("sandbox init");
        return 125;
    }
    pid_t child = fork();
    if (child < 0) {
        perror("sandbox init: fork");
        return 125;
    }
    if (child == 0) {
        execvp(argv[2], argv + 2);
        dprintf(report, "%s: %s", argv[2], strerror(errno));
        _exit(127);
    }
    for (;;) {
        int status;
        pid_t pid = wait(&status);
        if (pid == child) {
            /* Whatever else still runs dies with this process (the namespace goes). */
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
        if (pid < 0 && errno != EINTR) {
            perror("sandbox init: wait");
            return 125;
        }
    }
}
