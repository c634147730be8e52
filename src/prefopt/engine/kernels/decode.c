/* The work of a bf16 decoding step on a CPU outside the weights' GEMMs (prefopt.engine.decode,
decoder and prefopt.generate.sampling call them): the attention of every sequence, the norms with
the residual sums, the rotary embedding, SwiGLU and the draw of a token. bf16 in and out, float32
inside, one rounding to bf16 where PyTorch's bf16 ops round after each op.

The attention: row r is a sequence of prompt row_prompt[r]. It attends to that prompt's prefix
(the first prefix_length[p] places of prefix_keys[p]) and to the first `length` places of its own
cache. One task is one (row, key-value head): its `group` query heads share every key and value
read, so the caches are read once a step, and only their written places; PyTorch's batched GEMMs
would round the scores and each partial output to bf16. A row's numbers depend on that row alone.

Built by prefopt.engine.native with the machine's own instruction set: on CPUs with AVX-512 BF16
the products of bf16 pairs are summed by vdpbf16ps (each product exact, the sums in float32), and
the loops below run portable C otherwise. */

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline float from_bf16(uint16_t x) {
    uint32_t bits = (uint32_t)x << 16;
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

static inline uint16_t to_bf16(float value) { /* round to nearest even, as torch rounds */
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40u); /* NaN */
    return (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

/* scores[g · stride + j] = scale · q_g · keys[j], for `count` keys of `dim` */
static void score_portable(const float *q, int group, int dim, const uint16_t *keys, int count,
                           float scale, float *scores, int stride, float *key) {
    for (int j = 0; j < count; j++) {
        for (int d = 0; d < dim; d++) key[d] = from_bf16(keys[(int64_t)j * dim + d]);
        for (int g = 0; g < group; g++) {
            float sum = 0.0f;
            for (int d = 0; d < dim; d++) sum += q[g * dim + d] * key[d];
            scores[g * stride + j] = sum * scale;
        }
    }
}

/* out[g] += Σ_j probs[g · stride + j] · values[j] */
static void gather_portable(const float *probs, int group, int dim, const uint16_t *values,
                            int count, int stride, float *out, float *value) {
    for (int j = 0; j < count; j++) {
        for (int d = 0; d < dim; d++) value[d] = from_bf16(values[(int64_t)j * dim + d]);
        for (int g = 0; g < group; g++) {
            const float p = probs[g * stride + j];
            for (int d = 0; d < dim; d++) out[g * dim + d] += p * value[d];
        }
    }
}

#if defined(__AVX512BF16__)
#include <immintrin.h>
#define SIMD_GROUP 8 /* query heads a key-value head serves, at most */
#define SIMD_DIM 256 /* head size, at most; a multiple of 64 */

/* lane i: the sum of the 16 lanes of the i-th argument */
static inline __m128 sum_lanes(__m512 a, __m512 b, __m512 c, __m512 d) {
    __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    __m512d abd = _mm512_castps_pd(ab), cdd = _mm512_castps_pd(cd);
    __m512 all = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(abd, cdd)),
                               _mm512_castpd_ps(_mm512_unpackhi_pd(abd, cdd)));
    __m256 half = _mm256_add_ps(_mm512_castps512_ps256(all), _mm512_extractf32x8_ps(all, 1));
    return _mm_add_ps(_mm256_castps256_ps128(half), _mm256_extractf128_ps(half, 1));
}

static inline __m512 dot_parts(const __m512bh *q, const uint16_t *key, int dim) {
    __m512 acc = _mm512_setzero_ps();
    for (int c = 0; c < dim / 32; c++)
        acc = _mm512_dpbf16_ps(acc, q[c], (__m512bh)_mm512_loadu_si512(key + 32 * c));
    return acc;
}

