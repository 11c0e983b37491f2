#ifndef SWIFT_KHO_CLIBFDT_SHIM_H
#define SWIFT_KHO_CLIBFDT_SHIM_H
#include <libfdt.h>
#endif
