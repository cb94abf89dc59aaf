/* conv1 (one input channel, KxK, stride 1) + 2x2 max-pool (stride 2) + ReLU in one pass, forward and backward.
 *
 * Why: on a 2-core CPU the tutorial network's first block is memory traffic, not arithmetic. oneDNN's conv with one input
 * channel, max_pool2d_with_indices (int64 indices) and its backward (zero-fill a (B, 32, 26, 26) gradient, then
 * scatter) took ~2 ms of a ~6.5 ms training step for ~25 MFLOP. Here the 26x26 map is never stored: each pooled
 * output computes its four conv values, keeps the largest, adds the bias, applies ReLU, and remembers which of
 * the four won in one byte. fused.py compiles this file on first use and wraps it in an autograd Function.
 *
 * Shapes, with C = channels, PH = (H - K + 1) / 2 (floor, as max_pool2d):
 *   x     (B, H, W)       float32, the one input channel
 *   wt    (K, K, C)       float32, conv1.weight (C, 1, K, K) transposed so the channels are contiguous
 *   bias  (C)             float32
 *   y     (B, PH, PW, C)  float32 or bfloat16 (round to nearest even): NHWC, i.e. channels_last
 *   idx   (B, PH, PW, C)  uint8: 0-3 = the winner in the 2x2 window (row-major, first one on ties, as
 *                         max_pool2d), 4 = ReLU clipped it (no gradient flows)
 * Compile-time constants (-D): C (a multiple of 16), K, H, W. GNU vector extensions: 16 floats per vector,
 * which gcc and clang lower to AVX-512, AVX2, SSE or NEON as the target has.
 */
#include <stdint.h>
#include <string.h>

#define PH ((H - K + 1) / 2)
#define PW ((W - K + 1) / 2)
#define NV (C / 16)

typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef uint32_t vu __attribute__((vector_size(64)));
typedef uint16_t vh __attribute__((vector_size(32)));
typedef uint8_t vb __attribute__((vector_size(16)));

