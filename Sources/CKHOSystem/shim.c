// Everything of CKHOSystem is static inline in the header; this file exists
// because a C target needs one translation unit.
#include "CKHOSystem.h"
