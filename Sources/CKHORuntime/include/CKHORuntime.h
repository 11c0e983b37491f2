#ifndef SWIFT_KHO_CKHORUNTIME_H
#define SWIFT_KHO_CKHORUNTIME_H

#include <stddef.h>
#include <sys/types.h>

/// sendmsg(2) of `len` bytes with one fd attached as SCM_RIGHTS (fd < 0: none)
/// to the datagram socket `sock`, addressed to `path` (a leading '@' names an
/// abstract socket). Returns the bytes sent, or -1 with *err set to errno.
ssize_t ckho_send_datagram(int sock, const char *path, const void *buf, size_t len, int fd, int *err);

/// recvmsg(2) of one datagram, with at most one SCM_RIGHTS fd returned in *fd
/// (-1 if none; received with MSG_CMSG_CLOEXEC). Returns the bytes received,
/// or -1 with *err set to errno.
ssize_t ckho_recv_datagram(int sock, void *buf, size_t len, int *fd, int *err);

/// pipe2(fds, O_CLOEXEC). Returns 0, or -1 with errno set.
int ckho_pipe_cloexec(int fds[2]);

/// The process environment, `environ`.
char **ckho_environ(void);

/// clone(2) with CLONE_VM of a helper that holds this process's address
/// space: it closes every fd of its own fd table but `read_end`, blocks every
/// signal, waits for EOF on `read_end` (the read end of a pipe whose write
/// end is close-on-exec in the caller), then exits. An execve() by
/// the caller then drops its reference to the old address space without
/// tearing it down; the helper does that when it exits, off the exec's path.
/// `stack` (at least 16 KiB, 16-byte aligned) must stay mapped until the
/// helper is reaped. Returns the helper's pid, or -1 with *err set to errno.
pid_t ckho_clone_mm_holder(int read_end, void *stack, size_t stack_size, int *err);

#endif
