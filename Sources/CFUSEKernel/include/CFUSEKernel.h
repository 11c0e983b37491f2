#ifndef SWIFT_KHO_CFUSEKERNEL_H
#define SWIFT_KHO_CFUSEKERNEL_H

// The kernel side of FUSE: every message of the /dev/fuse protocol, from
// linux-libc-dev. Headers only; the calls the control file system makes are
// KHOSystem's.
#include <linux/fuse.h>
#include <stddef.h>
#include <sys/types.h>

#endif