static void score_simd(const float *qf, int group, int dim, const uint16_t *keys, int count,
                       float scale, float *scores, int stride) {
    __m512bh q[SIMD_GROUP][SIMD_DIM / 32];
    for (int g = 0; g < group; g++)
        for (int c = 0; c < dim / 32; c++)
            q[g][c] = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(qf + g * dim + 32 * c + 16),
                                          _mm512_loadu_ps(qf + g * dim + 32 * c));
    int j = 0;
    for (; j + 4 <= count; j += 4) { /* four keys' sums reduced together */
        const uint16_t *key = keys + (int64_t)j * dim;
        for (int g = 0; g < group; g++) {
            __m128 sums = sum_lanes(dot_parts(q[g], key, dim), dot_parts(q[g], key + dim, dim),
                                    dot_parts(q[g], key + 2 * dim, dim),
                                    dot_parts(q[g], key + 3 * dim, dim));
            _mm_storeu_ps(scores + g * stride + j, _mm_mul_ps(sums, _mm_set1_ps(scale)));
        }
    }
    for (; j < count; j++)
        for (int g = 0; g < group; g++)
            scores[g * stride + j] =
                _mm512_reduce_add_ps(dot_parts(q[g], keys + (int64_t)j * dim, dim)) * scale;
}

static void gather_simd(const float *probs, int group, int dim, const uint16_t *values,
                        int count, int stride, float *out) {
    for (int c = 0; c < dim; c += 64) { /* 64 of the head's places, each group's in registers */
        __m512 acc[SIMD_GROUP][4];
        for (int g = 0; g < group; g++)
            for (int i = 0; i < 4; i++) acc[g][i] = _mm512_loadu_ps(out + g * dim + c + 16 * i);
        for (int j = 0; j < count; j++) {
            const uint16_t *row = values + (int64_t)j * dim + c;
            __m512 v[4];
            for (int i = 0; i < 4; i++) {
                __m256i raw = _mm256_loadu_si256((const __m256i *)(row + 16 * i));
                v[i] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
            }
            for (int g = 0; g < group; g++) {
                __m512 p = _mm512_set1_ps(probs[g * stride + j]);
                for (int i = 0; i < 4; i++) acc[g][i] = _mm512_fmadd_ps(p, v[i], acc[g][i]);
            }
        }
        for (int g = 0; g < group; g++)
            for (int i = 0; i < 4; i++) _mm512_storeu_ps(out + g * dim + c + 16 * i, acc[g][i]);
    }
}
#endif

static void score(const float *q, int group, int dim, const uint16_t *keys, int count,
                  float scale, float *scores, int stride, float *scratch) {
#if defined(__AVX512BF16__)
    if (group <= SIMD_GROUP && dim <= SIMD_DIM && dim % 64 == 0)
        return score_simd(q, group, dim, keys, count, scale, scores, stride);
#endif
    score_portable(q, group, dim, keys, count, scale, scores, stride, scratch);
}

static void gather(const float *probs, int group, int dim, const uint16_t *values, int count,
                   int stride, float *out, float *scratch) {
#if defined(__AVX512BF16__)
    if (group <= SIMD_GROUP && dim <= SIMD_DIM && dim % 64 == 0)
        return gather_simd(probs, group, dim, values, count, stride, out);
#endif
    gather_portable(probs, group, dim, values, count, stride, out, scratch);
}

static void softmax(float *scores, int count) {
    float top = scores[0], total = 0.0f;
    for (int j = 1; j < count; j++) top = scores[j] > top ? scores[j] : top;
    for (int j = 0; j < count; j++) scores[j] = expf(scores[j] - top), total += scores[j];
    for (int j = 0; j < count; j++) scores[j] /= total;
}

/* query [rows, heads, dim], key and value [rows, kv_heads, dim] (one token a row: row r at
   r · query_stride, r · key_stride, r · value_stride, its heads side by side), written into the
   own caches at place length - 1 first; prefix_keys, prefix_values: [prompts, kv_heads, prefix,
   dim]; own_keys, own_values: [rows, kv_heads, capacity, dim]; out: [rows, heads, dim]. Every
   prompt has a place or more. Returns 0, or -1 where memory for a task's scores ran out. */