static inline vf load(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void store(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf pick(vi mask, vf a, vf b) { return (vf)((mask & (vi)a) | (~mask & (vi)b)); }

void conv1_pool_relu_forward(const float *x, const float *wt, const float *bias, int B, void *y, int y_bf16,
                             uint8_t *idx /* may be NULL: no backward will follow */) {
    #pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        const float *xb = x + (long)b * H * W;
        vf w[K * K][NV], bv[NV];  /* the whole kernel stays in registers: K*K*NV vectors */
        for (int t = 0; t < K * K; t++)
            for (int v = 0; v < NV; v++) w[t][v] = load(wt + t * C + 16 * v);
        for (int v = 0; v < NV; v++) bv[v] = load(bias + 16 * v);
        for (int i = 0; i < PH; i++)
            for (int j = 0; j < PW; j++) {
                /* the four conv values of the 2x2 window at once (4 * NV independent sums). 36 * NV vector FMAs
                   per output: on Zen 4, which splits each 512-bit FMA in two, ~100 cycles, about what we see
                   (147 us per batch of 64 on 2 cores); fp32 compute now bounds this loop, not memory */
                const float *xp = xb + 2 * i * W + 2 * j;
                vf acc[4][NV];
                for (int p = 0; p < 4; p++)
                    for (int v = 0; v < NV; v++) acc[p][v] = (vf){0};
                for (int ky = 0; ky < K; ky++)
                    for (int kx = 0; kx < K; kx++)
                        for (int p = 0; p < 4; p++) {  /* conv1 at (2i + p/2, 2j + p%2) */
                            float s = xp[(ky + (p >> 1)) * W + kx + (p & 1)];
                            for (int v = 0; v < NV; v++) acc[p][v] += s * w[ky * K + kx][v];
                        }
                vf best[NV];
                vi arg[NV];
                for (int v = 0; v < NV; v++) {
                    best[v] = acc[0][v];
                    arg[v] = (vi){0};
                    for (int p = 1; p < 4; p++) {
                        vi better = acc[p][v] > best[v];  /* strictly: the first maximum wins */
                        best[v] = pick(better, acc[p][v], best[v]);
                        arg[v] = (better & p) | (~better & arg[v]);
                    }
                }
                long o = (((long)b * PH + i) * PW + j) * C;
                for (int v = 0; v < NV; v++) {
                    vf out = best[v] + bv[v];  /* max(conv) + bias = max(conv + bias) */
                    vi on = out > (vf){0};
                    out = pick(on, out, (vf){0});
                    if (idx) {
                        vb ix = __builtin_convertvector((on & arg[v]) | (~on & 4), vb);
                        memcpy(idx + o + 16 * v, &ix, sizeof ix);
                    }
                    if (y_bf16) {
                        vu u = (vu)out;
                        vh h = __builtin_convertvector((u + 0x7FFF + ((u >> 16) & 1)) >> 16, vh);
                        memcpy((uint16_t *)y + o + 16 * v, &h, sizeof h);
                    } else {
                        store((float *)y + o + 16 * v, out);
                    }
                }
            }
    }
}

/* Gradients of conv1.weight and conv1.bias from g = dL/dy (B, PH, PW, C), float32 or bfloat16. The input
 * needs no gradient. Each of T threads sums a fixed slice of the batch into its own row of `partial`
 * (T, K*K*C + C); the rows are then added in order, so the result is the same bit for bit on every run with
 * the same T. Writes dwt (K, K, C) and db (C). */
void conv1_pool_relu_backward(const float *x, const void *g, int g_bf16, const uint8_t *idx, int B, int T,
                              float *partial, float *dwt, float *db) {
    const int N = K * K * C + C;
    #pragma omp parallel for schedule(static) num_threads(T)
    for (int t = 0; t < T; t++) {
        vf acc[K * K + 1][NV];  /* K*K weight taps, then the bias */
        for (int a = 0; a < K * K + 1; a++)
            for (int v = 0; v < NV; v++) acc[a][v] = (vf){0};
        int lo = (int)((long)B * t / T), hi = (int)((long)B * (t + 1) / T);
        for (int b = lo; b < hi; b++) {
            const float *xb = x + (long)b * H * W;
            for (int i = 0; i < PH; i++)
                for (int j = 0; j < PW; j++) {
                    long o = (((long)b * PH + i) * PW + j) * C;
                    for (int v = 0; v < NV; v++) {
                        vf gv;
                        if (g_bf16) {
                            vh h;
                            memcpy(&h, (const uint16_t *)g + o + 16 * v, sizeof h);
                            gv = (vf)(__builtin_convertvector(h, vu) << 16);
                        } else {
                            gv = load((const float *)g + o + 16 * v);
                        }
                        vb ib;
                        memcpy(&ib, idx + o + 16 * v, sizeof ib);
                        vi ix = __builtin_convertvector(ib, vi);
                        acc[K * K][v] += pick(ix < 4, gv, (vf){0});
                        for (int p = 0; p < 4; p++) {  /* the gradient goes to the window's winner only */
                            vf gp = pick(ix == p, gv, (vf){0});
                            const float *xp = xb + (2 * i + (p >> 1)) * W + 2 * j + (p & 1);
                            for (int ky = 0; ky < K; ky++)
                                for (int kx = 0; kx < K; kx++) acc[ky * K + kx][v] += xp[ky * W + kx] * gp;
                        }
                    }
                }
        }
        for (int a = 0; a < K * K + 1; a++)
            for (int v = 0; v < NV; v++) store(partial + (long)t * N + a * C + 16 * v, acc[a][v]);
    }
    for (int n = 0; n < N; n++) {
        float s = 0.f;
        for (int t = 0; t < T; t++) s += partial[(long)t * N + n];
        if (n < K * K * C) dwt[n] = s; else db[n - K * K * C] = s;
    }
}
