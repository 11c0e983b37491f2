// The C surface of swift-kho's system layer (the KHOSystem module): the
// constants and calls that Glibc's Swift module does not expose (they sit
// behind _GNU_SOURCE, are macros, or need the CMSG macros), and the few
// sequences that must run in C (a child between fork and execve may only
// make async-signal-safe calls).
//
// One convention, the C library's own: every function returns what the call
// it wraps returns, and on failure -1 (or NULL) with errno set by that call.
// Nothing here retries, logs or reads errno for Swift: KHOSystem's
// `systemCall` does, immediately after the call.
#ifndef SWIFT_KHO_CKHOSYSTEM_H
#define SWIFT_KHO_CKHOSYSTEM_H

// No _GNU_SOURCE and no system header that it changes: this header is
// imported by Swift beside Glibc's module, and a type the two saw defined
// differently (fd_set, under _GNU_SOURCE) breaks the import. The constants
// are defined in shim.c, which sees the GNU headers.
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

extern const unsigned int ckho_MFD_CLOEXEC;
extern const unsigned int ckho_MFD_ALLOW_SEALING;
extern const unsigned int ckho_MFD_HUGETLB;
extern const unsigned int ckho_MFD_HUGE_2MB;

extern const int ckho_F_ADD_SEALS;
extern const int ckho_F_GET_SEALS;
extern const int ckho_F_SEAL_SEAL;
extern const int ckho_F_SEAL_SHRINK;
extern const int ckho_F_SEAL_GROW;
extern const int ckho_F_SEAL_WRITE;

extern const int ckho_MADV_HUGEPAGE;
extern const unsigned long ckho_MS_NOSUID;
extern const unsigned long ckho_MS_NODEV;
extern const int ckho_MNT_DETACH;

/// The most fds one message carries: the kernel's SCM_MAX_FD.
#define CKHO_SCM_MAX_FD 253

/// memfd_create(2).
int ckho_memfd_create(const char *name, unsigned int flags);

/// fcntl(fd, F_ADD_SEALS, seals).
int ckho_add_seals(int fd, int seals);

/// fcntl(fd, F_GET_SEALS).
int ckho_get_seals(int fd);

/// mmap(2); NULL (not MAP_FAILED) on failure.
void *ckho_mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset);

/// pipe2(2).
int ckho_pipe2(int fds[2], int flags);

/// mount(2).
int ckho_mount(const char *source, const char *target, const char *type, unsigned long flags,
               const char *options);

/// umount2(2).
int ckho_umount2(const char *target, int flags);

/// pthread_setname_np(pthread_self(), name): at most 15 bytes kept.
/// Returns 0 or the error number, as pthread functions do.
int ckho_pthread_setname_self(const char *name);

/// The process environment, `environ`.
char **ckho_environ(void);

/// prctl(PR_SET_CHILD_SUBREAPER, 1).
int ckho_set_child_subreaper(void);

/// pidfd_open(2), through syscall(2). The pidfd is close-on-exec.
int ckho_pidfd_open(pid_t pid);

/// sendmsg(2) of `len` bytes from `buf` with `nfds` descriptors (at most
/// CKHO_SCM_MAX_FD; 0: none) as SCM_RIGHTS, on `sock`, to the unix socket
/// `path` (NULL: the connected peer; a leading '@' names an abstract socket;
/// too long a path fails with ENAMETOOLONG), with `flags`.
ssize_t ckho_sendmsg_fds(int sock, const char *path, const void *buf, size_t len, const int *fds,
                         int nfds, int flags);

/// What ckho_recvmsg_fds received besides the bytes.
struct ckho_received {
  /// SCM_RIGHTS descriptors, received close-on-exec; `nfds` of them.
  int fds[CKHO_SCM_MAX_FD];
  int nfds;
  /// SCM_CREDENTIALS of the sender, -1 and (uid_t)-1 without them.
  pid_t pid;
  uid_t uid;
  /// msg_flags: MSG_TRUNC, MSG_CTRUNC.
  int msg_flags;
};

/// recvmsg(2) of one message on `sock` into `buf` (`len` bytes), with
/// `flags` | MSG_CMSG_CLOEXEC, and room for CKHO_SCM_MAX_FD descriptors and
/// the sender's credentials in `out`. Descriptors beyond `max_fds` are
/// closed at once and MSG_CTRUNC set: none ever leaks. Returns recvmsg's
/// result (with MSG_TRUNC in `flags`, the message's full length).
ssize_t ckho_recvmsg_fds(int sock, void *buf, size_t len, int flags, int max_fds,
                         struct ckho_received *out);

/// socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK), bind(2) with
/// only the address family (the kernel picks a unique abstract name), then
/// getsockname(2): the name, without its leading NUL, into `name`
/// (NUL-terminated, `cap` bytes at most; ENAMETOOLONG if it does not fit).
/// Returns the socket; on failure it is closed.
int ckho_notify_socket_autobind(char *name, size_t cap);

/// sigprocmask(SIG_BLOCK) then signalfd(-1, mask, SFD_CLOEXEC |
/// SFD_NONBLOCK) over the `count` signals in `signals`.
int ckho_signalfd(const int *signals, int count);

/// read(2) of one signalfd_siginfo from `fd`: the signal number, or -1
/// (EAGAIN: none pending).
int ckho_signalfd_read(int fd);

/// waitid(P_ALL, 0, WEXITED | WNOHANG | WNOWAIT): the pid of a child that
/// has exited, left unreaped, or 0 if none (ECHILD: no children at all).
pid_t ckho_waitid_exited_nowait(void);

/// fork(2), and in the child, only async-signal-safe calls: every signal
/// back to SIG_DFL and unblocked, its own process group (setpgid(0, 0)),
/// `fds[0..<nfds]` moved to 3, 4, ... (through `scratch`, room for `nfds`,
/// so that fds already in that range are not overwritten), every other fd
/// from 3 + nfds on marked close-on-exec (close_range(2)), the decimal
/// getpid() written into `listen_pid` (if not NULL: the value of the
/// `LISTEN_PID=` entry of `envp`, room for 21 bytes), then execve(2).
/// Returns the child's pid once execve succeeded (a close-on-exec pipe
/// tells); if fork or execve failed, -1 with errno set to its errno (the
/// failed child reaped).
pid_t ckho_spawn_listen(const char *path, char *const argv[], char *const envp[], char *listen_pid,
                        const int *fds, int nfds, int *scratch);

/// clone(2) with CLONE_VM of a helper that holds this process's address
/// space: it closes every fd of its own fd table but `read_end`, blocks every
/// signal, waits for EOF on `read_end` (the read end of a pipe whose write
/// end is close-on-exec in the caller), then exits. An execve() by
/// the caller then drops its reference to the old address space without
/// tearing it down; the helper does that when it exits, off the exec's path.
/// `stack` (at least 16 KiB, 16-byte aligned) must stay mapped until the
/// helper is reaped. Returns the helper's pid.
pid_t ckho_clone_mm_holder(int read_end, void *stack, size_t stack_size);

#endif
