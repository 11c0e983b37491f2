// CFUSEKernel is headers only; a C target needs one translation unit.
#include "CFUSEKernel.h"
