// The system calls and constants of memfd, file seals and huge pages, which
// Glibc's Swift module does not expose (they sit behind _GNU_SOURCE).
//
// Every shim returns the call's result and stores errno into *err right after
// the call, before anything else can overwrite it; Swift never reads errno.
#ifndef SWIFT_KHO_CKHOSYSTEM_H
#define SWIFT_KHO_CKHOSYSTEM_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

// Older headers may lack some of these; the values are the kernel's ABI.
#ifndef MFD_HUGE_SHIFT
#define MFD_HUGE_SHIFT 26
#endif
#ifndef MFD_HUGE_2MB
#define MFD_HUGE_2MB (21U << MFD_HUGE_SHIFT)
#endif
#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif

static const unsigned int ckho_MFD_CLOEXEC = MFD_CLOEXEC;
static const unsigned int ckho_MFD_ALLOW_SEALING = MFD_ALLOW_SEALING;
static const unsigned int ckho_MFD_HUGETLB = MFD_HUGETLB;
static const unsigned int ckho_MFD_HUGE_2MB = MFD_HUGE_2MB;

static const int ckho_F_ADD_SEALS = F_ADD_SEALS;
static const int ckho_F_GET_SEALS = F_GET_SEALS;
static const int ckho_F_SEAL_SEAL = F_SEAL_SEAL;
static const int ckho_F_SEAL_SHRINK = F_SEAL_SHRINK;
static const int ckho_F_SEAL_GROW = F_SEAL_GROW;
static const int ckho_F_SEAL_WRITE = F_SEAL_WRITE;
static const int ckho_F_SEAL_FUTURE_WRITE = F_SEAL_FUTURE_WRITE;

static const int ckho_MADV_HUGEPAGE = MADV_HUGEPAGE;

/// memfd_create(2); errno in *err on failure.
static inline int ckho_memfd_create(const char *name, unsigned int flags, int *err) {
  int fd = memfd_create(name, flags);
  *err = fd < 0 ? errno : 0;
  return fd;
}

/// fcntl(fd, F_ADD_SEALS, seals); errno in *err on failure.
static inline int ckho_add_seals(int fd, int seals, int *err) {
  int r = fcntl(fd, F_ADD_SEALS, seals);
  *err = r < 0 ? errno : 0;
  return r;
}

/// fcntl(fd, F_GET_SEALS); errno in *err on failure.
static inline int ckho_get_seals(int fd, int *err) {
  int r = fcntl(fd, F_GET_SEALS);
  *err = r < 0 ? errno : 0;
  return r;
}

/// ftruncate(2); errno in *err on failure.
static inline int ckho_ftruncate(int fd, int64_t length, int *err) {
  int r = ftruncate(fd, (off_t)length);
  *err = r < 0 ? errno : 0;
  return r;
}

/// fstat(2), returning only size, mode, blocks and block size; errno in *err on failure.
static inline int ckho_fstat(int fd, int64_t *size, uint32_t *mode, int64_t *blocks,
                             int64_t *blksize, int *err) {
  struct stat st;
  int r = fstat(fd, &st);
  *err = r < 0 ? errno : 0;
  if (r == 0) {
    *size = (int64_t)st.st_size;
    *mode = (uint32_t)st.st_mode;
    *blocks = (int64_t)st.st_blocks;
    *blksize = (int64_t)st.st_blksize;
  }
  return r;
}

/// mmap(2) of a shared read-write mapping of fd; NULL (not MAP_FAILED) and
/// errno in *err on failure.
static inline void *ckho_mmap_shared(int fd, size_t length, int64_t offset, int *err) {
  void *p = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)offset);
  if (p == MAP_FAILED) {
    *err = errno;
    return NULL;
  }
  *err = 0;
  return p;
}

/// munmap(2); errno in *err on failure.
static inline int ckho_munmap(void *addr, size_t length, int *err) {
  int r = munmap(addr, length);
  *err = r < 0 ? errno : 0;
  return r;
}

/// madvise(2); errno in *err on failure.
static inline int ckho_madvise(void *addr, size_t length, int advice, int *err) {
  int r = madvise(addr, length, advice);
  *err = r < 0 ? errno : 0;
  return r;
}

/// close(2); errno in *err on failure.
static inline int ckho_close(int fd, int *err) {
  int r = close(fd);
  *err = r < 0 ? errno : 0;
  return r;
}

/// readlink(2) into buf (not terminated); the length or -1, errno in *err.
static inline ssize_t ckho_readlink(const char *path, char *buf, size_t size, int *err) {
  ssize_t r = readlink(path, buf, size);
  *err = r < 0 ? errno : 0;
  return r;
}

#endif
