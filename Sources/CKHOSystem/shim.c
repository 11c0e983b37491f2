// Forwarders: each calls one function and returns its result untouched.
#define _GNU_SOURCE
#include "CKHOSystem.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <unistd.h>
#include <pthread.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>

extern char **environ;

// Older headers may lack some of these; the values are the kernel's ABI.
#ifndef MFD_HUGE_SHIFT
#define MFD_HUGE_SHIFT 26
#endif
#ifndef MFD_HUGE_2MB
#define MFD_HUGE_2MB (21U << MFD_HUGE_SHIFT)
#endif

const unsigned int ckho_MFD_CLOEXEC = MFD_CLOEXEC;
const unsigned int ckho_MFD_ALLOW_SEALING = MFD_ALLOW_SEALING;
const unsigned int ckho_MFD_HUGETLB = MFD_HUGETLB;
const unsigned int ckho_MFD_HUGE_2MB = MFD_HUGE_2MB;
const int ckho_F_ADD_SEALS = F_ADD_SEALS;
const int ckho_F_GET_SEALS = F_GET_SEALS;
const int ckho_F_SEAL_SEAL = F_SEAL_SEAL;
const int ckho_F_SEAL_SHRINK = F_SEAL_SHRINK;
const int ckho_F_SEAL_GROW = F_SEAL_GROW;
const int ckho_F_SEAL_WRITE = F_SEAL_WRITE;
const int ckho_MADV_HUGEPAGE = MADV_HUGEPAGE;
const unsigned long ckho_MS_NOSUID = MS_NOSUID;
const unsigned long ckho_MS_NODEV = MS_NODEV;
const int ckho_MNT_DETACH = MNT_DETACH;

int ckho_memfd_create(const char *name, unsigned int flags) { return memfd_create(name, flags); }

int ckho_add_seals(int fd, int seals) { return fcntl(fd, F_ADD_SEALS, seals); }

int ckho_get_seals(int fd) { return fcntl(fd, F_GET_SEALS); }

void *ckho_mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset) {
  void *p = mmap(addr, length, prot, flags, fd, (off_t)offset);
  return p == MAP_FAILED ? NULL : p;
}

int ckho_pipe2(int fds[2], int flags) { return pipe2(fds, flags); }

int ckho_mount(const char *source, const char *target, const char *type, unsigned long flags,
               const char *options) {
  return mount(source, target, type, flags, options);
}

int ckho_umount2(const char *target, int flags) { return umount2(target, flags); }

int ckho_pthread_setname_self(const char *name) { return pthread_setname_np(pthread_self(), name); }

char **ckho_environ(void) { return environ; }

int ckho_set_child_subreaper(void) { return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); }

int ckho_pidfd_open(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

// ---- SCM_RIGHTS: the one sender and the one receiver ----

// Fills `addr` for `path`; the address length, or 0 if it does not fit.
static socklen_t unix_address(struct sockaddr_un *addr, const char *path) {
  memset(addr, 0, sizeof(*addr));
  addr->sun_family = AF_UNIX;
  size_t plen = strlen(path);
  if (plen == 0 || plen >= sizeof(addr->sun_path)) return 0;
  memcpy(addr->sun_path, path, plen);
  socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen);
  if (path[0] == '@') {
    addr->sun_path[0] = '\0';  // abstract: no trailing NUL counted
  } else {
    alen += 1;
  }
  return alen;
}

ssize_t ckho_sendmsg_fds(int sock, const char *path, const void *buf, size_t len, const int *fds,
                         int nfds, int flags) {
  if (nfds < 0 || nfds > CKHO_SCM_MAX_FD) {
    errno = EINVAL;
    return -1;
  }
  struct sockaddr_un addr;
  struct msghdr msg;
  memset(&msg, 0, sizeof(msg));
  if (path != NULL) {
    socklen_t alen = unix_address(&addr, path);
    if (alen == 0) {
      errno = ENAMETOOLONG;
      return -1;
    }
    msg.msg_name = &addr;
    msg.msg_namelen = alen;
  }
  struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  union {
    struct cmsghdr align;
    char bytes[CMSG_SPACE(sizeof(int) * CKHO_SCM_MAX_FD)];
  } control;
  if (nfds > 0) {
    memset(&control, 0, sizeof(control));
    msg.msg_control = control.bytes;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
  }
  return sendmsg(sock, &msg, flags);
}

ssize_t ckho_recvmsg_fds(int sock, void *buf, size_t len, int flags, int max_fds,
                         struct ckho_received *out) {
  struct iovec iov = {.iov_base = buf, .iov_len = len};
  // Room for the credentials and the most fds the kernel sends in one
  // message, so that nothing is dropped unseen.
  union {
    struct cmsghdr align;
    char bytes[CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(sizeof(int) * CKHO_SCM_MAX_FD)];
  } control;
  struct msghdr msg;
  memset(&msg, 0, sizeof(msg));
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.bytes;
  msg.msg_controllen = sizeof(control.bytes);
  out->nfds = 0;
  out->pid = -1;
  out->uid = (uid_t)-1;
  out->msg_flags = 0;
  ssize_t n = recvmsg(sock, &msg, flags | MSG_CMSG_CLOEXEC);
  if (n < 0) return n;
  out->msg_flags = msg.msg_flags;
  if (max_fds > CKHO_SCM_MAX_FD) max_fds = CKHO_SCM_MAX_FD;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET) continue;
    if (c->cmsg_type == SCM_CREDENTIALS && c->cmsg_len >= CMSG_LEN(sizeof(struct ucred))) {
      struct ucred cred;
      memcpy(&cred, CMSG_DATA(c), sizeof(cred));
      out->pid = cred.pid;
      out->uid = cred.uid;
    } else if (c->cmsg_type == SCM_RIGHTS && c->cmsg_len >= CMSG_LEN(0)) {
      size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; i++) {
        int fd;
        memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        if (out->nfds < max_fds) {
          out->fds[out->nfds++] = fd;
        } else {
          close(fd);  // more than the caller takes: never leak one
          out->msg_flags |= MSG_CTRUNC;
        }
      }
    }
  }
  return n;
}
