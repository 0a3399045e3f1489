/* qparams.c : scale and zero point from observed ranges (see mono_quant.h for the formulas). */
#include <float.h>
#include <math.h>

#include "mono_quant.h"

mq_status mq_qparams(const float *min, const float *max, int64_t n, int32_t qmin, int32_t qmax,
                     int symmetric, float *scale, int32_t *zero_point) {
  if (qmin >= qmax || n < 0) return MQ_ERR_ARG;
  for (int64_t c = 0; c < n; c++) {
    if (!isfinite(min[c]) || !isfinite(max[c])) return MQ_ERR_NONFINITE;
    if (min[c] > max[c]) return MQ_ERR_ARG;
  }
  for (int64_t c = 0; c < n; c++) {
    float s;
    int32_t zp;
    if (symmetric) {
      const float amax = fmaxf(fabsf(min[c]), fabsf(max[c]));
      s = amax / (float)((qmax - qmin) / 2);
      if (!(s >= FLT_MIN)) s = FLT_MIN;
      zp = (int32_t)(((int64_t)qmin + qmax + 1) / 2);
    } else {
      const float lo = fminf(min[c], 0.0f), hi = fmaxf(max[c], 0.0f);
      const float levels = (float)(qmax - qmin);
      s = (hi - lo) / levels;
      if (isinf(s)) s = hi / levels - lo / levels; /* hi - lo overflowed float32 */
      if (!(s >= FLT_MIN)) s = FLT_MIN;
      float z = (float)qmin - nearbyintf(lo / s);
      z = fminf(fmaxf(z, (float)qmin), (float)qmax);
      zp = (int32_t)z;
    }
    scale[c] = s;
    zero_point[c] = zp;
  }
  return MQ_OK;
}
