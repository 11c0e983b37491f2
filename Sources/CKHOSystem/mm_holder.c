#define _GNU_SOURCE
#include "CKHOSystem.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

struct mm_holder_fds {
  int read_end;
};

/* Runs in the caller's address space on its own stack, with every signal
 * blocked. Only raw system calls: it shares the caller's memory (and so its
 * thread-local errno), and must write none of it. */
static int mm_holder(void *arg) {
  struct mm_holder_fds fds = *(struct mm_holder_fds *)arg;
  /* Its own copy of the fd table: keep nothing but the read end, so that
   * no connection, listener or arena fd lives on in it. */
  if (fds.read_end > 0) syscall(SYS_close_range, 0, (unsigned)fds.read_end - 1, 0);
  syscall(SYS_close_range, (unsigned)fds.read_end + 1, ~0U, 0);
  char c;
  /* EOF when the caller's write end closes: at its execve (close-on-exec),
   * or when it closes it after a failed exec, or when it dies. */
  while (syscall(SYS_read, fds.read_end, &c, 1) > 0) {
  }
  syscall(SYS_exit, 0);
  return 0;
}

pid_t ckho_clone_mm_holder(int read_end, void *stack, size_t stack_size) {
  /* The child's argument lives at the low end of its own stack (which
   * grows down from the other end): it outlives this call. */
  struct mm_holder_fds *fds = (struct mm_holder_fds *)stack;
  fds->read_end = read_end;
  sigset_t all, saved;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &saved);
  pid_t pid = clone(mm_holder, (char *)stack + stack_size, CLONE_VM | SIGCHLD, fds);
  int saved_errno = errno;
  pthread_sigmask(SIG_SETMASK, &saved, 0);
  errno = saved_errno;
  return pid;
}
