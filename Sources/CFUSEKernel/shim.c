#define _GNU_SOURCE
#include "CFUSEKernel.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <unistd.h>

int cfuse_mount(const char *source, const char *target, const char *subtype, const char *options) {
  char type[64];
  if (snprintf(type, sizeof(type), "fuse.%s", subtype) >= (int)sizeof(type)) return EINVAL;
  return mount(source, target, type, MS_NOSUID | MS_NODEV, options) == 0 ? 0 : errno;
}

int cfuse_umount(const char *target, int lazy) {
  return umount2(target, lazy ? MNT_DETACH : 0) == 0 ? 0 : errno;
}

int cfuse_socketpair_cloexec(int fds[2]) {
  return socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0 ? 0 : errno;
}

int cfuse_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC) == 0 ? 0 : errno; }

int cfuse_receive_fd(int sock, int *fd) {
  char byte;
  struct iovec iov = {.iov_base = &byte, .iov_len = 1};
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int))];
  } control;
  memset(&control, 0, sizeof(control));
  struct msghdr msg = {
      .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf, .msg_controllen = sizeof(control.buf)};
  ssize_t n;
  do {
    n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return errno;
  if (n == 0) return ECONNRESET;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && c->cmsg_len == CMSG_LEN(sizeof(int))) {
      memcpy(fd, CMSG_DATA(c), sizeof(int));
      return 0;
    }
  }
  return EPROTO;
}
