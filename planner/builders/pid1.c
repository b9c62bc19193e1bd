/* The native twin of pidns.py, for builds that run emulated.
 *
 * Under qemu-user every emulated process has threads of qemu's own, and a multithreaded process
 * cannot enter a new user namespace: the runtime's Python (pidns.py) cannot make nvcc process 1
 * there, and nvcc's temporary-file names (tmpxft_<pid>_...) would differ from a native worker's
 * under the same key. This program runs on the host's own architecture (a static executable, so
 * an emulated root filesystem without the host's libraries can start it), makes the namespaces
 * itself and execs the emulated program in them: the kernel's binfmt_misc handler starts qemu as
 * process 1, and qemu passes getpid() through.
 *
 *   pid1 probe FOLDER TMPDIR PROGRAM...          try `place` and a process-1 start in a child;
 *                                                exit 0, or print why not and exit 3
 *   pid1 place FOLDER TMPDIR PROGRAM... -- CMD   wrap each PROGRAM in place, then exec CMD
 *   pid1 run WRAPPER ARGS...                     (the interpreter line of each wrapper)
 *
 * A wrapper is "#!<this program> run", then the program's path, the real file's path and the
 * temporary folder, one per line. Same steps, same order and same messages as pidns.py.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <dirent.h>
#include <unistd.h>

static char problem[PATH_MAX * 2 + 128];

static int fail(const char *what) {
    snprintf(problem, sizeof problem, "%s: %s", what, strerror(errno));
    return -1;
}

static int write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, text, strlen(text));
    int saved = errno;
    close(fd);
    errno = saved;
    return n == (ssize_t)strlen(text) ? 0 : -1;
}

/* A new user and mount namespace (and those in flags) that maps this process's ids onto
 * themselves, with / private. */
static int own_namespaces(int flags) {
    uid_t uid = getuid();
    gid_t gid = getgid();
    char map[64];
    if (unshare(CLONE_NEWUSER | CLONE_NEWNS | flags) != 0)
        return fail("unshare");
    if (write_file("/proc/self/setgroups", "deny") != 0)
        return fail("mapping the ids");
    snprintf(map, sizeof map, "%u %u 1", (unsigned)uid, (unsigned)uid);
    if (write_file("/proc/self/uid_map", map) != 0)
        return fail("mapping the ids");
    snprintf(map, sizeof map, "%u %u 1", (unsigned)gid, (unsigned)gid);
    if (write_file("/proc/self/gid_map", map) != 0)
        return fail("mapping the ids");
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
        return fail("making / private");
    return 0;
}

static int bind(const char *source, const char *target) {
    if (mount(source, target, NULL, MS_BIND, NULL) != 0) {
        char what[PATH_MAX * 2 + 32];
        snprintf(what, sizeof what, "binding %s onto %s", source, target);
        return fail(what);
    }
    return 0;
}

/* The next child is process 1 of a new PID namespace, with an empty tmpfs at tmpdir as TMPDIR
 * and (given real) the real program bound back at its own path. */
