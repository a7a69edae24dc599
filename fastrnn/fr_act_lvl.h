/* One ISA level of the vector activations alone (fr_act_t.h), for a module that does not
 * build the whole kernel set (_backward_gemm.h); included inside a target region with
 * FR_VBYTES (vector bytes) and FR_LSFX (name suffix of the level: _l2, _l1, _l0) set.
 * Defines fr_act_arr_f##FR_LSFX / fr_act_arr_d##FR_LSFX (int act, const T* x, T* y,
 * ptrdiff_t n): act 0 sigmoid, 1 tanh, over n values (x == y allowed). */

typedef float FR_CAT(fra_vf, FR_LSFX) __attribute__((vector_size(FR_VBYTES), aligned(4), may_alias));
typedef int FR_CAT(fra_vfi, FR_LSFX) __attribute__((vector_size(FR_VBYTES), aligned(4), may_alias));
typedef double FR_CAT(fra_vd, FR_LSFX) __attribute__((vector_size(FR_VBYTES), aligned(8), may_alias));
typedef long long FR_CAT(fra_vdi, FR_LSFX) __attribute__((vector_size(FR_VBYTES), aligned(8), may_alias));

#define V FR_CAT(fra_vf, FR_LSFX)
#define VI FR_CAT(fra_vfi, FR_LSFX)
#define T float
#define W (FR_VBYTES / 4)
#define F(name) FR_CAT(name##_f, FR_LSFX)
#include "fr_act_t.h"
static void F(fr_act_arr)(int act, const T* x, T* y, ptrdiff_t n) { F(vact_array)(act, x, y, n); }
#undef V
#undef VI
#undef T
#undef W
#undef F

#define FR_DOUBLE 1
#define V FR_CAT(fra_vd, FR_LSFX)
#define VI FR_CAT(fra_vdi, FR_LSFX)
#define T double
#define W (FR_VBYTES / 8)
#define F(name) FR_CAT(name##_d, FR_LSFX)
#include "fr_act_t.h"
static void F(fr_act_arr)(int act, const T* x, T* y, ptrdiff_t n) { F(vact_array)(act, x, y, n); }
#undef V
#undef VI
#undef T
#undef W
#undef F
#undef FR_DOUBLE
