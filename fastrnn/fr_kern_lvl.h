/* One ISA level of the kernels (included by fr_kern.h once per level, inside a target
 * region): the level's native vector types, then the float and double kernels.
 * Macros in scope: FR_VBYTES (vector bytes), FR_NREG (vector registers), FR_LSFX (name
 * suffix of the level: _l2, _l1, _l0). */

#define FR_VF FR_CAT(fr_vf, FR_LSFX)
#define FR_VFI FR_CAT(fr_vfi, FR_LSFX)
#define FR_VD FR_CAT(fr_vd, FR_LSFX)
#define FR_VDI FR_CAT(fr_vdi, FR_LSFX)
typedef float FR_VF __attribute__((vector_size(FR_VBYTES), aligned(4), may_alias));
typedef int FR_VFI __attribute__((vector_size(FR_VBYTES), aligned(4), may_alias));
typedef double FR_VD __attribute__((vector_size(FR_VBYTES), aligned(8), may_alias));
typedef long long FR_VDI __attribute__((vector_size(FR_VBYTES), aligned(8), may_alias));

#define FR_T float
#define FR_V FR_VF
#define FR_VI FR_VFI
#define FR_IT int
#define FR_W (FR_VBYTES / 4)
#define FR_SEQ fr_seq_f
#define FR_SFX(name) FR_CAT(name##_f, FR_LSFX)
#include "fr_kern_t.h"   /* consumes (undefines) its FR_* parameters */

#define FR_DOUBLE 1
#define FR_T double
#define FR_V FR_VD
#define FR_VI FR_VDI
#define FR_IT long long
#define FR_W (FR_VBYTES / 8)
#define FR_SEQ fr_seq_d
#define FR_SFX(name) FR_CAT(name##_d, FR_LSFX)
#include "fr_kern_t.h"

#undef FR_VF
#undef FR_VFI
#undef FR_VD
#undef FR_VDI