static int enter(const char *tmpdir, const char *real, const char *program) {
    if (mkdir(tmpdir, 0755) != 0 && errno != EEXIST)
        return fail("making the temporary folder");
    if (own_namespaces(CLONE_NEWPID) != 0)
        return -1;
    if (mount("tmpfs", tmpdir, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") != 0) {
        char what[PATH_MAX + 32];
        snprintf(what, sizeof what, "mounting a tmpfs at %s", tmpdir);
        return fail(what);
    }
    if (real && bind(real, program) != 0)
        return -1;
    return setenv("TMPDIR", tmpdir, 1) == 0 ? 0 : fail("setting TMPDIR");
}

static int check_process_one(const char *tmpdir, const char *real, const char *program) {
    if (enter(tmpdir, real, program) != 0)
        return -1;
    pid_t child = fork();
    if (child < 0)
        return fail("fork");
    if (child == 0) {
        int ok = getpid() == 1;
        DIR *d = opendir(tmpdir);
        struct dirent *e;
        while (ok && d && (e = readdir(d)))
            ok = !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..");
        ok = ok && d;
        struct stat a, b;
        if (real)
            ok = ok && stat(real, &a) == 0 && stat(program, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
        _exit(ok ? 0 : 3);
    }
    int status;
    if (waitpid(child, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        snprintf(problem, sizeof problem,
                 "the child was not process 1, its folder was not empty or its program was not restored");
        return -1;
    }
    return 0;
}

static int path_join(char *out, const char *folder, const char *name, int n) {
    int len = n < 0 ? snprintf(out, PATH_MAX, "%s/%s", folder, name)
                    : snprintf(out, PATH_MAX, "%s/%s-%d", folder, name, n);
    if (len >= PATH_MAX) {
        errno = ENAMETOOLONG;
        return fail("a wrapper's path");
    }
    return 0;
}

/* In this process's new namespaces: each program's file bound at folder/real-N, and a wrapper
 * that restores it bound over it. */
static int place_wrappers(const char *self, const char *folder, const char *tmpdir, char **programs, int count) {
    if (own_namespaces(0) != 0)
        return -1;
    for (int n = 0; n < count; n++) {
        char real[PATH_MAX], wrapper[PATH_MAX];
        if (path_join(real, folder, "real", n) || path_join(wrapper, folder, "wrapper", n))
            return -1;
        int fd = open(real, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0)
            return fail(real);
        close(fd);
        if (bind(programs[n], real) != 0)
            return -1;
        FILE *f = fopen(wrapper, "we");
        if (!f)
            return fail(wrapper);
        fprintf(f, "#!%s run\n%s\n%s\n%s\n", self, programs[n], real, tmpdir);
        if (fclose(f) != 0)
            return fail(wrapper);
        if (chmod(wrapper, 0755) != 0)
            return fail(wrapper);
        if (bind(wrapper, programs[n]) != 0)
            return -1;
    }
    return 0;
}

static pid_t child_pid;

static void stop(int signum) {
    (void)signum;
    /* Process 1 ignores signals it has no handler for: a build tool's SIGTERM would not stop it. */
    kill(child_pid, SIGKILL);
}

static int run(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "planner: pid1 run: no wrapper named\n");
        return 126;
    }
    char lines[3][PATH_MAX], head[PATH_MAX + 64];
    FILE *f = fopen(argv[2], "re");
    if (!f || !fgets(head, sizeof head, f)) {
        fprintf(stderr, "planner: cannot read the wrapper %s: %s\n", argv[2], strerror(errno));
        return 126;
    }
    for (int i = 0; i < 3; i++) {
        if (!fgets(lines[i], PATH_MAX, f) || !strchr(lines[i], '\n')) {
            fprintf(stderr, "planner: the wrapper %s is damaged\n", argv[2]);
            return 126;
        }
        *strchr(lines[i], '\n') = 0;
    }
    fclose(f);
    const char *program = lines[0], *real = lines[1], *tmpdir = lines[2];
    if (enter(tmpdir, real, program) != 0) {
        fprintf(stderr, "planner: cannot run %s as process 1 of its own namespaces: %s\n", program, problem);
        return 126;
    }
    char **args = calloc(argc - 1, sizeof *args);
    if (!args) {
        perror("planner: pid1");
        return 126;
    }
    args[0] = (char *)program;
    for (int i = 3; i < argc; i++)
        args[i - 2] = argv[i];
    child_pid = fork();
    if (child_pid < 0) {
        perror("planner: fork");
        return 126;
    }
    if (child_pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        execv(program, args);
        fprintf(stderr, "planner: cannot run %s: %s\n", program, strerror(errno));
        _exit(127);
    }
    struct sigaction sa = {0};
    sa.sa_handler = stop;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    int status;
    while (waitpid(child_pid, &status, 0) < 0)
        if (errno != EINTR)
            return 126;
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    /* Die of the same signal, as the program did (a build tool reports it so). */
    int sig = WTERMSIG(status);
    signal(sig, SIG_DFL);
    sigset_t all;
    sigemptyset(&all);
    sigaddset(&all, sig);
    sigprocmask(SIG_UNBLOCK, &all, NULL);
    kill(getpid(), sig);
    return 128 + sig;
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "run"))
        return run(argc, argv);
    if (argc < 5 || (strcmp(argv[1], "probe") && strcmp(argv[1], "place")) || argv[0][0] != '/') {
        fprintf(stderr, "usage: /path/to/pid1 probe|place FOLDER TMPDIR PROGRAM... [-- COMMAND...]\n");
        return 2;
    }
    const char *folder = argv[2], *tmpdir = argv[3];
    int count = 0;
    while (4 + count < argc && strcmp(argv[4 + count], "--"))
        count++;
    char **programs = argv + 4;
    if (count == 0) {
        fprintf(stderr, "planner: pid1: no program to wrap\n");
        return 2;
    }
    if (mkdir(folder, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "%s: %s\n", folder, strerror(errno));
        return 3;
    }
    if (mkdir(tmpdir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "%s: %s\n", tmpdir, strerror(errno));
        return 3;
    }
    if (!strcmp(argv[1], "probe")) {
        pid_t child = fork();
        if (child < 0) {
            perror("fork");
            return 3;
        }
        if (child == 0) {
            char real[PATH_MAX];
            int bad = place_wrappers(argv[0], folder, tmpdir, programs, count)
                      || path_join(real, folder, "real", 0)
                      || check_process_one(tmpdir, real, programs[0]);
            if (bad)
                fprintf(stderr, "%s\n", problem);
            _exit(bad ? 3 : 0);
        }
        int status;
        if (waitpid(child, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
            return 3;
        return 0;
    }
    if (4 + count >= argc - 1) {
        fprintf(stderr, "planner: pid1 place: no command after --\n");
        return 2;
    }
    if (place_wrappers(argv[0], folder, tmpdir, programs, count) != 0) {
        /* The probe could: what differs here is a fault, not a refusal to fall back on. */
        printf("planner: build failed: cannot wrap nvcc: %s\n", problem);
        return 1;
    }
    char **command = argv + 5 + count;
    execv(command[0], command);
    printf("planner: build failed: cannot run %s: %s\n", command[0], strerror(errno));
    return 1;
}
