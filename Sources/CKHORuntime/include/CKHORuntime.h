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

/// socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds). Returns 0, or -1
/// with errno set.
int ckho_socketpair_cloexec(int fds[2]);

/// send(fd, buf, len, MSG_NOSIGNAL): a peer that is gone gives EPIPE, not
/// SIGPIPE. Returns the bytes sent, or -1 with *err set to errno.
ssize_t ckho_send_nosignal(int fd, const void *buf, size_t len, int *err);

/// pthread_setname_np(pthread_self(), name): at most 15 bytes shown.
/// Returns 0 or the error number.
int ckho_set_thread_name(const char *name);

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

/* ---- kho run: the keeper's system calls (forwarding only, errno into *err) ---- */

/// The most fds one notify datagram can carry: the kernel's SCM_MAX_FD.
#define CKHO_NOTIFY_FDS_MAX 253

/// recvmsg(2) of one datagram from the notify socket `sock`, with
/// MSG_DONTWAIT | MSG_CMSG_CLOEXEC | MSG_TRUNC: at most `len` bytes into
/// `buf`; returns the datagram's full length (more than `len` if it was
/// truncated). Every SCM_RIGHTS fd goes into `fds` (room for
/// CKHO_NOTIFY_FDS_MAX; *nfds set), the sender's SCM_CREDENTIALS into *pid
/// and *uid (-1 and (uid_t)-1 without them), msg_flags into *flags.
/// Returns -1 with *err set to errno.
ssize_t ckho_recv_notify(int sock, void *buf, size_t len, int fds[CKHO_NOTIFY_FDS_MAX], int *nfds,
                         pid_t *pid, uid_t *uid, int *flags, int *err);

/// socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK), then bind(2)
/// with only the address family (the kernel picks a unique abstract name),
/// then getsockname(2): the name (without its leading NUL) into `name`
/// (NUL-terminated, `cap` bytes at most). Returns the socket, or -1 with
/// *err set to errno (the socket closed).
int ckho_notify_socket_autobind(char *name, size_t cap, int *err);

/// prctl(PR_SET_CHILD_SUBREAPER, 1). Returns 0, or -1 with *err set.
int ckho_set_child_subreaper(int *err);

/// pidfd_open(2) (through syscall(2)). Returns the pidfd (close-on-exec),
/// or -1 with *err set.
int ckho_pidfd_open(pid_t pid, int *err);

/// signalfd(-1, mask, SFD_CLOEXEC | SFD_NONBLOCK) over the signals numbered
/// in `signals` (`count` of them), after blocking them with sigprocmask(2).
/// Returns the fd, or -1 with *err set.
int ckho_signalfd(const int *signals, int count, int *err);

/// read(2) of one signalfd_siginfo from `fd`. Returns the signal number,
/// 0 when none is pending (EAGAIN), or -1 with *err set.
int ckho_signalfd_read(int fd, int *err);

/// waitid(P_ALL, 0, WEXITED | WNOHANG | WNOWAIT): the pid of a child that
/// has exited, left unreaped, into *pid (0 if none). Returns 0, or -1 with
/// *err set (ECHILD: no children at all).
int ckho_waitid_exited_nowait(pid_t *pid, int *err);

/// fork(2), and in the child, only async-signal-safe calls: every signal
/// back to SIG_DFL and unblocked, its own process group (setpgid(0, 0)),
/// `fds[0..<nfds]` moved to 3, 4, ... (through `scratch`, room for `nfds`,
/// so that fds already in that range are not overwritten), every other fd
/// from 3 + nfds on marked close-on-exec (close_range(2)), the decimal
/// getpid() written into `listen_pid` (if not NULL: the value of the
/// `LISTEN_PID=` entry of `envp`, room for 21 bytes), then execve(2).
/// Returns the child's pid once execve succeeded (a close-on-exec pipe
/// tells); if fork or execve failed, -1 with *err set to its errno (the
/// failed child reaped).
pid_t ckho_spawn_listen(const char *path, char *const argv[], char *const envp[], char *listen_pid,
                        const int *fds, int nfds, int *scratch, int *err);

#endif
