/* ptyrun: runs a command on a terminal of its own, for the `-t` cases of the nested parity
 * suite (tests/nested/run-cases.sh), where the driver has no terminal to give `hyperlaunch -t`.
 * Built static by tests/src/nested.rs (gcc -static) and run the same way inside the nested
 * machine and on the host.
 *
 *   ptyrun [-r] [-s ROWSxCOLS] [-w TEXT] -- COMMAND [ARG...]
 *
 * Opens a pseudo-terminal, sets its window size (default 24x80), and runs COMMAND as a session
 * leader with the terminal as its controlling terminal, stdin and stdout; stderr stays ptyrun's
 * own, so the launcher's diagnostics stay apart from what the app's terminal shows. Everything
 * the terminal shows is copied to stdout. ptyrun's stdin is written to the terminal as typed
 * input: at once, or with -w once TEXT has been shown (e.g. the app's "ready"). -r makes the
 * terminal raw before the start (no echo, no \n -> \r\n), so stdout holds the command's bytes
 * as written. SIGTERM, SIGINT and SIGHUP are passed on to COMMAND. Exits with COMMAND's status
 * (128 + N when killed by signal N) once it has ended and the terminal is drained; 125 on a
 * usage or setup error. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

static pid_t child = -1;

static void pass_on(int sig) {
    if (child > 0)
        kill(child, sig);
}

static void die(const char *what) {
    fprintf(stderr, "ptyrun: %s: %s\n", what, strerror(errno));
    exit(125);
}

static void usage(void) {
    fprintf(stderr, "usage: ptyrun [-r] [-s ROWSxCOLS] [-w TEXT] -- COMMAND [ARG...]\n");
    exit(125);
}

static void write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            die("write to stdout");
        p += w;
        n -= (size_t)w;
    }
}

int main(int argc, char **argv) {
    int raw = 0, opt;
    unsigned rows = 24, cols = 80;
    const char *wait_for = NULL;
    while ((opt = getopt(argc, argv, "+rs:w:")) != -1) {
        switch (opt) {
        case 'r':
            raw = 1;
            break;
        case 's':
            if (sscanf(optarg, "%ux%u", &rows, &cols) != 2 || rows == 0 || cols == 0 ||
                rows > 65535 || cols > 65535)
                usage();
            break;
        case 'w':
            wait_for = optarg;
            break;
        default:
            usage();
        }
    }
    if (optind >= argc)
        usage();

    int master = posix_openpt(O_RDWR | O_NOCTTY);
    if (master < 0)
        die("posix_openpt");
    if (grantpt(master) < 0 || unlockpt(master) < 0)
        die("grantpt/unlockpt");
    const char *slave_name = ptsname(master);
    if (!slave_name)
        die("ptsname");
    struct winsize ws = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
    if (ioctl(master, TIOCSWINSZ, &ws) < 0)
        die("TIOCSWINSZ");

    struct sigaction sa = {.sa_handler = pass_on};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);

    child = fork();
    if (child < 0)
        die("fork");
    if (child == 0) {
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        if (setsid() < 0)
            die("setsid");
        int slave = open(slave_name, O_RDWR);
        if (slave < 0)
            die(slave_name);
        if (ioctl(slave, TIOCSCTTY, 0) < 0)
            die("TIOCSCTTY");
        if (raw) {
            struct termios t;
            if (tcgetattr(slave, &t) < 0)
                die("tcgetattr");
            cfmakeraw(&t);
            if (tcsetattr(slave, TCSANOW, &t) < 0)
                die("tcsetattr");
        }
        if (dup2(slave, 0) < 0 || dup2(slave, 1) < 0)
            die("dup2");
        if (slave > 1)
            close(slave);
        close(master);
        execvp(argv[optind], argv + optind);
        die(argv[optind]);
    }

    /* The output seen so far, as much of it as -w needs to find TEXT across reads. */
    size_t want = wait_for ? strlen(wait_for) : 0;
    char *seen = calloc(1, 2 * want + 4096 + 1);
    size_t seen_len = 0;
    int send = wait_for == NULL; /* stdin goes to the terminal now */
    int stdin_open = 1;
    char in_buf[4096];
    size_t in_len = 0, in_off = 0;
    int status = 0, ended = 0, quiet_polls = 0;
    fcntl(master, F_SETFL, fcntl(master, F_GETFL) | O_NONBLOCK);
    for (;;) {
        struct pollfd p[2] = {{.fd = master, .events = POLLIN}, {.fd = -1}};
        if (send && in_len > in_off)
            p[0].events |= POLLOUT;
        else if (send && stdin_open && !ended)
            p[1] = (struct pollfd){.fd = 0, .events = POLLIN};
        /* Once the command has ended: what the terminal still holds, then stop. */
        int n = poll(p, 2, ended ? 200 : 50);
        if (n < 0 && errno != EINTR)
            die("poll");
        int got = 0;
        if (n > 0 && (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
            char buf[4096];
            ssize_t r = read(master, buf, sizeof buf);
            if (r > 0) {
                got = 1;
                write_all(1, buf, (size_t)r);
                if (!send) {
                    /* Keep the last `want` bytes plus this read, then look for TEXT. */
                    if (seen_len > want) {
                        memmove(seen, seen + seen_len - want, want);
                        seen_len = want;
                    }
                    memcpy(seen + seen_len, buf, (size_t)r);
                    seen_len += (size_t)r;
                    seen[seen_len] = 0;
                    if (memmem(seen, seen_len, wait_for, want))
                        send = 1;
                }
            } else if (r < 0 && errno == EIO && ended) {
                break; /* every holder of the terminal has closed it */
            } else if (r < 0 && errno == EIO) {
                usleep(10000); /* closed for now; the command may still be running */
            }
        }
        if (n > 0 && (p[0].revents & POLLOUT) && in_len > in_off) {
            ssize_t w = write(master, in_buf + in_off, in_len - in_off);
            if (w > 0)
                in_off += (size_t)w;
            else if (w < 0 && errno != EAGAIN && errno != EINTR)
                in_off = in_len = 0, stdin_open = 0; /* the terminal takes no more input */
        }
        if (n > 0 && p[1].fd == 0 && (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t r = read(0, in_buf, sizeof in_buf);
            if (r > 0)
                in_len = (size_t)r, in_off = 0;
            else if (r == 0 || errno != EINTR)
                stdin_open = 0;
        }
        if (!ended) {
            pid_t w = waitpid(child, &status, WNOHANG);
            if (w == child)
                ended = 1;
        } else if (!got && ++quiet_polls >= 2) {
            break; /* still held open by a leftover process, but quiet for 400 ms */
        }
        if (got)
            quiet_polls = 0;
    }
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}