int decode_attention_bf16(const uint16_t *query, const uint16_t *key, const uint16_t *value,
                          int64_t query_stride, int64_t key_stride, int64_t value_stride,
                          const uint16_t *prefix_keys,
                          const uint16_t *prefix_values, const int64_t *prefix_length,
                          uint16_t *own_keys, uint16_t *own_values, const int64_t *row_prompt,
                          uint16_t *out, int rows, int heads, int kv_heads, int dim, int prefix,
                          int capacity, int length, float scale) {
    const int group = heads / kv_heads, stride = prefix + length;
    const int64_t tasks = (int64_t)rows * kv_heads, own_size = (int64_t)capacity * dim;
    int failed = 0;
#pragma omp parallel for schedule(static) reduction(| : failed)
    for (int64_t task = 0; task < tasks; task++) {
        const int64_t row = task / kv_heads, head = task % kv_heads, p = row_prompt[row];
        const int known = (int)prefix_length[p], count = known + length;
        float *scores = malloc(sizeof(float) * ((size_t)group * (stride + 2 * dim) + dim));
        if (!scores) {
            failed = 1;
            continue;
        }
        float *q = scores + (size_t)group * stride, *acc = q + group * dim;
        float *scratch = acc + group * dim;
        if (task + 1 < tasks) /* the next task's own cache, fetched while this one computes */
            for (int64_t at = 0; at < (int64_t)length * dim; at += 32) {
                __builtin_prefetch(own_keys + (task + 1) * own_size + at);
                __builtin_prefetch(own_values + (task + 1) * own_size + at);
            }
        const uint16_t *own_query = query + row * query_stride + head * group * dim;
        for (int i = 0; i < group * dim; i++) q[i] = from_bf16(own_query[i]), acc[i] = 0.0f;
        const int64_t prefix_at = (p * kv_heads + head) * (int64_t)prefix * dim;
        const int64_t own_at = task * own_size, new_at = own_at + (int64_t)(length - 1) * dim;
        memcpy(own_keys + new_at, key + row * key_stride + head * dim, sizeof(uint16_t) * dim);
        memcpy(own_values + new_at, value + row * value_stride + head * dim, sizeof(uint16_t) * dim);
        score(q, group, dim, prefix_keys + prefix_at, known, scale, scores, stride, scratch);
        score(q, group, dim, own_keys + own_at, length, scale, scores + known, stride, scratch);
        for (int g = 0; g < group; g++) softmax(scores + g * stride, count);
        gather(scores, group, dim, prefix_values + prefix_at, known, stride, acc, scratch);
        gather(scores + known, group, dim, own_values + own_at, length, stride, acc, scratch);
        uint16_t *own_out = out + (row * heads + head * group) * dim;
        for (int i = 0; i < group * dim; i++) own_out[i] = to_bf16(acc[i]);
        free(scores);
    }
    return failed ? -1 : 0;
}

/* The elementwise work between a layer's GEMMs, one pass each over `tokens` rows, where PyTorch
   makes three to eight passes (and as many roundings to bf16). */

/* out = RMSNorm(x) as transformers' Llama computes it: x / sqrt(mean(x²) + eps) in float32,
   rounded to bf16, times the bf16 weight; with `residual`, x = bf16(x + residual) first, written
   back to `x` (the residual stream's sum and the norm of it in one pass). */
void rms_norm_bf16(uint16_t *x, const uint16_t *residual, const uint16_t *weight, uint16_t *out,
                   int tokens, int width, float eps) {
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < tokens; t++) {
        uint16_t *row = x + t * width;
        if (residual)
            for (int i = 0; i < width; i++)
                row[i] = to_bf16(from_bf16(row[i]) + from_bf16(residual[t * width + i]));
        float squares = 0.0f;
        for (int i = 0; i < width; i++) squares += from_bf16(row[i]) * from_bf16(row[i]);
        const float inverse = 1.0f / sqrtf(squares / width + eps);
        for (int i = 0; i < width; i++)
            out[t * width + i] =
                to_bf16(from_bf16(to_bf16(from_bf16(row[i]) * inverse)) * from_bf16(weight[i]));
    }
}

/* The rotary embedding in place: x·cos + rotate_half(x)·sin for each of a token's `heads` heads
   of `dim` (rotate_half(x) = [-x₂, x₁] of its halves); row t of x starts at t · stride, and
   cos and sin hold `dim` values a token. */
