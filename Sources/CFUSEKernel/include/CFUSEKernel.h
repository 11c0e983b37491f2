#ifndef SWIFT_KHO_CFUSEKERNEL_H
#define SWIFT_KHO_CFUSEKERNEL_H

// The kernel side of FUSE: every message of the /dev/fuse protocol (from
// linux-libc-dev), plus the few calls Swift cannot make from Glibc.
#include <linux/fuse.h>
#include <stddef.h>
#include <sys/types.h>

/// mount(2) of a FUSE file system of type "fuse.<subtype>" named `source` at
/// `target`, nosuid and nodev, with `options` (fd=N,rootmode=...).
/// Returns 0, or the errno.
int cfuse_mount(const char *source, const char *target, const char *subtype, const char *options);

/// umount2(2) of `target`; `lazy` adds MNT_DETACH. Returns 0, or the errno.
int cfuse_umount(const char *target, int lazy);

/// socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC). Returns 0, or the errno.
int cfuse_socketpair_cloexec(int fds[2]);

/// pipe2(O_CLOEXEC). Returns 0, or the errno.
int cfuse_pipe_cloexec(int fds[2]);

/// recvmsg(2) of one message carrying one SCM_RIGHTS fd, as fusermount3
/// sends the /dev/fuse fd over _FUSE_COMMFD. The fd is received
/// close-on-exec into *fd. Returns 0, or the errno (ECONNRESET: the peer
/// closed without sending; EPROTO: a message without an fd).
int cfuse_receive_fd(int sock, int *fd);

#endif
