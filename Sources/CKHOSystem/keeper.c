// The calls of `kho run`, the keeper, that need C: an autobound notify
// socket, a signalfd, a non-reaping waitid, and the child's half of a
// spawn, which may only make async-signal-safe calls between fork and
// execve. Each returns -1 with errno set on failure.
#define _GNU_SOURCE
#include "CKHOSystem.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <signal.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

int ckho_notify_socket_autobind(char *name, size_t cap) {
  int sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (sock < 0) return -1;
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof(addr));
  addr.sun_family = AF_UNIX;
  socklen_t alen = sizeof(addr);
  int e = 0;
  if (bind(sock, (struct sockaddr *)&addr, sizeof(sa_family_t)) < 0 ||
      getsockname(sock, (struct sockaddr *)&addr, &alen) < 0) {
    e = errno;
  } else {
    size_t off = offsetof(struct sockaddr_un, sun_path);
    size_t nlen = alen > off + 1 ? alen - off - 1 : 0;  // skip the abstract NUL
    if (cap == 0 || nlen >= cap) {
      e = ENAMETOOLONG;
    } else {
      memcpy(name, addr.sun_path + 1, nlen);
      name[nlen] = '\0';
      return sock;
    }
  }
  close(sock);
  errno = e;
  return -1;
}

int ckho_signalfd(const int *signals, int count) {
  sigset_t mask;
  sigemptyset(&mask);
  for (int i = 0; i < count; i++) sigaddset(&mask, signals[i]);
  if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0) return -1;
  return signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
}

int ckho_signalfd_read(int fd) {
  struct signalfd_siginfo info;
  ssize_t n = read(fd, &info, sizeof(info));
  if (n < 0) return -1;
  if ((size_t)n != sizeof(info)) {
    errno = EAGAIN;
    return -1;
  }
  return (int)info.ssi_signo;
}

pid_t ckho_waitid_exited_nowait(void) {
  siginfo_t info;
  memset(&info, 0, sizeof(info));
  if (waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) < 0) return -1;
  return info.si_pid;
}

/* The child's half of ckho_spawn_listen: async-signal-safe calls only. */
static void ckho_spawn_child(const char *path, char *const argv[], char *const envp[],
                             char *listen_pid, const int *fds, int nfds, int *scratch,
                             int report) {
  struct sigaction dfl;
  memset(&dfl, 0, sizeof(dfl));
  dfl.sa_handler = SIG_DFL;
  for (int s = 1; s < NSIG; s++) (void)sigaction(s, &dfl, NULL); /* KILL, STOP: EINVAL */
  sigset_t none;
  sigemptyset(&none);
  (void)sigprocmask(SIG_SETMASK, &none, NULL);
  (void)setpgid(0, 0);

  /* The report pipe may sit where an fd is to go: move it above the range. */
  int moved = fcntl(report, F_DUPFD_CLOEXEC, 3 + nfds);
  if (moved >= 0) report = moved;

  /* Copies above the target range first, so that moving fds[i] to 3 + i
     never overwrites an fd still to be moved. */
  int e = 0;
  for (int i = 0; i < nfds && !e; i++) {
    scratch[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 3 + nfds);
    if (scratch[i] < 0) e = errno;
  }
  for (int i = 0; i < nfds && !e; i++) {
    if (dup2(scratch[i], 3 + i) < 0) e = errno; /* the copy at 3 + i is inheritable */
  }
  if (!e) (void)close_range(3 + nfds, ~0U, CLOSE_RANGE_CLOEXEC);

  if (!e && listen_pid) {
    char digits[24];
    int n = 0;
    unsigned long v = (unsigned long)getpid();
    do {
      digits[n++] = (char)('0' + v % 10);
      v /= 10;
    } while (v && n < 20);
    for (int i = 0; i < n; i++) listen_pid[i] = digits[n - 1 - i];
    listen_pid[n] = '\0';
  }
  if (!e) {
    execve(path, argv, envp);
    e = errno;
  }
  ssize_t w;
  do {
    w = write(report, &e, sizeof(e));
  } while (w < 0 && errno == EINTR);
  _exit(127);
}

pid_t ckho_spawn_listen(const char *path, char *const argv[], char *const envp[], char *listen_pid,
                        const int *fds, int nfds, int *scratch) {
  int report[2];
  if (pipe2(report, O_CLOEXEC) < 0) return -1;
  pid_t pid = fork();
  if (pid < 0) {
    int e = errno;
    close(report[0]);
    close(report[1]);
    errno = e;
    return -1;
  }
  if (pid == 0) {
    close(report[0]);
    ckho_spawn_child(path, argv, envp, listen_pid, fds, nfds, scratch, report[1]);
  }
  close(report[1]);
  int childErr = 0;
  ssize_t n;
  do {
    n = read(report[0], &childErr, sizeof(childErr));
  } while (n < 0 && errno == EINTR);
  close(report[0]);
  if (n == (ssize_t)sizeof(childErr)) {
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    errno = childErr;
    return -1;
  }
  return pid;
}