void rotate_bf16(uint16_t *x, const uint16_t *cos, const uint16_t *sin, int tokens, int heads,
                 int dim, int64_t stride) {
    const int half = dim / 2;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < tokens; t++) {
        const uint16_t *c = cos + t * dim, *s = sin + t * dim;
        for (int h = 0; h < heads; h++) {
            uint16_t *head = x + t * stride + (int64_t)h * dim;
            float first[half], second[half];
            for (int i = 0; i < half; i++) first[i] = from_bf16(head[i]);
            for (int i = 0; i < half; i++) second[i] = from_bf16(head[half + i]);
            for (int i = 0; i < half; i++)
                head[i] = to_bf16(first[i] * from_bf16(c[i]) - second[i] * from_bf16(s[i]));
            for (int i = 0; i < half; i++)
                head[half + i] = to_bf16(second[i] * from_bf16(c[half + i]) +
                                         first[i] * from_bf16(s[half + i]));
        }
    }
}

/* out = silu(gate) · up, gate and up the two halves of each token's row of gate_up */
void swiglu_bf16(const uint16_t *gate_up, uint16_t *out, int tokens, int width) {
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < tokens; t++) {
        const uint16_t *gate = gate_up + t * 2 * width, *up = gate + width;
        for (int i = 0; i < width; i++) {
            const float g = from_bf16(gate[i]);
            out[t * width + i] = to_bf16(g / (1.0f + expf(-g)) * from_bf16(up[i]));
        }
    }
}

/* A token a row from bf16 logits [rows, vocab], as prefopt.generate.sampling.inverse_cdf draws
   at temperature 1 with nothing cut: exp(logit - max) summed in blocks of BLOCK, the block
   holding u · total found among the blocks' running sums, then the token inside it. Where
   `uniform` is NULL, the first largest logit (greedy). logps: each token's log-probability. */
#define BLOCK 256

/* a logit, -inf (a token held back) as the lowest float: the kernels are built assuming no
   infinities, and exp of it is still 0 */
static inline float logit(uint16_t x) {
    const float value = from_bf16(x);
    return value > -FLT_MAX ? value : -FLT_MAX;
}

void draw_bf16(const uint16_t *logits, const float *uniform, int rows, int vocab,
               int64_t *tokens, float *logps) {
    const int blocks = (vocab + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const uint16_t *row = logits + r * vocab;
        float top = -FLT_MAX, cumulative[blocks], total = 0.0f;
        for (int j = 0; j < vocab; j++) top = fmaxf(top, logit(row[j]));
        int64_t best = 0;
        for (int b = 0; b < blocks; b++) {
            const int end = (b + 1) * BLOCK < vocab ? (b + 1) * BLOCK : vocab;
            float sum = 0.0f;
            for (int j = b * BLOCK; j < end; j++) sum += expf(logit(row[j]) - top);
            cumulative[b] = total += sum;
        }
        if (uniform) {
            const float target = uniform[r] * total;
            int chosen = 0;
            while (chosen < blocks - 1 && cumulative[chosen] <= target) chosen++;
            const float before = chosen > 0 ? cumulative[chosen - 1] : 0.0f;
            const int start = chosen * BLOCK, count = vocab - start < BLOCK ? vocab - start : BLOCK;
            float inside[BLOCK], running = 0.0f;
            for (int i = 0; i < count; i++)
                inside[i] = running += expf(logit(row[start + i]) - top);
            /* the block's own sum and its running sum round differently: stay inside its mass,
               so that a token of weight 0 is never the first to exceed it */
            float remaining = target - before, most = inside[count - 1] * (1.0f - 0x1p-20f);
            remaining = remaining < most ? remaining : most;
            int index = 0;
            while (index < count - 1 && inside[index] <= remaining) index++;
            best = start + index;
        } else {
            while (logit(row[best]) < top) best++;
        }
        tokens[r] = best;
        logps[r] = logit(row[best]) - (top + logf(total));
    }
}
