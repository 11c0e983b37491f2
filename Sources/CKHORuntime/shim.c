#define _GNU_SOURCE
#include "CKHORuntime.h"

#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

extern char **environ;

char **ckho_environ(void) { return environ; }

int ckho_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

int ckho_set_thread_name(const char *name) { return pthread_setname_np(pthread_self(), name); }

int ckho_socketpair_cloexec(int fds[2]) {
  return socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds);
}

ssize_t ckho_send_nosignal(int fd, const void *buf, size_t len, int *err) {
  ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
  if (n < 0) *err = errno;
  return n;
}

ssize_t ckho_send_datagram(int sock, const char *path, const void *buf, size_t len, int fd, int *err) {
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof(addr));
  addr.sun_family = AF_UNIX;
  size_t plen = strlen(path);
  if (plen == 0 || plen >= sizeof(addr.sun_path)) {
    *err = EINVAL;
    return -1;
  }
  memcpy(addr.sun_path, path, plen);
  socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen);
  if (path[0] == '@') {
    addr.sun_path[0] = '\0'; /* abstract namespace: no trailing NUL counted */
  } else {
    alen += 1;
  }

  struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
  union {
    struct cmsghdr align;
    char bytes[CMSG_SPACE(sizeof(int))];
  } control;
  struct msghdr msg;
  memset(&msg, 0, sizeof(msg));
  msg.msg_name = &addr;
  msg.msg_namelen = alen;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (fd >= 0) {
    memset(&control, 0, sizeof(control));
    msg.msg_control = control.bytes;
    msg.msg_controllen = sizeof(control.bytes);
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof(int));
  }
  ssize_t n;
  do {
    n = sendmsg(sock, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) *err = errno;
  return n;
}

ssize_t ckho_recv_datagram(int sock, void *buf, size_t len, int *fd, int *err) {
  struct iovec iov = {.iov_base = buf, .iov_len = len};
  union {
    struct cmsghdr align;
    char bytes[CMSG_SPACE(sizeof(int))];
  } control;
  struct msghdr msg;
  memset(&msg, 0, sizeof(msg));
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.bytes;
  msg.msg_controllen = sizeof(control.bytes);
  *fd = -1;
  ssize_t n;
  do {
    n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    *err = errno;
    return n;
  }
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && c->cmsg_len >= CMSG_LEN(sizeof(int))) {
      memcpy(fd, CMSG_DATA(c), sizeof(int));
    }
  }
  return n;
}

/* ---- kho run ---- */

#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>

ssize_t ckho_recv_notify(int sock, void *buf, size_t len, int fds[CKHO_NOTIFY_FDS_MAX], int *nfds,
                         pid_t *pid, uid_t *uid, int *flags, int *err) {
  struct iovec iov = {.iov_base = buf, .iov_len = len};
  /* Room for the credentials and the most fds the kernel sends in one
     message, so that nothing is dropped unseen (MSG_CTRUNC still reported). */
  union {
    struct cmsghdr align;
    char bytes[CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(sizeof(int) * CKHO_NOTIFY_FDS_MAX)];
  } control;
  struct msghdr msg;
  memset(&msg, 0, sizeof(msg));
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.bytes;
  msg.msg_controllen = sizeof(control.bytes);
  *nfds = 0;
  *pid = -1;
  *uid = (uid_t)-1;
  *flags = 0;
  ssize_t n = recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC | MSG_TRUNC);
  if (n < 0) {
    *err = errno;
    return n;
  }
  *flags = msg.msg_flags;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET) continue;
    if (c->cmsg_type == SCM_CREDENTIALS && c->cmsg_len >= CMSG_LEN(sizeof(struct ucred))) {
      struct ucred cred;
      memcpy(&cred, CMSG_DATA(c), sizeof(cred));
      *pid = cred.pid;
      *uid = cred.uid;
    } else if (c->cmsg_type == SCM_RIGHTS && c->cmsg_len >= CMSG_LEN(0)) {
      size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; i++) {
        int fd;
        memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        if (*nfds < CKHO_NOTIFY_FDS_MAX) {
          fds[(*nfds)++] = fd;
        } else {
          /* Cannot happen with the buffer above; never leak one if it does. */
          close(fd);
          *flags |= MSG_CTRUNC;
        }
      }
    }
  }
  return n;
}

int ckho_notify_socket_autobind(char *name, size_t cap, int *err) {
  int sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (sock < 0) {
    *err = errno;
    return -1;
  }
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof(addr));
  addr.sun_family = AF_UNIX;
  if (bind(sock, (struct sockaddr *)&addr, sizeof(sa_family_t)) < 0) {
    *err = errno;
    close(sock);
    return -1;
  }
  socklen_t alen = sizeof(addr);
  if (getsockname(sock, (struct sockaddr *)&addr, &alen) < 0) {
    *err = errno;
    close(sock);
    return -1;
  }
  size_t off = offsetof(struct sockaddr_un, sun_path);
  size_t nlen = alen > off + 1 ? alen - off - 1 : 0; /* skip the abstract NUL */
  if (cap == 0 || nlen >= cap) {
    *err = ENAMETOOLONG;
    close(sock);
    return -1;
  }
  memcpy(name, addr.sun_path + 1, nlen);
  name[nlen] = '\0';
  return sock;
}

int ckho_set_child_subreaper(int *err) {
  int r = prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
  if (r < 0) *err = errno;
  return r;
}

int ckho_pidfd_open(pid_t pid, int *err) {
  int r = (int)syscall(SYS_pidfd_open, pid, 0);
  if (r < 0) *err = errno;
  return r;
}

int ckho_signalfd(const int *signals, int count, int *err) {
  sigset_t mask;
  sigemptyset(&mask);
  for (int i = 0; i < count; i++) sigaddset(&mask, signals[i]);
  if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0) {
    *err = errno;
    return -1;
  }
  int fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
  if (fd < 0) *err = errno;
  return fd;
}

int ckho_signalfd_read(int fd, int *err) {
  struct signalfd_siginfo info;
  ssize_t n = read(fd, &info, sizeof(info));
  if (n < 0) {
    if (errno == EAGAIN) return 0;
    *err = errno;
    return -1;
  }
  if ((size_t)n != sizeof(info)) return 0;
  return (int)info.ssi_signo;
}

int ckho_waitid_exited_nowait(pid_t *pid, int *err) {
  siginfo_t info;
  memset(&info, 0, sizeof(info));
  *pid = 0;
  if (waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) < 0) {
    *err = errno;
    return -1;
  }
  *pid = info.si_pid;
  return 0;
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
                        const int *fds, int nfds, int *scratch, int *err) {
  int report[2];
  if (pipe2(report, O_CLOEXEC) < 0) {
    *err = errno;
    return -1;
  }
  pid_t pid = fork();
  if (pid < 0) {
    *err = errno;
    close(report[0]);
    close(report[1]);
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
    *err = childErr;
    return -1;
  }
  return pid;
}
