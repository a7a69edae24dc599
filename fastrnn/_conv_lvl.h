/* One ISA level of the convolution kernel (included by _conv_kern.h once per level,
 * inside its target region): the level's vector types, then the float and double
 * instances of _conv_t.h.  Macros in scope: FRC_VB (vector bytes), FRC_LSFX (the
 * level's name suffix), FRC_NVMAX, FRC_MR(nv). */

typedef float FRC_CAT(frc_vf, FRC_LSFX)
    __attribute__((vector_size(FRC_VB), aligned(4), may_alias));
typedef double FRC_CAT(frc_vd, FRC_LSFX)
    __attribute__((vector_size(FRC_VB), aligned(8), may_alias));
typedef int FRC_CAT(frc_vfi, FRC_LSFX)
    __attribute__((vector_size(FRC_VB), aligned(4), may_alias));
typedef long long FRC_CAT(frc_vdi, FRC_LSFX)
    __attribute__((vector_size(FRC_VB), aligned(8), may_alias));

#define T float
#define V FRC_CAT(frc_vf, FRC_LSFX)
#define VI FRC_CAT(frc_vfi, FRC_LSFX)
#define VL (FRC_VB / 4)
#define F(name) FRC_CAT(name##_f, FRC_LSFX)
#include "_conv_t.h"
#undef T
#undef V
#undef VI
#undef VL
#undef F

#define T double
#define V FRC_CAT(frc_vd, FRC_LSFX)
#define VI FRC_CAT(frc_vdi, FRC_LSFX)
#define VL (FRC_VB / 8)
#define F(name) FRC_CAT(name##_d, FRC_LSFX)
#include "_conv_t.h"
#undef T
#undef V
#undef VI
#undef VL
#undef F
