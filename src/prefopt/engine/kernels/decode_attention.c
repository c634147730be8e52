/* One decoding step's attention for every sequence of a batch: bf16 in and out, float inside.

Row r is a sequence of prompt row_prompt[r]. It attends to that prompt's prefix (the first
prefix_length[p] places of prefix_keys[p]) and to the first `length` places of its own cache.
One task is one (row, key-value head): its `group` query heads share every key and value read,
so the caches are read once a step, and only their written places. Scores, softmax and the
weighted sums stay in float32 and the output is rounded to bf16 once, where PyTorch's batched
GEMMs round the scores and each partial output to bf16; a row's numbers depend on that row alone.

Built by prefopt.engine.native with the machine's own instruction set: on CPUs with AVX-512 BF16
the products of bf16 pairs are summed by vdpbf16ps (each product exact, the sums in float32), and
the loops below run portable C otherwise. */

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
#define SIMD_GROUP 4 /* query heads a key-value head serves, at most */
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

/* query, out: [rows, heads, dim]; prefix_keys, prefix_values: [prompts, kv_heads, prefix, dim];
   own_keys, own_values: [rows, kv_heads, capacity, dim]; every prompt has a place or more.
   Returns 0, or -1 where memory for a task's scores ran out. */
int decode_attention_bf16(const uint16_t *query, const uint16_t *prefix_keys,
                           const uint16_t *prefix_values, const int64_t *prefix_length,
                           const uint16_t *own_keys, const uint16_t *own_values,
                           const int64_t *row_prompt, uint16_t *out, int rows, int heads,
                           int kv_heads, int dim, int prefix, int capacity, int length,
                           float scale) {
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
        float *q = scores + (size_t)group * stride, *acc = q + group * dim, *scratch = acc + group * dim;
        if (task + 1 < tasks) /* the next task's own cache, fetched while this one computes */
            for (int64_t at = 0; at < (int64_t)length * dim; at += 32) {
                __builtin_prefetch(own_keys + (task + 1) * own_size + at);
                __builtin_prefetch(own_values + (task + 1) * own_size + at);
            }
        const uint16_t *own_query = query + (row * heads + head * group) * dim;
        for (int i = 0; i < group * dim; i++) q[i] = from_bf16(own_query[i]), acc[i] = 0.0f;
        const int64_t prefix_at = (p * kv_heads + head) * (int64_t)prefix * dim;
        const int64_t own_at = task * own_size;
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
